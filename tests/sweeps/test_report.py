"""linformer-sweep-report on sweep folders written by hand: tables, seed noise, labels, plots and bad input."""
import pytest
from sweep_fixtures import TOKENS_PER_UPDATE, UNIGRAM, table_rows, write_run

from linformer_pt.cli.sweep_report import main
from linformer_pt.sweeps.analysis import seed_spreads
from linformer_pt.sweeps.labels import differing_labels, folder_overrides, run_labels
from linformer_pt.sweeps.report import build_report
from linformer_pt.sweeps.runs import collect_runs, format_k

PNG = b"\x89PNG\r\n\x1a\n"
GRID = {("headwise", 32): 420.0, ("headwise", 64): 380.0, ("kv", 32): 450.0, ("kv", 64): 400.0}


def write_grid(sweep):
    """A finished 2x2 sweep: sharing in {headwise, kv} x k in {32, 64}."""
    for (sharing, k), ppl in GRID.items():
        overrides = ["experiment=sweep_k", f"model.sharing={sharing}", f"model.k={k}"]
        write_run(sweep, f"model.sharing={sharing},model.k={k}", overrides, sharing=sharing, k=k,
                  ppls=[(100, 2 * ppl), (200, ppl)])  # fmt: skip


def report_of(sweep, *extra):
    report, plots = build_report([sweep, *extra], None, "linformer-sweep-report test")
    return report.read_text(), plots


def test_grid_of_four_finished_runs_gives_one_row_each_with_its_numbers(tmp_path):
    write_grid(tmp_path)
    text, plots = report_of(tmp_path)
    assert sorted(p.name for p in plots) == ["ppl_vs_k.png", "ppl_vs_time.png", "ppl_vs_tokens.png"]  # a single n
    rows = table_rows(text, "## Finished runs (4)")
    assert [(row[3], row[4]) for row in rows] == [("32", "headwise"), ("64", "headwise"), ("32", "kv"), ("64", "kv")]
    for row in rows:
        ppl = GRID[(row[4], int(row[3]))]
        assert row[6] == "200"  # updates
        assert row[7] == f"{200 * TOKENS_PER_UPDATE / 1e6:.3g}M"
        assert row[8] == f"{ppl:,.1f}"
        assert row[9] == f"{ppl:,.1f} @200"
        assert row[10] == f"{ppl / UNIGRAM['ppl']:.3f}"
    assert f"Unigram baseline ppl of the validation set: {UNIGRAM['ppl']:,.1f}." in text
    assert "ppl is monotone in k (lower for larger k)" not in text  # two values of k are no trend
    assert "linformer-sweep-report test" in text


def test_a_run_without_summary_is_unfinished_at_its_last_update(tmp_path):
    write_grid(tmp_path)
    write_run(tmp_path, "model.k=128", ["model.k=128"], k=128, ppls=[(100, 700.0), (150, 500.0)], status=None,
              max_update=900)  # fmt: skip
    text, _ = report_of(tmp_path)
    assert len(table_rows(text, "## Finished runs")) == 4
    [row] = table_rows(text, "## Unfinished and failed runs (1)")
    assert row[:2] == ["model.k=128", "unfinished"] and "no summary.json" in row[2]
    assert row[3:] == ["150", "900", "500.0 @150"]
    write_run(tmp_path, "old", ["model.k=16"], k=16, status=None, max_update=200)  # logged to the end, no summary
    [old] = [row for row in table_rows(report_of(tmp_path)[0], "## Unfinished and failed runs (2)") if row[0] == "old"]
    assert old[1] == "unfinished" and "reach max_update" in old[2]


