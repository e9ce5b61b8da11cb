"""What a new user hits first, each command in a fresh process (an in-process import would hide a missing
registration): every entry point runs, and mistakes on the command line are one line that writes nothing."""
import os
import random
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

BIN = Path(sys.executable).parent
ENTRY_POINTS = ["train", "preprocess", "train-tokenizer", "export", "eval", "fill-mask", "sweep-report", "analyze",
                "predict"]  # fmt: skip  (setup.py's console_scripts, as linformer-<name>)


def cli(name: str, *args: str, cwd: Path, env: Dict[str, str] = None) -> subprocess.CompletedProcess:
    """`linformer-<name> args` in a fresh process, with umask 022 (the mode exports must honour)."""
    return subprocess.run([str(BIN / f"linformer-{name}"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env, preexec_fn=lambda: os.umask(0o022))  # fmt: skip


def one_error_line(result: subprocess.CompletedProcess, prog: str = "linformer-train") -> str:
    """The single stderr line of a refused command (exit 2), without its `prog: error: ` prefix."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), result.stderr[-3000:]
    return lines[0][len(f"{prog}: error: ") :]


def snapshot(folder: Path) -> Dict[str, Tuple[bytes, int]]:
    """Every file under `folder` (hidden ones too) with its bytes and mtime."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def quick(cache_dir: Path, updates: int = 4) -> List[str]:
    return ["experiment=smoke", f"optimization.max_update={updates}", f"dataset.cache_dir={cache_dir}",
            "logging.tensorboard=false", "logging.progress_bar=false"]  # fmt: skip


def write_reviews(path: Path, rows: int) -> Path:
    """A small labelled TSV (sentence, label) of common English words."""
    rng = random.Random(rows)
    lines = ["sentence\tlabel"]
    for _ in range(rows):
        good = rng.random() < 0.5
        words = [rng.choice(["the", "a", "of", "and", "is", "in"]) for _ in range(5)]
        lines.append(f"{'good' if good else 'bad'} {' '.join(words)}\t{int(good)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir) -> Dict[str, Path]:
    """A pretraining run and a fine-tuning run from it, both made by linformer-train."""
    base = tmp_path_factory.mktemp("front_door")
    pretrain = base / "pretrain"
    result = cli("train", *quick(cache_dir), f"hydra.run.dir={pretrain}", cwd=base)
    assert result.returncode == 0, result.stderr[-3000:]
    reviews = {split: write_reviews(base / f"{split}.tsv", rows) for split, rows in (("train", 64), ("dev", 16))}
    finetune = base / "finetune"
    args = ["task=sentence_prediction", "dataset=text", f"dataset.train_files=[{reviews['train']}]",
            f"dataset.valid_files=[{reviews['dev']}]", f"checkpoint.finetune_from={pretrain}", "task.num_classes=2",
            "task.tokens_per_sample=32", "optimization.max_update=4", "optimization.validate_interval_updates=0",
            "logging.tensorboard=false", "logging.progress_bar=false", f"hydra.run.dir={finetune}"]  # fmt: skip
    result = cli("train", *args, cwd=base)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"base": base, "pretrain": pretrain, "finetune": finetune, "reviews": reviews["dev"]}


def assert_shared_modes(folder: Path) -> None:
    """An export is readable by others, as any file written under umask 022."""
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_export_and_predict_a_fine_tuning_run(runs):
    out = runs["base"] / "export_finetune"
    result = cli("export", str(runs["finetune"]), str(out), cwd=runs["base"])
    assert result.returncode == 0, result.stderr  # was "unknown task 'sentence_prediction'; known: (none)"
    assert (out / "config.json").is_file()
    assert_shared_modes(out)
    preds = runs["base"] / "predictions.jsonl"
    result = cli("predict", str(out), str(runs["reviews"]), "--out", str(preds), "--no-progress", cwd=runs["base"])
    assert result.returncode == 0, result.stderr
    assert len(preds.read_text().splitlines()) == 16


def test_export_eval_fill_mask_and_report_a_pretraining_run(runs, cache_dir):
    base, pretrain = runs["base"], runs["pretrain"]
    out = base / "export_mlm"
    result = cli("export", str(pretrain), str(out), cwd=base)
    assert result.returncode == 0, result.stderr
    assert_shared_modes(out)
    result = cli("fill-mask", str(out), "The <mask> of the module.", cwd=base)
    assert result.returncode == 0, result.stderr
    result = cli("eval", str(pretrain), f"dataset.cache_dir={cache_dir}", "--no-progress", cwd=base)
    assert result.returncode == 0, result.stderr
    assert '"loss"' in result.stdout
    result = cli("sweep-report", str(pretrain), "--out", str(base / "report"), cwd=base)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_every_entry_point_starts_in_a_fresh_process(name, tmp_path):
    result = cli(name, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


@pytest.mark.parametrize(
    "args, message",
    [
        (["optimizaton.max_update=5"], "unknown key optimizaton; did you mean optimization?"),
        (["modle.k=32"], "unknown key modle; did you mean model?"),
        (["logging.run_name=a=b"], "logging.run_name='a=b'"),
        (["dataset=text", "dataset.train_files=[a=b.txt]"], "dataset.train_files=['a=b.txt']"),
    ],
)
def test_misspelled_sections_and_unquoted_equals_are_one_line(args, message, tmp_path):
    error = one_error_line(cli("train", *args, cwd=tmp_path))
    assert message in error
    assert list(tmp_path.iterdir()) == []


def test_a_run_folder_that_is_a_file_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.write_text("not a folder")
    error = one_error_line(cli("train", f"hydra.run.dir={run_dir}", cwd=tmp_path))
    assert f"hydra.run.dir={run_dir}" in error and "is a file" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and run_dir.read_text() == "not a folder"


@pytest.mark.skipif(shutil.which("srun") is not None, reason="Slurm is installed here")
@pytest.mark.parametrize("launcher", ["slurm_cpu", "submitit_slurm"])
def test_a_slurm_launcher_without_slurm_is_one_line(launcher, tmp_path):
    error = one_error_line(cli("train", "--multirun", f"hydra/launcher={launcher}", cwd=tmp_path))
    assert f"hydra/launcher={launcher}" in error and "no Slurm" in error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["dataset=text", "dataset.train_files=[missing.txt]"], "dataset.train_files: no such file: missing.txt"),
        (["dataset=text", "dataset.train_files=[DIR/empty.txt]"], "dataset.train_files: DIR/empty.txt contains no text"),
        (["dataset=text", "dataset.train_files=[DIR/*.nothing]"], "dataset.train_files: the glob DIR/*.nothing matches no file"),
        (["dataset=text", "dataset.train_files=[DIR/a.txt]", "dataset.valid_files=[gone.txt]"],
         "dataset.valid_files: no such file: gone.txt"),
        (["tokenizer.path=DIR/empty.txt"], "tokenizer.path: DIR/empty.txt is empty"),
        (["checkpoint.init_from=DIR/empty.txt"], "checkpoint.init_from: DIR/empty.txt is empty"),
        (["checkpoint.restore_file=missing.pt"], "checkpoint.restore_file: no such file: missing.pt"),
        (["task=sentence_prediction", "dataset=text", "dataset.train_files=[DIR/empty.txt]",
          "checkpoint.finetune_from=DIR"], "dataset.train_files: DIR/empty.txt is empty"),
    ],
)  # fmt: skip
def test_bad_input_paths_are_one_line_and_leave_no_run_folder(args, message, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "empty.txt").write_text("\n\n")
    (inputs / "a.txt").write_text("some text\n")
    work = tmp_path / "work"
    work.mkdir()
    error = one_error_line(cli("train", *[a.replace("DIR", str(inputs)) for a in args], cwd=work))
    assert message.replace("DIR", str(inputs)) in error
    assert list(work.iterdir()) == []  # no outputs/<date>/<time>_<model> holding a `failed` summary


