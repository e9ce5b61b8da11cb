"""Model architectures; importing this package registers them in linformer_pt.registry.MODELS."""
from linformer_pt.models import linformer_roberta  # noqa: F401