def test_a_failed_run_is_listed_with_its_error(tmp_path):
    write_grid(tmp_path)
    write_run(tmp_path, "model.k=8", ["model.k=8"], k=8, status="failed", error="loss is nan at update 40 | fp16")
    write_run(tmp_path, "model.k=16", ["model.k=16"], k=16, status="interrupted")
    text, _ = report_of(tmp_path)
    rows = {row[0]: row for row in table_rows(text, "## Unfinished and failed runs (2)")}
    assert rows["model.k=8"][1:3] == ["failed", "loss is nan at update 40 \\| fp16"]
    assert rows["model.k=16"][1] == "unfinished" and "interrupted" in rows["model.k=16"][2]


def test_a_seed_pair_gives_its_spread_as_the_noise_level(tmp_path):
    write_grid(tmp_path)
    for seed, ppl in ((1, 300.0), (2, 306.0)):
        write_run(tmp_path, f"model.k=128,common.seed={seed}", ["model.k=128", f"common.seed={seed}"], k=128,
                  seed=seed, ppls=[(200, ppl)])  # fmt: skip
    [spread] = seed_spreads(collect_runs([tmp_path]))
    assert (spread.low, spread.high) == (300.0, 306.0) and spread.relative == pytest.approx(2.0)
    text, _ = report_of(tmp_path)
    [row] = table_rows(text, "## Noise level")
    assert row == ["model.k=128", "1, 2", "300.0", "306.0", "6.0", "2.0%"]
    assert "Final-ppl differences smaller than 2.0% between runs are noise." in text
    # headwise k = 32, 64, 128 (the pair's mean 303): ppl falls with k, and 380 -> 303 is well above the noise.
    assert "ppl is monotone in k (lower for larger k) for sharing=headwise: yes" in text


def test_labels_keep_only_the_overrides_that_differ(tmp_path):
    runs = [["experiment=sweep_k", "model.k=64", "common.seed=1", "hydra.run.dir=a"],
            ["experiment=sweep_k", "model.k=32", "common.seed=1", "hydra.run.dir=b"],
            ["experiment=sweep_k", "model.k=32", "common.seed=2", "hydra.run.dir=c"]]  # fmt: skip
    assert differing_labels(runs, ["a", "b", "c"]) == [
        "model.k=64 common.seed=1", "model.k=32 common.seed=1", "model.k=32 common.seed=2"]  # fmt: skip
    assert differing_labels(runs[:2], ["a", "b"]) == ["model.k=64", "model.k=32"]
    assert differing_labels([["x=1"], ["x=1"]], ["a", "b"]) == ["a", "b"]  # nothing tells them apart: their names
    assert folder_overrides("3_attention=k64,model.k=[64,32]") == ["attention=k64", "model.k=[64,32]"]
    write_run(tmp_path, "first", ["experiment=sweep_k", "model.sharing=kv"])
    (tmp_path / "attention=k64,common.seed=2").mkdir()  # no .hydra: its name is its overrides
    assert run_labels([tmp_path / "first", tmp_path / "attention=k64,common.seed=2"]) == [
        "experiment=sweep_k model.sharing=kv", "attention=k64 common.seed=2"]  # fmt: skip


def test_plots_are_written_as_png_and_linked(tmp_path):
    write_grid(tmp_path)
    write_run(tmp_path, "attention=standard", ["model.attention=standard"], attention="standard", ppls=[(200, 360.0)])
    write_run(tmp_path, "n=512", ["task.tokens_per_sample=512"], n=512, tokens_per_s=5000.0, peak_memory_mb=1600.0)
    write_run(tmp_path, "old", ["model.k=16"], k=16, with_tokens=False, status=None)
    text, plots = report_of(tmp_path)
    assert sorted(p.name for p in plots) == ["ppl_vs_k.png", "ppl_vs_time.png", "ppl_vs_tokens.png",
                                             "speed_memory_vs_n.png"]  # fmt: skip
    for plot in plots:
        assert plot.read_bytes()[:8] == PNG
        assert f"]({plot.name})" in text
    assert "Not on the tokens-seen plot" in text and "old" in text.split("Not on the tokens-seen plot")[1]
    assert "best Linformer vs standard attention at n=256: +5.6% ppl" in text  # 380 vs 360


