"""Rebuild a trained model from a checkpoint file (config and vocabulary travel inside it), or load its weights
into a new model, resizing positions and Linformer projections when max_positions differs."""
import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Optional, Union

from torch import nn

from linformer_pt.errors import UserError
from linformer_pt.models.resize import PROJECTION_SUFFIXES, resize_for
from linformer_pt.registry import MODELS
from linformer_pt.training.checkpoint import load_checkpoint


def load_weights(model: nn.Module, checkpoint: Dict[str, Any]) -> None:
    """Copy a checkpoint's weights into `model`, resizing them to its max_positions (models/resize.py).

    Weights of standard attention into a Linformer (an imported RoBERTa uptrained with model.attention=linformer):
    every weight is kept and the Linformer's E/F, which the source has none of, keep their fresh initialisation.
    """
    source_cfg = checkpoint["cfg"]["model"]
    projection = source_cfg.get("projection", "linear")
    state = resize_for(checkpoint["model"], model.state_dict(), projection)
    if source_cfg.get("attention") == "standard":
        fresh = {name: t for name, t in model.state_dict().items() if name.endswith(PROJECTION_SUFFIXES)}
        state = {**fresh, **state}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        details = "; ".join(line.strip() for line in str(err).splitlines()[1:] if line.strip())
        raise UserError(f"checkpoint weights do not fit the model: {details}") from None


def load_model(path: Union[str, Path], max_positions: Optional[int] = None) -> nn.Module:
    """The model saved in checkpoint `path` in eval mode on the CPU, optionally resized to max_positions."""
    checkpoint = load_checkpoint(path)
    model_cfg = MODELS.config(checkpoint["cfg"]["model"])
    if max_positions is not None:
        model_cfg = dataclasses.replace(model_cfg, max_positions=max_positions)
    model = MODELS.get(model_cfg.name).cls.build(model_cfg, SimpleNamespace(**checkpoint["model_args"]))
    load_weights(model, checkpoint)
    return model.eval()
