"""The scripts users run on results: curves from metrics logs."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_plot_metrics_draws_a_png_from_run_folders(tmp_path):
    for name, scale in (("run_a", 1.0), ("run_b", 0.9)):
        run = tmp_path / name
        run.mkdir()
        records = [{"split": "train", "update": u, "loss": scale * 9 / u, "lr": 1e-4 * u, "tokens_per_s": 1000.0}
                   for u in range(1, 6)] + [{"split": "valid", "update": 5, "loss": scale * 2.0}]  # fmt: skip
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "curves.png"
    script = REPO / "scripts" / "plot_metrics.py"
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "run_a"), str(tmp_path / "run_b"),
                             "--out", str(out)], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    bad = subprocess.run([sys.executable, str(script), str(tmp_path / "nope")], capture_output=True, text=True)
    assert bad.returncode == 2 and "no metrics.jsonl at" in bad.stderr


@pytest.mark.slow
def test_bow_baseline_separates_a_toy_sentiment_set(tmp_path):
    good = ["a great film", "great acting and a fine story", "fine , truly great"]
    bad = ["a dull film", "dull acting", "awful and dull story"]
    rows = [f"{text}\t1" for text in good] * 6 + [f"{text}\t0" for text in bad] * 6
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\ngreat story\t1\nso dull\t0\nfine acting\t1\nawful film\t0\n")
    out = tmp_path / "results.json"
    script = REPO / "scripts" / "bow_baseline.py"
    result = subprocess.run([sys.executable, str(script), "--train", str(tmp_path / "train.tsv"),
                             "--valid", str(tmp_path / "dev.tsv"), "--out", str(out)], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())
    assert results["valid_accuracy"] == 1.0 and results["valid_f1"] == 1.0 and results["train_size"] == 36
    assert "dev accuracy  1.0000" in result.stdout
    # One progress bar over the 5 fits (4 penalties searched, then the final fit) of 300 L-BFGS evaluations each.
    bar = result.stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert bar.startswith("fit x5: 100%") and "1500/1500" in bar and "eval/s" in bar, result.stderr[-300:]
    bad_run = subprocess.run([sys.executable, str(script), "--train", str(tmp_path / "train.tsv"), "--valid",
                              str(tmp_path / "dev.tsv"), "--label-column", "stars"], capture_output=True, text=True)  # fmt: skip
    assert bad_run.returncode == 2 and "has no column 'stars'" in bad_run.stderr.strip()


def test_mixture_result_tabulates_each_set_by_share_over_seeds(tmp_path):
    for share, seed, books, wiki in ((0.1, 1, 800.0, 1000.0), (0.1, 2, 810.0, 1040.0), (0.5, 1, 830.0, 700.0)):
        run = tmp_path / "runs" / f"w{share}_s{seed}"
        run.mkdir(parents=True)
        sources = [{"name": "books", "weight": 3 * (1 - share)}, {"name": "wiki", "weight": 3 * share}]
        summary = {"status": "finished", "config": {"dataset": {"sources": sources}},
                   "final_valid": {"loss": 6.7, "ppl": books, "books/ppl": books, "wiki/ppl": wiki}}  # fmt: skip
        (run / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "runs" / "failed").mkdir()
    (tmp_path / "runs" / "failed" / "summary.json").write_text(json.dumps({"status": "failed"}))
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "mixture_result.py"), str(tmp_path / "runs"),
                             "--source", "wiki", "--out", str(out)], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "| 10% | 2 | 805.0 (800.0-810.0) | 1020.0 (1000.0-1040.0) |" in result.stdout
    assert "| 50% | 1 | 830.0 (830.0-830.0) | 700.0 (700.0-700.0) |" in result.stdout
    assert (out / "ppl_vs_share.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["share"] for r in rows] == [0.1, 0.5] and rows[0]["wiki"]["runs"] == [1000.0, 1040.0]
