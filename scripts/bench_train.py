"""Benchmark tokens/s of a full CPU training step (fwd, bwd, clip, AdamW): Linformer vs standard attention vs HF RoBERTa.
Run: .venv/bin/python scripts/bench_train.py [--n 256 512 --precision fp32 bf16 --steps 8 --threads 4 --overhead ...] (--help)
"""
import argparse
import importlib.metadata
import importlib.util
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from hydra import compose, initialize_config_module
from tqdm import tqdm

import linformer_pt.models  # noqa: F401  (registers models)
import linformer_pt.tasks  # noqa: F401  (registers tasks)
import linformer_pt.training  # noqa: F401  (registers optimizers and schedules)
from linformer_pt.config import TrainConfig, load_config
from linformer_pt.registry import MODELS, TASKS
from linformer_pt.training.trainer import Trainer
from benchlib import cpu_model, fmt, run_point, write_results  # noqa: E402  (scripts/ is on sys.path)

VARIANTS = ("linformer", "standard", "transformers")
OVERHEAD_RUNS = ("trainer", "bare", "bare-again")  # bare-again: an A/A, what noise alone gives
PRECISIONS = ("fp32", "bf16")
WARMUP_STEPS = 2
RESULT_KEYS = ("tokens_per_s", "step_ms", "data_share", "error", "bare_ms", "overhead", "overhead_iqr", "aa", "aa_iqr")
CSV_KEYS = ("precision", "n", "batch", "variant", "tokens_per_s", "step_ms", "data_share", "vs_standard",
            "vs_transformers", "error")  # fmt: skip
Step = Callable[[Dict[str, torch.Tensor]], None]


def compose_train_config(point: Dict) -> TrainConfig:
    """The project's TrainConfig for one point, composed as linformer-train (and tests/conftest.py) composes it."""
    # The transformers point only borrows the task (data) from the project, so its attention choice is moot.
    attention = {"transformers": "standard", "overhead": "linformer"}.get(point["variant"], point["variant"])
    n = point["n"]
    overrides = [
        "model.layers=4", "model.embed_dim=256", "model.ffn_embed_dim=1024", "model.heads=4",
        f"model.max_positions={n}", f"model.k={point['k']}", f"model.attention={attention}", "model.dropout=0.1",
        f"task.tokens_per_sample={n}", "task.sample_break_mode=none", f"dataset.batch_size={point['batch']}",
        f"tokenizer.vocab_size={point['vocab']}", f"trainer.precision={point['precision']}", "common.device=cpu",
        "logging.progress_bar=false", "logging.tensorboard=false", f"dataset.cache_dir={point['cache_dir']}",
    ]  # fmt: skip
    with initialize_config_module(config_module="linformer_pt.configs", version_base="1.3"):
        return load_config(compose("train", overrides=overrides))


def project_step(cfg: TrainConfig, task: Any, output_dir: Path) -> Tuple[Step, Iterator]:
    """The project's own Trainer.train_step on one micro-batch, fed by the trainer's own iterator."""
    torch.manual_seed(cfg.common.seed)
    model = MODELS.get(cfg.model.name).cls.build(cfg.model, task)
    trainer = Trainer(cfg, task, model, output_dir)  # writes nothing until fit()
    return (lambda batch: trainer.train_step([batch])), (group[0] for group in trainer.train_iterator.forever())


