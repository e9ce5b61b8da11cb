"""Plot loss, perplexity, learning rate and throughput curves of one or more runs from their metrics.jsonl.

Run: python scripts/plot_metrics.py outputs/2026-.../run_a [more runs or metrics.jsonl files] --out curves.png
"""
import argparse
from pathlib import Path
from typing import Any, Dict, List

from linformer_pt.sweeps.labels import run_labels
from linformer_pt.sweeps.runs import read_metrics

PANELS = [("train", "loss", "train loss (nats)"), ("valid", "loss", "valid loss (nats)"),
          ("train", "lr", "learning rate"), ("train", "tokens_per_s", "tokens / s")]  # fmt: skip


def load_runs(paths: List[Path]) -> Dict[str, List[Dict]]:
    """{label: metrics records} of run folders or metrics.jsonl files, labelled by the overrides that differ."""
    files = [path / "metrics.jsonl" if path.is_dir() else path for path in paths]
    return {label: read_metrics(file)[0] for label, file in zip(run_labels([f.parent for f in files]), files)}


def plot(runs: Dict[str, List[Dict]], out: Path) -> Any:
    """Draw the PANELS of every run into `out`; returns the matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, (split, key, title) in zip(axes.flat, PANELS):
        for label, records in runs.items():
            points = [(r["update"], r[key]) for r in records if r.get("split") == split and key in r]
            if points:  # a marker on validation points, and on any lone point: a line of one point is invisible
                marker = "o" if split == "valid" or len(points) == 1 else None
                ax.plot(*zip(*points), marker=marker, markersize=3, label=label)
        ax.set(title=title, xlabel="update")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="run folders or metrics.jsonl files")
    parser.add_argument("--out", type=Path, default=Path("curves.png"))
    args = parser.parse_args()
    missing = [str(p) for p in args.runs if not (p / "metrics.jsonl" if p.is_dir() else p).is_file()]
    if missing:
        parser.error(f"no metrics.jsonl at: {', '.join(missing)}")
    plot(load_runs(args.runs), args.out)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