@pytest.mark.parametrize("data_env", [None, "/no/such/data"])
def test_preset_data_paths_name_the_linformer_data_variable(data_env, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LINFORMER_DATA"}
    if data_env:
        env["LINFORMER_DATA"] = data_env
    args = ["experiment=finetune_sst2", f"checkpoint.finetune_from={tmp_path}"]
    error = one_error_line(cli("train", *args, cwd=tmp_path, env=env))
    assert "dataset.train_files: no such file:" in error and "sst2/train.tsv" in error
    assert "set LINFORMER_DATA to the folder holding the data sets" in error
    assert (f"LINFORMER_DATA is {data_env}" if data_env else "LINFORMER_DATA is not set") in error
    assert list(tmp_path.iterdir()) == []


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """A process holding the run folder's lock as a running linformer-train does (fcntl.lockf on .run.lock)."""
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644); "
            "fcntl.lockf(fd, fcntl.LOCK_EX); os.pwrite(fd, str(os.getpid()).encode(), 0); print('locked', flush=True); "
            "time.sleep(600)")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", code, str(run_dir / ".run.lock")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_run_refused_by_the_folder_lock_touches_nothing(cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("model:\n  k: 64\n")  # what the running run composed
    (run_dir / "train.log").write_text("the running run's log\n")
    holder = hold_lock(run_dir)
    try:
        before = snapshot(run_dir)
        error = one_error_line(cli("train", *quick(cache_dir), "model.k=32", f"hydra.run.dir={run_dir}", cwd=tmp_path))
        assert error == (f"another run (pid {holder.pid}) is using output folder {run_dir}; choose another "
                         "hydra.run.dir or wait for it to finish")  # fmt: skip
        assert snapshot(run_dir) == before
    finally:
        holder.kill()
        holder.wait()


