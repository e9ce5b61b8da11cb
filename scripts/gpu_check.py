"""One command for a CUDA machine: correctness, training throughput and MFU, torchrun (NCCL), the attention benchmark
and checkpoint stalls, each step isolated and time-boxed so the whole fits in about 8 minutes.
Run: python scripts/gpu_check.py --out outputs/gpu_check   (toy sizes on the CPU, gloo for NCCL: --dry-run)
Results: <out>/gpu_check.json and <out>/gpu_check.md; each step's raw outputs stay under <out>/work/.
"""
import argparse
import copy
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

SCRIPTS = Path(__file__).resolve().parent
STEPS = ("correctness", "training", "torchrun", "bench_attention", "checkpoint")
# Seconds per step on the GPU: 450 in all, leaving 30 s of the 8 minutes for start-up and the report.
BUDGET_S = {"correctness": 40, "training": 210, "torchrun": 60, "bench_attention": 100, "checkpoint": 40}
DRY_BUDGET_S = {step: 120 for step in STEPS}
TOTAL_S = 480
# Relative L2 error ||out - ref|| / ||ref|| of the encoder output against a float64 CPU reference. fp32: only
# summation order differs (TF32 matmuls, off by default in torch, would need ~1e-3); bf16 autocast keeps 8 bits of
# mantissa (one rounding ~4e-3) but the fp32 residual stream and LayerNorms keep a 2-layer model near 1e-3.
TOLERANCE = {"fp32": 1e-4, "bf16": 1e-2}
# A padded row vs the same row alone, both on the device: only kernel choices for the two shapes differ. fp32 is the
# sharp test (ignoring the padding mask, as fairseq does, costs ~5e-3); bf16 catches gross errors only.
PAD_TOLERANCE = {"fp32": 1e-5, "bf16": 5e-3}
MIB = 2**20

# The Linformer paper (Wang et al. 2020), Table 3: inference-time speed-up and memory saving of Linformer over the
# standard Transformer, by sequence length n, for k = 128 and 256 (the table also has k = 512..2048). Recalled from
# the paper, not copied from it: entries marked approximate may be off by a row or a rounding; check Table 3 before
# quoting them. (time speed-up, memory saving, approximate)
PAPER_TABLE3 = {
    (512, 128): (1.5, 1.7, True), (512, 256): (1.3, 1.5, True),
    (1024, 128): (1.7, 3.0, True), (1024, 256): (1.6, 2.9, True),
    (2048, 128): (2.6, 6.1, True), (2048, 256): (2.4, 5.6, True),
    (4096, 128): (3.4, 14.0, True), (4096, 256): (3.2, 13.0, True),
    (8192, 128): (5.5, 28.0, True), (8192, 256): (5.0, 26.0, True),
    (16384, 128): (8.6, 56.0, True), (16384, 256): (7.8, 48.0, True),
    (32768, 128): (13.0, 56.0, True), (32768, 256): (12.0, 48.0, True),
    (65536, 128): (20.0, 60.0, False), (65536, 256): (18.0, 52.0, True),
}  # fmt: skip

# linformer-train in a child process that also reports its CUDA allocator's high-water mark when it exits.
TRAIN_BOOT = """import atexit, json, os, sys, torch
from linformer_pt.cli import train
def _peak():
    if torch.cuda.is_available():
        with open(os.environ["GPU_CHECK_PEAK_FILE"], "w") as f:
            json.dump(torch.cuda.max_memory_allocated(), f)
atexit.register(_peak)
sys.argv[0] = "linformer-train"
train.main()
"""


