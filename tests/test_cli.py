"""linformer-train as a user runs it: a subprocess, Hydra overrides, multirun, and one-line errors."""
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "linformer-train"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "linformer_pt.cli.train"]
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture
def quick(cache_dir):
    return ["experiment=smoke", "optimization.max_update=4", f"dataset.cache_dir={cache_dir}", "logging.tensorboard=false"]


def test_good_run_exits_zero_and_writes_checkpoint_and_log(quick, tmp_path):
    run_dir = tmp_path / "run"
    result = cli(*quick, "model.k=8", "model.sharing=kv", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"output folder: {run_dir}" in result.stdout
    assert (run_dir / "checkpoints" / "checkpoint_last.pt").is_file()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3  # valid, train, valid
    assert "upd/s" in result.stderr  # the progress bar, with its rate


def test_print_composed_config(tmp_path):
    result = cli("model.k=32", "model.sharing=layerwise", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "  k: 32\n" in result.stdout and "  sharing: layerwise\n" in result.stdout


def test_multirun_sweeps_k(quick, tmp_path):
    sweep = tmp_path / "sweep"
    result = cli("--multirun", *quick, "model.k=8,16", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = sorted(p.relative_to(sweep).parts[0] for p in sweep.glob("*/checkpoints/checkpoint_last.pt"))
    assert jobs == [
        "0_experiment=smoke,model.k=8,optimization.max_update=4",
        "1_experiment=smoke,model.k=16,optimization.max_update=4",
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["dataset=text", "dataset.train_files=[/no/such/corpus.txt]"], "dataset.train_files: no such file: /no/such/corpus.txt"),
        (["dataset=text", "dataset.train_files=[EMPTY]"], "empty.txt contains no text"),
        (["model=gpt"], "unknown model 'gpt'; known: linformer_base, linformer_large"),
        (["model.name=gpt"], "unknown model 'gpt'; known: linformer_roberta"),
        (["model.k=300"], "model.k=300 must be an integer in [1, max_positions=256]"),
        (["task.tokens_per_sample=512"], "task.tokens_per_sample=512 exceeds model.max_positions=256"),
    ],
)
def test_bad_input_fails_with_one_line_and_keeps_earlier_outputs(args, message, cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    checkpoint = run_dir / "checkpoints" / "checkpoint_last.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"an earlier run's checkpoint")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    args = [a.replace("EMPTY", str(empty)) for a in args]
    result = cli(*args, f"dataset.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines == [f"linformer-train: error: {lines[-1].split('error: ', 1)[1]}"], result.stderr
    assert message in lines[0]
    assert checkpoint.read_bytes() == b"an earlier run's checkpoint"
    assert not (run_dir / "metrics.jsonl").exists()
