"""Sequence-axis projections n -> k (Linformer's E and F).

A projection maps the n positions of keys or values to k rows. Inputs shorter than `max_positions` use the
first n rows of the (max_positions x k) matrix; padded positions are zeroed first, so they contribute nothing.
"""
import math
from typing import Optional

import torch
from torch import Tensor, nn

from linformer_pt.errors import UserError

PROJECTION_INITS = ("xavier", "normal")


class LinearProjection(nn.Module):
    """Learned projection E of shape (max_positions, k), or (heads, max_positions, k) with one E per head."""

    def __init__(self, max_positions: int, k: int, num_heads: Optional[int] = None, init: str = "xavier") -> None:
        super().__init__()
        self.max_positions, self.k, self.num_heads = max_positions, k, num_heads
        shape = (max_positions, k) if num_heads is None else (num_heads, max_positions, k)
        self.weight = nn.Parameter(torch.empty(shape))
        self.reset_parameters(init)

    def reset_parameters(self, init: str = "xavier") -> None:
        if init == "xavier":
            # fairseq's gain: E and F each see half of the fan of a K/V projection pair.
            bound = math.sqrt(6.0 / (self.max_positions + self.k)) / math.sqrt(2.0)
            nn.init.uniform_(self.weight, -bound, bound)
        elif init == "normal":
            nn.init.normal_(self.weight, mean=0.0, std=0.02)
        else:
            raise UserError(f"projection init {init!r} is not allowed; choose one of: {', '.join(PROJECTION_INITS)}")

    def matrix(self, n: int) -> Tensor:
        """The first n rows of E: (n, k), or (heads, n, k) for per-head projections."""
        if n > self.max_positions:
            raise UserError(f"input length {n} exceeds max_positions {self.max_positions} of the Linformer projection")
        return self.weight[..., :n, :]

    def forward(self, x: Tensor, keep: Optional[Tensor] = None) -> Tensor:
        """Project the sequence axis of x to k rows; `keep` (B, n) is 1 at real positions, 0 at padding.

        Shared E: x (B, n, d) -> (B, k, d). Per-head E: x (B, heads, n, dh) -> (B, heads, k, dh).
        """
        n = x.shape[-2]
        if keep is not None:
            x = x * (keep[:, :, None] if self.num_heads is None else keep[:, None, :, None])
        return self.matrix(n).transpose(-1, -2).to(x.dtype) @ x

    def project_keep(self, keep: Optional[Tensor], n: int, dtype: torch.dtype) -> Tensor:
        """E^T m for the 0/1 mask m: how much of a bias added at every real position reaches each of the k rows.

        Returns (B, k), or (k,) when there is no padding mask. Only for a shared (not per-head) projection.
        """
        e = self.matrix(n).to(dtype)
        return e.sum(0) if keep is None else keep.to(dtype) @ e
