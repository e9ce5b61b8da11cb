"""Checkpoint policy and resume checks, in process: retention, failing writes, refused mismatches, resets, locks."""
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import build_trainer, compose_config

from linformer_pt.config import load_config
from linformer_pt.errors import UserError
from linformer_pt.registry import MODELS, TASKS
from linformer_pt.training import checkpoint as checkpoint_module
from linformer_pt.training.checkpoint import CheckpointWriter, load_checkpoint, save_checkpoint
from linformer_pt.training.resume import find_checkpoint, run_folder_lock
from linformer_pt.training.trainer import Trainer


@pytest.fixture
def base(tiny_overrides):
    return tiny_overrides + ["optimization.max_update=6", "optimization.validate_interval_updates=0"]


def resumed_trainer(overrides, run_dir):
    """A trainer built as linformer-train builds it on a rerun into run_dir (resuming its checkpoint)."""
    cfg = load_config(compose_config(overrides))
    torch.manual_seed(cfg.common.seed)
    task = TASKS.get(cfg.task.name).cls.setup(cfg)
    model = MODELS.get(cfg.model.name).cls.build(cfg.model, task)
    return Trainer(cfg, task, model, run_dir, resume_from=find_checkpoint(cfg, run_dir))


def test_numbered_checkpoints_keep_exactly_the_last_n(base, tmp_path):
    trainer = build_trainer(base + ["checkpoint.save_interval_updates=1", "checkpoint.keep_last=2"], tmp_path)
    trainer.fit()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["checkpoint_5.pt", "checkpoint_6.pt", "checkpoint_best.pt", "checkpoint_last.pt"]
    assert load_checkpoint(tmp_path / "checkpoints" / "checkpoint_5.pt")["update"] == 5
    assert load_checkpoint(tmp_path / "checkpoints" / "checkpoint_6.pt")["update"] == 6


def test_keep_best_false_writes_no_best_checkpoint(base, tmp_path):
    build_trainer(base + ["checkpoint.keep_best=false"], tmp_path).fit()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint_last.pt"]


def test_a_full_disk_mid_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "update": 1})
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(100)  # part of the bytes made it to disk, then the device filled up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full)
    writer = CheckpointWriter(tmp_path, background=True)
    writer.save({"model": {"w": torch.zeros(3)}, "update": 2}, ["checkpoint_last.pt"])
    with pytest.raises(UserError, match="No space left on device; the previous one is intact"):
        writer.wait()
    assert load_checkpoint(path)["update"] == 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_last.pt"]  # no temporary file left behind


def test_background_save_writes_the_state_of_the_moment_it_was_asked(tmp_path):
    weights = torch.ones(4)
    writer = CheckpointWriter(tmp_path, background=True)
    writer.save({"model": {"w": weights}}, ["checkpoint_last.pt", "checkpoint_3.pt"])
    weights.add_(1.0)  # training goes on while the file is written
    writer.wait()
    for name in ("checkpoint_last.pt", "checkpoint_3.pt"):
        assert torch.equal(load_checkpoint(tmp_path / name)["model"]["w"], torch.ones(4))


def test_truncated_and_foreign_checkpoints_are_one_line(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", {"model": {"w": torch.ones(1000)}})
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:-300])
    with pytest.raises(UserError, match="cut.pt is truncated or not a checkpoint") as info:
        load_checkpoint(tmp_path / "cut.pt")
    assert "\n" not in str(info.value)
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not a linformer-pt checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


@pytest.mark.parametrize("change, field", [
    ("model.k=8", "model.k=16 in the checkpoint, 8 now"),
    ("model.sharing=kv", "model.sharing='headwise' in the checkpoint, 'kv' now"),
    ("model.embed_dim=32", "model.embed_dim=64 in the checkpoint, 32 now"),
    ("dataset.batch_size=8", "global batch"),
    ("task.mask_prob=0.2", "task.mask_prob=0.15 in the checkpoint, 0.2 now"),
    ("optim.lr=0.1", "optim.lr"),
    ("lr_scheduler.warmup_updates=2", "lr_scheduler.warmup_updates=5 in the checkpoint, 2 now"),
])  # fmt: skip
def test_a_resume_that_changes_the_run_is_refused_naming_the_field(base, tmp_path, change, field):
    build_trainer(base, tmp_path).fit()
    with pytest.raises(UserError, match="cannot resume from") as info:
        resumed_trainer(base + [change], tmp_path)
    assert field in str(info.value) and "\n" not in str(info.value)


def test_reset_flags_allow_deliberate_changes(base, tmp_path):
    build_trainer(base, tmp_path).fit()
    more = base + ["optimization.max_update=8"]
    trainer = resumed_trainer(more + ["dataset.batch_size=8", "checkpoint.reset_dataloader=true"], tmp_path)
    assert trainer.update == 6 and trainer.train_iterator.state_dict()["offset"] == 0
    trainer = resumed_trainer(more + ["optim.lr=0.1", "checkpoint.reset_optimizer=true",
                                      "checkpoint.reset_lr_scheduler=true"], tmp_path)  # fmt: skip
    assert trainer.update == 6 and not trainer.optimizer.state
    trainer.lr_scheduler.step(trainer.update)
    assert trainer.lr_scheduler.base_lrs[0] == pytest.approx(0.1)
    kept = resumed_trainer(more, tmp_path)
    assert kept.optimizer.state and kept.best_valid_score < float("inf")
    assert resumed_trainer(more + ["checkpoint.reset_meters=true"], tmp_path).best_valid_score == float("inf")


def test_a_rerun_of_a_finished_run_trains_nothing_and_keeps_the_log(base, tmp_path):
    build_trainer(base, tmp_path).fit()
    log = (tmp_path / "metrics.jsonl").read_text()
    summary = resumed_trainer(base, tmp_path).fit()
    assert summary["updates"] == 6 and summary.get("finished_before")
    assert (tmp_path / "metrics.jsonl").read_text() == log


def test_a_resume_cuts_the_log_back_to_its_checkpoint(base, tmp_path):
    build_trainer(base + ["logging.log_interval=1"], tmp_path).fit()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    # A run that got further than its checkpoint before dying left lines the resume writes again.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"split": "train", "update": 7, "loss": 1.0}) + "\n" + '{"split": "tr')
    resumed_trainer(base + ["logging.log_interval=1", "optimization.max_update=8"], tmp_path).fit()
    updates = [json.loads(l)["update"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert updates[: len(lines)] == [json.loads(l)["update"] for l in lines]
    assert updates[len(lines) :] == [7, 8, 8]  # train 7, train 8, the final validation: each once


def test_auto_resume_off_refuses_a_folder_that_holds_a_run(base, tmp_path):
    build_trainer(base, tmp_path).fit()
    trainer = build_trainer(base + ["checkpoint.auto_resume=false"], tmp_path)
    with pytest.raises(UserError, match="already holds a run"):
        find_checkpoint(trainer.cfg, tmp_path)


def test_a_second_run_in_the_same_folder_is_refused(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from linformer_pt.training.resume import run_folder_lock\n"
         "with run_folder_lock(Path(sys.argv[1]), True):\n print('locked', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(UserError, match=f"another run \\(pid {holder.pid}\\) is using output folder"):
        with run_folder_lock(tmp_path, enabled=True):
            pass
    holder.kill()  # kill -9: the lock goes with the process
    holder.wait()
    with run_folder_lock(tmp_path, enabled=True):
        pass
