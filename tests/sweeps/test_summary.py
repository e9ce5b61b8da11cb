"""summary.json and the unigram baseline: what each run leaves for a sweep report, checked against hand counts."""
import errno
import json
import math
import os
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import compose_config

from linformer_pt.cli.train import TORCH_DEFAULT_THREADS, run
from linformer_pt.config import load_config
from linformer_pt.data.unigram import unigram_baseline
from linformer_pt.errors import UserError
from linformer_pt.tasks.masked_lm import MaskedLMTask
from linformer_pt.training.run_stats import peak_memory_mb
from linformer_pt.training.summary import write_summary


def test_the_unigram_baseline_equals_a_hand_computation():
    is_special = np.array([True, False, False, False, False, True])
    counts = np.array([50, 3, 0, 1, 6, 9])  # specials (ids 0 and 5) are never targets: their counts are left out
    result = unigram_baseline(counts, is_special, [np.array([1, 1, 4]), np.array([2])])
    # add-one over the 4 ordinary ids: (3+1, 0+1, 1+1, 6+1) / 14
    hand = -(2 * math.log(4 / 14) + math.log(7 / 14) + math.log(1 / 14)) / 4
    assert result["targets"] == 4
    assert math.isclose(result["loss"], hand, rel_tol=1e-12)
    assert math.isclose(result["ppl"], math.exp(hand), rel_tol=1e-12)


def test_the_task_baseline_scores_exactly_the_targets_validation_scores(tiny_overrides):
    task = MaskedLMTask(load_config(compose_config(tiny_overrides + ["dataset.max_valid_tokens=3000"])))
    counts = Counter()
    for shard in task.corpora["train"].shards:
        counts.update(np.asarray(shard.tokens).tolist())
    ordinary = [i for i in range(task.vocab_size) if not task.is_special[i]]
    total = sum(counts[i] for i in ordinary) + len(ordinary)
    iterator = task.batch_iterator("valid")
    iterator.restart()  # as Trainer.validate reads it
    targets = [t for batch in iterator.epoch_iter() for t in batch["targets"].tolist()]
    hand = -sum(math.log((counts[t] + 1) / total) for t in targets) / len(targets)
    result = task.unigram_baseline()
    assert result["targets"] == len(targets) > 100
    assert math.isclose(result["loss"], hand, rel_tol=1e-9)


@pytest.mark.slow
def test_a_runs_peak_memory_is_its_own_not_an_earlier_runs_in_the_same_process(tiny_overrides, tmp_path):
    # Hydra's basic launcher runs a multirun's jobs one after another in one process: a large earlier job must not
    # lend its peak to the next one (a process's max RSS never goes down unless the run resets it).
    ballast = b"\x01" * (2 * 2**30)  # 2 GiB, written, so resident
    earlier_peak = peak_memory_mb(torch.device("cpu"))
    del ballast
    assert earlier_peak > 2048
    run(compose_config(tiny_overrides + ["optimization.max_update=2"]), tmp_path, run_name="next", overrides=[])
    summary = json.loads((tmp_path / "summary.json").read_text())
    if summary["peak_memory_kind"] == "process_max_rss_since_process_start":
        pytest.skip("this system cannot reset a process's peak memory")  # and the summary says so
    assert summary["peak_memory_kind"] == "process_max_rss"
    assert 0 < summary["peak_memory_mb"] < earlier_peak - 1024


def test_common_threads_0_is_torchs_default_also_after_a_job_that_set_threads(tiny_overrides, tmp_path):
    # The jobs of a multirun share a process: common.threads of one job must not stay for the next.
    other = TORCH_DEFAULT_THREADS + 1
    run(compose_config(tiny_overrides + ["optimization.max_update=1", f"common.threads={other}"]), tmp_path / "a")
    assert torch.get_num_threads() == other
    run(compose_config(tiny_overrides + ["optimization.max_update=1", "common.threads=0"]), tmp_path / "b")
    assert torch.get_num_threads() == TORCH_DEFAULT_THREADS


