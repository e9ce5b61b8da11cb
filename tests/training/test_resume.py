"""Resume is exact: a run killed (kill -9, SIGTERM) at any point and rerun equals a run that never stopped.

Each case trains a tiny model on a small corpus (a few updates per epoch, so runs cross epoch boundaries) in a
subprocess, as a user runs it, and compares per-update losses, learning rates, gradient norms, validation losses
and the final parameters with an uninterrupted reference.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
import torch
from conftest import compose_config

from linformer_pt.cli.train import run
from linformer_pt.errors import RunInterrupted
from linformer_pt.training.checkpoint import load_checkpoint
from linformer_pt.training.signals import EXIT_PREEMPTED
from linformer_pt.training.trainer import Trainer

MODULE = [sys.executable, "-m", "linformer_pt.cli.train"]
COMPARED = ("split", "update", "epoch", "tokens", "loss", "lr", "gnorm", "masked")


@pytest.fixture
def overrides(small_run) -> List[str]:
    return [
        *small_run,
        "optimization.max_update=20", "optimization.validate_interval_updates=7", "checkpoint.save_interval_updates=3",
        "lr_scheduler.total_num_update=20",  # the schedule stays the same when a run stops early on purpose
    ]  # fmt: skip


def launch(args: List[str], run_dir: Path, torchrun: int = 0) -> subprocess.Popen:
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}",
              "-m", "linformer_pt.cli.train"] if torchrun else MODULE  # fmt: skip
    # A session of its own, so that kill_all() can reap what a kill -9 of the main process leaves behind.
    return subprocess.Popen([*prefix, *args, f"hydra.run.dir={run_dir}"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip


def kill_main(proc: subprocess.Popen) -> None:
    """kill -9 of the training process alone (its DataLoader workers outlive it for a moment), then reap them."""
    proc.kill()
    proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # orphaned workers would otherwise linger
    except ProcessLookupError:
        pass


def finish(proc: subprocess.Popen, expect: int = 0) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == expect, err[-3000:]
    return out + err


def records(run_dir: Path) -> List[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: r.get(k) for k in COMPARED} for r in map(json.loads, lines)]


def params_hash(run_dir: Path) -> str:
    state = load_checkpoint(run_dir / "checkpoints" / "checkpoint_last.pt")["model"]
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode() + state[name].numpy().tobytes())
    return digest.hexdigest()


def wait_for_update(run_dir: Path, update: int, proc: subprocess.Popen) -> None:
    """Block until the run has logged `update` (the process keeps training meanwhile)."""
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        assert proc.poll() is None, f"the run ended before update {update}: {proc.stderr.read()[-2000:]}"
        if metrics.exists() and any(f'"update": {update},' in line for line in metrics.read_text().splitlines()):
            return
        time.sleep(0.05)
    raise TimeoutError(f"no update {update} after 300 s")


def reference(args: List[str], tmp_path: Path) -> Path:
    run_dir = tmp_path / "reference"
    finish(launch(args, run_dir))
    return run_dir


def assert_same_run(resumed: Path, reference_dir: Path) -> None:
    assert records(resumed) == records(reference_dir)  # every update's loss, lr, gnorm; every validation
    assert params_hash(resumed) == params_hash(reference_dir)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    ["optimization.update_freq=2", "dataset.batch_size=8", "dataset.num_workers=1"],
    ["trainer.precision=bf16"],
    ["dataset.streaming=true", "task.sample_break_mode=none", "dataset.num_workers=2", "optimization.update_freq=2",
     "dataset.batch_size=8"],
], ids=["accumulation+workers", "bf16", "streaming"])  # fmt: skip
def test_kill_9_at_any_point_then_rerun_equals_an_uninterrupted_run(overrides, extra, tmp_path):
    args = overrides + extra
    ref = reference(args, tmp_path)
    run_dir = tmp_path / "killed"
    for kill_at in (5, 13):  # inside the first epoch, then past an epoch boundary and between checkpoints
        proc = launch(args, run_dir)
        wait_for_update(run_dir, kill_at, proc)
        kill_main(proc)  # SIGKILL: no handler runs, a checkpoint write may be cut in the middle
    out = finish(launch(args, run_dir))
    assert "resuming from" in out and "resumed at update" in out
    assert_same_run(run_dir, ref)


@pytest.mark.slow
def test_sigterm_saves_at_the_update_boundary_exits_75_and_resumes_exactly(overrides, tmp_path):
    # log_interval=3: a stop between two log records must not change the averages the resumed run logs.
    args = overrides + ["checkpoint.save_interval_updates=0", "checkpoint.save_interval_minutes=0",
                        "logging.log_interval=3"]  # fmt: skip
    ref = reference(args, tmp_path)
    run_dir = tmp_path / "preempted"
    proc = launch(args, run_dir)
    wait_for_update(run_dir, 3, proc)
    proc.send_signal(signal.SIGTERM)
    out = finish(proc, expect=EXIT_PREEMPTED)
    state = load_checkpoint(run_dir / "checkpoints" / "checkpoint_last.pt")
    assert 3 <= state["update"] < 20
    assert f"interrupted at update {state['update']}; checkpoint written; rerun to resume" in out
    assert "Traceback" not in out
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"  # a report: unfinished
    finish(launch(args, run_dir))
    assert_same_run(run_dir, ref)
    resumed, uninterrupted = (json.loads((d / "summary.json").read_text()) for d in (run_dir, ref))
    assert resumed["status"] == "finished"
    assert resumed["tokens_seen"] == uninterrupted["tokens_seen"] > 0
    assert resumed["best_valid"] == uninterrupted["best_valid"]


@pytest.mark.parametrize("stop_at", [7, 20], ids=["at-a-validation", "at-the-last-update"])
def test_a_signal_where_a_validation_is_due_leaves_it_to_the_resumed_run(overrides, tmp_path, monkeypatch, stop_at):
    # validate_interval_updates=7: the interrupted run saves without validating (a grace period is short); the
    # resumed run must log the validation (and its checkpoint_best candidate) that the uninterrupted run did.
    cfg = compose_config(overrides)
    run(cfg, tmp_path / "reference")
    real_step = Trainer.train_step

    def step_then_sigterm(self, batches):
        stats = real_step(self, batches)
        if self.update == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)  # handled before the loop decides to stop
        return stats

    monkeypatch.setattr(Trainer, "train_step", step_then_sigterm)
    with pytest.raises(RunInterrupted, match=f"interrupted at update {stop_at};"):
        run(cfg, tmp_path / "stopped")
    monkeypatch.undo()
    run(cfg, tmp_path / "stopped")
    assert_same_run(tmp_path / "stopped", tmp_path / "reference")
    resumed, uninterrupted = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("stopped", "reference"))
    assert resumed["final_valid"] == uninterrupted["final_valid"]
    assert resumed["best_valid"] == uninterrupted["best_valid"]


@pytest.mark.slow
def test_two_processes_resume_on_one_at_the_same_global_batch(overrides, tmp_path):
    args = overrides + ["model.dropout=0", "model.attention_dropout=0"]
    ref = reference(args + ["dataset.batch_size=16"], tmp_path)
    run_dir = tmp_path / "elastic"
    proc = launch(args + ["dataset.batch_size=8", "optimization.max_update=9"], run_dir, torchrun=2)
    finish(proc)
    out = finish(launch(args + ["dataset.batch_size=16", "optimization.max_update=20"], run_dir))
    assert "resumed at update 9 (epoch 2)" in out, out  # past the first epoch boundary
    # Sums over two processes differ from one process's in the last bits: equal to float32 precision.
    got, want = records(run_dir), records(ref)
    got = [r for r in got if (r["split"], r["update"]) != ("valid", 9)]  # the first run's own final validation
    assert [(r["split"], r["update"], r["epoch"], r["masked"]) for r in got] == \
        [(r["split"], r["update"], r["epoch"], r["masked"]) for r in want]  # fmt: skip
    for a, b in zip(got, want):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["lr"] == b["lr"]
    mine = load_checkpoint(run_dir / "checkpoints" / "checkpoint_last.pt")["model"]
    theirs = load_checkpoint(ref / "checkpoints" / "checkpoint_last.pt")["model"]
    for name, value in theirs.items():
        torch.testing.assert_close(mine[name], value, rtol=1e-3, atol=1e-4, msg=name)
    # Another global batch is refused with one line, unless the data position is reset.
    refused = subprocess.run([*MODULE, *args, "dataset.batch_size=4", "optimization.max_update=22",
                              f"hydra.run.dir={run_dir}"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "global batch" in refused.stderr and "16" in refused.stderr


def children(pid: int) -> List[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.mark.slow
def test_a_signal_that_reaches_one_process_stops_every_process_at_the_same_update(overrides, tmp_path):
    """Each process has its own clock and signal handlers; the stop decision is still one decision."""
    run_dir = tmp_path / "one_signalled"
    args = overrides + ["dataset.batch_size=8", "checkpoint.save_interval_updates=0", "optimization.max_update=200"]
    proc = launch(args, run_dir, torchrun=2)
    wait_for_update(run_dir, 3, proc)
    workers = children(proc.pid)
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGTERM)
    out, err = proc.communicate(timeout=120)  # a rank that kept training alone would hang here
    assert proc.returncode != 0  # torchrun reports a worker's non-zero status as its own failure
    state = load_checkpoint(run_dir / "checkpoints" / "checkpoint_last.pt")
    assert 3 <= state["update"] < 200
    assert [p["offset"] for p in state["train_iterator"]] == [state["train_iterator"][0]["offset"]] * 2
    assert f"interrupted at update {state['update']}" in err
    last = records(run_dir)[-1]
    assert last["split"] == "train" and last["update"] == state["update"]


def test_ctrl_c_saves_and_exits_130_with_one_line(overrides, tmp_path):
    run_dir = tmp_path / "ctrl_c"
    proc = launch(overrides + ["checkpoint.save_interval_updates=0", "optimization.max_update=500"], run_dir)
    wait_for_update(run_dir, 2, proc)
    proc.send_signal(signal.SIGINT)
    out = finish(proc, expect=130)
    update = load_checkpoint(run_dir / "checkpoints" / "checkpoint_last.pt")["update"]
    assert f"Ctrl-C: interrupted at update {update}; checkpoint written; rerun to resume" in out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
