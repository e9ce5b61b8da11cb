"""Changing max_positions of a trained model, explicitly: learned positions and Linformer projections.

- Learned E/F (linear projections) are resized by linear interpolation along the sequence axis and scaled by
  old/new, so that a smooth input projects to the same magnitude: row j of E keeps covering the same *fraction*
  of the sequence, as pooling and conv windows do.
- Conv taps (ceil(max_positions/k) of them) are interpolated to the new tap count.
- Learned position embeddings are truncated when shrinking and tiled (copies of the learned rows, as
  Longformer does for RoBERTa) when growing, which keeps local position geometry intact.
"""
import math
from typing import Dict

import torch.nn.functional as F
from torch import Tensor

PROJECTION_SUFFIXES = ("proj_e.weight", "proj_f.weight", "shared_projection.weight")


def resize_projection_matrix(weight: Tensor, new: int) -> Tensor:
    """(..., old, k) -> (..., new, k) by linear interpolation along the sequence axis, scaled by old/new."""
    old, k = weight.shape[-2:]
    rows = weight.reshape(-1, old, k).transpose(1, 2)  # interpolate wants (batch, channels, length)
    resized = F.interpolate(rows.float(), size=new, mode="linear", align_corners=False) * (old / new)
    return resized.transpose(1, 2).reshape(*weight.shape[:-2], new, k).to(weight.dtype)


def resize_taps(weight: Tensor, new_taps: int) -> Tensor:
    """Conv taps (..., taps) -> (..., new_taps) by linear interpolation."""
    taps = weight.shape[-1]
    flat = weight.reshape(-1, 1, taps).float()
    return F.interpolate(flat, size=new_taps, mode="linear", align_corners=False).reshape(
        *weight.shape[:-1], new_taps
    ).to(weight.dtype)


def resize_positions(weight: Tensor, new: int) -> Tensor:
    """(old, d) -> (new, d): truncate, or tile the learned rows."""
    old = weight.shape[0]
    return weight[:new].clone() if new <= old else weight.repeat(math.ceil(new / old), 1)[:new].clone()


def resize_for(state: Dict[str, Tensor], target: Dict[str, Tensor], projection: str) -> Dict[str, Tensor]:
    """A copy of a LinformerRoberta state dict whose position-sized tensors are resized to those of `target`.

    `target` is the state dict (or any name -> tensor map of the right shapes) of the model built with the new
    max_positions; `projection` is the model's projection kind. Other tensors are left for load_state_dict to check.
    """
    out = dict(state)
    for name, weight in state.items():
        want = target.get(name)
        if want is None or want.shape == weight.shape:
            continue
        if name == "embed_positions.weight":
            out[name] = resize_positions(weight, want.shape[0])
        elif name.endswith(PROJECTION_SUFFIXES) and projection == "linear":
            out[name] = resize_projection_matrix(weight, want.shape[-2])
        elif name.endswith(PROJECTION_SUFFIXES) and projection == "conv":
            out[name] = resize_taps(weight, want.shape[-1])
    return out
