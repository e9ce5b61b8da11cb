"""Training: optimizers and LR schedules, checkpoints, metric logging and the Trainer loop."""
from linformer_pt.training import optim  # noqa: F401  (registers optimizers and schedules)
