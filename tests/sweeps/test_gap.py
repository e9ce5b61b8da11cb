"""The Linformer-vs-standard gap at equal tokens: which runs are paired, the numbers, the table, fact and plot."""
import pytest
from sweep_fixtures import table_rows, write_run

from linformer_pt.sweeps.gap import GapPoint, gap_curves, spaced
from linformer_pt.sweeps.report import build_report
from linformer_pt.sweeps.runs import collect_runs

STANDARD = [(100, 1000.0), (200, 800.0), (300, 700.0), (400, 650.0)]
LINFORMER = [(100, 900.0), (200, 760.0), (300, 693.0), (400, 650.0)]


def long_pair(sweep, standard_status="finished"):
    write_run(sweep, "standard", ["attention=standard"], attention="standard", ppls=STANDARD, max_update=400,
              status=standard_status)  # fmt: skip
    write_run(sweep, "k64", ["attention=k64"], ppls=LINFORMER, max_update=400)


def test_a_linformer_run_is_paired_with_its_standard_run_at_every_shared_validation(tmp_path):
    long_pair(tmp_path)
    [curve] = gap_curves(collect_runs([tmp_path]))
    assert curve.run.name == "k64" and [r.name for r in curve.reference] == ["standard"] and curve.finished
    assert [p.update for p in curve.points] == [100, 200, 300, 400]
    assert [round(p.percent, 6) for p in curve.points] == [-10.0, -5.0, -1.0, 0.0]


def test_only_runs_that_differ_in_attention_alone_are_compared(tmp_path):
    long_pair(tmp_path)
    # Another budget means another schedule: not the k64 run's reference, and no reference for the short run.
    write_run(tmp_path, "short_k32", ["attention=k32", "optimization.max_update=200"], k=32, max_update=200,
              ppls=[(100, 950.0), (200, 700.0)])  # fmt: skip
    # Another seed of standard attention is averaged into the reference.
    write_run(tmp_path, "standard_seed2", ["attention=standard", "common.seed=2"], attention="standard", seed=2,
              ppls=[(100, 1100.0), (200, 900.0), (300, 700.0)], max_update=400)  # fmt: skip
    [curve] = gap_curves(collect_runs([tmp_path]))
    assert curve.run.name == "k64" and sorted(r.name for r in curve.reference) == ["standard", "standard_seed2"]
    # Update 400 is left out: the seed-2 run never validated there. The reference is the mean of both seeds.
    assert [(p.update, p.standard) for p in curve.points] == [(100, 1050.0), (200, 850.0), (300, 700.0)]


def test_validations_at_different_token_counts_are_not_paired(tmp_path):
    long_pair(tmp_path)
    write_run(tmp_path, "k64_small_batch", ["attention=k64", "dataset.batch_size=8"], ppls=LINFORMER, max_update=400)
    runs = collect_runs([tmp_path])
    for run in runs:  # the same config, but half the tokens per update (as a smaller batch would log)
        if run.name == "k64_small_batch":
            for record in run.records:
                record["tokens"] = record.get("tokens", 0) // 2
    assert [c.run.name for c in gap_curves(runs)] == ["k64"]


def test_an_unfinished_reference_counts_with_the_validations_it_reached(tmp_path):
    write_run(tmp_path, "standard", ["attention=standard"], attention="standard", ppls=STANDARD[:2], max_update=400,
              status=None)  # fmt: skip
    write_run(tmp_path, "k64", ["attention=k64"], ppls=LINFORMER, max_update=400)
    report, plots = build_report([tmp_path], None, "linformer-sweep-report test")
    text = report.read_text()
    assert "**attention=k64** against attention=standard (unfinished):" in text
    [curve] = gap_curves(collect_runs([tmp_path]))
    assert curve.run.status == "finished" and not curve.finished  # drawn dashed: the reference may still move
    rows = table_rows(text, "## Linformer vs standard attention over training")
    assert [row[0] for row in rows] == ["100", "200"] and [row[-1] for row in rows] == ["-10.0%", "-5.0%"]
    assert "gap_vs_tokens.png" in [p.name for p in plots]


def test_the_report_gives_the_gap_table_and_its_trend(tmp_path):
    long_pair(tmp_path)
    text = build_report([tmp_path], None, "linformer-sweep-report test")[0].read_text()
    rows = table_rows(text, "## Linformer vs standard attention over training")
    assert rows[-1] == ["400", "3.28M", "650.0", "650.0", "+0.0%"]
    assert rows[0] == ["100", "819k", "1,000.0", "900.0", "-10.0%"]
    fact = "attention=k64 vs standard attention at equal tokens: -10.0% at update 100, -1.0% at 300, +0.0% at 400"
    assert fact + " (the gap narrows in the second half)" in text


def test_without_standard_attention_there_is_no_gap_section(tmp_path):
    write_run(tmp_path, "k64", ["attention=k64"], ppls=LINFORMER, max_update=400)
    report, plots = build_report([tmp_path], None, "test")
    assert "over training" not in report.read_text()
    assert plots and "gap_vs_tokens.png" not in [p.name for p in plots] and not (tmp_path / "gap_vs_tokens.png").exists()


@pytest.mark.parametrize("count", [3, 10])
def test_long_curves_are_shown_evenly_spaced_with_the_first_and_last(count):
    points = [GapPoint(u, u, 1.0, 1.0) for u in range(1, 37)]
    shown = [p.update for p in spaced(points, count)]
    assert len(shown) == count and shown[0] == 1 and shown[-1] == 36 and shown == sorted(set(shown))
    assert spaced(points[:5], count)[-1].update == 5
