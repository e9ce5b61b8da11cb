"""Benchmark fwd+bwd time and peak memory of Linformer vs SDPA vs naive attention, per module and per encoder layer.
Like the Linformer paper's Table 3. Run: .venv/bin/python scripts/bench_attention.py [--n 512 1024 --k 64 ...] (--help)
"""
import argparse
import gc
import importlib.util
import json
import math
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from linformer_pt.modules import folded_attention as folding
from linformer_pt.modules.attention import AttentionSpec, LinformerSelfAttention, StandardSelfAttention
from linformer_pt.modules.encoder import EncoderLayer
from benchlib import cpu_model, fmt, run_point, switched_off, write_results  # noqa: E402  (scripts/ is on sys.path)

BATCH, EMBED_DIM, HEADS, FFN_DIM = 1, 256, 4, 1024
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SCOPES = ("attention", "layer")
MIN_REPS, MAX_REPS = 3, 60
WARMUP_N = 8
MIB = 2**20
RESULT_KEYS = ("time_ms", "memory_mib", "reps", "error")
CSV_KEYS = ("scope", "n", "variant", "time_ms", "time_ratio", "memory_mib", "memory_ratio", "reps", "error")


class NaiveSelfAttention(StandardSelfAttention):
    """The paper's baseline: softmax(Q K^T / sqrt(dh)) V with the n x n weights materialised, no fused kernel."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        weights = F.dropout(scores.softmax(-1), self.dropout, self.training)
        return self.merge_heads(weights @ v)


# The published Linformers, timed when installed (pip install linformer linformer-pytorch): lucidrains' `linformer`
# and tatp22's `linformer-pytorch`, module prefix -> package.
PUBLISHED = {"lucidrains": "linformer", "tatp22": "linformer_pytorch"}


class Published(nn.Module):
    """A published Linformer attention behind this project's call signature (x, padding_mask, shared_projection)."""

    def __init__(self, variant: str, n: int, sharing: str) -> None:
        super().__init__()
        source, k = variant.split("-k")
        if source == "lucidrains":  # one E, F per layer, shared by the heads (headwise); share_kv: E = F
            from linformer import LinformerSelfAttention as Lucidrains

            self.inner = Lucidrains(EMBED_DIM, n, int(k), HEADS, share_kv=sharing == "kv")
        else:  # tatp22: a Python loop over heads, each with its own Q/K/V maps
            from linformer_pytorch import MHAttention

            mode = sharing if sharing in ("none", "headwise", "kv") else "headwise"
            self.n = n  # its E and F are nn.Linear(n, k): inputs must be exactly n long
            self.inner = MHAttention(n, EMBED_DIM // HEADS, EMBED_DIM, int(k), HEADS, 0.0, "C0", mode, None, None,
                                     False, None)  # fmt: skip

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None, shared_projection: Optional[nn.Module] = None):
        # Neither takes a padding mask (the benchmark has no padding); tatp22's needs length n, so the short
        # warm-up pass is zero-padded to it.
        short = x.shape[1] < getattr(self, "n", 0)
        out = self.inner(F.pad(x, (0, 0, 0, self.n - x.shape[1])) if short else x)
        return out[:, : x.shape[1]]


class Unfolded(nn.Module):
    """A module run with the folded attention path switched off (modules/folded_attention.py): the A/B of folding."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        with switched_off(folding):
            return self.inner(*args, **kwargs)


def build_module(scope: str, variant: str, n: int, sharing: str) -> nn.Module:
    if variant.endswith("-unfolded"):
        return Unfolded(build_module(scope, variant.removesuffix("-unfolded"), n, sharing))
    if variant.split("-k")[0] in PUBLISHED:
        attention: nn.Module = Published(variant, n, sharing)
    elif variant == "sdpa":
        attention = StandardSelfAttention(embed_dim=EMBED_DIM, num_heads=HEADS, dropout=0.0)
    elif variant == "naive":
        attention = NaiveSelfAttention(embed_dim=EMBED_DIM, num_heads=HEADS, dropout=0.0)
    else:
        k = int(variant.removeprefix("linformer-k"))
        spec = AttentionSpec(kind="linformer", sharing=sharing, projection="linear", dropout=0.0)
        attention = LinformerSelfAttention(EMBED_DIM, HEADS, max_positions=n, k=k, spec=spec)
    if scope == "attention":
        return attention
    return EncoderLayer(attention, EMBED_DIM, FFN_DIM, dropout=0.0, activation_dropout=0.0, normalize_before=False)


def peak_mib(device: str) -> float:
    """The high-water mark so far: the CUDA allocator's peak, or the max RSS (KiB on Linux, bytes on macOS)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / MIB
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / MIB if sys.platform == "darwin" else rss / 1024


