"""linformer-analyze end to end on tiny trained runs (standard and Linformer attention), and its one-line errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hub_fixtures import train_tiny_run
from linformer_pt.cli import analyze

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
UPDATES = 30  # enough for trained-looking weights; the tests check shapes and files, not quality
QUIET = ["--no-progress", "--max-sequences", "6", "--batch-size", "4"]


@pytest.fixture(scope="module")
def linformer_run(tmp_path_factory, cache_dir) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("analyze") / "linformer", cache_dir, updates=UPDATES)


@pytest.fixture(scope="module")
def standard_run(tmp_path_factory, cache_dir) -> Path:
    folder = tmp_path_factory.mktemp("analyze") / "standard"
    return train_tiny_run(folder, cache_dir, extra=["model.attention=standard"], updates=UPDATES)


def run_ok(argv, capsys):
    analyze.main(argv)
    return capsys.readouterr().out


def run_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        analyze.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("linformer-analyze: error: ")
    return err


def test_spectrum_of_a_standard_attention_run(standard_run, tmp_path, capsys):
    out = tmp_path / "spectrum"
    printed = run_ok(["spectrum", str(standard_run), "--out", str(out), *QUIET], capsys)
    report = json.loads((out / "spectrum.json").read_text())
    assert (out / "spectrum.png").read_bytes().startswith(PNG_MAGIC)
    assert report["attention"] == "standard" and report["n"] == 32 and report["k"] == 8
    assert 1 <= report["sequences"] <= 6
    for key in ("curve_mean", "curve_min", "curve_max"):
        assert torch.tensor(report[key]).shape == (2, 32)
    assert torch.tensor(report["at_k"]).shape == (2, report["heads"])
    ks = report["k_for_energy"]
    assert set(ks) == {"0.9", "0.95", "0.99"} and all(len(v) == 2 for v in ks.values())
    assert all(a <= b <= c for a, b, c in zip(ks["0.9"], ks["0.95"], ks["0.99"]))
    assert report["suggested"]["0.9"] in printed and "model.k=[" in printed


def test_spectrum_of_a_linformer_run_uses_its_full_attention(linformer_run, tmp_path, capsys):
    run_ok(["spectrum", str(linformer_run), "--k", "16", "--out", str(tmp_path), *QUIET], capsys)
    report = json.loads((tmp_path / "spectrum.json").read_text())
    assert report["attention"] == "linformer" and report["k"] == 16
    assert torch.tensor(report["curve_mean"]).shape == (2, 32)


def test_projections_of_a_linformer_run(linformer_run, capsys):
    printed = run_ok(["projections", str(linformer_run), *QUIET], capsys)
    out = linformer_run / "analysis"  # the default: inside the run folder
    report = json.loads((out / "projections.json").read_text())
    assert (out / "projections.png").read_bytes().startswith(PNG_MAGIC)
    assert (report["projection"], report["sharing"], report["k"]) == ("linear", "headwise", [8, 8])
    names = [m["name"] for m in report["matrices"]]
    assert names == ["layer 0 E", "layer 0 F", "layer 1 E", "layer 1 F"]
    for m in report["matrices"]:
        assert m["shape"] == [8, 32] and len(m["singular_values"]) == 8 and 1 <= m["effective_rank"] <= 8
        assert 1 <= m["rank_90"] <= m["rank_99"] <= 8
    assert torch.tensor(report["similarity"]["cosine"]).shape == (4, 4)
    assert torch.tensor(report["similarity"]["row_space_overlap"]).shape == (4, 4)
    assert report["heads"] == 2 and len(report["relative_error"]) == 2
    assert torch.tensor(report["relative_error_heads"]).shape == (2, 2) and len(report["rescaled_error"]) == 2
    assert "rel.error" in printed and str(out / "projections.json") in printed


def test_errors_are_one_line_and_write_nothing(standard_run, linformer_run, tmp_path, capsys):
    out = tmp_path / "out"
    err = run_error(["spectrum", str(tmp_path / "missing"), "--out", str(out)], capsys)
    assert "missing" in err and "no such" in err
    err = run_error(["projections", str(standard_run), "--out", str(out)], capsys)
    assert "model.attention=standard" in err
    no_weights = tmp_path / "no_weights.pt"
    checkpoint = torch.load(linformer_run / "checkpoints" / "checkpoint_best.pt", weights_only=False)
    torch.save({key: value for key, value in checkpoint.items() if key != "model"}, no_weights)
    err = run_error(["spectrum", str(no_weights), "--out", str(out)], capsys)
    assert "no_weights.pt" in err and "no model state" in err
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n   \n", encoding="utf-8")
    err = run_error(["spectrum", str(linformer_run), f"eval_files=[{blank}]", "--out", str(out)], capsys)
    assert "blank.txt" in err and ("no text" in err or "no sequence" in err)
    err = run_error(["spectrum", str(linformer_run), "--k", "33", "--out", str(out), *QUIET], capsys)
    assert "--k 33" in err and "1..32" in err
    err = run_error(["spectra", str(linformer_run)], capsys)
    assert "'spectra'" in err and "spectrum" in err and "projections" in err
    assert not out.exists()


def test_the_console_script_reports_an_unknown_subcommand_in_one_line():
    result = subprocess.run([sys.executable, "-m", "linformer_pt.cli.analyze", "rank"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("linformer-analyze: error: argument command: invalid choice: 'rank' (choose from ")
    assert "spectrum" in line and "projections" in line
