"""Scaling of the data pipeline with corpus size: tokenizer training, preprocessing and command-to-first-update.

Corpora of 27 MB, 270 MB and 1 GB are made from the Gutenberg books (copies, each with its own first line).
For each: tokenizer training time, preprocessing time, MB/s and peak RSS (workers=1, and workers=2 with a
byte-identical check), and the wall time of `linformer-train dataset=shards ... optimization.max_update=1`
(start-up, block index, one update, the budgeted final validation). Each measurement runs in a fresh process.

Run: .venv/bin/python scripts/bench_scale.py [--sizes 27 270 1000] [--work /tmp/scale] [--out outputs/bench_scale]
Goals: preprocessing peak RSS and first-update time at 1 GB within 1.5x of 27 MB; MB/s flat.
"""
import argparse
import filecmp
import glob
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

from benchlib import cpu_model, fmt, run_point, write_results  # noqa: E402  (scripts/ is on sys.path)

BOOKS = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "gutenberg" / "*.txt")
VOCAB = 8192
CSV_KEYS = ("mb", "tokenizer_s", "preprocess_s", "preprocess_mb_s", "preprocess_rss_mb", "workers2_mb_s",
            "workers2_identical", "first_update_s", "error")  # fmt: skip


def make_corpus(folder: Path, megabytes: int) -> Path:
    """A folder of Gutenberg copies adding up to about `megabytes` MB, each copy opening with its own line."""
    folder.mkdir(parents=True, exist_ok=True)
    books = sorted(Path(p) for p in glob.glob(BOOKS))
    size, copy = 0, 0
    while size < megabytes * 1e6 * 0.99:
        for book in books:
            target = folder / f"copy{copy:03d}-{book.name}"
            if not target.exists():
                with open(target, "w", encoding="utf-8") as f:
                    f.write(f"Copy {copy} of {book.name}.\n\n" + book.read_text(encoding="utf-8"))
            size += target.stat().st_size
            if size >= megabytes * 1e6 * 0.99:
                break
        copy += 1
    return folder


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(point: Dict) -> Dict:
    """One measurement in this (fresh) process: its time and this process's peak RSS."""
    from linformer_pt.cli.preprocess import preprocess
    from linformer_pt.config import DatasetConfig, PreprocessConfig, TokenizerConfig
    from linformer_pt.data.corpus import file_source
    from linformer_pt.data.sources import expand_paths
    from linformer_pt.data.tokenizer import first_bytes, train_tokenizer

    corpus, work = Path(point["corpus"]), Path(point["work"])
    start = time.perf_counter()
    if point["stage"] == "tokenizer":
        source = file_source(expand_paths([str(corpus)], "corpus"), "text", "strict")
        train_tokenizer(first_bytes(source.documents(), point["max_train_bytes"]), VOCAB).save(point["tokenizer"])
    else:
        data = DatasetConfig(name="text", train_files=[str(corpus)], cache_dir=str(work / "cache"))
        cfg = PreprocessConfig(data, TokenizerConfig(path=point["tokenizer"]), point["output"], workers=point["workers"])
        preprocess(cfg)
    return {"seconds": time.perf_counter() - start, "rss_mb": peak_rss_mb()}


def first_update(shards: Path, run_dir: Path) -> float:
    """Wall seconds of linformer-train from the command to the end of its first (and only) update."""
    command = [str(Path(sys.executable).parent / "linformer-train"), "experiment=smoke", "dataset=shards",
               f"dataset.path={shards}", "optimization.max_update=1", "optimization.validate_at_start=false",
               "logging.tensorboard=false", "logging.progress_bar=false", f"hydra.run.dir={run_dir}"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1])
    return time.perf_counter() - start


def same_bytes(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in (a / "train").iterdir())
    return names == sorted(p.name for p in (b / "train").iterdir()) and all(
        filecmp.cmp(a / "train" / n, b / "train" / n, shallow=False) for n in names
    )


