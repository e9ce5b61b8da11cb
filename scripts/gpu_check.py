"""One command for a CUDA machine: correctness, training throughput and MFU, torchrun (NCCL), the attention benchmark
and checkpoint stalls, each step isolated and time-boxed so the whole fits in about 8 minutes.
Run: python scripts/gpu_check.py --out outputs/gpu_check   (toy sizes on the CPU, gloo for NCCL: --dry-run)
Results: <out>/gpu_check.json and <out>/gpu_check.md; each step's raw outputs stay under <out>/work/.
"""
import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))  # the report lives beside this script, also when a test loads it by path
from gpu_correctness import build_trainer, device_of, model_checks, smoke_overrides, step_correctness  # noqa: E402,F401 (model_checks: for tests)
from gpu_report import render_markdown, table3  # noqa: E402
STEPS = ("correctness", "training", "torchrun", "bench_attention", "checkpoint")
# Seconds per step on the GPU: 450 in all, leaving 30 s of the 8 minutes for start-up and the report.
BUDGET_S = {"correctness": 40, "training": 210, "torchrun": 60, "bench_attention": 100, "checkpoint": 40}
DRY_BUDGET_S = {step: 120 for step in STEPS}
TOTAL_S = 480
MIB = 2**20

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
               str(SCRIPTS / "gpu_process_group.py"), str(result_file), backend]  # fmt: skip
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=max(rec.left() - 2, 1))
        pg = json.loads(result_file.read_text()) if result_file.exists() else {
            "status": "error", "error": "\n".join(proc.stderr.strip().splitlines()[-3:])}  # fmt: skip
    except subprocess.TimeoutExpired:
        pg = {"status": "timeout"}
    rec.set("process_group", pg)
    statuses.append(pg["status"])
    return "ok" if all(s == "ok" for s in statuses) else "failed"


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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/gpu_check"), help="folder for the JSON and markdown")
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, gloo: what CI runs")
    parser.add_argument("--cache-dir", type=Path, default=Path("data/cache"), help="dataset.cache_dir of the runs")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="run only these steps")
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)  # internal: run one step in this process
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out, args.cache_dir = args.out.resolve(), args.cache_dir.resolve()
    return args


def main() -> int:
    args = parse_args()
    if args.step:
        return main_step(args)
    return main_parent(args)


if __name__ == "__main__":
    sys.exit(main())