# ---- the parent: run each step in a child process with a time limit --------------------------------------------
def run_step(name: str, args: argparse.Namespace, timeout: float) -> Dict[str, Any]:
    """Run one step as `gpu_check.py --step NAME`; a crash or timeout is recorded, with whatever it wrote so far."""
    out_file = args.out / "steps" / f"{name}.json"
    out_file.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--out", str(args.out),
               "--cache-dir", str(args.cache_dir), "--deadline", str(time.time() + timeout)]  # fmt: skip
    command += ["--dry-run"] if args.dry_run else []
    start = time.perf_counter()
    # A session of its own: on timeout the whole group goes, training subprocesses included.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
        status = None
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        status = "timeout"
    (args.out / "steps" / f"{name}.log").write_text(log or "")
    record = json.loads(out_file.read_text()) if out_file.exists() else {"results": {}, "skipped": {}}
    if status is None and proc.returncode != 0:
        status = "error"
        record.setdefault("error", "\n".join((log or "").strip().splitlines()[-5:]) or f"exit code {proc.returncode}")
    record["status"] = status or record.get("status", "error")
    if status == "timeout":
        record["error"] = f"stopped after its budget of {timeout:.0f} s (results so far are kept)"
    record.update(seconds=round(time.perf_counter() - start, 1), budget_s=round(timeout))
    return record


def environment(dry_run: bool) -> Dict[str, Any]:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "dry_run": dry_run}  # fmt: skip
    if torch.cuda.is_available():
        env.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count())
    return env


def main_parent(args: argparse.Namespace) -> int:
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device here; use --dry-run for the CPU check", file=sys.stderr)
        return 2
    for key, value in {"WANDB_MODE": "disabled", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
                       "TOKENIZERS_PARALLELISM": "false"}.items():  # fmt: skip
        os.environ.setdefault(key, value)
    (args.out / "steps").mkdir(parents=True, exist_ok=True)
    budgets = DRY_BUDGET_S if args.dry_run else BUDGET_S
    start = time.perf_counter()
    report: Dict[str, Any] = {"environment": environment(args.dry_run), "budget_s": TOTAL_S, "steps": {}}
    for name in STEPS:
        left = TOTAL_S - (time.perf_counter() - start) if not args.dry_run else budgets[name]
        if name not in args.steps:
            record = {"status": "skipped", "error": "not in --steps", "results": {}, "skipped": {}}
        elif left < 10:
            record = {"status": "skipped", "error": f"no time left of the {TOTAL_S} s budget", "results": {}, "skipped": {}}
        else:
            print(f"gpu_check: {name} (budget {min(budgets[name], left):.0f} s) ...", flush=True)
            record = run_step(name, args, min(budgets[name], left))
        report["steps"][name] = record
        print(f"gpu_check: {name}: {record['status']} in {record.get('seconds', 0)} s", flush=True)
    report["total_s"] = round(time.perf_counter() - start, 1)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    markdown = render_markdown(report)
    (args.out / "gpu_check.md").write_text(markdown)
    print(markdown)
    print(f"results: {args.out / 'gpu_check.json'}, {args.out / 'gpu_check.md'}")
    return 0 if all(r["status"] in ("ok", "skipped") for r in report["steps"].values()) else 1


# ---- the children: one step each, writing <out>/steps/<step>.json as they go --------------------------------------
class Recorder:
    """A step's results, rewritten to disk after every change so a timeout keeps what was measured."""

    def __init__(self, path: Path, deadline: float) -> None:
        self.path, self.deadline = path, deadline
        self.data: Dict[str, Any] = {"status": "running", "results": {}, "skipped": {}}
        self.flush()

    def left(self) -> float:
        return self.deadline - time.time()

    def set(self, key: str, value: Any) -> None:
        self.data["results"][key] = value
        self.flush()

    def skip(self, what: str, reason: str) -> None:
        self.data["skipped"][what] = reason
        self.flush()

    def finish(self, status: str, error: Optional[str] = None) -> None:
        self.data["status"] = status
        if error:
            self.data["error"] = error
        self.flush()

    def flush(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)


def device_of(dry_run: bool) -> str:
    return "cpu" if dry_run else "cuda"


