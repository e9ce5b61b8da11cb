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
    assert any(line.startswith(("no CUDA device: training on the CPU", "device: ")) for line in result.stdout.splitlines())
    assert (run_dir / "checkpoints" / "checkpoint_last.pt").is_file()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3  # valid, train, valid
    # Not a terminal (captured, like a batch job's log): one line per record instead of a redrawn bar.
    assert "train | epoch 001 | update 4/4 | loss " in result.stdout and "upd/s" not in result.stderr
    log = (run_dir / "train.log").read_text()  # the console, in the run folder
    assert f"output folder: {run_dir}" in log and "done: 4 updates; valid loss" in log
    assert "\r" not in log and "valid | epoch 001 | update 4 | loss " in log


def test_print_composed_config(tmp_path):
    result = cli("model.k=32", "model.sharing=layerwise", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "  k: 32\n" in result.stdout and "  sharing: layerwise\n" in result.stdout


@pytest.mark.slow
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


@pytest.mark.parametrize(
    "args, message",
    [
        (["model.sharing=layer_wise"], "model.sharing='layer_wise' is not allowed"),
        (["model.k=abc"], "model.k='abc' must be an integer"),
        (["optimization.max_updates=5"], "unknown key optimization.max_updates; did you mean max_update?"),
        (["modell=linformer_tiny"], "unknown key modell; did you mean model?"),
        (["logging.progress_bar=maybe"], "logging.progress_bar: Value 'maybe' is not a valid bool"),
        (["--multirun", "model.k=8,300"], "model.k=300 must be an integer"),  # every job of a sweep, up front
    ],
)
def test_bad_values_stop_before_anything_is_written(args, message, tmp_path):
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"linformer-train: error: {result.stderr.split('error: ', 1)[-1].strip()}"]
    assert message in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []  # no outputs/<date>/<time>_<model>/ with .hydra/ and an empty log


def test_help_lists_only_options_that_exist(tmp_path):
    result = cli("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    groups = result.stdout.split("== Configuration groups ==", 1)[1].split("== Config ==", 1)[0]
    listed = dict(line.split(": ", 1) for line in groups.splitlines() if ": " in line)
    configs = Path(__file__).resolve().parents[1] / "configs"
    assert set(listed) == {"attention", "dataset", "experiment", "logger", "lr_scheduler", "model", "optim", "task"}
    for group, options in listed.items():
        assert options.split(", ") == sorted(p.stem for p in (configs / group).glob("*.yaml")), group


def other_cli(entry: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / entry
    return subprocess.run([str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "entry, arg", [("linformer-preprocess", "shard_tokens=0"), ("linformer-train-tokenizer", "tokenizer.min_frequency=-3")]
)
def test_preprocess_commands_refuse_bad_values_before_writing(entry, arg, tmp_path):
    result = other_cli(entry, arg, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"{entry}: error: {arg} must be > 0" if "shard" in arg else
                                          f"{entry}: error: {arg} must be >= 0"]  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_train_tokenizer_writes_its_console_into_the_run_folder(cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = [f"dataset.cache_dir={cache_dir}", "tokenizer.vocab_size=300", f"output={tmp_path / 'tok.json'}"]
    result = other_cli("linformer-train-tokenizer", *args, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tokenizer (300 tokens)" in (run_dir / "train_tokenizer.log").read_text()