def synchronize(device: str) -> None:
    # CUDA kernels run asynchronously: without this the clock would stop before the work is done.
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def setup(point: Dict, variant: str) -> Tuple[nn.Module, Callable[[], None]]:
    """Build one variant on the point's device and a closure running one full fwd+bwd pass."""
    device, dtype = point["device"], DTYPES[point["dtype"]]
    torch.manual_seed(0)
    module = build_module(point["scope"], variant, point["n"], point["sharing"]).to(device, dtype)
    # A tiny uncounted pass pays the one-time costs (thread pools, kernel set-up, ~8 MiB of RSS on CPU) that would
    # otherwise land on the measured pass, while leaving the high-water mark far below that of the full-size pass.
    module(torch.randn(BATCH, WARMUP_N, EMBED_DIM, device=device, dtype=dtype, requires_grad=True)).sum().backward()
    module.zero_grad(set_to_none=True)
    x = torch.randn(BATCH, point["n"], EMBED_DIM, device=device, dtype=dtype, requires_grad=True)

    def step() -> None:
        # Dropping the gradients makes every pass allocate them anew, as the first (measured) one does.
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).sum().backward()
        synchronize(device)

    return module, step


def measure_memory(point: Dict) -> Dict:
    """In a child process of its own: peak memory growth of the first full-size fwd+bwd pass of one variant."""
    _, step = setup(point, point["variant"])
    if point["device"].startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    baseline = peak_mib(point["device"])
    step()
    return {"memory_mib": peak_mib(point["device"]) - baseline}


def measure_times(point: Dict) -> Dict:
    """In one child process: median fwd+bwd time of every variant at one (scope, n), timed in alternating rounds.

    Interleaving puts the machine's slow and fast moments on all variants alike, which keeps the ratios stable; the
    order rotates each round, so no variant always runs right after the same other one (whose caches it inherits).
    """
    steps = {variant: setup(point, variant)[1] for variant in point["variants"]}
    for step in steps.values():
        step()  # the first full-size pass allocates; it is not timed
    times: Dict[str, List[float]] = {variant: [] for variant in steps}
    names = list(steps)
    while True:
        reps = len(times[names[0]])
        for variant in names[reps % len(names):] + names[: reps % len(names)]:
            start = time.perf_counter()
            steps[variant]()
            times[variant].append(time.perf_counter() - start)
        reps += 1
        spent = sum(sum(t) for t in times.values())
        if reps >= MAX_REPS or (reps >= MIN_REPS and spent >= point["budget"] * len(steps)):
            break
    return {v: {"time_ms": 1e3 * statistics.median(t), "reps": len(t)} for v, t in times.items()}


def variants_at(n: int, ks: List[int], published: bool = False, unfolded: bool = False) -> List[str]:
    # Linformer with k >= n would not shorten the sequence; the paper's Table 3 leaves those cells empty too.
    ours = [f"linformer-k{k}{suffix}" for k in sorted(ks) if k < n for suffix in ("", "-unfolded")[: 1 + unfolded]]
    installed = [name for name, package in PUBLISHED.items() if published and importlib.util.find_spec(package)]
    return ["naive", "sdpa"] + ours + [f"{name}-k{k}" for name in installed for k in sorted(ks) if k < n]