def test_a_per_layer_k_is_shown_compactly():
    assert format_k((128, 128, 64, 64)) == "[128×2,64×2]"
    assert format_k((64,)) == "64" and format_k(None) == "–"


def test_cli_writes_the_report_and_says_where(tmp_path, capsys):
    write_grid(tmp_path / "sweep")
    main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert f"report: {tmp_path / 'out' / 'report.md'}" in out and (tmp_path / "out" / "report.md").is_file()
    assert "plot: " in out


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_cli_bad_folder_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, case):
    bad = tmp_path / "sweep"
    if case == "empty":
        (bad / "sub").mkdir(parents=True)
    with pytest.raises(SystemExit) as stop:
        main([str(bad), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.count("\n") == 1 and err.startswith("linformer-sweep-report: error: ") and str(bad) in err
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ([] if case == "missing" else ["sub", "sweep"])


def test_linked_runs_are_found_once_and_a_link_to_an_ancestor_does_not_loop(tmp_path):
    write_grid(tmp_path / "sweep_k")
    shared = tmp_path / "sweep_sharing"
    write_run(shared, "model.sharing=none", ["model.sharing=none"], sharing="none")
    (shared / "model.sharing=headwise").symlink_to(tmp_path / "sweep_k" / "model.sharing=headwise,model.k=64")
    (shared / "loop").symlink_to(tmp_path)  # holds sweep_k and sweep_sharing itself
    runs = collect_runs([shared])
    assert sorted(r.name for r in runs) == ["loop/sweep_k/model.sharing=headwise,model.k=32",
                                            "loop/sweep_k/model.sharing=kv,model.k=32",
                                            "loop/sweep_k/model.sharing=kv,model.k=64",
                                            "model.sharing=headwise", "model.sharing=none"]  # fmt: skip
    assert {r.sharing for r in runs if r.name.startswith("model.")} == {"none", "headwise"}


def test_an_unreadable_folder_is_a_one_line_error_not_a_silent_gap(tmp_path, monkeypatch, capsys):
    write_grid(tmp_path / "sweep")
    real_iterdir = type(tmp_path).iterdir

    def iterdir(self):
        if self == tmp_path / "sweep":
            raise PermissionError(13, "Permission denied")
        return real_iterdir(self)

    monkeypatch.setattr(type(tmp_path), "iterdir", iterdir)  # root reads every folder: deny one by hand
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert f"cannot search {tmp_path / 'sweep'} for runs: Permission denied" in err
    assert not (tmp_path / "out").exists()


def test_runs_with_named_validation_sets_get_one_column_per_set(tmp_path):
    import json

    for weight, books, wiki in ((0.05, 790.0, 1080.0), (0.5, 830.0, 700.0)):
        run = write_run(tmp_path, f"dataset.sources.1.weight={weight}", [f"dataset.sources.1.weight={weight}"])
        summary = json.loads((run / "summary.json").read_text())
        summary["final_valid"].update({"books/ppl": books, "books/loss": 6.7, "wiki/ppl": wiki, "wiki/loss": 6.9})
        summary["unigram_baseline"]["sets"] = {"books": {"ppl": 1000.0}, "wiki": {"ppl": 2000.0}}
        (run / "summary.json").write_text(json.dumps(summary))
    text, _ = report_of(tmp_path)
    rows = table_rows(text, "## Validation sets")
    assert rows == [["dataset.sources.1.weight=0.05", "790.0 (0.790)", "1,080.0 (0.540)"],
                    ["dataset.sources.1.weight=0.5", "830.0 (0.830)", "700.0 (0.350)"]]  # fmt: skip
    write_grid(tmp_path / "plain")
    assert "## Validation sets" not in report_of(tmp_path / "plain")[0]  # one unnamed set: no such table
