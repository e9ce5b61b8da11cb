"""Plot loss, perplexity, learning rate and throughput curves of one or more runs from their metrics.jsonl.

Run: python scripts/plot_metrics.py outputs/2026-.../run_a [more runs or metrics.jsonl files] --out curves.png
"""
import argparse
import json
from pathlib import Path
from typing import Dict, List

PANELS = [("train", "loss", "train loss (nats)"), ("valid", "loss", "valid loss (nats)"),
          ("train", "lr", "learning rate"), ("train", "tokens_per_s", "tokens / s")]  # fmt: skip


def read_metrics(path: Path) -> List[Dict]:
    """Records of a metrics.jsonl file, or of the one inside a run folder."""
    path = path / "metrics.jsonl" if path.is_dir() else path
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def label_of(path: Path) -> str:
    return (path if path.is_dir() else path.parent).name


def plot(runs: Dict[str, List[Dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, (split, key, title) in zip(axes.flat, PANELS):
        for label, records in runs.items():
            points = [(r["update"], r[key]) for r in records if r["split"] == split and key in r]
            if points:
                ax.plot(*zip(*points), marker="o" if split == "valid" else None, markersize=3, label=label)
        ax.set(title=title, xlabel="update")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="run folders or metrics.jsonl files")
    parser.add_argument("--out", type=Path, default=Path("curves.png"))
    args = parser.parse_args()
    missing = [str(p) for p in args.runs if not (p / "metrics.jsonl" if p.is_dir() else p).is_file()]
    if missing:
        parser.error(f"no metrics.jsonl at: {', '.join(missing)}")
    plot({label_of(p): read_metrics(p) for p in args.runs}, args.out)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