def step_correctness(rec: Recorder, args: argparse.Namespace) -> str:
    """Encoder outputs on the device vs a float64 CPU reference, pad invariance, and fp16 overflow handling."""
    import torch

    from linformer_pt.modules.attention import SHARING_SCHEMES

    device = device_of(args.dry_run)
    n, k = (64, 16) if args.dry_run else (512, 128)
    rec.set("settings", {"device": device, "n": n, "k": k, "layers": 2, "embed_dim": 64, "heads": 4,
                         "tolerance_rel_l2": TOLERANCE, "pad_tolerance_rel_l2": PAD_TOLERANCE, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32})  # fmt: skip
    if args.dry_run:
        rec.skip("cuda", "dry run: the device under test is the CPU")
    checks: List[Dict[str, Any]] = []
    for attention, sharing in [("linformer", s) for s in SHARING_SCHEMES] + [("standard", "-")]:
        checks += model_checks(device, n, k, attention, sharing)
        rec.set("checks", checks)
    overflow = fp16_overflow(args, device)
    rec.set("fp16_overflow", overflow)
    return "ok" if all(c["ok"] for c in checks) and overflow["ok"] else "failed"


def model_checks(device: str, n: int, k: int, attention: str, sharing: str, **model_args: Any) -> List[Dict[str, Any]]:
    """A 2-layer model on `device` in fp32 and bf16 autocast: its encoder output vs float64 on the CPU, and the
    outputs at real positions of a padded row vs the same row alone."""
    import torch

    from linformer_pt.models.linformer_roberta import LinformerRoberta, LinformerRobertaConfig

    torch.manual_seed(0)
    cfg = LinformerRobertaConfig(layers=2, embed_dim=64, ffn_embed_dim=128, heads=4, max_positions=n, k=k,
                                 attention=attention, sharing=sharing if sharing != "-" else "headwise",
                                 dropout=0.0, attention_dropout=0.0, **model_args)  # fmt: skip
    checks: List[Dict[str, Any]] = []
    model = LinformerRoberta(cfg, vocab_size=300, padding_idx=1).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):  # BERT's init zeroes them: nonzero ones exercise the projected bias (E m) b
                param.normal_(0.0, 0.2)
    tokens = torch.randint(4, 300, (2, n))
    short = n - n // 3
    padding = torch.zeros(2, n, dtype=torch.bool)
    padding[1, short:] = True
    tokens[padding] = 1
    reference = copy.deepcopy(model).double()
    with torch.no_grad():
        ref = reference.extract_features(tokens, padding)
        on_device = model.to(device)
        for dtype in ("fp32", "bf16"):
            with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16"):  # as the Trainer runs
                out = on_device.extract_features(tokens.to(device), padding.to(device)).double().cpu()
                alone = on_device.extract_features(tokens[1:, :short].to(device)).double().cpu()
            real = ~padding
            error = rel_l2(out[real], ref[real])
            pad_error = rel_l2(out[1, :short], alone[0])
            common = {"attention": attention, "sharing": sharing, "dtype": dtype, "tolerance": TOLERANCE[dtype]}
            checks.append({"check": "vs_float64_cpu", **common, "rel_error": error, "ok": error <= TOLERANCE[dtype]})
            checks.append({"check": "pad_invariance", **common, "rel_error": pad_error,
                           "tolerance": PAD_TOLERANCE[dtype], "ok": pad_error <= PAD_TOLERANCE[dtype]})  # fmt: skip
    return checks


def rel_l2(a: Any, b: Any) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def smoke_overrides(args: argparse.Namespace, device: str) -> List[str]:
    return ["experiment=smoke", f"dataset.cache_dir={args.cache_dir}", "logging.progress_bar=false",
            "logging.tensorboard=false", f"common.device={device}"]  # fmt: skip


def build_trainer(overrides: List[str], output_dir: Path) -> Any:
    """A Trainer for linformer-train's composed config, built as the CLI builds it (one process)."""
    import torch
    from hydra import compose, initialize_config_module

    import linformer_pt.models  # noqa: F401  (registers models)
    import linformer_pt.tasks  # noqa: F401  (registers tasks)
    import linformer_pt.training  # noqa: F401  (registers optimizers and schedules)
    from linformer_pt.config import load_config
    from linformer_pt.registry import MODELS, TASKS
    from linformer_pt.training.trainer import Trainer

    with initialize_config_module(config_module="linformer_pt.configs", version_base="1.3"):
        cfg = load_config(compose("train", overrides=overrides))
    torch.manual_seed(cfg.common.seed)
    task = TASKS.get(cfg.task.name).cls.setup(cfg)
    model = MODELS.get(cfg.model.name).cls.build(cfg.model, task)
    return Trainer(cfg, task, model, output_dir)


