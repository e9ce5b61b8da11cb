"""A checkpoint from a stranger cannot run code: every command that reads one refuses a malicious pickle.

The hostile file is a real torch.save file whose pickle calls os.system to create a marker file when unpickled
(what torch.load(weights_only=False) would do). Each command must exit non-zero with one line, and the marker
must never appear.
"""
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import torch

from linformer_pt.errors import UserError
from linformer_pt.training.checkpoint import load_checkpoint, save_checkpoint, unsafe_value

BIN = Path(sys.executable).parent


class RunsCode:
    """Unpickling this runs a shell command: the attack."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def hostile_checkpoint(path: Path, marker: Path) -> Path:
    """Looks like a training checkpoint; its model entry runs `touch marker` when unpickled."""
    torch.save({"model": RunsCode(marker), "cfg": {}, "update": 3}, path)
    return path


def command(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([str(BIN / name), *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def error_lines(result: subprocess.CompletedProcess) -> List[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_the_attack_is_real(tmp_path):
    """Without weights_only the file does run its command (so the tests below prove a refusal, not a dud)."""
    marker = tmp_path / "ran"
    path = hostile_checkpoint(tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_load_checkpoint_refuses_without_running(tmp_path):
    marker = tmp_path / "ran"
    path = hostile_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(UserError, match=r"is not a safe checkpoint: loading it could run code \(it needs posix.system\)"):
        load_checkpoint(path)
    assert not marker.exists()


def test_saved_checkpoints_hold_plain_values_only(tmp_path):
    assert unsafe_value({"a": [1, 2.0, "x", None, torch.zeros(2)], "b": {"c": (True,)}}) is None
    assert "TorchVersion" in unsafe_value({"provenance": {"torch": torch.__version__}})
    with pytest.raises(TypeError, match=r"state\['x'\] is a pathlib"):
        save_checkpoint(tmp_path / "bad.pt", {"model": {}, "x": tmp_path})
    assert not (tmp_path / "bad.pt").exists()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    marker = folder / "ran"
    return hostile_checkpoint(folder / "evil.pt", marker), marker


CASES = {
    "eval": lambda evil, tmp: ("linformer-eval", str(evil)),
    "export": lambda evil, tmp: ("linformer-export", str(evil), str(tmp / "export")),
    "fill-mask": lambda evil, tmp: ("linformer-fill-mask", str(evil), "The <mask> sat."),
    "predict": lambda evil, tmp: ("linformer-predict", str(evil), str(tmp / "texts.tsv")),
    "analyze": lambda evil, tmp: ("linformer-analyze", "spectrum", str(evil)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_commands_refuse_a_hostile_checkpoint(case, hostile, tmp_path):
    evil, marker = hostile
    (tmp_path / "texts.tsv").write_text("sentence\nhello there\n")
    name, *args = CASES[case](evil, tmp_path)
    result = command(name, *args, cwd=tmp_path)
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) == 1 and "not a safe checkpoint" in lines[0], result.stderr
    assert not marker.exists()
    assert not (tmp_path / "export").exists()


def train_cases(evil: Path, run_dir: Path) -> dict:
    finetune = ["task=sentence_prediction", "dataset=text", f"dataset.train_files=[{run_dir.parent / 'train.tsv'}]",
                f"dataset.valid_files=[{run_dir.parent / 'train.tsv'}]", "task.num_classes=2"]  # fmt: skip
    return {
        "init_from": [f"checkpoint.init_from={evil}"],
        "restore_file": [f"checkpoint.restore_file={evil}"],
        "finetune_from": [*finetune, f"checkpoint.finetune_from={evil}"],
        "auto_resume": [],  # the run folder's own checkpoint_last.pt is the hostile file
    }


@pytest.mark.parametrize("case", ["init_from", "restore_file", "finetune_from", "auto_resume"])
def test_training_refuses_a_hostile_checkpoint(case, hostile, cache_dir, tmp_path):
    evil, marker = hostile
    run_dir = tmp_path / "run"
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"text {i}\t{i % 2}\n" for i in range(8)))
    if case == "auto_resume":
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "checkpoints" / "checkpoint_last.pt").write_bytes(evil.read_bytes())
    args = ["experiment=smoke", f"dataset.cache_dir={cache_dir}", "logging.tensorboard=false",
            "logging.progress_bar=false", f"hydra.run.dir={run_dir}", *train_cases(evil, run_dir)[case]]  # fmt: skip
    result = command("linformer-train", *args, cwd=tmp_path)
    assert result.returncode != 0
    errors = [line for line in error_lines(result) if "error" in line or "Traceback" in line]
    assert len(errors) == 1 and "not a safe checkpoint" in errors[0], result.stderr
    assert not marker.exists()


def test_load_model_refuses_a_hostile_checkpoint(hostile, tmp_path):
    evil, marker = hostile
    code = f"from linformer_pt.models.loading import load_model\nload_model({str(evil)!r})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "not a safe checkpoint" in result.stderr
    assert not marker.exists()


def test_convert_needs_trust_and_makes_a_safe_copy(tmp_path):
    """An older checkpoint (TorchVersion in its provenance) is refused, then converted by its trusting owner."""
    old = tmp_path / "old.pt"
    torch.save({"model": {"w": torch.arange(3.0)}, "provenance": {"torch": torch.__version__}}, old)
    with pytest.raises(UserError, match="linformer-convert-checkpoint --trust-pickle"):
        load_checkpoint(old)
    before = old.read_bytes()
    refused = command("linformer-convert-checkpoint", str(old), str(tmp_path / "new.pt"), cwd=tmp_path)
    assert refused.returncode == 2 and "--trust-pickle" in refused.stderr and not (tmp_path / "new.pt").exists()
    done = command("linformer-convert-checkpoint", "--trust-pickle", str(old), str(tmp_path / "new.pt"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    state = load_checkpoint(tmp_path / "new.pt")
    assert state["provenance"]["torch"] == str(torch.__version__) and type(state["provenance"]["torch"]) is str
    assert torch.equal(state["model"]["w"], torch.arange(3.0))
    assert old.read_bytes() == before
    again = command("linformer-convert-checkpoint", "--trust-pickle", str(old), str(tmp_path / "new.pt"), cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_convert_refuses_a_hostile_pickle_even_with_the_flag(hostile, tmp_path):
    evil, marker = hostile
    result = command("linformer-convert-checkpoint", "--trust-pickle", str(evil), str(tmp_path / "new.pt"), cwd=tmp_path)
    assert result.returncode == 2 and "it names posix.system" in result.stderr
    assert not marker.exists() and not (tmp_path / "new.pt").exists()
