"""Benchmark a fine-tuning epoch on long IMDB reviews (n = 2048): fixed batches vs token-budget batches (max_tokens).
Run: .venv/bin/python scripts/bench_token_budget.py [--reviews 256 --batch-size 8 --only linformer:fixed ...] (--help)

Fixed batches hold --batch-size reviews in a seeded random order, padded to the longest of each; token-budget
batches sort the reviews by length and cut them by dataset.max_tokens, chosen as the smallest budget that gives no
more batches than the fixed ones (so both see the same reviews in about the same number of updates, the same mean
items per batch). Each point trains one epoch through the project's Trainer.train_step (forward, backward, AdamW)
in a fresh process; the table gives seconds per epoch and the speed-up. --only measures some points and merges
them into the results file, so a long run can be split into several invocations.
"""
import argparse
import csv
import json
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from benchlib import cpu_model, fmt, run_point, write_results  # noqa: E402  (scripts/ is on sys.path)

REPO = Path(__file__).resolve().parents[1]
IMDB = REPO.parent / "shared" / "data" / "imdb-long" / "train.tsv"
POINTS = [f"{attention}:{batching}" for attention in ("linformer", "standard") for batching in ("fixed", "budget")]
CSV_KEYS = ("attention", "batching", "max_tokens", "batches", "mean_items", "real_tokens", "padded_tokens", "padding_pct",
            "seconds_per_epoch", "speedup", "error")  # fmt: skip


def prepare(args: argparse.Namespace) -> Dict[str, str]:
    """A seeded subset of --reviews long reviews as TSV and a BPE tokenizer trained on it (kept for reruns)."""
    work = args.out / "work"
    subset, tokenizer_path = work / f"train_{args.reviews}.tsv", work / f"tokenizer_{args.reviews}.json"
    if not (subset.exists() and tokenizer_path.exists()):
        from linformer_pt.data.tokenizer import train_tokenizer

        with open(IMDB, encoding="utf-8", newline="") as f:
            header, *rows = f.read().split("\n")
        rows = [r for r in rows if r]
        picked = np.sort(np.random.default_rng(0).choice(len(rows), args.reviews, replace=False))
        work.mkdir(parents=True, exist_ok=True)
        subset.write_text("\n".join([header] + [rows[i] for i in picked]) + "\n", encoding="utf-8")
        texts = [next(csv.reader([rows[i]], delimiter="\t"))[0] for i in picked]
        train_tokenizer(texts, args.vocab).save(str(tokenizer_path))
    return {"train": str(subset), "tokenizer": str(tokenizer_path)}


def overrides(point: Dict) -> List[str]:
    n = point["n"]
    return [
        "task=sentence_prediction", "dataset=text", f"dataset.train_files=[{point['train']}]",
        f"dataset.valid_files=[{point['train']}]", f"tokenizer.path={point['tokenizer']}", "task.text_column=text",
        "task.label_column=label", f"task.tokens_per_sample={n}", "task.truncation=head_tail",
        "model.layers=4", "model.embed_dim=256", "model.ffn_embed_dim=1024", "model.heads=4", f"model.max_positions={n}",
        f"model.k={point['k']}", f"model.attention={point['attention']}", f"dataset.batch_size={point['batch_size']}",
        f"dataset.max_tokens={point['max_tokens']}", "common.device=cpu", "logging.progress_bar=false",
        "logging.tensorboard=false", "dataset.max_valid_tokens=1",
    ]  # fmt: skip


def build_trainer(point: Dict):
    """The project's Trainer for one point, built as linformer-train builds it (writes nothing until fit())."""
    from hydra import compose, initialize_config_module

    import linformer_pt.models  # noqa: F401  (registers models)
    import linformer_pt.tasks  # noqa: F401  (registers tasks)
    import linformer_pt.training  # noqa: F401  (registers optimizers and schedules)
    from linformer_pt.cli.train import build_model
    from linformer_pt.config import load_config
    from linformer_pt.registry import TASKS
    from linformer_pt.training.trainer import Trainer

    with initialize_config_module(config_module="linformer_pt.configs", version_base="1.3"):
        cfg = load_config(compose("train", overrides=overrides(point)))
    torch.manual_seed(cfg.common.seed)
    task = TASKS.get(cfg.task.name).cls.setup(cfg)
    cfg, model = build_model(cfg, task)
    return Trainer(cfg, task, model, Path(point["out"]))


def measure(point: Dict) -> Dict:
    """In a child process of its own: one warm-up update, then one timed epoch of updates."""
    trainer = build_trainer(point)
    it, lengths = trainer.train_iterator, np.array([len(ids) for ids in trainer.task.datasets["train"].ids])
    steps = it._steps(1)  # the epoch's updates as item indices (both iterators share this layout)
    batches = [np.concatenate([np.asarray(b) for b in step]) if isinstance(step, list) else step for step in steps]
    padded = sum(len(b) * int(lengths[b].max()) for b in batches)
    warm = next(iter(trainer.task.batch_iterator("train").forever()))
    trainer.train_step(warm)
    updates = trainer.train_iterator.forever()
    start = time.perf_counter()
    for _ in range(len(steps)):
        trainer.train_step(next(updates))
    trainer._collect()  # the last update's results are read: its work is done
    seconds = time.perf_counter() - start
    return {"batches": len(steps), "mean_items": float(np.mean([len(b) for b in batches])),
            "real_tokens": int(sum(lengths[b].sum() for b in batches)), "padded_tokens": padded,
            "padding_pct": 100.0 * (1 - sum(lengths[b].sum() for b in batches) / padded),
            "seconds_per_epoch": seconds, "items": sorted(int(i) for b in batches for i in b)}  # fmt: skip