def fp16_overflow(args: argparse.Namespace, device: str) -> Dict[str, Any]:
    """An infinite gradient under fp16: the Trainer must skip the update and halve the loss scale."""
    import torch

    overrides = smoke_overrides(args, device) + ["trainer.precision=fp16", "trainer.fp16_init_scale=1024"]
    trainer = build_trainer(overrides, args.out / "work" / "fp16")
    batches = trainer.train_iterator.forever()
    trainer.train_step(next(batches))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    hook = trainer.model.lm_bias.register_hook(lambda g: torch.full_like(g, math.inf))
    trainer.train_step(next(batches))
    hook.remove()
    unchanged = all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    after = {"update": trainer.update, "overflows": trainer.overflows, "scale": trainer.precision.scale}
    trainer.train_step(next(batches))
    ok = after == {"update": 1, "overflows": 1, "scale": 512.0} and unchanged and trainer.update == 2
    return {"after_overflow": after, "weights_unchanged": unchanged, "update_after_next_step": trainer.update, "ok": ok}


def train_command(overrides: List[str], torchrun: bool = False) -> List[str]:
    if torchrun:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                "-m", "linformer_pt.cli.train", *overrides]  # fmt: skip
    return [sys.executable, "-c", TRAIN_BOOT, *overrides]


def run_training(name: str, overrides: List[str], rec: Recorder, args: argparse.Namespace, torchrun: bool = False) -> Dict:
    """One linformer-train subprocess; its metrics.jsonl gives tokens/s and MFU (the first window, warm-up and
    compilation included, is left out when there are later ones)."""
    run_dir = args.out / "work" / name
    peak_file = run_dir.with_suffix(".peak.json")
    peak_file.unlink(missing_ok=True)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # a rerun into the same folder starts afresh
    overrides = overrides + [f"hydra.run.dir={run_dir}", "checkpoint.auto_resume=false"]
    env = {**os.environ, "GPU_CHECK_PEAK_FILE": str(peak_file)}
    timeout = rec.left() - 2
    if timeout < 5:
        return {"status": "skipped", "error": "no time left in the step's budget"}
    start = time.perf_counter()
    try:
        proc = subprocess.run(train_command(overrides, torchrun), capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"not done within {timeout:.0f} s", "wall_s": round(timeout, 1)}
    result: Dict[str, Any] = {"wall_s": round(time.perf_counter() - start, 1), "run_dir": str(run_dir)}
    device_lines = [line for line in proc.stdout.splitlines() if line.startswith(("device: ", "no CUDA device"))]
    result["device_line"] = device_lines[0] if device_lines else None
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        return {**result, "status": "error", "error": "\n".join(tail) or f"exit code {proc.returncode}"}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if r["split"] == "train"]
    steady = train[1:] or train
    result.update(status="ok" if train else "error", updates=train[-1]["update"] if train else 0,
                  tokens_per_s=mean([r["tokens_per_s"] for r in steady]), tflops=mean([r["tflops"] for r in steady]),
                  mfu=mean([r["mfu"] for r in steady if "mfu" in r]), final_train_loss=train[-1]["loss"] if train else None,
                  peak_memory_mib=json.loads(peak_file.read_text()) / MIB if peak_file.exists() else None)  # fmt: skip
    if not train:
        result["error"] = "no train record in metrics.jsonl"
    return result


