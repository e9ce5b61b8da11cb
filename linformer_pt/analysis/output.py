"""What both analyses share for their outputs: JSON-ready numbers and plain-text tables.

Kept apart from the figures (plots.py), which need matplotlib.
"""
from typing import List, Sequence

import torch
from torch import Tensor


def rounded(t: Tensor) -> List:
    """A tensor as nested lists of floats rounded to 6 decimals (JSON stays readable and small)."""
    return torch.round(t.double(), decimals=6).tolist()


def table(rows: Sequence[Sequence[str]]) -> str:
    """Rows of cells as right-aligned columns, the first row being the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)
