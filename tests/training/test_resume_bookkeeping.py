"""The bookkeeping around a resume: which checkpoint a rerun takes, what the reset flags reset, and the figures.

Each test fails on a defect that a review found with a small run: a rerun that went back to restore_file, a reset
optimizer that kept the old lr, reset meters that mixed two runs' counts, a restored run whose metrics.jsonl got
duplicate records, a final train record lost to a signal, a best checkpoint that said a validation was pending,
rates diluted by validation time, and a stretched LR schedule that nobody was told about.
"""
import json
import os
import signal
from pathlib import Path
from typing import List

import pytest
from conftest import compose_config

from linformer_pt.cli.train import run
from linformer_pt.errors import RunInterrupted
from linformer_pt.training.checkpoint import load_checkpoint
from linformer_pt.training.meters import Window
from linformer_pt.training.trainer import Trainer

COMPARED = ("split", "update", "epoch", "tokens", "loss", "lr", "gnorm", "masked")


@pytest.fixture
def overrides(small_run) -> List[str]:
    return [
        *small_run,
        "optimization.max_update=12", "optimization.validate_interval_updates=4", "checkpoint.save_interval_updates=3",
        "checkpoint.keep_last=0",
    ]  # fmt: skip


def records(run_dir: Path, keys=COMPARED) -> List[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: r.get(k) for k in keys} for r in map(json.loads, lines)]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def stop_at(monkeypatch, update: int, how: str = "signal") -> None:
    """After update `update`: a SIGTERM (saved, resumable) or a crash (like kill -9: nothing saved at that point)."""
    real_step = Trainer.train_step

    def step(self, batches):
        stats = real_step(self, batches)
        if self.update == update:
            if how == "crash":
                raise SystemError("crash")
            os.kill(os.getpid(), signal.SIGTERM)
        return stats

    monkeypatch.setattr(Trainer, "train_step", step)


@pytest.mark.parametrize("rerun_with_restore_file", [True, False], ids=["same-command", "plain-resume"])
def test_a_run_started_from_restore_file_continues_from_its_own_checkpoint(overrides, tmp_path, monkeypatch,
                                                                           rerun_with_restore_file):  # fmt: skip
    run(compose_config(overrides + ["optimization.max_update=6"]), tmp_path / "a")
    start = f"checkpoint.restore_file={tmp_path / 'a' / 'checkpoints' / 'checkpoint_3.pt'}"
    run(compose_config(overrides + [start]), tmp_path / "reference")
    stop_at(monkeypatch, 10, how="crash")  # the last checkpoint is at update 9; update 10 is logged after it
    with pytest.raises(SystemError):
        run(compose_config(overrides + [start]), tmp_path / "b")
    monkeypatch.undo()
    again = overrides + ([start] if rerun_with_restore_file else [])
    result = run(compose_config(again), tmp_path / "b")
    assert result["updates"] == 12
    # No record twice (the restored folder's log starts with its own lines), none lost, none from update 3 again.
    assert records(tmp_path / "b") == records(tmp_path / "reference")
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "checkpoint_last.pt")["metrics_lines"] == len(
        records(tmp_path / "b"))  # fmt: skip


def test_reset_optimizer_takes_the_new_learning_rate(overrides, tmp_path):
    run(compose_config(overrides + ["optimization.max_update=6", "optim.lr=1e-3"]), tmp_path / "a")
    start = f"checkpoint.restore_file={tmp_path / 'a' / 'checkpoints' / 'checkpoint_6.pt'}"
    run(compose_config(overrides + [start, "checkpoint.reset_optimizer=true", "optim.lr=5e-3"]), tmp_path / "b")
    run(compose_config(overrides + ["optim.lr=5e-3"]), tmp_path / "fresh")  # the same schedule from update 0
    lr = {r["update"]: r["lr"] for r in records(tmp_path / "fresh") if r["split"] == "train"}
    resumed = [r for r in records(tmp_path / "b") if r["split"] == "train"]
    assert resumed and all(r["lr"] == lr[r["update"]] for r in resumed)


def test_reset_meters_starts_every_count_again(overrides, tmp_path):
    run(compose_config(overrides + ["optimization.max_update=6"]), tmp_path / "a")
    start = f"checkpoint.restore_file={tmp_path / 'a' / 'checkpoints' / 'checkpoint_6.pt'}"
    run(compose_config(overrides + [start, "checkpoint.reset_meters=true", "optim.lr=1e-9",
                                    "checkpoint.reset_optimizer=true"]), tmp_path / "b")  # fmt: skip
    mine, before = summary(tmp_path / "b"), summary(tmp_path / "a")
    train = [r for r in records(tmp_path / "b", ("split", "tokens")) if r["split"] == "train"]
    assert mine["tokens_seen"] == train[-1]["tokens"]
    assert train[0]["tokens"] < before["tokens_seen"]  # counted from this session's first update, not from a's
    assert mine["tokens_per_s"] == pytest.approx(mine["tokens_seen"] / (mine["wall_seconds"] - mine["valid_seconds"]))
    # The best is this session's best, and it is what checkpoint_best.pt holds.
    valid = [r for r in records(tmp_path / "b", ("split", "update", "loss")) if r["split"] == "valid"]
    best = min(valid, key=lambda r: r["loss"])
    assert mine["best_valid"]["loss"] == best["loss"] and mine["best_valid"]["update"] == best["update"]
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "checkpoint_best.pt")["update"] == best["update"]