def mean(values: List[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def training_overrides(args: argparse.Namespace, model: str, updates: int) -> List[str]:
    """linformer_base / roberta_base at n = 512 in bf16 with fused AdamW; the smoke model at n = 64 for --dry-run."""
    if args.dry_run:
        base = smoke_overrides(args, "cpu") + ["dataset.batch_size=8", "logging.log_interval=2"]
        base += ["model.attention=standard"] if model == "roberta_base" else []
    else:
        base = [f"model={model}", "task.tokens_per_sample=512", "dataset.batch_size=32", "common.device=cuda",
                f"dataset.cache_dir={args.cache_dir}", "logging.progress_bar=false", "logging.tensorboard=false",
                "logging.log_interval=10"]  # fmt: skip
    return base + ["trainer.precision=bf16", "optim.fused=true", f"optimization.max_update={updates}",
                   "optimization.validate_interval_updates=0", "checkpoint.save_interval_minutes=0",
                   "checkpoint.keep_best=false"]  # fmt: skip


def step_training(rec: Recorder, args: argparse.Namespace) -> str:
    """50 bf16 updates with fused AdamW for Linformer and standard attention, eager and compiled."""
    updates = 4 if args.dry_run else 50
    runs = [("linformer_base", False), ("roberta_base", False), ("linformer_base", True), ("roberta_base", True)]
    if args.dry_run:
        rec.skip("peak_memory_mib", "CUDA only (torch.cuda.max_memory_allocated)")
        rec.skip("mfu", "no bf16 peak is known for a CPU (trainer.peak_tflops)")
        rec.skip("compile", "torch.compile takes 13-25 s on the CPU; the compiled runs use the same code path")
    statuses = []
    for model, compiled in runs:
        name = f"train_{model}" + ("_compile" if compiled else "")
        if compiled and args.dry_run:
            continue
        overrides = training_overrides(args, model, updates) + [f"trainer.compile={str(compiled).lower()}"]
        result = run_training(name, overrides, rec, args)
        result.update(model=model, compile=compiled)
        rec.set(name, result)
        statuses.append(result["status"])
    return "ok" if all(s == "ok" for s in statuses) else "failed"


def step_torchrun(rec: Recorder, args: argparse.Namespace) -> str:
    """linformer-train under torchrun (1 process) with DDP and FSDP, plus a process-group check of the backend."""
    backend = "gloo" if args.dry_run else "nccl"
    updates = 2 if args.dry_run else 10
    if args.dry_run:
        rec.skip("nccl", "dry run: gloo on the CPU instead of NCCL")
    rec.set("note", "with one process linformer-train runs without a process group (world size 1), so these runs "
                    f"check the torchrun launch path; process_group initialises {backend} itself and trains DDP "
                    "and FSDP2-wrapped models")  # fmt: skip
    statuses = []
    for wrapper in ("ddp", "fsdp"):
        if wrapper == "fsdp" and args.dry_run:
            rec.skip("torchrun_fsdp", "dry run: at world size 1 linformer-train takes the same path as ddp")
            continue
        overrides = training_overrides(args, "linformer_base", updates) + [f"trainer.distributed_backend={wrapper}"]
        result = run_training(f"torchrun_{wrapper}", overrides, rec, args, torchrun=True)
        rec.set(f"torchrun_{wrapper}", result)
        statuses.append(result["status"])
    result_file = args.out / "work" / "process_group.json"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
               str(Path(__file__).resolve()), "--process-group-child", str(result_file), "--backend", backend]  # fmt: skip
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=max(rec.left() - 2, 1))
        pg = json.loads(result_file.read_text()) if result_file.exists() else {
            "status": "error", "error": "\n".join(proc.stderr.strip().splitlines()[-3:])}  # fmt: skip
    except subprocess.TimeoutExpired:
        pg = {"status": "timeout"}
    rec.set("process_group", pg)
    statuses.append(pg["status"])
    return "ok" if all(s == "ok" for s in statuses) else "failed"


