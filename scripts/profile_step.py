"""Where a CPU training step's time goes (torch.profiler): embeddings, attention, FFN, layer norms, LM head + loss,
backward, clipping, optimizer, data, and the rest (framework), plus the trainer's step against a bare loop.
Run: .venv/bin/python scripts/profile_step.py [--attention linformer --precision bf16 --steps 3 ...] (--help)
"""
import argparse
import functools
import importlib
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

from linformer_pt.registry import MODELS, TASKS
from linformer_pt.training.trainer import Trainer
from bench_train import compose_train_config  # noqa: E402  (scripts/ is on sys.path)
from benchlib import cpu_model

for _registers in ("linformer_pt.models", "linformer_pt.tasks"):  # registers models and tasks by name
    importlib.import_module(_registers)

PREFIX = "part:"  # the ranges this script adds; nothing in torch is named so
# Forward ranges, innermost first wins: an op belongs to the innermost labelled range it runs in.
FORWARD = ("attn_linear", "attn_seq_proj", "attn_sdpa", "attention", "ffn", "layer_norm", "encoder", "features",
           "forward")  # fmt: skip
TOP = ("data", "forward", "backward", "clip", "optimizer", "zero_grad")  # disjoint ranges inside "step"


def label(obj: Any, attr: str, name: str) -> None:
    """Run obj.attr inside a profiler range `part:name`; an instance attribute shadows the method (or the class's
    function, for torch.Tensor.backward), so the project's code runs unchanged."""
    inner = getattr(obj, attr)

    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with record_function(PREFIX + name):
            return inner(*args, **kwargs)

    setattr(obj, attr, wrapper)


def instrument(trainer: Trainer) -> None:
    model, step = trainer.model, trainer.step
    for layer in model.encoder.layers:
        attn = layer.self_attn
        label(attn, "forward", "attention")
        # Inside attention: the d x d maps called as modules (all four in standard attention; Q and out in
        # Linformer, whose K/V maps are F.linear calls on the k projected rows and so count as "the rest"), E/F, SDPA.
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
            label(proj, "forward", "attn_linear")
        for proj in (getattr(attn, "proj_e", None), getattr(attn, "proj_f", None)):
            if proj is not None:
                label(proj, "forward", "attn_seq_proj")
        label(attn, "attend", "attn_sdpa")  # SDPA (with its dropout) + head merge
        label(layer, "_ffn", "ffn")  # fc1, GELU, dropout, fc2 (a method, so the GELU and dropout count too)
        label(layer.attn_layer_norm, "forward", "layer_norm")
        label(layer.final_layer_norm, "forward", "layer_norm")
    label(model.encoder, "forward", "encoder")
    label(model, "extract_features", "features")  # features - encoder = embeddings (lookups, add, LN, dropout)
    label(trainer.task, "loss", "forward")  # the whole forward: model + masked gather + LM head + cross-entropy
    label(torch.Tensor, "backward", "backward")
    label(step, "clip", "clip")
    label(trainer.optimizer, "step", "optimizer")
    label(trainer.optimizer, "zero_grad", "zero_grad")


def totals(prof: profile, steps: int) -> Dict[str, float]:
    """ms per step of each part: range (inclusive) wall time over the profiled steps."""
    out = {e.key[len(PREFIX):]: e.cpu_time_total / 1e3 / steps for e in prof.key_averages() if e.key.startswith(PREFIX)}
    # Exclusive forward parts: what a range holds beyond the labelled ranges inside it.
    for name in ("attn_linear", "attn_seq_proj"):
        out.setdefault(name, 0.0)  # standard attention has no E/F
    out["attn_rest"] = out["attention"] - out["attn_linear"] - out["attn_seq_proj"] - out["attn_sdpa"]
    out["residual_dropout"] = out["encoder"] - out["attention"] - out["ffn"] - out["layer_norm"]
    out["embeddings"] = out["features"] - out["encoder"]
    out["lm_head_loss"] = out["forward"] - out["features"]
    out["other"] = out["step"] - sum(out.get(name, 0.0) for name in TOP)
    return out


