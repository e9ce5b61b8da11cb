"""Tasks: what is learned from which data; importing this package registers them in TASKS."""
from linformer_pt.tasks import masked_lm  # noqa: F401
from linformer_pt.tasks import sentence_prediction  # noqa: F401