def transformers_step(cfg: TrainConfig, task: Any, precision: str) -> Tuple[Step, Iterator]:
    """RobertaForMaskedLM of the same size, trained the usual way on the project's very batches."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    m, o = cfg.model, cfg.optim
    config = RobertaConfig(
        vocab_size=task.vocab_size, hidden_size=m.embed_dim, num_hidden_layers=m.layers, num_attention_heads=m.heads,
        intermediate_size=m.ffn_embed_dim, hidden_dropout_prob=m.dropout, attention_probs_dropout_prob=m.attention_dropout,
        # RoBERTa numbers positions from pad_token_id + 1, so n tokens need n + 2 position embeddings.
        max_position_embeddings=m.max_positions + 2, pad_token_id=task.pad_id,
    )  # fmt: skip
    torch.manual_seed(cfg.common.seed)
    model = RobertaForMaskedLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)

    def step(batch: Dict[str, torch.Tensor]) -> None:
        tokens = batch["tokens"]
        labels = torch.full_like(tokens, -100)  # -100: not a masked position, ignored by the loss
        labels[batch["masked_positions"]] = batch["targets"]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=tokens, attention_mask=(~batch["padding_mask"]).long(), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optimization.clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, (group[0] for group in task.batch_iterator("train").forever())


def time_steps(step: Step, batches: Iterator, steps: int) -> Dict:
    """Data-loading and compute time of `steps` steps after the warm-up; tokens/s counts non-padding tokens."""
    data_s = compute_s = tokens = 0.0
    for i in range(WARMUP_STEPS + steps):
        start = time.perf_counter()
        batch = next(batches)
        loaded = time.perf_counter()
        step(batch)
        if i >= WARMUP_STEPS:
            data_s, compute_s = data_s + loaded - start, compute_s + time.perf_counter() - loaded
            tokens += float((~batch["padding_mask"]).sum())
    total = data_s + compute_s
    return {"tokens_per_s": tokens / total, "step_ms": 1e3 * total / steps, "data_share": data_s / total}


def overhead(cfg: TrainConfig, task: Any, output_dir: Path, reps: int) -> Dict:
    """Framework overhead: Trainer.train_step against a bare forward/backward/clip/AdamW/zero_grad loop over the
    same model, optimizer and batches, interleaved step by step in an order rotated per repetition. A second bare
    run (an A/A) measures the noise; the 25-75% spread of per-repetition ratios is reported with the medians."""
    from profile_step import bare_step  # scripts/ is on sys.path

    torch.manual_seed(cfg.common.seed)
    model = MODELS.get(cfg.model.name).cls.build(cfg.model, task)
    trainer = Trainer(cfg, task, model, output_dir)
    bare = bare_step(trainer)
    runs = {"trainer": lambda batch: trainer.train_step([batch]), "bare": bare, "bare-again": bare}
    stream = (group[0] for group in trainer.train_iterator.forever())
    batches = [next(stream) for _ in range(4)]
    ms: Dict[str, List[float]] = {name: [] for name in OVERHEAD_RUNS}
    for rep in range(WARMUP_STEPS + reps):
        shift = rep % len(OVERHEAD_RUNS)
        for name in OVERHEAD_RUNS[shift:] + OVERHEAD_RUNS[:shift]:
            start = time.perf_counter()
            runs[name](batches[rep % len(batches)])
            if rep >= WARMUP_STEPS:
                ms[name].append(1e3 * (time.perf_counter() - start))
    med = {name: statistics.median(values) for name, values in ms.items()}

    def spread(name: str) -> List[float]:
        quartiles = statistics.quantiles([a / b - 1 for a, b in zip(ms[name], ms["bare"])], n=4)
        return [quartiles[0], quartiles[2]]

    tokens = float((~batches[0]["padding_mask"]).sum())
    return {"tokens_per_s": 1e3 * tokens / med["trainer"], "step_ms": med["trainer"], "data_share": None,
            "bare_ms": med["bare"], "overhead": med["trainer"] / med["bare"] - 1, "overhead_iqr": spread("trainer"),
            "aa": med["bare-again"] / med["bare"] - 1, "aa_iqr": spread("bare-again")}  # fmt: skip


def measure(point: Dict) -> Dict:
    """In a child process of its own: one (n, precision, variant) point."""
    if point["threads"]:
        torch.set_num_threads(point["threads"])
    cfg = compose_train_config(point)
    task = TASKS.get(cfg.task.name).cls.setup(cfg)
    if point["variant"] == "overhead":
        return overhead(cfg, task, Path(point["out"]), point["steps"])
    if point["variant"] == "transformers":
        step, batches = transformers_step(cfg, task, point["precision"])
    else:
        step, batches = project_step(cfg, task, Path(point["out"]))
    return time_steps(step, batches, point["steps"])


def make_points(args: argparse.Namespace, variants: List[str]) -> List[Dict]:
    # All variants of one (precision, n) run back to back, so the machine's state is alike across their ratios.
    common = {"k": args.k, "vocab": args.vocab, "steps": args.steps, "threads": args.threads}
    common.update(cache_dir=str(args.cache_dir), out=str(args.out))
    return [{"precision": p, "n": n, "batch": args.tokens_per_batch // n, "variant": v, **common}
            for p in args.precision for n in sorted(args.n) for v in variants]  # fmt: skip


def collect(points: List[Dict], timeout: float) -> List[Dict]:
    rows = []
    progress = tqdm(points, unit="point")
    for point in progress:
        progress.set_postfix_str(f"{point['precision']} n={point['n']} {point['variant']}")
        row = {key: point[key] for key in ("precision", "n", "batch", "variant")}
        rows.append({**row, **dict.fromkeys(RESULT_KEYS), **run_point(__file__, point, timeout)})
    return rows


def add_ratios(rows: List[Dict]) -> None:
    speed = {(r["precision"], r["n"], r["variant"]): r["tokens_per_s"] for r in rows}
    for row in rows:
        for reference in ("standard", "transformers"):
            base = speed.get((row["precision"], row["n"], reference))
            row[f"vs_{reference}"] = row["tokens_per_s"] / base if row["tokens_per_s"] and base else None


def environment(threads: Optional[int]) -> Dict:
    env = {"torch": torch.__version__, "threads": threads or torch.get_num_threads(), "cpu": cpu_model()}
    if importlib.util.find_spec("transformers"):
        env["transformers"] = importlib.metadata.version("transformers")
    return env


def print_tables(rows: List[Dict], settings: str) -> None:
    overhead_rows = [r for r in rows if r["variant"] == "overhead"]
    rows = [r for r in rows if r["variant"] != "overhead"]
    for precision in dict.fromkeys(r["precision"] for r in rows):
        print(f"\n### {precision}: full training step, {settings}\n")
        print("| n | batch | variant | tokens/s | step ms | data-loader % | vs standard | vs transformers |")
        print("|---:|---:|---|---:|---:|---:|---:|---:|")
        for r in (r for r in rows if r["precision"] == precision):
            share = None if r["data_share"] is None else 100 * r["data_share"]
            cells = [fmt(r["tokens_per_s"], ",.0f"), fmt(r["step_ms"], ".0f"), fmt(share, ".1f")]
            cells += [fmt(r["vs_standard"], ".2f"), fmt(r["vs_transformers"], ".2f")]
            print(f"| {r['n']} | {r['batch']} | {r['variant']} | " + " | ".join(cells) + " |")
    if overhead_rows:
        print("\n### Framework overhead: Trainer.train_step vs a bare loop (Linformer), interleaved, medians\n")
        print("| precision | n | trainer ms | bare ms | overhead | its 25-75% | A/A (bare vs bare) | its 25-75% |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in overhead_rows:
            if r["error"]:
                continue
            iqr = ["{:+.1%} to {:+.1%}".format(*r[key]) for key in ("overhead_iqr", "aa_iqr")]
            print(f"| {r['precision']} | {r['n']} | {r['step_ms']:.0f} | {r['bare_ms']:.0f} | {r['overhead']:+.1%} | "
                  f"{iqr[0]} | {r['aa']:+.1%} | {iqr[1]} |")  # fmt: skip
    for r in (r for r in rows + overhead_rows if r["error"]):
        print(f"missing: {r['precision']} n={r['n']} {r['variant']}: {r['error']}")


def plot(rows: List[Dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed: the figure only goes to a file
    import matplotlib.pyplot as plt

    precisions = list(dict.fromkeys(r["precision"] for r in rows))
    fig, axes = plt.subplots(1, len(precisions), figsize=(6 * len(precisions), 4.5), squeeze=False)
    for ax, precision in zip(axes[0], precisions):
        for variant in dict.fromkeys(r["variant"] for r in rows if r["variant"] != "overhead"):
            points = [(r["n"], r["tokens_per_s"]) for r in rows
                      if r["precision"] == precision and r["variant"] == variant and r["tokens_per_s"]]  # fmt: skip
            if points:
                ax.plot(*zip(*points), marker="o", label=variant)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="sequence length n", ylabel="tokens/s (full training step)", title=precision)
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[256, 512, 1024, 2048], help="sequence lengths")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--k", type=int, default=64, help="Linformer projected length")
    parser.add_argument("--tokens-per-batch", type=int, default=8192, help="batch = this // n sequences")
    parser.add_argument("--vocab", type=int, default=8192, help="tokenizer vocabulary size")
    parser.add_argument("--steps", type=int, default=8, help=f"timed steps per point, after {WARMUP_STEPS} warm-up")
    parser.add_argument("--threads", type=int, help="torch CPU threads per point (default: torch's choice)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per point before it counts as missing")
    parser.add_argument("--cache-dir", type=Path, default=Path("data/cache"), help="corpus/tokenizer cache")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_train"))
    parser.add_argument("--overhead", action="store_true",
                        help="also time Trainer.train_step against a bare loop (framework overhead, with an A/A)")
    parser.add_argument("--point", help=argparse.SUPPRESS)  # internal: measure one point (JSON) in this process
    args = parser.parse_args()
    if args.point is None and max(args.n) > args.tokens_per_batch:
        parser.error(f"--n {max(args.n)} exceeds --tokens-per-batch {args.tokens_per_batch}: a batch would be empty")
    return args


def main() -> None:
    args = parse_args()
    if args.point:
        print(json.dumps(measure(json.loads(args.point))))
        return
    variants = list(VARIANTS) + (["overhead"] if args.overhead else [])
    if not importlib.util.find_spec("transformers"):
        print("transformers is not installed: no RobertaForMaskedLM rows (pip install transformers to include it)")
        variants.remove("transformers")
    env = environment(args.threads)
    print("environment: " + ", ".join(f"{key} {value}" for key, value in env.items()))
    rows = collect(make_points(args, variants), args.timeout)
    add_ratios(rows)
    settings = {"layers": 4, "embed_dim": 256, "heads": 4, "ffn_dim": 1024, "vocab": args.vocab, "k": args.k}
    settings.update(tokens_per_batch=args.tokens_per_batch, steps=args.steps, warmup=WARMUP_STEPS, dropout=0.1)
    print_tables(rows, ", ".join(f"{key}={value}" for key, value in settings.items()))
    write_results(rows, env, settings, args.out, CSV_KEYS)
    plot(rows, args.out / "tokens_per_s.png")
    print(f"results: {args.out / 'results.json'}, {args.out / 'results.csv'}")


if __name__ == "__main__":
    main()
