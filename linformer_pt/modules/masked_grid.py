"""The masked positions of a batch laid out per sample, so the last encoder layer computes only the rows a loss reads.

(The same holds for a sentence head, which reads each sample's first position only: `MaskedGrid.first_positions`.)

A masked-LM loss reads the encoder's output at the ~15% masked positions only. Every layer but the last must still
run on all positions (its output is the next layer's keys and values), but the last layer's queries, attention
output, residuals, LayerNorms and feed-forward are needed only at those rows: computing them there is exact (the
other rows' outputs get no gradient) and saves ~85% of one layer's work. Attention wants its queries batched per
sample, so the grid holds each sample's masked positions padded to the largest count in the batch; `real` picks
the true entries back out, in the row-major order of the masked positions (the order of collate's targets).

The grid is built by the data loader on the host: built on the device, its size (the largest count) would make the
host wait for the device every micro-batch.
"""
from typing import NamedTuple

import torch
from torch import Tensor


class MaskedGrid(NamedTuple):
    rows: Tensor  # (B, m) flat indices into the (B * n) positions; padded entries repeat the sample's first position
    real: Tensor  # (M,) flat indices into the (B * m) grid of its true entries, in row-major order of the positions

    @classmethod
    def from_mask(cls, masked: Tensor) -> "MaskedGrid":
        """The grid of a boolean (B, n) mask (on the host; m is at least 1, so every shape is non-empty)."""
        b, n = masked.shape
        counts = masked.sum(1)
        m = max(int(counts.max()) if b else 0, 1)
        # A stable sort of "not masked" puts each row's masked positions first, in ascending order.
        order = torch.sort((~masked).to(torch.uint8), dim=1, stable=True).indices[:, :m]
        valid = torch.arange(m) < counts[:, None]
        rows = torch.where(valid, order, 0) + torch.arange(b)[:, None] * n
        return cls(rows, valid.flatten().nonzero().squeeze(1))

    @classmethod
    def first_positions(cls, b: int, n: int, device: torch.device) -> "MaskedGrid":
        """The grid of each sample's first position (<s>): the one row a sentence head reads (built from shapes
        alone, so on the device without a sync)."""
        first = torch.arange(b, device=device)
        return cls((first * n).unsqueeze(1), first)

    def gather(self, x: Tensor) -> Tensor:
        """(B, n, d) -> (B, m, d): each sample's masked rows (and padding entries)."""
        b, m = self.rows.shape
        return x.flatten(0, 1).index_select(0, self.rows.flatten()).view(b, m, x.shape[-1])

    def pick(self, x: Tensor) -> Tensor:
        """(B, m, d) -> (M, d): the true entries, in the order of the masked positions."""
        return x.flatten(0, 1).index_select(0, self.real)
