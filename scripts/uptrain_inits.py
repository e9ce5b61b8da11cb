"""Swap a trained standard-attention encoder to Linformer and uptrain it: which E/F start recovers fastest?

The source is a standard-attention RoBERTa at the sweeps' CPU scale (experiment=sweep_cpu: Gutenberg, 4 x 256,
n = 512): with --hf-source, a transformers folder (scripts/train_hf_roberta.py trains one with transformers itself)
brought in by linformer-import; without it, one trained here by linformer-train and exported. Each variant uptrains
it as a Linformer (k = 64) for the same tokens; a control uptrains it as it is (standard attention: its first
validation is the source's own ppl, and it shows what the extra training alone gives); a from-scratch Linformer
trains on the same batches. Every run is a fixed folder under --work: a rerun skips finished runs.

Run: python scripts/uptrain_inits.py --hf-source runs/hf_roberta --work runs/uptrain --out docs/results/uptrain_inits
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

BIN = Path(sys.executable).parent
VARIANTS = {  # label -> overrides on top of the uptraining run's
    "xavier (the paper's init)": ["model.projection_init=xavier"],
    "average (window means)": ["model.projection_init=average"],
    "average, E/F only for 20 updates, E/F lr x10": ["model.projection_init=average",
                                                     "optimization.projections_only_updates=20",
                                                     "optim.projection_lr_scale=10"],  # fmt: skip
}


def train(folder: Path, overrides: List[str]) -> None:
    command = [str(BIN / "linformer-train"), "experiment=sweep_cpu", "logging.progress_bar=false",
               "logging.tensorboard=false", f"hydra.run.dir={folder}", *overrides]  # fmt: skip
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True)


def curve(folder: Path) -> List[Dict[str, float]]:
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{"update": r["update"], "tokens": r["tokens"], "ppl": r["ppl"]} for r in records if r["split"] == "valid"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/uptrain"))
    parser.add_argument("--out", type=Path, default=Path("docs/results/uptrain_inits"))
    parser.add_argument("--source-updates", type=int, default=300)
    parser.add_argument("--uptrain-updates", type=int, default=60)
    parser.add_argument("--hf-source", type=Path, help="a transformers RobertaForMaskedLM folder to import")
    args = parser.parse_args()
    export = args.work / "source_export"
    if args.hf_source and not export.is_dir():
        subprocess.run([str(BIN / "linformer-import"), str(args.hf_source), str(export)], check=True)
    elif not args.hf_source:
        source = args.work / "source"
        train(source, ["attention=standard", f"optimization.max_update={args.source_updates}"])
        if not export.is_dir():
            subprocess.run([str(BIN / "linformer-export"), str(source), str(export), "--last"], check=True)
    every = max(1, args.uptrain_updates // 6)
    uptrain = [f"optimization.max_update={args.uptrain_updates}", f"optimization.validate_interval_updates={every}",
               "lr_scheduler.warmup_updates=6", "optim.lr=5e-4"]  # fmt: skip
    runs = {"from scratch (Linformer k=64)": (args.work / "scratch", ["attention=k64", *uptrain]),
            "control: source uptrained as it is (standard)": (args.work / "control", [f"checkpoint.init_from={export}",
                                                                                    *uptrain])}  # fmt: skip
    for i, (label, extra) in enumerate(VARIANTS.items()):
        runs[label] = (args.work / f"uptrain{i}", [f"checkpoint.init_from={export}", "model.attention=linformer",
                                                   "model.k=64", *uptrain, *extra])  # fmt: skip
    for folder, overrides in runs.values():
        train(folder, overrides)
    curves = {label: curve(folder) for label, (folder, _) in runs.items()}
    source_ppl = curves["control: source uptrained as it is (standard)"][0]["ppl"]  # update 0: the source itself
    print(f"\nsource (standard attention): valid ppl {source_ppl:.1f}")
    updates = [point["update"] for point in next(iter(curves.values()))]
    print("| run | " + " | ".join(f"upd {u}" for u in updates) + " | final / source |")
    print("|---|" + "---:|" * (len(updates) + 1))
    for label, points in curves.items():
        cells = " | ".join(f"{p['ppl']:.1f}" for p in points)
        print(f"| {label} | {cells} | {points[-1]['ppl'] / source_ppl:.3f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"source_ppl": source_ppl, "curves": curves}, indent=1))
    plot(curves, source_ppl, args.out / "curves.png")


def plot(curves: Dict[str, List[Dict[str, float]]], source_ppl: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for label, points in curves.items():
        ax.plot([p["tokens"] / 1e6 for p in points], [p["ppl"] for p in points], marker="o", label=label)
    ax.axhline(source_ppl, color="black", linestyle="--", label="source (standard attention)")
    ax.set(xlabel="uptraining tokens (M)", ylabel="valid ppl", yscale="log", title="Swap to Linformer k=64, uptrain")
    ax.legend()
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