def process_group_child(result_file: Path, backend: str) -> None:
    """Under torchrun: init `backend`, all-reduce, and train a small model 3 steps under DDP and under FSDP2."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from linformer_pt.models.linformer_roberta import LinformerRoberta, LinformerRobertaConfig

    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import fully_shard
    from torch.distributed.device_mesh import init_device_mesh

    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    result: Dict[str, Any] = {"backend": backend, "world_size": int(os.environ["WORLD_SIZE"])}
    try:
        dist.init_process_group(backend)
        total = torch.ones(1, device=device)
        dist.all_reduce(total)
        result["all_reduce"] = float(total)
        cfg = LinformerRobertaConfig(layers=2, embed_dim=64, ffn_embed_dim=128, heads=4, max_positions=64, k=16)
        for wrapper in ("ddp", "fsdp"):
            torch.manual_seed(0)
            model = LinformerRoberta(cfg, vocab_size=300, padding_idx=1).to(device)
            if wrapper == "ddp":
                wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
            else:
                wrapped = fully_shard(model, mesh=init_device_mesh(device.type, (dist.get_world_size(),)))
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
            losses = []
            for _ in range(3):
                tokens = torch.randint(4, 300, (4, 64), device=device)
                loss = wrapped(tokens).float().logsumexp(-1).mean()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss))
            result[wrapper] = {"losses": losses, "finite": all(math.isfinite(x) for x in losses)}
        ok = result["all_reduce"] == result["world_size"] and result["ddp"]["finite"] and result["fsdp"]["finite"]
        result["status"] = "ok" if ok else "failed"
    except Exception as err:
        result.update(status="error", error=f"{type(err).__name__}: {err}"[:500])
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        result_file.write_text(json.dumps(result))


def step_bench_attention(rec: Recorder, args: argparse.Namespace) -> str:
    """scripts/bench_attention.py, then our speed-up and memory saving beside the paper's Table 3."""
    out = args.out / "work" / "bench_attention"
    if args.dry_run:
        sizes = ["--device", "cpu", "--dtype", "bf16", "--n", "1024", "--k", "128", "--reps-budget", "0.02",
                 "--same-process"]  # fmt: skip
        rec.skip("cuda", "dry run: the CPU at n = 1024, k = 128, times only (memory needs a process per point)")
    else:
        ns = [str(2**i) for i in range(9, 17)]  # 512 .. 65,536
        sizes = ["--device", "cuda", "--dtype", "bf16", "--n", *ns, "--k", "128", "256", "--reps-budget", "0.2",
                 "--same-process"]  # fmt: skip
    command = [sys.executable, str(SCRIPTS / "bench_attention.py"), *sizes, "--out", str(out)]
    rec.set("command", " ".join(command[1:]))
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=max(rec.left() - 3, 1))
    except subprocess.TimeoutExpired:
        rec.finish("timeout", "bench_attention.py did not finish within the step's budget")
        return "timeout"
    if proc.returncode != 0:
        rec.finish("error", "\n".join(proc.stderr.strip().splitlines()[-3:]))
        return "error"
    rows = json.loads((out / "results.json").read_text())["results"]
    rec.set("rows", rows)
    rec.set("table3", table3(rows))
    missing = [f"{r['scope']} n={r['n']} {r['variant']}" for r in rows if r["error"]]
    rec.set("missing", missing)  # e.g. naive attention out of memory at the largest n: recorded, not a failure
    return "ok"


def table3(rows: List[Dict]) -> List[Dict]:
    """Per (scope, n, k): the paper's ratios and ours (naive / Linformer, SDPA / Linformer; time and memory)."""
    by_key = {(r["scope"], r["n"], r["variant"]): r for r in rows}
    out = []
    for (scope, n, variant), row in sorted(by_key.items()):
        if not variant.startswith("linformer-k"):
            continue
        k = int(variant.removeprefix("linformer-k"))
        naive, sdpa = by_key.get((scope, n, "naive"), {}), by_key.get((scope, n, "sdpa"), {})
        paper = PAPER_TABLE3.get((n, k))
        out.append({
            "scope": scope, "n": n, "k": k,
            "paper_speedup": paper[0] if paper else None, "paper_memory_saving": paper[1] if paper else None,
            "paper_approximate": paper[2] if paper else None,
            "speedup_vs_naive": div(naive.get("time_ms"), row["time_ms"]),
            "speedup_vs_sdpa": div(sdpa.get("time_ms"), row["time_ms"]),
            "memory_saving_vs_naive": div(naive.get("memory_mib"), row["memory_mib"]),
            "memory_saving_vs_sdpa": div(sdpa.get("memory_mib"), row["memory_mib"]),
        })  # fmt: skip
    return out


