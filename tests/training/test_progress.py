"""The console while training: a bar on a terminal, one fairseq-style line per record elsewhere (batch jobs)."""
import io
import subprocess
import sys
from pathlib import Path

from linformer_pt.training.progress import Progress, duration

RECORD = {"loss": 6.5, "ppl": 665.1, "lr": 1e-4, "gnorm": 1.25, "tokens_per_s": 8053.0}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_and_no_record_lines(capsys):
    screen = Terminal()
    progress = Progress(total=10, initial=0, enabled=True, bar=True, language_model=True, stream=screen)
    progress.step()
    progress.train(1, 1, RECORD)
    progress.close()
    assert "upd/s" in screen.getvalue() or "1/10" in screen.getvalue()
    assert "train |" not in capsys.readouterr().out


def test_a_redirected_run_prints_one_line_per_record_and_validation(capsys):
    progress = Progress(total=300, initial=20, enabled=True, bar=True, language_model=True, stream=io.StringIO())
    progress.train(30, 2, RECORD)
    progress.valid(30, 2, {"loss": 6.25, "ppl": 518.0, "masked": 717})
    progress.close()
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("train | epoch 002 | update 30/300 | loss 6.500 | ppl 665.1 | lr 1.00e-04 | gnorm 1.25 |")
    assert out[0].endswith("eta " + out[0].rsplit("eta ", 1)[1]) and "tok/s 8053" in out[0]
    assert out[1] == "valid | epoch 002 | update 30 | loss 6.25 | ppl 518 | masked 717"


def test_a_classifier_shows_no_perplexity(capsys):
    progress = Progress(total=5, initial=0, enabled=True, bar=False, language_model=False, stream=io.StringIO())
    progress.train(1, 1, RECORD)
    assert "ppl" not in capsys.readouterr().out


def test_other_processes_print_nothing(capsys):
    progress = Progress(total=5, initial=0, enabled=False, bar=True, language_model=True, stream=Terminal())
    progress.train(1, 1, RECORD)
    progress.valid(1, 1, {"loss": 1.0})
    assert capsys.readouterr().out == ""


def test_durations_read_well():
    assert [duration(s) for s in (0, 12, 252, 3780)] == ["0s", "12s", "4m12s", "1h03m"]


def test_a_batch_job_log_has_lines_and_no_redraws(cache_dir, tmp_path):
    """linformer-train with its output redirected (as under Slurm): readable lines, no carriage returns."""
    args = ["experiment=smoke", "optimization.max_update=4", "logging.log_interval=2", f"dataset.cache_dir={cache_dir}",
            "logging.tensorboard=false", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "linformer_pt.cli.train", *args], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith(("train |", "valid |"))]
    assert [line.split(" | ")[0] + " " + line.split(" | ")[2] for line in lines] == [
        "valid update 0", "train update 2/4", "train update 4/4", "valid update 4"]  # fmt: skip
    assert "\r" not in result.stderr + result.stdout
    assert lines == [line for line in Path(tmp_path / "run" / "train.log").read_text().splitlines()
                     if line.startswith(("train |", "valid |"))]  # fmt: skip