def backward_by_part(prof: profile, steps: int) -> Dict[str, float]:
    """Backward ms per step by forward part, through autograd sequence numbers: a backward node's evaluate_function
    event carries the sequence number of the forward op that made it; that op's innermost range names the part."""
    events = prof.events()
    part_of: Dict[int, str] = {}
    for e in events:
        if e.sequence_nr < 0 or e.name.startswith("autograd::"):
            continue
        parent, part = e.cpu_parent, None
        while parent is not None and part is None:
            if parent.name.startswith(PREFIX) and parent.name[len(PREFIX):] in FORWARD:
                part = parent.name[len(PREFIX):]
            parent = parent.cpu_parent
        if part is not None:
            part_of.setdefault(e.sequence_nr, part)  # the outermost op with that number comes first
    names = {"attention": "attn_rest", "encoder": "residual_dropout", "features": "embeddings",
             "forward": "lm_head_loss"}  # fmt: skip
    out: Dict[str, float] = {}
    for e in events:
        if e.name.startswith("autograd::engine::evaluate_function:"):
            part = names.get(part_of.get(e.sequence_nr, ""), part_of.get(e.sequence_nr, "unmatched"))
            out[part] = out.get(part, 0.0) + e.cpu_time_total / 1e3 / steps
    # The engine's own time between nodes (and nodes of ops outside any range): backward's range minus the nodes.
    out.pop("unmatched", None)  # nodes whose forward op ran outside the ranges (well under 1 ms): engine time too
    out["engine"] = totals(prof, steps)["backward"] - sum(out.values())
    out["attention"] = sum(out.get(name, 0.0) for name in ("attn_linear", "attn_seq_proj", "attn_sdpa", "attn_rest"))
    return out