def test_a_rerun_of_a_finished_run_rewrites_nothing_unless_it_continues(cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = cli("train", *quick(cache_dir), "model.dropout=0.1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    before = snapshot(run_dir)

    changed = cli("train", *quick(cache_dir), "model.dropout=0.3", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    error = one_error_line(changed)
    assert f"{run_dir} already holds a finished run (update 4) with model.dropout=0.1 (given: 0.3)" in error
    assert "nothing trained" in error
    assert snapshot(run_dir) == before

    # The same run, watched differently (how it logs is no change of the run): nothing to train, nothing refused.
    same = cli("train", *quick(cache_dir), "model.dropout=0.1", "logging.log_interval=2", f"hydra.run.dir={run_dir}",
               cwd=tmp_path)  # fmt: skip
    assert same.returncode == 0, same.stderr
    assert "already holds this run, finished at update 4" in same.stdout and "nothing to train" in same.stdout
    assert snapshot(run_dir) == before

    longer = cli("train", *quick(cache_dir, updates=6), "model.dropout=0.1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "resumed at update 4" in longer.stdout and "done: 6 updates" in longer.stdout


def lock_is_free(run_dir: Path) -> bool:
    """Asked from another process, as a second linformer-train would (a probe in this one would drop our lock)."""
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR)\n"
            "try: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError: sys.exit(1)")  # fmt: skip
    return subprocess.run([sys.executable, "-c", code, str(run_dir / ".run.lock")]).returncode == 0


def test_the_run_lock_is_held_from_before_train_log_until_the_end(tmp_path):
    """linformer-train takes the folder's lock before opening train.log and Trainer.fit takes it again inside:
    the inner release must not free the folder while the outer holder still writes (summary.json)."""
    from linformer_pt.training.resume import run_folder_lock

    with run_folder_lock(tmp_path, True):
        with run_folder_lock(tmp_path, True):
            assert not lock_is_free(tmp_path)
        assert not lock_is_free(tmp_path)
    assert lock_is_free(tmp_path)