def run_size(megabytes: int, work: Path, max_train_bytes: int) -> Dict:
    corpus = make_corpus(work / f"corpus-{megabytes}", megabytes)
    mb = sum(p.stat().st_size for p in corpus.iterdir()) / 1e6
    base = {"corpus": str(corpus), "work": str(work), "tokenizer": str(work / f"tok-{megabytes}.json")}
    row: Dict = {"mb": round(mb, 1)}
    tok = run_point(__file__, {**base, "stage": "tokenizer", "max_train_bytes": max_train_bytes}, 7200)
    if "error" in tok:
        return {**row, "error": tok["error"]}
    row["tokenizer_s"] = tok["seconds"]
    outputs = {}
    for workers in (1, 2):
        outputs[workers] = work / f"shards-{megabytes}-w{workers}"
        shutil.rmtree(outputs[workers], ignore_errors=True)
        prep = run_point(__file__, {**base, "stage": "preprocess", "workers": workers,
                                    "output": str(outputs[workers])}, 7200)  # fmt: skip
        if "error" in prep:
            return {**row, "error": prep["error"]}
        if workers == 1:
            row.update(preprocess_s=prep["seconds"], preprocess_mb_s=mb / prep["seconds"], preprocess_rss_mb=prep["rss_mb"])
        else:
            row.update(workers2_mb_s=mb / prep["seconds"], workers2_identical=same_bytes(outputs[1], outputs[2]))
    shutil.rmtree(outputs[2], ignore_errors=True)
    row["first_update_s"] = first_update(outputs[1], work / f"run-{megabytes}")
    return row


def plot(rows: List[Dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, label in zip(axes, ("preprocess_rss_mb", "preprocess_mb_s", "first_update_s"),
                              ("preprocessing peak RSS (MB)", "preprocessing MB/s", "command to first update (s)")):
        ax.plot([r["mb"] for r in ok], [r[key] for r in ok], marker="o")
        ax.set_xscale("log")
        ax.set_xlabel("corpus (MB)")
        ax.set_title(label)
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(out / "scale.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--point", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[27, 270, 1000], help="corpus sizes in MB")
    parser.add_argument("--max-train-bytes", type=int, default=0, help="tokenizer.max_train_bytes (0: all)")
    parser.add_argument("--work", type=Path, default=Path("outputs/bench_scale/work"), help="corpora and shards")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_scale"))
    args = parser.parse_args()
    if args.point:
        print(json.dumps(measure(json.loads(args.point))))
        return
    if not glob.glob(BOOKS):
        parser.error(f"no Gutenberg books at {BOOKS}")
    rows = []
    for megabytes in args.sizes:
        try:
            rows.append(run_size(megabytes, args.work, args.max_train_bytes))
        except RuntimeError as err:
            rows.append({"mb": megabytes, "error": str(err)})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\ncpu: {cpu_model()}\n")
    print("| corpus MB | tokenizer s | preprocess s | MB/s | peak RSS MB | MB/s workers=2 (identical) | first update s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mb']} | {fmt(r.get('tokenizer_s'), '.1f')} | {fmt(r.get('preprocess_s'), '.1f')} | "
              f"{fmt(r.get('preprocess_mb_s'), '.2f')} | {fmt(r.get('preprocess_rss_mb'), '.0f')} | "
              f"{fmt(r.get('workers2_mb_s'), '.2f')} ({r.get('workers2_identical', '—')}) | "
              f"{fmt(r.get('first_update_s'), '.1f')} |" + (f" error: {r['error']}" if "error" in r else ""))  # fmt: skip
    write_results(rows, {"cpu": cpu_model()}, vars(args) | {"work": str(args.work), "out": str(args.out)}, args.out, CSV_KEYS)
    plot(rows, args.out)
    print(f"results: {args.out}/results.json, plot: {args.out}/scale.png")


if __name__ == "__main__":
    main()
