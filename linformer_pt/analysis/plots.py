"""Figures of the analysis reports (PNG): the spectrum (Linformer's Figure 1) and the projections.

matplotlib is optional (`pip install 'linformer-pt[plot]'`): require_matplotlib() says so before anything is written.
"""
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from linformer_pt.errors import UserError

MAX_ANNOTATED = 16  # heatmaps with at most this many rows and columns get their values written in the cells
MAX_LABELLED = 48  # similarity maps with more matrices than this go without tick labels (they would overlap)


def require_matplotlib() -> None:
    """A one-line error when matplotlib is missing, raised before the analysis writes anything."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("the figures need matplotlib: pip install 'linformer-pt[plot]'") from None


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _heatmap(fig: Any, ax: Any, values: List[List[Optional[float]]], title: str, **kwargs: Any) -> None:
    data = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    image = ax.imshow(data, aspect="auto", origin="lower", cmap="viridis", **kwargs)
    fig.colorbar(image, ax=ax)
    ax.set_xticks(np.arange(data.shape[1]))
    ax.set_yticks(np.arange(data.shape[0]))
    ax.set_title(title)
    if max(data.shape) <= MAX_ANNOTATED:
        for (row, col), value in np.ndenumerate(data):
            if not np.isnan(value):
                ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7, color="w")


def plot_spectrum(report: Dict[str, Any], path: Path) -> None:
    """Left: normalised cumulative singular values per layer (mean, band min..max over heads); right: at index k."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    index = np.arange(1, report["n"] + 1)
    for layer, (mean, low, high) in enumerate(zip(report["curve_mean"], report["curve_min"], report["curve_max"])):
        (line,) = left.plot(index, mean, label=f"layer {layer}")
        left.fill_between(index, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    left.axvline(report["k"], color="grey", linestyle="--", linewidth=1)
    left.set(xlabel=f"singular value index (sequences rescaled to n = {report['n']})",
             ylabel="normalized cumulative singular value", ylim=(0, 1.02),
             title=f"{report['attention']} attention, {report['sequences']} sequences")  # fmt: skip
    left.legend(fontsize=7, ncol=2)
    left.grid(alpha=0.3)
    _heatmap(fig, right, report["at_k"], f"normalized cumulative value at k = {report['k']}", vmin=0, vmax=1)
    right.set(xlabel="head", ylabel="layer")
    _save(fig, plt, path)


def plot_projections(report: Dict[str, Any], path: Path) -> None:
    """Singular values of each E/F, attention error per layer, and the cosine and row-space similarity maps."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(13, 10))
    spectra, errors, cosine, overlap = axes.flat
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(report["layers"], 1)))
    for m in report["matrices"]:
        s = np.array(m["singular_values"])
        color = "black" if m["layer"] is None else colors[m["layer"]]
        spectra.plot(np.arange(1, len(s) + 1), s / s[0], color=color, alpha=0.6, linewidth=1)
    spectra.set(xlabel="index", ylabel="singular value / largest", yscale="log",
                title=f"{report['projection']} projections ({report['sharing']}): darker = earlier layer")  # fmt: skip
    if not report["matrices"]:
        spectra.text(0.5, 0.5, report["note"], ha="center", va="center", wrap=True, transform=spectra.transAxes)
    layers = np.arange(report["layers"])
    for offset, key, label in ((-0.2, "relative_error", "as is"), (0.2, "rescaled_error", "best scalar c")):
        errors.bar(layers + offset, report[key], width=0.4, alpha=0.6, label=f"{label}: mean over heads")
        for values in np.array(report[f"{key}_heads"]).T:
            errors.scatter(layers + offset, values, s=8, color="black")
    errors.set(xlabel="layer", ylabel="||c P_lin V' - P V||_F / ||P V||_F", xticks=layers,
               title="Linformer vs full softmax attention (same Q, K, V; dots: heads)")  # fmt: skip
    errors.legend(fontsize=8)
    similarity = report["similarity"]
    for ax, key, title in ((cosine, "cosine", "cosine of flattened matrices"),
                           (overlap, "row_space_overlap", "row-space overlap (mean cos² of principal angles)")):
        names = similarity["names"]
        if not names:
            ax.set_axis_off()
            continue
        _heatmap(fig, ax, similarity[key], title, vmin=-1 if key == "cosine" else 0, vmax=1)
        if len(names) <= MAX_LABELLED:
            ax.set_xticks(np.arange(len(names)), names, rotation=90, fontsize=6)
            ax.set_yticks(np.arange(len(names)), names, fontsize=6)
    _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