def matching_budget(lengths: np.ndarray, batches: int) -> int:
    """The smallest max_tokens that cuts the sorted lengths into at most `batches` batches (binary search: fewer
    batches for a larger budget)."""
    from linformer_pt.data.buckets import budget_bounds

    ordered = np.sort(lengths)
    low, high = int(ordered[-1]), int(ordered.sum())
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if len(budget_bounds(ordered, middle)) - 1 <= batches else (middle + 1, high)
    return low


def example_lengths(common: Dict) -> np.ndarray:
    """Token lengths of the subset as the task encodes them (truncation included)."""
    trainer = build_trainer({**common, "attention": "linformer", "max_tokens": 0})
    return np.array([len(ids) for ids in trainer.task.datasets["train"].ids])


def print_table(rows: List[Dict], settings: Dict) -> None:
    print(f"\n### one fine-tuning epoch (forward + backward + AdamW), "
          f"{', '.join(f'{k}={v}' for k, v in settings.items())}\n")  # fmt: skip
    print("| attention | batching | max_tokens | batches | mean items | padding % | s / epoch | speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = [fmt(r.get("max_tokens") or None, ",d"), fmt(r.get("batches"), "d"), fmt(r.get("mean_items"), ".1f"),
                 fmt(r.get("padding_pct"), ".1f"), fmt(r.get("seconds_per_epoch"), ".1f"), fmt(r.get("speedup"), ".2f")]
        print(f"| {r['attention']} | {r['batching']} | " + " | ".join(cells) + " |")
    for r in (r for r in rows if r.get("error")):
        print(f"missing: {r['attention']} {r['batching']}: {r['error']}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reviews", type=int, default=256, help="training reviews (a seeded subset of imdb-long)")
    parser.add_argument("--n", type=int, default=2048, help="tokens_per_sample = max_positions")
    parser.add_argument("--k", type=int, default=64, help="Linformer projected length")
    parser.add_argument("--batch-size", type=int, default=8, help="reviews per fixed batch")
    parser.add_argument("--vocab", type=int, default=8192, help="tokenizer vocabulary size")
    parser.add_argument("--only", nargs="+", choices=POINTS, default=POINTS, help="points to measure (merged)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per point before it counts as missing")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_token_budget"))
    parser.add_argument("--results", type=Path, help="default docs/results/token_budget/reviews<--reviews>")
    parser.add_argument("--point", help=argparse.SUPPRESS)  # internal: measure one point (JSON) in this process
    args = parser.parse_args()
    args.results = args.results or Path(f"docs/results/token_budget/reviews{args.reviews}")  # one folder per subset
    return args


def main() -> None:
    args = parse_args()
    if args.point:
        print(json.dumps(measure(json.loads(args.point))))
        return
    common = {"n": args.n, "k": args.k, "batch_size": args.batch_size, "out": str(args.out / "run"), **prepare(args)}
    budget = matching_budget(example_lengths(common), -(-args.reviews // args.batch_size))
    old = args.results / "results.json"
    rows = {(r["attention"], r["batching"]): r for r in (json.loads(old.read_text())["results"] if old.exists() else [])}
    for name in args.only:
        attention, batching = name.split(":")
        point = {**common, "attention": attention, "max_tokens": budget if batching == "budget" else 0}
        print(f"measuring {name} (dataset.max_tokens={point['max_tokens']}) ...", flush=True)
        rows[attention, batching] = {"attention": attention, "batching": batching, "max_tokens": point["max_tokens"],
                                     **run_point(__file__, point, args.timeout)}  # fmt: skip
    ordered = [rows[key] for key in sorted(rows, key=lambda key: POINTS.index(":".join(key)))]
    for row in ordered:
        fixed = rows.get((row["attention"], "fixed"), {})
        if row.get("seconds_per_epoch") and fixed.get("seconds_per_epoch"):
            row["speedup"] = fixed["seconds_per_epoch"] / row["seconds_per_epoch"]
        if "items" in row and "items" in fixed:
            assert row["items"] == fixed["items"], f"{row['attention']}: the two batchings saw different reviews"
    settings = {"reviews": args.reviews, "n": args.n, "k": args.k, "batch_size": args.batch_size, "layers": 4,
                "embed_dim": 256, "heads": 4, "ffn_dim": 1024, "vocab": args.vocab, "precision": "fp32"}  # fmt: skip
    print_table(ordered, settings)
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_model()}
    write_results(ordered, env, settings, args.results, CSV_KEYS)
    print(f"results: {args.results / 'results.json'}, {args.results / 'results.csv'}")


if __name__ == "__main__":
    main()
