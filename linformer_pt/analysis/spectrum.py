"""Singular value spectra of the attention matrices P of a trained model: is P low rank (Linformer's Figure 1)?

Each sequence's P is restricted to its L real tokens (rows and columns) before its singular values are taken.
Curves of different lengths are averaged on one grid of n points: point g holds the normalised cumulative sum at
index g * L / n (linear interpolation, c_0 = 0), so a length-n sequence is read at its exact indices 1..n.
"""
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from linformer_pt.analysis.attention_maps import full_probs, real_lengths, reduce_layers
from linformer_pt.analysis.output import rounded, table

ENERGIES = (0.9, 0.95, 0.99)  # shares of the singular value sum that a suggested k keeps
INDEX_NORMALIZATION = (
    "sequences of real length L < n are read at index g * L / n for grid point g = 1..n (linear interpolation "
    "of the cumulative sum, 0 at index 0): index k on the grid stands for the first k/n of every sequence's spectrum"
)


def default_k(n: int) -> int:
    """The paper's k = 128, or n/4 when that is shorter."""
    return max(1, min(128, n // 4))


def spectra_by_length(p: Tensor, lengths: Tensor) -> Iterator[Tuple[int, Tensor]]:
    """(L, singular values (sequences, heads, L) in descending order) for each real length L in the batch.

    P (B, heads, n, n) is cut to its L x L real block; sequences of one length share a batched SVD.
    """
    for length in torch.unique(lengths).tolist():
        rows = (lengths == length).nonzero().squeeze(1)
        yield length, torch.linalg.svdvals(p[rows][..., :length, :length])


def cumulative(s: Tensor) -> Tensor:
    """Normalised cumulative sums (s_1 + ... + s_i) / sum(s) along the last axis, in float64."""
    c = s.double().cumsum(-1)
    return c / c[..., -1:].clamp_min(torch.finfo(torch.float64).tiny)


def on_grid(c: Tensor, points: int) -> Tensor:
    """Cumulative curves c (..., L) read at indices g * L / points, g = 1..points (see the module docstring)."""
    length = c.shape[-1]
    padded = F.pad(c, (1, 0))  # c_0 = 0: no singular value kept
    position = torch.arange(1, points + 1, dtype=torch.float64, device=c.device) * length / points
    low = position.floor().long().clamp(max=length - 1)
    frac = position - low
    return padded[..., low] * (1 - frac) + padded[..., low + 1] * frac


def smallest_index(curve: Tensor, energy: float) -> int:
    """The smallest index i (1-based) at which the cumulative curve reaches `energy`."""
    return int((curve >= energy).nonzero()[0]) + 1


class SpectrumAccumulator:
    """Per layer and head, the sum over sequences of the gridded cumulative curves (means come at the end)."""

    def __init__(self, layers: int, heads: int, points: int) -> None:
        self.points = points
        self.sums = torch.zeros(layers, heads, points, dtype=torch.float64)
        self.counts = torch.zeros(layers, dtype=torch.long)

    def add(self, layer: int, p: Tensor, lengths: Tensor) -> None:
        """Add the spectra of one layer's P (B, heads, n, n) for sequences of the given real lengths."""
        for _, s in spectra_by_length(p, lengths):
            self.sums[layer] += on_grid(cumulative(s), self.points).sum(0).cpu()
        self.counts[layer] += len(lengths)

    def summary(self, k: int) -> Dict[str, Any]:
        """Mean curve per layer with its band over heads, the heatmap at index k, and k per layer for each energy."""
        heads = self.sums / self.counts.clamp_min(1)[:, None, None].double()  # (layers, heads, points)
        mean = heads.mean(1)
        k_for = {str(e): [smallest_index(curve, e) for curve in mean] for e in ENERGIES}
        return {
            "n": self.points,
            "index_normalization": INDEX_NORMALIZATION,
            "sequences": int(self.counts[0]),
            "curve_mean": rounded(mean),
            "curve_min": rounded(heads.amin(1)),
            "curve_max": rounded(heads.amax(1)),
            "k": k,
            "at_k": rounded(heads[:, :, k - 1]),
            "k_for_energy": k_for,
            "suggested": {energy: f"model.k={ks}".replace(" ", "") for energy, ks in k_for.items()},
        }


def spectrum_report(
    model: nn.Module,
    batches: Iterable[Tuple[Tensor, Optional[Tensor]]],
    points: int,
    k: int,
    total: Optional[int] = None,
    progress: bool = True,
) -> Dict[str, Any]:
    """Spectra of every layer's full P over (tokens, padding_mask) batches, summarised by SpectrumAccumulator."""
    cfg = model.cfg
    acc = SpectrumAccumulator(cfg.layers, cfg.heads, points)
    model.eval()
    for tokens, padding_mask in tqdm(batches, total=total, desc="spectrum", disable=not progress):
        lengths = real_lengths(padding_mask, *tokens.shape, tokens.device)

        def reduce(layer: int, attn: nn.Module, x: Tensor, mask: Optional[Tensor], _: Any) -> None:
            acc.add(layer, full_probs(attn, x, mask), lengths)

        reduce_layers(model, tokens, padding_mask, reduce)
    return {"attention": cfg.attention, "layers": cfg.layers, "heads": cfg.heads, **acc.summary(k)}


def format_summary(report: Dict[str, Any]) -> str:
    """A short table: per layer, the k keeping each energy and the mean value at the report's k; then model.k lists."""
    energies = list(report["k_for_energy"])
    head = ["layer"] + [f"k@{float(e):.0%}" for e in energies] + [f"cum@k={report['k']}"]
    rows = [head]
    for layer, values in enumerate(report["at_k"]):
        ks = [str(report["k_for_energy"][e][layer]) for e in energies]
        rows.append([str(layer)] + ks + [f"{sum(values) / len(values):.3f}"])
    lines = [f"{float(e):.0%} of the spectrum: {report['suggested'][e]}" for e in energies]
    return "\n".join([table(rows)] + lines)