def test_a_signal_at_the_last_update_keeps_the_final_train_record(overrides, tmp_path, monkeypatch):
    args = overrides + ["logging.log_interval=5"]  # train records at 5, 10 and the final one at 12
    run(compose_config(args), tmp_path / "reference")
    stop_at(monkeypatch, 12)
    with pytest.raises(RunInterrupted):
        run(compose_config(args), tmp_path / "stopped")
    monkeypatch.undo()
    run(compose_config(args), tmp_path / "stopped")
    assert records(tmp_path / "stopped") == records(tmp_path / "reference")
    trains = [r["update"] for r in records(tmp_path / "stopped") if r["split"] == "train"]
    assert trains == [5, 10, 12]
    # The best checkpoint written by the left-over validation owes no validation: a restore from it validates once.
    best = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "checkpoint_best.pt")
    assert best["update"] == 12 and best["validation_pending"] is False


def test_rates_count_training_time_only(overrides, tmp_path, monkeypatch):
    """A validation (and the start-up before the first update) that took 10^6 s does not dilute tokens/s."""
    import time

    real_clock, offset = time.perf_counter, [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: real_clock() + offset[0])
    real_validate = Trainer.validate

    def slow_validate(self):
        offset[0] += 1e6
        return real_validate(self)

    monkeypatch.setattr(Trainer, "validate", slow_validate)
    run(compose_config(overrides + ["logging.log_interval=3"]), tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in lines if r["split"] == "train"]
    assert len(rates) == 4 and min(rates) > 100  # diluted by 10^6 s, one would be below 0.01


def test_the_window_keeps_its_training_time_across_a_resume():
    window = Window()
    window.add({"loss_sum": 10.0, "masked": 5.0, "tokens": 1000.0, "flops": 0.0, "data_time": 0.5, "seconds": 2.0,
                "gnorm": 1.0})  # fmt: skip
    resumed = Window()
    resumed.load_state_dict(window.state_dict())
    assert resumed.summary(0.0)["tokens_per_s"] == window.summary(0.0)["tokens_per_s"] == 500.0


def test_raising_max_update_on_a_resume_says_the_schedule_changes(overrides, tmp_path, capsys):
    run(compose_config(overrides + ["optimization.max_update=6"]), tmp_path / "a")
    capsys.readouterr()
    run(compose_config(overrides + ["optimization.max_update=8"]), tmp_path / "a")
    out = capsys.readouterr().out
    assert "the learning-rate schedule now runs over 8 updates, not 6" in out
    assert "lr_scheduler.total_num_update=6" in out
    # Pinning the old length is accepted as no change of schedule, and the lr goes on as it would have.
    run(compose_config(overrides + ["optimization.max_update=10", "lr_scheduler.total_num_update=8"]), tmp_path / "a")
    assert "schedule now runs" not in capsys.readouterr().out


def test_patience_stops_after_validations_without_improvement(overrides, tmp_path, monkeypatch, capsys):
    real_validate, losses = Trainer.validate, iter([5.0, 4.0, 4.5, 4.2, 3.0, 3.5])

    def scripted(self):  # validations at 0, 4 and 8 (then 12): best at 4, worse at 8 and 12
        result = real_validate(self)
        self.last_valid = {**result, "loss": next(losses)}
        return self.last_valid

    monkeypatch.setattr(Trainer, "validate", scripted)
    args = overrides + ["checkpoint.patience=2", "optimization.max_update=40"]
    result = run(compose_config(args), tmp_path / "run")
    assert result["updates"] == 12 and "early stop at update 12: 2 validations" in capsys.readouterr().out
    valid = [r["update"] for r in records(tmp_path / "run") if r["split"] == "valid"]
    assert valid == [0, 4, 8, 12]  # the stopping validation is the final one: not repeated
    assert summary(tmp_path / "run")["status"] == "finished"
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "checkpoint_best.pt")["update"] == 4


def test_a_resume_given_the_run_folders_own_tokenizer(overrides, tmp_path):
    """tokenizer.path=<run>/tokenizer.json for that same run: the copy onto itself was a SameFileError."""
    run(compose_config(overrides + ["optimization.max_update=3"]), tmp_path / "run")
    own = tmp_path / "run" / "tokenizer.json"
    before = own.read_bytes()
    result = run(compose_config(overrides + ["optimization.max_update=6",
                                             f"tokenizer.path={own}"]), tmp_path / "run")  # fmt: skip
    assert result["updates"] == 6 and own.read_bytes() == before