def bare_step(trainer: Trainer) -> Callable[[Dict[str, torch.Tensor]], None]:
    """The same work written by hand: forward + loss, backward, clip, AdamW, zero_grad; no schedule, seeding,
    device sums, FLOP count."""
    model, task, optimizer = trainer.model, trainer.task, trainer.optimizer
    clip = trainer.cfg.optimization.clip_norm or float("inf")

    def step(batch: Dict[str, torch.Tensor]) -> None:
        with trainer.precision.autocast():
            loss, _ = task.loss(model, {**batch, "padding_mask": None})  # sample_break_mode=none: no padding
        (loss / batch["targets"].numel()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def overhead(trainer: Trainer, batches: List[Dict[str, torch.Tensor]]) -> Dict[str, float]:
    """Trainer.train_step vs the bare loop, interleaved step by step on the same batches (no profiler), ms/step."""
    runs = {"trainer": lambda b: trainer.train_step([b]), "bare": bare_step(trainer)}
    seconds: Dict[str, List[float]] = {"trainer": [], "bare": []}
    for i, batch in enumerate(batches):
        for name in sorted(runs, reverse=i % 2 == 1):  # alternate which goes first: drift hits both alike
            start = time.perf_counter()
            runs[name](batch)
            seconds[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(s) for name, s in seconds.items()}  # median: one slow step is noise


ROWS = [("embeddings", "embeddings (+LN, dropout)"), ("attention", "attention (4 layers)"),
        ("attn_linear", "  of which Q/K/V/out maps called as modules"), ("attn_seq_proj", "  of which E/F projections"),
        ("attn_sdpa", "  of which SDPA (+its dropout, head merge)"), ("attn_rest", "  of which the rest"),
        ("ffn", "FFN (fc1, GELU, fc2; 4 layers)"), ("layer_norm", "layer norms (8)"),
        ("residual_dropout", "residual adds + dropout"), ("lm_head_loss", "LM head + loss"),
        ("engine", "autograd engine (unattributed backward)"), ("clip", "clip grad norm"),
        ("optimizer", "optimizer step (AdamW)"), ("zero_grad", "zero_grad"), ("data", "data (next batch)"),
        ("other", "other (framework: schedule, seeding, sums)"), ("step", "step (profiled)")]  # fmt: skip


def table(ms: Dict[str, float], backward: Dict[str, float]) -> List[Dict[str, Any]]:
    """Rows of (part, forward ms, backward ms, total ms, share of the step)."""
    rows = []
    for key, name in ROWS:
        fwd = ms[key] if key in FORWARD_PARTS else None
        bwd = backward.get(key) if key in FORWARD_PARTS or key == "engine" else None
        total = ms[key] if fwd is None and bwd is None else (fwd or 0.0) + (bwd or 0.0)
        if key == "step":
            total = ms["step"]
        rows.append({"part": key, "name": name, "fwd_ms": fwd, "bwd_ms": bwd, "ms": total,
                     "share": total / ms["step"]})  # fmt: skip
    return rows


FORWARD_PARTS = ("embeddings", "attention", "attn_linear", "attn_seq_proj", "attn_sdpa", "attn_rest", "ffn",
                 "layer_norm", "residual_dropout", "lm_head_loss")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attention", choices=("linformer", "standard"), default="linformer")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--k", type=int, default=64, help="Linformer projected length")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="profiled steps (and trainer/bare steps each)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=Path("data/cache"))
    parser.add_argument("--out", type=Path, help="JSON (default docs/results/profile_step/ATTENTION-PRECISION.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    point = {"variant": args.attention, "n": args.seq_len, "k": args.k, "batch": args.batch, "vocab": args.vocab,
             "precision": args.precision, "cache_dir": str(args.cache_dir)}  # fmt: skip
    cfg = compose_train_config(point)
    task = TASKS.get(cfg.task.name).cls.setup(cfg)
    torch.manual_seed(cfg.common.seed)
    model = MODELS.get(cfg.model.name).cls.build(cfg.model, task)
    trainer = Trainer(cfg, task, model, Path("outputs/profile_step"))  # writes nothing until fit()
    batches = (group[0] for group in trainer.train_iterator.forever())

    def step() -> None:
        with record_function(PREFIX + "step"):
            with record_function(PREFIX + "data"):
                batch = next(batches)
            trainer.train_step([batch])

    for _ in range(args.warmup):
        step()
    instrument(trainer)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    ms = totals(prof, args.steps)
    backward = backward_by_part(prof, args.steps)
    unprofiled = overhead(trainer, [next(batches) for _ in range(args.steps)])

    rows = table(ms, backward)
    # The ops that take the most time themselves (children excluded), to name what is inside the parts above.
    ops = sorted((e for e in prof.key_averages() if not e.key.startswith(PREFIX)), key=lambda e: -e.self_cpu_time_total)
    top_ops = {e.key: e.self_cpu_time_total / 1e3 / args.steps for e in ops[:15]}
    title = f"{args.attention} {args.precision}, n={args.seq_len}, batch={args.batch}, {args.threads} threads"
    print(f"\n{title}: ms per step over {args.steps} profiled steps (backward by autograd sequence numbers)\n")
    print("| part | fwd ms | bwd ms | ms/step | share |\n|---|---:|---:|---:|---:|")
    for r in rows:
        cells = ["" if r[k] is None else f"{r[k]:.1f}" for k in ("fwd_ms", "bwd_ms", "ms")]
        print(f"| {r['name']} | " + " | ".join(cells) + f" | {100 * r['share']:.1f}% |")
    print("\ntop ops by self time, ms/step: " + ", ".join(f"{k} {v:.1f}" for k, v in list(top_ops.items())[:8]))
    extra = unprofiled["trainer"] / unprofiled["bare"] - 1
    print(f"\nno profiler, median of {args.steps}: trainer step {unprofiled['trainer']:.1f} ms, bare loop "
          f"{unprofiled['bare']:.1f} ms (framework overhead {100 * extra:+.1f}%); forward {ms['forward']:.1f} ms, "
          f"backward {ms['backward']:.1f} ms (profiled)")  # fmt: skip

    out = args.out or Path(f"docs/results/profile_step/{args.attention}-{args.precision}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    env: Dict[str, Optional[Any]] = {"torch": torch.__version__, "threads": args.threads, "cpu": cpu_model()}
    settings = vars(args) | {"out": str(out), "cache_dir": str(args.cache_dir)}  # Paths as strings for JSON
    result = {"settings": settings, "environment": env, "rows": rows, "top_ops_self_ms": top_ops, "ms_per_step": ms,
              "backward_ms_by_part": backward, "unprofiled_ms_per_step": unprofiled}  # fmt: skip
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
