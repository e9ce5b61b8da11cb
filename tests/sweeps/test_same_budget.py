"""Linformer is compared only with standard attention of the same data and budget: in the reading and the k plot;
an unchanged gap is said to hold, not to widen."""
from sweep_fixtures import write_run

from linformer_pt.sweeps import plots
from linformer_pt.sweeps.analysis import linformer_series, reading
from linformer_pt.sweeps.gap import gap_facts
from linformer_pt.sweeps.report import build_report
from linformer_pt.sweeps.runs import collect_runs


def sweep_and_long_pair(folder):
    """A k sweep at 200 updates with its standard run, and a 4x-budget pair: standard runs of two budgets."""
    write_run(folder, "k32", ["attention=k32"], k=32, ppls=[(100, 900.0), (200, 420.0)])
    write_run(folder, "k64", ["attention=k64"], ppls=[(100, 900.0), (200, 400.0)])
    write_run(folder, "standard", ["attention=standard"], attention="standard", ppls=[(100, 950.0), (200, 440.0)])
    long = [(200, 400.0), (400, 300.0), (800, 250.0)]
    write_run(folder, "long_k64", ["attention=k64", "optimization.max_update=800"], ppls=long[:2] + [(800, 249.0)],
              max_update=800)  # fmt: skip
    write_run(folder, "long_standard", ["attention=standard", "optimization.max_update=800"], attention="standard",
              ppls=long, max_update=800)  # fmt: skip


def test_best_linformer_is_compared_with_the_standard_run_of_its_own_budget(tmp_path):
    sweep_and_long_pair(tmp_path)
    facts = [f for f in reading(collect_runs([tmp_path]), None) if f.startswith("best Linformer")]
    assert facts == [
        "best Linformer vs standard attention at n=256, optimization.max_update=200: -9.1% ppl "
        "(attention=k64: 400.0 vs 440.0)",
        "best Linformer vs standard attention at n=256, optimization.max_update=800: -0.4% ppl "
        "(attention=k64 optimization.max_update=800: 249.0 vs 250.0)",
    ]  # not the long k64 (249.0) against the mean of both standard runs (345.0): -27.8%


def test_one_budget_gives_the_plain_fact(tmp_path):
    write_run(tmp_path, "k64", ["attention=k64"], ppls=[(100, 900.0), (200, 400.0)])
    write_run(tmp_path, "standard", ["attention=standard"], attention="standard", ppls=[(100, 950.0), (200, 440.0)])
    facts = [f for f in reading(collect_runs([tmp_path]), None) if f.startswith("best Linformer")]
    assert facts == ["best Linformer vs standard attention at n=256: -9.1% ppl (attention=k64: 400.0 vs 440.0)"]


def test_the_k_plot_draws_each_budget_apart_with_its_own_standard_line(tmp_path, monkeypatch):
    sweep_and_long_pair(tmp_path)
    runs = collect_runs([tmp_path])
    series = linformer_series(runs)
    assert {name: [s.first.name for s in group] for name, group in series.items()} == {
        "sharing=headwise, optimization.max_update=200": ["k32", "k64"],
        "sharing=headwise, optimization.max_update=800": ["long_k64"],
    }
    drawn = {}

    def keep(fig, path):
        ax = fig.axes[0]
        drawn.update({line.get_label(): list(line.get_ydata()) for line in ax.get_lines()})
        plots.pyplot().close(fig)
        return path

    monkeypatch.setattr(plots, "save", keep)
    plots.k_plot(runs, tmp_path / "ppl_vs_k.png")
    assert drawn["standard attention, n=256, optimization.max_update=200"] == [440.0, 440.0]
    assert drawn["standard attention, n=256, optimization.max_update=800"] == [250.0, 250.0]
    assert not any(label == "standard attention, n=256" for label in drawn)  # no line averaging both budgets
    build_report([tmp_path], None, "test")  # and the whole report is written


def test_an_unchanged_gap_holds_rather_than_widens(tmp_path):
    write_run(tmp_path, "standard", ["attention=standard"], attention="standard", max_update=400,
              ppls=[(100, 1000.0), (200, 800.0), (300, 700.0), (400, 600.0)])  # fmt: skip
    write_run(tmp_path, "k64", ["attention=k64"], max_update=400,
              ppls=[(100, 900.0), (200, 760.0), (300, 693.0), (400, 594.0)])  # fmt: skip
    [fact] = gap_facts(collect_runs([tmp_path]), None)
    assert "-1.0% at 300, -1.0% at 400 (the gap holds in the second half)" in fact
