"""A real 2 x 2 multirun of the seconds-long sweep preset, reported, rerun, and reported again with a run unfinished."""
import json
import subprocess
import sys

import pytest

from sweep_fixtures import table_rows

from linformer_pt.sweeps.report import build_report

NAMES = {f"model.k={k},model.sharing={s}" for k in (8, 16) for s in ("headwise", "layerwise")}


def multirun(sweep, cache_dir) -> str:
    command = [sys.executable, "-m", "linformer_pt.cli.train", "--multirun", "experiment=sweep_smoke",
               f"hydra.sweep.dir={sweep}", f"dataset.cache_dir={cache_dir}", "logging.progress_bar=false",
               "logging.tensorboard=false"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.slow
def test_a_2x2_sweep_reports_4_runs_and_a_rerun_trains_nothing(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    multirun(sweep, cache_dir)
    summaries = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert set(summaries) == NAMES
    assert all(s["status"] == "finished" and s["updates"] == 10 for s in summaries.values())

    report, _ = build_report([sweep], None, "test")
    rows = table_rows(report.read_text(), "## Finished runs (4)")
    assert len(rows) == 4
    for row in rows:  # each row carries its own run's numbers
        summary = next(s for s in summaries.values() if f"model.k={row[3]}," in s["run_name"] and row[4] in s["run_name"])
        assert row[8] == f"{summary['final_valid']['ppl']:,.1f}"
        assert row[10] == f"{summary['final_valid']['ppl'] / summary['unigram_baseline']['ppl']:.3f}"

    metrics = {name: (sweep / name / "metrics.jsonl").read_bytes() for name in NAMES}
    out = multirun(sweep, cache_dir)  # the same command again: every run is found finished
    assert out.count("nothing to train") == 4
    assert all((sweep / name / "metrics.jsonl").read_bytes() == metrics[name] for name in NAMES)

    (sweep / "model.k=16,model.sharing=layerwise" / "summary.json").unlink()  # as after a kill -9
    report, _ = build_report([sweep], None, "test")
    text = report.read_text()
    assert len(table_rows(text, "## Finished runs (3)")) == 3
    [row] = table_rows(text, "## Unfinished and failed runs (1)")
    assert row[:2] == ["model.k=16,model.sharing=layerwise", "unfinished"]