def make_points(args: argparse.Namespace) -> List[Dict]:
    """Time groups (all variants of one scope and n) followed by their memory points (one per variant)."""
    common = {"device": args.device, "dtype": args.dtype, "budget": args.reps_budget, "threads": args.threads}
    common["sharing"] = args.sharing
    points = []
    for n in sorted(args.n):
        for scope in SCOPES:
            variants = variants_at(n, args.k, args.published, args.unfolded)
            points.append({"kind": "time", "scope": scope, "n": n, "variants": variants, **common})
            # The CPU's high-water mark (max RSS) never goes down, so one process cannot measure CPU memory per point.
            if not (args.same_process and args.device == "cpu"):
                points += [{"kind": "memory", "scope": scope, "n": n, "variant": v, **common} for v in variants]
    return points


def measure_here(point: Dict) -> Dict:
    """One point in this process (--same-process); an error such as CUDA running out of memory becomes data."""
    try:
        return measure_times(point) if point["kind"] == "time" else measure_memory(point)
    except Exception as err:  # torch.cuda.OutOfMemoryError is a RuntimeError
        return {"error": f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"}
    finally:
        gc.collect()  # free this point's modules before the next one's peak is measured
        if point["device"].startswith("cuda"):
            torch.cuda.empty_cache()


def measure_point(point: Dict, timeout: float, same_process: bool) -> Dict:
    if not same_process:
        return run_point(__file__, point, timeout)
    result = measure_here(point)
    if "error" in result and point["kind"] == "time" and len(point["variants"]) > 1:
        # One variant that does not fit (naive attention at the largest n) would leave the others untimed: time
        # each alone instead.
        alone = {v: measure_here({**point, "variants": [v]}) for v in point["variants"]}
        result = {v: r.get(v, {"error": f"time: {r.get('error')}"}) for v, r in alone.items()}
    return result


def collect(points: List[Dict], timeout: float, same_process: bool = False) -> List[Dict]:
    """Run every point (in its own process unless `same_process`) and merge time and memory into one row per
    (scope, n, variant)."""
    rows: Dict[Tuple, Dict] = {}
    progress = tqdm(points, unit="point")
    for point in progress:
        label = point.get("variant", "all variants")
        progress.set_postfix_str(f"{point['kind']} {point['scope']} n={point['n']} {label}")
        result = measure_point(point, timeout, same_process)
        for variant in point.get("variants", [point.get("variant")]):
            key = (point["scope"], point["n"], variant)
            row = rows.setdefault(key, {"scope": key[0], "n": key[1], "variant": variant, **dict.fromkeys(RESULT_KEYS)})
            if "error" in result:
                row["error"] = f"{point['kind']}: {result['error']}"
            else:
                row.update(result.get(variant, result))
    return list(rows.values())


def ratio(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    return value / reference if value is not None and reference else None


def add_ratios(rows: List[Dict]) -> None:
    sdpa = {(r["scope"], r["n"]): r for r in rows if r["variant"] == "sdpa"}
    for row in rows:
        reference = sdpa[(row["scope"], row["n"])]
        row["time_ratio"] = ratio(row["time_ms"], reference["time_ms"])
        row["memory_ratio"] = ratio(row["memory_mib"], reference["memory_mib"])


def environment(device: str, threads: Optional[int]) -> Dict:
    env = {"python": platform.python_version(), "torch": torch.__version__}
    env.update(threads=threads or torch.get_num_threads(), cpu=cpu_model())
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def print_tables(rows: List[Dict], settings: str) -> None:
    for scope in SCOPES:
        print(f"\n### {scope}: fwd+bwd, {settings}\n")
        print("| n | variant | time ms | time / SDPA | memory MiB | memory / SDPA |")
        print("|---:|---|---:|---:|---:|---:|")
        for r in (r for r in rows if r["scope"] == scope):
            cells = [fmt(r["time_ms"], ".1f"), fmt(r["time_ratio"], ".2f")]
            cells += [fmt(r["memory_mib"], ".1f"), fmt(r["memory_ratio"], ".2f")]
            print(f"| {r['n']} | {r['variant']} | " + " | ".join(cells) + " |")
    for r in (r for r in rows if r["error"]):
        print(f"missing: {r['scope']} n={r['n']} {r['variant']}: {r['error']}")
    print_against_published(rows)


def print_against_published(rows: List[Dict]) -> None:
    """Each of our Linformer variants' time over the fastest published Linformer's at the same (scope, n, k)."""
    lines = []
    for r in rows:
        if not r["variant"].startswith("linformer-") or r["time_ms"] is None:
            continue
        k = r["variant"].split("-")[1]
        published = [p["time_ms"] for p in rows if (p["scope"], p["n"]) == (r["scope"], r["n"]) and p["time_ms"]
                     and p["variant"].split("-")[0] in PUBLISHED and p["variant"].endswith(f"-{k}")]  # fmt: skip
        if published:
            lines.append(f"| {r['scope']} | {r['n']} | {r['variant']} | {r['time_ms'] / min(published):.3f} |")
    if lines:
        print("\n### ours / fastest published Linformer (fwd+bwd time)\n")
        print("| scope | n | variant | time / fastest published |\n|---|---:|---|---:|")
        print("\n".join(lines))


def plot(rows: List[Dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    for scope, row_axes in zip(SCOPES, axes):
        for ax, (key, label) in zip(row_axes, (("time_ms", "fwd+bwd time (ms)"), ("memory_mib", "peak memory (MiB)"))):
            for variant in dict.fromkeys(r["variant"] for r in rows):
                # Missing points and zero memory growth have no place on a log axis.
                points = [(r["n"], r[key]) for r in rows if r["scope"] == scope and r["variant"] == variant and r[key]]
                if points:
                    ax.plot(*zip(*points), marker="o", label=variant)
            ax.set_xscale("log", base=2)
            ax.set(yscale="log", xlabel="sequence length n", ylabel=label, title=f"{scope}: {label}")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192], help="sequence lengths")
    parser.add_argument("--k", type=int, nargs="+", default=[64, 128, 256, 512], help="Linformer projected lengths")
    parser.add_argument("--sharing", default="headwise", choices=["none", "headwise", "kv", "layerwise"])
    parser.add_argument("--published", action="store_true", help="also time the published Linformers that are "
                        "installed: lucidrains' linformer, tatp22's linformer-pytorch (pip install them)")
    parser.add_argument("--unfolded", action="store_true", help="also time each Linformer variant with the "
                        "folded attention path off (linformer-kK-unfolded): the A/B of modules/folded_attention.py")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--reps-budget", type=float, default=2.0, help="seconds of timed passes per point")
    parser.add_argument("--threads", type=int, help="torch CPU threads per point (default: torch's choice)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per point before it counts as missing")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_attention"))
    parser.add_argument(
        "--same-process", action="store_true",
        help="measure every point in this process, not one fresh process each (CUDA: the allocator's peak counter "
        "resets per point, so memory stays exact and the per-point start-up is saved; on the CPU: times only). "
        "--timeout is not enforced",
    )  # fmt: skip
    parser.add_argument("--point", help=argparse.SUPPRESS)  # internal: measure one point (JSON) in this process
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    return args


def main() -> None:
    args = parse_args()
    if args.point:
        point = json.loads(args.point)
        if point["threads"]:
            torch.set_num_threads(point["threads"])
        print(json.dumps(measure_times(point) if point["kind"] == "time" else measure_memory(point)))
        return
    env = environment(args.device, args.threads)
    print("environment: " + ", ".join(f"{key} {value}" for key, value in env.items()))
    rows = collect(make_points(args), args.timeout, args.same_process)
    add_ratios(rows)
    settings = {"batch": BATCH, "embed_dim": EMBED_DIM, "heads": HEADS, "ffn_dim": FFN_DIM, "dropout": 0.0}
    settings.update(device=args.device, dtype=args.dtype, sharing=args.sharing)
    print_tables(rows, ", ".join(f"{key}={value}" for key, value in settings.items()))
    write_results(rows, env, settings, args.out, CSV_KEYS)
    plot(rows, args.out / "plot.png")
    print(f"results: {args.out / 'results.json'}, {args.out / 'results.csv'}")


if __name__ == "__main__":
    main()
