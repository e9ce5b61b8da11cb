"""linformer-pt: masked-LM pretraining of Linformer encoders.

Subpackages: modules (attention), models, tasks, data, training, cli, sweeps, analysis; hub imports, exports and
loads trained models.
"""
from typing import Any

__version__ = "0.1.0"
__all__ = ["LinformerForMaskedLM", "__version__"]


def __getattr__(name: str) -> Any:
    """`from linformer_pt import LinformerForMaskedLM` imports torch only when it is asked for."""
    if name == "LinformerForMaskedLM":
        from linformer_pt.hub.export_folder import LinformerForMaskedLM

        return LinformerForMaskedLM
    raise AttributeError(f"module 'linformer_pt' has no attribute {name!r}")
