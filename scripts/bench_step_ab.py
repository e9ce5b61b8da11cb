"""A/B of one training-step change, in one process: before and after train side by side, interleaved step by step.

Every variant gets its own model (same init), optimizer and Trainer, and all are fed the same batches; each
repetition times one Trainer.train_step per variant, in an order rotated per repetition, so the machine's state
(other jobs, clocks, caches) falls alike on all of them. "baseline-again" is a second copy of the baseline: its
ratio to the baseline is what noise alone gives (an A/A). Reported: median ms/step, speed-up = baseline median /
variant median, and the spread (25th-75th percentile) of per-repetition ratios.

Run: .venv/bin/python scripts/bench_step_ab.py --change qkv|optim|dropout|grid|fold|compile [--precision fp32 --reps 10]
"""
import argparse
import contextlib
import functools
import json
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

import torch

from linformer_pt.modules import attention, dropout, folded_attention
from linformer_pt.registry import MODELS, TASKS
from linformer_pt.tasks import masked_lm
from linformer_pt.training.trainer import Trainer
from bench_train import compose_train_config  # noqa: E402  (scripts/ is on sys.path; registers models, tasks)
from benchlib import switched_off  # noqa: E402

Context = Callable[[], contextlib.AbstractContextManager]


@contextlib.contextmanager
def separate_projections() -> Iterator[None]:
    """Before the fused QKV / E-F change: three Q, K, V GEMMs and one E, one F product."""

    def qkv(self, x, queries=None):  # type: ignore[no-untyped-def]
        return self.q_proj(x if queries is None else queries), self.k_proj(x), self.v_proj(x)

    def project_pair(e, f, x, keep):  # type: ignore[no-untyped-def]
        ones = x.new_ones(x.shape[0], x.shape[1], 1)
        ex, e1 = e(x, keep), e(ones, keep)
        return (ex, ex, e1, e1) if f is e else (ex, f(x, keep), e1, f(ones, keep))

    saved = attention._MultiHeadBase.qkv, attention.project_pair
    attention._MultiHeadBase.qkv, attention.project_pair = qkv, project_pair
    try:
        yield
    finally:
        attention._MultiHeadBase.qkv, attention.project_pair = saved


@contextlib.contextmanager
def full_last_layer() -> Iterator[None]:
    """Before the masked-grid change: the last layer on every row, its masked rows gathered after it."""
    grid_path = masked_lm.masked_logits

    def gather_after(model, batch):  # type: ignore[no-untyped-def]
        return grid_path(model, {k: v for k, v in batch.items() if not k.startswith("masked_grid")})

    masked_lm.masked_logits = gather_after
    try:
        yield
    finally:
        masked_lm.masked_logits = grid_path


def set_adamw(mode: str) -> Callable[[Trainer], None]:
    """AdamW's implementation, read from each param group at every step: loop, foreach or fused."""

    def apply(trainer: Trainer) -> None:
        for group in trainer.optimizer.param_groups:
            group["foreach"], group["fused"] = mode == "foreach", mode == "fused"

    return apply


NONE: Context = contextlib.nullcontext


def variants(change: str) -> Dict[str, Tuple[Context, Callable[[Trainer], None], Dict]]:
    """name -> (context each step runs in, trainer set-up, config overrides); the first is the baseline."""
    keep: Callable[[Trainer], None] = lambda trainer: None  # noqa: E731
    if change == "qkv":
        before, after = (separate_projections, keep, {}), (NONE, keep, {})
    elif change == "dropout":
        before, after = (functools.partial(switched_off, dropout), keep, {}), (NONE, keep, {})
    elif change == "grid":
        before, after = (full_last_layer, keep, {}), (NONE, keep, {})
    elif change == "fold":
        before, after = (functools.partial(switched_off, folded_attention), keep, {}), (NONE, keep, {})
    elif change == "compile":
        before, after = (NONE, keep, {}), (NONE, keep, {"compile": True})
    elif change == "optim":
        before = (NONE, set_adamw("loop"), {})
        return {"loop": before, "baseline-again": before, "foreach": (NONE, set_adamw("foreach"), {}),
                "fused": (NONE, set_adamw("fused"), {})}  # fmt: skip
    else:
        raise ValueError(change)
    return {"before": before, "baseline-again": before, "after": after}


def build(point: Dict, compile_model: bool) -> Trainer:
    cfg = compose_train_config(point)
    cfg.trainer.compile = compile_model
    task = TASKS.get(cfg.task.name).cls.setup(cfg)
    torch.manual_seed(cfg.common.seed)
    model = MODELS.get(cfg.model.name).cls.build(cfg.model, task)
    return Trainer(cfg, task, model, Path(point["out"]))