def div(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def step_checkpoint(rec: Recorder, args: argparse.Namespace) -> str:
    """How long Trainer.save() stalls training for linformer_base, with background writes on and off."""
    import torch

    from linformer_pt.training.checkpoint import CheckpointWriter

    device = device_of(args.dry_run)
    if args.dry_run:
        overrides = smoke_overrides(args, "cpu")
        rec.skip("linformer_base", "dry run: the smoke model on the CPU")
    else:
        overrides = ["model=linformer_base", "task.tokens_per_sample=512", "dataset.batch_size=8", "common.device=cuda",
                     f"dataset.cache_dir={args.cache_dir}", "logging.progress_bar=false", "logging.tensorboard=false"]  # fmt: skip
    overrides += ["trainer.precision=bf16", "optim.fused=true"]
    folder = args.out / "work" / "checkpoint"
    trainer = build_trainer(overrides, folder)
    batches = trainer.train_iterator.forever()
    for _ in range(2):  # optimizer state exists, as in a real save
        trainer.train_step(next(batches))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    results = []
    for background in (True, False, True, False):  # the first of each is a warm-up for the file system and caches
        trainer.writer = CheckpointWriter(folder / "checkpoints", keep_last=0, background=background)
        sync()
        start = time.perf_counter()
        path = trainer.save()
        stall = time.perf_counter() - start
        trainer.writer.wait()
        written = time.perf_counter() - start
        results.append({"async_save": background, "stall_s": round(stall, 3), "written_s": round(written, 3),
                        "size_mib": round(path.stat().st_size / MIB, 1)})  # fmt: skip
        rec.set("saves", results)
    rec.set("summary", {("async" if r["async_save"] else "sync"): r for r in results[2:]})
    for path in (folder / "checkpoints").glob("*.pt"):
        path.unlink()  # gigabytes at linformer_base size
    return "ok"


STEP_FUNCTIONS: Dict[str, Callable[[Recorder, argparse.Namespace], str]] = {
    "correctness": step_correctness, "training": step_training, "torchrun": step_torchrun,
    "bench_attention": step_bench_attention, "checkpoint": step_checkpoint,
}  # fmt: skip


def main_step(args: argparse.Namespace) -> int:
    rec = Recorder(args.out / "steps" / f"{args.step}.json", args.deadline)
    try:
        status = STEP_FUNCTIONS[args.step](rec, args)
    except Exception as err:
        import traceback

        traceback.print_exc()
        rec.finish("error", f"{type(err).__name__}: {err}"[:1000])
        return 1
    if rec.data["status"] == "running":
        rec.finish(status)
    return 0


# ---- the report ---------------------------------------------------------------------------------------------------
def cell(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "—"
    return format(value, spec) if isinstance(value, float) else str(value)


def render_markdown(report: Dict[str, Any]) -> str:
    """The summary table of all steps, then one table per step's numbers."""
    env, steps = report["environment"], report["steps"]
    lines = ["# GPU check" + (" (dry run: CPU, toy sizes)" if env["dry_run"] else ""), "",
             ", ".join(f"{k} {v}" for k, v in env.items()) + f"; {report['total_s']} s of {report['budget_s']} s", "",
             "| step | status | seconds | budget s | note |", "|---|---|---:|---:|---|"]  # fmt: skip
    for name, r in steps.items():
        note = (r.get("error") or "").replace("\n", " ").replace("|", "/")[:120]
        skipped = "; ".join(f"{k}: {v}" for k, v in r.get("skipped", {}).items())
        note = "; ".join(x for x in (note, f"skipped {skipped}" if skipped else "") if x)
        lines.append(f"| {name} | {r['status']} | {cell(r.get('seconds'))} | {cell(r.get('budget_s'))} | {note} |")
    res = steps.get("correctness", {}).get("results", {})
    if res.get("checks"):
        lines += ["", "## Correctness (relative L2 error)", "", "| check | attention | sharing | dtype | error | tolerance | ok |",
                  "|---|---|---|---|---:|---:|---|"]  # fmt: skip
        lines += [f"| {c['check']} | {c['attention']} | {c['sharing']} | {c['dtype']} | {c['rel_error']:.2e} | "
                  f"{c['tolerance']:g} | {c['ok']} |" for c in res["checks"]]  # fmt: skip
    if res.get("fp16_overflow"):
        lines += ["", f"fp16 injected overflow: {res['fp16_overflow']}"]
    runs = {**steps.get("training", {}).get("results", {}), **steps.get("torchrun", {}).get("results", {})}
    runs = {k: v for k, v in runs.items() if isinstance(v, dict) and "status" in v and k != "process_group"}
    if runs:
        lines += ["", "## Training (bf16, fused AdamW)", "", "| run | status | updates | tokens/s | TFLOP/s | MFU | "
                  "peak MiB | wall s | device line |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        for name, r in runs.items():
            lines.append(f"| {name} | {r['status']} | {cell(r.get('updates'))} | {cell(r.get('tokens_per_s'), ',.0f')} | "
                         f"{cell(r.get('tflops'))} | {cell(r.get('mfu'), '.1%')} | {cell(r.get('peak_memory_mib'), ',.0f')} | "
                         f"{cell(r.get('wall_s'))} | {r.get('device_line') or r.get('error', '')} |")  # fmt: skip
    pg = steps.get("torchrun", {}).get("results", {}).get("process_group")
    if pg:
        lines += ["", f"process group: {json.dumps(pg)}"]
    table = steps.get("bench_attention", {}).get("results", {}).get("table3")
    if table:
        lines += ["", "## Attention vs the paper's Table 3 (paper: inference; ours: fwd+bwd; * approximate)", "",
                  "| scope | n | k | paper speed-up | ours vs naive | ours vs SDPA | paper memory saving | ours vs naive | "
                  "ours vs SDPA |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for t in table:
            star = "*" if t["paper_approximate"] else ""
            lines.append(f"| {t['scope']} | {t['n']} | {t['k']} | {cell(t['paper_speedup'])}{star} | "
                         f"{cell(t['speedup_vs_naive'])} | {cell(t['speedup_vs_sdpa'])} | {cell(t['paper_memory_saving'])}"
                         f"{star} | {cell(t['memory_saving_vs_naive'])} | {cell(t['memory_saving_vs_sdpa'])} |")  # fmt: skip
    saves = steps.get("checkpoint", {}).get("results", {}).get("saves")
    if saves:
        lines += ["", "## Checkpoint save (training stalls for `stall s`)", "", "| async_save | stall s | written s | MiB |",
                  "|---|---:|---:|---:|"]  # fmt: skip
        lines += [f"| {s['async_save']} | {s['stall_s']} | {s['written_s']} | {s['size_mib']} |" for s in saves]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/gpu_check"), help="folder for the JSON and markdown")
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, gloo: what CI runs")
    parser.add_argument("--cache-dir", type=Path, default=Path("data/cache"), help="dataset.cache_dir of the runs")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="run only these steps")
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)  # internal: run one step in this process
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--process-group-child", type=Path, help=argparse.SUPPRESS)  # internal: under torchrun
    parser.add_argument("--backend", default="nccl", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out, args.cache_dir = args.out.resolve(), args.cache_dir.resolve()
    return args


def main() -> int:
    args = parse_args()
    if args.process_group_child:
        process_group_child(args.process_group_child, args.backend)
        return 0
    if args.step:
        return main_step(args)
    return main_parent(args)


if __name__ == "__main__":
    sys.exit(main())
