"""linformer-eval of a run reproduces the run's own last validation: the same dataset.max_valid_tokens subset and
masks; dataset.max_valid_tokens=0 scores the whole validation set; eval_files errors name eval_files."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_config

from linformer_pt.cli import eval as eval_cli
from linformer_pt.cli.train import run as train_run


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory, cache_dir) -> Path:
    """A smoke run that validated on a ~1,500-token subset of the embedded corpus's validation set."""
    folder = tmp_path_factory.mktemp("eval_budget")
    overrides = ["experiment=smoke", f"dataset.cache_dir={cache_dir}", "logging.progress_bar=false",
                 "logging.tensorboard=false", "dataset.max_valid_tokens=1500", "optimization.max_update=4",
                 "optimization.validate_interval_updates=0"]  # fmt: skip
    train_run(compose_config(overrides), folder)
    return folder


def eval_in_fresh_process(*args: str) -> dict:
    command = [sys.executable, "-m", "linformer_pt.cli.eval", *args, "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_eval_of_a_run_reproduces_its_last_validation_and_whole_set_scores_more(budget_run):
    records = [json.loads(line) for line in (budget_run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r["split"] == "valid"][-1]
    checkpoint = torch.load(budget_run / "checkpoints" / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert checkpoint["last_valid"]["masked"] == last["masked"]
    on_run = eval_in_fresh_process(str(budget_run), "--last")
    assert on_run["masked"] == last["masked"]
    assert on_run["loss"] == pytest.approx(last["loss"], rel=1e-6)
    assert on_run["valid_set"] == "the run's validation subset (dataset.max_valid_tokens=1500)"
    whole = eval_in_fresh_process(str(budget_run), "--last", "dataset.max_valid_tokens=0")
    assert whole["masked"] > 2 * on_run["masked"] and whole["samples"] > on_run["samples"]
    assert whole["valid_set"] == "the whole validation set"


def test_a_missing_eval_file_is_blamed_on_eval_files(budget_run, tmp_path, capsys):
    missing = tmp_path / "missing.txt"
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main([str(budget_run), "--last", f"eval_files=[{missing}]", "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "eval_files" in err and "train_files" not in err and "missing.txt" in err


def test_eval_of_a_streamed_run_reproduces_its_last_validation(tmp_path, cache_dir, corpus_files):
    overrides = ["experiment=smoke", f"dataset.cache_dir={cache_dir}", "logging.progress_bar=false",
                 "logging.tensorboard=false", "dataset=text", "dataset.streaming=true",
                 f"dataset.train_files=[{corpus_files['train']}]", f"dataset.valid_files=[{corpus_files['valid']}]",
                 "dataset.max_valid_tokens=1500", "optimization.max_update=3",
                 "optimization.validate_interval_updates=0"]  # fmt: skip
    train_run(compose_config(overrides), tmp_path)
    last = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"valid"' in line][-1]
    on_run = eval_in_fresh_process(str(tmp_path), "--last")
    assert on_run["masked"] == last["masked"] and on_run["loss"] == pytest.approx(last["loss"], rel=1e-6)
    assert on_run["valid_set"] == "the run's streamed validation head (dataset.max_valid_tokens=1500)"