def optimizer_alone(trainers: Dict[str, Trainer], reps: int) -> Dict[str, float]:
    """optimizer.step() by itself, median ms, interleaved: within a whole step its 1-3% is below the noise."""
    for trainer in trainers.values():
        for p in trainer.model.parameters():
            p.grad = torch.full_like(p, 1e-3)
    ms: Dict[str, List[float]] = {name: [] for name in trainers}
    for rep in range(2 + 2 * reps):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            trainer.optimizer.step()
            if rep >= 2:
                ms[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in ms.items()}


def run(args: argparse.Namespace) -> Dict:
    torch.set_num_threads(args.threads)
    point = {"variant": args.attention, "n": args.n, "k": args.k, "batch": args.batch, "vocab": args.vocab,
             "precision": args.precision, "cache_dir": str(args.cache_dir), "out": str(args.out)}  # fmt: skip
    specs = variants(args.change)
    trainers = {}
    for name, (_, setup, overrides) in specs.items():
        trainers[name] = build(point, overrides.get("compile", False))
        setup(trainers[name])
    first = next(iter(trainers.values()))
    stream = (group[0] for group in first.train_iterator.forever())
    batches = [next(stream) for _ in range(args.batches)]
    names = list(specs)
    warmup_ms: Dict[str, List[float]] = {name: [] for name in names}
    ms: Dict[str, List[float]] = {name: [] for name in names}
    for rep in range(args.warmup + args.reps):
        batch = batches[rep % len(batches)]
        order = names[rep % len(names):] + names[: rep % len(names)]  # rotated: no variant always runs first
        for name in order:
            with specs[name][0]():
                start = time.perf_counter()
                trainers[name].train_step([batch])
                (warmup_ms if rep < args.warmup else ms)[name].append(1e3 * (time.perf_counter() - start))
    losses = {name: trainers[name].step.sums.read() for name in names}
    alone = optimizer_alone(trainers, args.reps) if args.change == "optim" else {}
    base = names[0]
    tokens = batches[0]["tokens"].numel()
    rows = []
    for name in names:
        ratios = sorted(b / v for b, v in zip(ms[base], ms[name]))
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        median = statistics.median(ms[name])
        reading = losses[name]
        rows.append({"variant": name, "median_ms": median, "tokens_per_s": 1e3 * tokens / median,
                     "speedup": statistics.median(ms[base]) / median, "ratio_q25": q[0], "ratio_q75": q[2],
                     "first_steps_ms": warmup_ms[name], "ms": ms[name], "optimizer_step_ms": alone.get(name),
                     "loss_sum": None if reading is None else reading.loss_sum})  # fmt: skip
    return {"change": args.change, "settings": {k: v for k, v in point.items() if k not in ("cache_dir", "out")},
            "threads": args.threads, "reps": args.reps, "warmup": args.warmup, "torch": torch.__version__,
            "rows": rows}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--change", required=True, choices=("qkv", "optim", "dropout", "grid", "fold", "compile"))
    parser.add_argument("--attention", default="linformer", choices=("linformer", "standard"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=8, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first (compile: its time)")
    parser.add_argument("--batches", type=int, default=4, help="distinct batches, cycled")
    parser.add_argument("--cache-dir", type=Path, default=Path("data/cache"))
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_step_ab"))
    parser.add_argument("--json", type=Path, help="append the result as one JSON line to this file")
    args = parser.parse_args()
    result = run(args)
    s = result["settings"]
    print(f"\n{args.change}: {s['variant']} {s['precision']}, n={s['n']} batch={s['batch']}, {args.threads} threads, "
          f"median of {args.reps} interleaved steps per variant\n")  # fmt: skip
    print("| variant | ms/step | tokens/s | speed-up vs first | per-rep ratio 25-75% | first steps ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        first = ", ".join(f"{t:.0f}" for t in r["first_steps_ms"])
        print(f"| {r['variant']} | {r['median_ms']:.0f} | {r['tokens_per_s']:,.0f} | {r['speedup']:.3f}x | "
              f"{r['ratio_q25']:.3f}-{r['ratio_q75']:.3f} | {first} |")  # fmt: skip
    if args.change == "optim":
        print("\noptimizer.step() alone, median ms: " + ", ".join(f"{r['variant']} {r['optimizer_step_ms']:.1f}"
                                                              for r in result["rows"]))  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
