"""Rebuild a trained model from a checkpoint file: the config and vocabulary travel inside it."""
from pathlib import Path
from types import SimpleNamespace
from typing import Union

from torch import nn

from linformer_pt.registry import MODELS
from linformer_pt.training.checkpoint import load_checkpoint


def load_model(path: Union[str, Path]) -> nn.Module:
    """The model saved in checkpoint `path`, with its weights, in eval mode on the CPU."""
    state = load_checkpoint(path)
    model_cfg = MODELS.config(state["cfg"]["model"])
    args = state["model_args"]
    model = MODELS.get(model_cfg.name).cls.build(model_cfg, SimpleNamespace(**args))
    model.load_state_dict(state["model"])
    return model.eval()
