"""Each validation set's final ppl against a source's share of a mixture, over seeds: a table and a plot.

Run after training the mixture at several weights and seeds (experiment=mixture_cpu), e.g.
    for w in 0.05 0.25 0.5; do for s in 1 2 3; do
      linformer-train experiment=mixture_cpu dataset.sources.0.weight=$(python -c "print(1-$w)") \\
        dataset.sources.1.weight=$w common.seed=$s hydra.run.dir=runs/mixture/wiki${w}_seed$s; done; done
    python scripts/mixture_result.py runs/mixture --source wiki --out docs/results/mixture
It prints a markdown table (per set: mean and min-max over seeds) and writes results.json and
ppl_vs_share.png under --out.
"""
import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List

from linformer_pt.sweeps.plots import pyplot


def collect(folder: Path, source: str) -> Dict[float, List[Dict[str, Any]]]:
    """{share of `source`: the finished runs' summaries} of the run folders under `folder`."""
    runs: Dict[float, List[Dict[str, Any]]] = defaultdict(list)
    for path in sorted(folder.glob("*/summary.json")):
        summary = json.loads(path.read_text())
        if summary.get("status") != "finished":
            continue
        sources = summary["config"]["dataset"]["sources"]
        weights = {s["name"]: s["weight"] for s in sources}
        runs[round(weights[source] / sum(weights.values()), 4)].append(summary)
    return dict(sorted(runs.items()))


def table(runs: Dict[float, List[Dict[str, Any]]], sets: List[str]) -> List[Dict[str, Any]]:
    rows = []
    for share, group in runs.items():
        row: Dict[str, Any] = {"share": share, "seeds": len(group)}
        for name in sets:
            ppls = [s["final_valid"][f"{name}/ppl"] for s in group]
            row[name] = {"mean": sum(ppls) / len(ppls), "min": min(ppls), "max": max(ppls), "runs": ppls}
        rows.append(row)
    return rows


def markdown(rows: List[Dict[str, Any]], sets: List[str], source: str) -> str:
    head = f"| {source} share | seeds | " + " | ".join(f"{n} ppl: mean (min-max)" for n in sets) + " |"
    lines = [head, "|" + " ---: |" * (2 + len(sets))]
    for row in rows:
        cells = [f"{row['share']:.0%}", str(row["seeds"])]
        for name in sets:
            v = row[name]
            cells.append(f"{v['mean']:.1f} ({v['min']:.1f}-{v['max']:.1f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: List[Dict[str, Any]], sets: List[str], source: str, out: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4))
    for ax, name in zip(axes if len(sets) > 1 else [axes], sets):
        for row in rows:
            ax.scatter([row["share"]] * len(row[name]["runs"]), row[name]["runs"], color="grey", s=12)
        ax.plot([r["share"] for r in rows], [r[name]["mean"] for r in rows], marker="o")
        ax.set(title=f"valid set {name}", xlabel=f"{source} share of the sequences drawn", ylabel="final ppl")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a folder of run folders (one per weight and seed)")
    parser.add_argument("--source", required=True, help="the source whose share varies (its name in dataset.sources)")
    parser.add_argument("--out", type=Path, default=Path("docs/results/mixture"))
    args = parser.parse_args()
    runs = collect(args.folder, args.source)
    if not runs:
        parser.error(f"no finished run under {args.folder}")
    sets = sorted({key[: -len("/ppl")] for group in runs.values() for s in group for key in s["final_valid"]
                   if key.endswith("/ppl")})  # fmt: skip
    rows = table(runs, sets)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"source": args.source, "rows": rows}, indent=1))
    plot(rows, sets, args.source, args.out / "ppl_vs_share.png")
    print(markdown(rows, sets, args.source))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'ppl_vs_share.png'}")


if __name__ == "__main__":
    main()