def test_a_finished_run_writes_its_summary_and_a_rerun_trains_nothing(tiny_overrides, tmp_path):
    cfg = compose_config(tiny_overrides + ["optimization.max_update=12", "optimization.validate_interval_updates=4",
                                           "logging.log_interval=4"])  # fmt: skip
    run(cfg, tmp_path, run_name="model.k=16", overrides=["model.k=16"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["split"] == "valid"]
    train = [r for r in records if r["split"] == "train"]
    assert summary["status"] == "finished" and summary["run_name"] == "model.k=16"
    assert summary["overrides"] == ["model.k=16"]
    assert summary["updates"] == summary["max_update"] == 12
    assert summary["config"]["model"]["k"] == 16
    # Tokens seen grow with every update and end at the summary's count.
    assert [r["tokens"] for r in train] == sorted(r["tokens"] for r in train)
    assert summary["tokens_seen"] == train[-1]["tokens"] == valid[-1]["tokens"] > 12 * 16
    assert summary["final_valid"] == {"loss": valid[-1]["loss"], "ppl": valid[-1]["ppl"]}
    best = min(valid, key=lambda r: r["loss"])
    assert summary["best_valid"] == {"loss": best["loss"], "ppl": best["ppl"], "update": best["update"]}
    assert summary["unigram_baseline"]["ppl"] > 1 and summary["tokens_per_s"] > 0 and summary["peak_memory_mb"] > 0
    assert summary["wall_seconds"] > summary["valid_seconds"] > 0

    metrics_before = (tmp_path / "metrics.jsonl").read_bytes()
    checkpoint = tmp_path / "checkpoints" / "checkpoint_last.pt"
    saved_at = checkpoint.stat().st_mtime_ns
    again = run(cfg, tmp_path)
    assert again["finished_before"] and again["final_valid"] == summary["final_valid"]
    assert (tmp_path / "metrics.jsonl").read_bytes() == metrics_before
    assert checkpoint.stat().st_mtime_ns == saved_at

    # More updates asked of the same folder: not the finished run any more, so it resumes and trains on.
    longer = run(compose_config(tiny_overrides + ["optimization.max_update=14", "optimization.validate_interval_updates=4",
                                                  "logging.log_interval=4"]), tmp_path)  # fmt: skip
    assert longer["updates"] == 14 and not longer.get("finished_before")


def test_a_run_that_fails_says_why_in_its_summary(tiny_overrides, tmp_path):
    cfg = compose_config(tiny_overrides + ["dataset=text", f"dataset.train_files=[{tmp_path / 'missing.txt'}]"])
    try:
        run(cfg, tmp_path / "run")
    except Exception as err:  # the CLI turns it into one line; here the summary is what is checked
        message = str(err)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["error"] == message and "missing.txt" in message


# fsync: the disk fills while the temporary file is written (half a file on disk); replace: at the rename itself.
@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_full_disk_is_one_line_and_keeps_the_previous_summary(tmp_path, monkeypatch, failing):
    previous = write_summary(tmp_path, {"status": "interrupted", "updates": 7})
    before = previous.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, failing, disk_full)
    with pytest.raises(UserError) as err:
        write_summary(tmp_path, {"status": "finished", "updates": 20, "final_valid": {"loss": 1.0}})
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert f"could not write {previous}" in message and "No space left on device" in message
    assert previous.read_bytes() == before  # a sweep report still sees the run as it was
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary file left behind


def test_a_full_disk_at_the_summary_does_not_hide_the_error_under_way(tiny_overrides, tmp_path, monkeypatch, capsys):
    import linformer_pt.cli.train as train_cli

    def disk_full(output_dir, summary):
        raise UserError(f"could not write {output_dir}/summary.json: No space left on device")

    monkeypatch.setattr(train_cli, "write_summary", disk_full)
    cfg = compose_config(tiny_overrides + ["dataset=text", f"dataset.train_files=[{tmp_path / 'missing.txt'}]"])
    with pytest.raises(UserError, match="missing.txt"):  # the run's own error, not the disk's
        run(cfg, tmp_path / "run")
    assert "warning: could not write" in capsys.readouterr().err


def test_a_full_disk_at_the_summary_keeps_the_interrupts_exit_status(tiny_overrides, tmp_path, monkeypatch, capsys):
    import linformer_pt.cli.train as train_cli
    from linformer_pt.errors import RunInterrupted

    def interrupted(config, output_dir, dist, built):
        built["trainer"] = object()
        raise RunInterrupted("SIGTERM: interrupted at update 3; checkpoint written", 75)

    def disk_full(output_dir, summary):
        raise UserError("could not write summary.json: No space left on device")

    monkeypatch.setattr(train_cli, "train", interrupted)
    monkeypatch.setattr(train_cli, "run_summary", lambda *args, **kwargs: {"status": "interrupted"})
    monkeypatch.setattr(train_cli, "write_summary", disk_full)
    with pytest.raises(RunInterrupted) as stop:  # a scheduler requeues on 75; a disk error would exit 2
        run(compose_config(tiny_overrides), tmp_path / "run")
    assert stop.value.exit_code == 75
    assert "warning: could not write summary.json" in capsys.readouterr().err
