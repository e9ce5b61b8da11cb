"""Mixture runs end to end: kill -9 and resume, two processes, named validation sets scored as alone, eval, logs."""
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
from conftest import SHARED_DATA, build_trainer
from test_resume import assert_same_run, finish, kill_main, launch, records, reference, wait_for_update

EVAL = [sys.executable, "-m", "linformer_pt.cli.eval"]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> Dict[str, Path]:
    """Two sources of different kinds and sizes (plays and encyclopedia text) and a held-out file of each."""
    folder = tmp_path_factory.mktemp("mixture")
    plays = (SHARED_DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    wiki = (SHARED_DATA / "wikitext-2-raw" / "valid.txt").read_text(encoding="utf-8")
    files = {"plays": plays[:9_000], "wiki": wiki[:30_000], "plays_valid": plays[-4_000:], "wiki_valid": wiki[-6_000:]}
    for name, text in files.items():
        (folder / f"{name}.txt").write_text(text, encoding="utf-8")
    return {name: folder / f"{name}.txt" for name in files}


def sources(corpora: Dict[str, Path], plays: float = 1, wiki: float = 3) -> str:
    return (f"dataset.sources=[{{name: plays, files: [{corpora['plays']}], weight: {plays}}},"
            f"{{name: wiki, files: [{corpora['wiki']}], weight: {wiki}}}]")  # fmt: skip


def valid_sets(corpora: Dict[str, Path], *names: str) -> str:
    sets = ",".join(f"{{name: {n}, files: [{corpora[n + '_valid']}]}}" for n in names)
    return f"dataset.valid_sets=[{sets}]"


@pytest.fixture
def mixture_run(corpora, cache_dir) -> List[str]:
    return [
        "experiment=smoke", "dataset=mixture", sources(corpora), f"dataset.cache_dir={cache_dir}",
        "tokenizer.vocab_size=500", "logging.progress_bar=false", "logging.tensorboard=false",
        "logging.log_interval=1", "common.threads=1", "dataset.valid_fraction=0.2",
    ]  # fmt: skip


def test_a_mixture_run_reports_each_source_and_each_held_out_set(mixture_run, tmp_path):
    out = finish(launch([*mixture_run, "optimization.max_update=6", "optimization.validate_interval_updates=3"],
                        tmp_path / "run"))  # fmt: skip
    assert "data train: a mixture of 2 sources" in out
    assert "source plays:" in out and "share 25.0% of the sequences drawn" in out and "share 75.0%" in out
    assert "of the tokens trained on" in out and "epochs of it in the run" in out
    # without valid_sets each source holds out its own validation set, named after it
    assert "data valid plays:" in out and "data valid wiki:" in out
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["split"] == "train"]
    valid = [r for r in lines if r["split"] == "valid"]
    assert all("epochs/plays" in r and "epochs/wiki" in r for r in train)
    assert train[-1]["epochs/wiki"] > train[0]["epochs/wiki"] > 0
    for r in valid:
        assert r["loss"] == r["plays/loss"] and r["ppl"] == r["plays/ppl"]  # best_valid_set: the first by default
        assert r["wiki/masked"] > 0 and r["wiki/ppl"] > 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["unigram_baseline"]["sets"]) == {"plays", "wiki"}
    assert "wiki/ppl" in summary["final_valid"] and "wiki/masked" not in summary["final_valid"]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["dataset.streaming=true", "optimization.update_freq=2", "dataset.batch_size=8",
                                     "dataset.sources.0.weight=3"]], ids=["cached", "streamed"])  # fmt: skip
def test_kill_9_in_the_middle_of_a_mixture_then_resume_equals_an_uninterrupted_run(mixture_run, corpora, extra, tmp_path):
    args = [*mixture_run, *extra, valid_sets(corpora, "plays", "wiki"), "optimization.max_update=16",
            "optimization.validate_interval_updates=5", "checkpoint.save_interval_updates=3",
            "lr_scheduler.total_num_update=16", "checkpoint.best_valid_set=wiki"]  # fmt: skip
    ref = reference(args, tmp_path)
    run_dir = tmp_path / "killed"
    for kill_at in (4, 11):
        proc = launch(args, run_dir)
        wait_for_update(run_dir, kill_at, proc)
        kill_main(proc)
    out = finish(launch(args, run_dir))
    assert "resuming from" in out
    assert_same_run(run_dir, ref)
    full = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    reference_full = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    keys = ("epochs/plays", "epochs/wiki", "plays/loss", "wiki/loss")
    assert [[r.get(k) for k in keys] for r in full] == [[r.get(k) for k in keys] for r in reference_full]
    assert any(r.get("wiki/loss") for r in full) and records(run_dir)
    if extra:  # the small source ran out and started its next epoch mid-run (a stream's epochs are counted too)
        assert max(r.get("epochs/plays", 0) for r in full) > 1


@pytest.mark.slow
def test_two_processes_equal_one_process_with_a_mixture(mixture_run, tmp_path):
    common = [*mixture_run, "model.dropout=0", "model.attention_dropout=0", "optimization.max_update=4",
              "optimization.validate_interval_updates=0"]  # fmt: skip
    finish(launch([*common, "dataset.batch_size=16"], tmp_path / "one"))
    finish(launch([*common, "optimization.update_freq=2", "dataset.batch_size=4"], tmp_path / "two", torchrun=2))
    one = [r for r in map(json.loads, (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]
    two = [r for r in map(json.loads, (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]
    assert [r["update"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["gnorm"] == pytest.approx(b["gnorm"], rel=1e-4)
        assert a["epochs/plays"] == b["epochs/plays"] and a["tokens"] == b["tokens"]


def test_each_validation_set_is_scored_exactly_as_it_would_be_alone(mixture_run, corpora, cache_dir, tmp_path):
    both = build_trainer([*mixture_run, valid_sets(corpora, "plays", "wiki"), "dataset.max_valid_tokens=2000"],
                         tmp_path / "both")  # fmt: skip
    together = both.validate()
    assert set(both.valid_iterators) == {"plays", "wiki"}
    tokenizer = both.task.tokenizer_path
    for name in ("plays", "wiki"):
        # The same model (same seed and vocabulary) validating on that file alone, as a plain text run.
        alone = build_trainer([
            "experiment=smoke", "dataset=text", f"dataset.train_files=[{corpora[name]}]",
            f"dataset.valid_files=[{corpora[name + '_valid']}]", f"tokenizer.path={tokenizer}",
            f"dataset.cache_dir={cache_dir}", "dataset.max_valid_tokens=2000", "logging.progress_bar=false",
        ], tmp_path / name).validate()  # fmt: skip
        assert together[f"{name}/loss"] == alone["loss"] and together[f"{name}/masked"] == alone["masked"]
    assert together["loss"] == together["plays/loss"]
    # its own budget overrides dataset.max_valid_tokens for that set alone
    sets = (f"dataset.valid_sets=[{{name: plays, files: [{corpora['plays_valid']}], max_valid_tokens: 500}},"
            f"{{name: wiki, files: [{corpora['wiki_valid']}]}}]")  # fmt: skip
    budgeted = build_trainer([*mixture_run, sets, "dataset.max_valid_tokens=2000", "checkpoint.best_valid_set=wiki"],
                             tmp_path / "budget").validate()  # fmt: skip
    assert budgeted["plays/masked"] < together["plays/masked"] and budgeted["wiki/loss"] == together["wiki/loss"]
    assert budgeted["loss"] == budgeted["wiki/loss"]  # checkpoint.best_valid_set chooses the headline set


def test_a_bad_best_valid_set_stops_before_training(mixture_run, tmp_path):
    proc = launch([*mixture_run, "checkpoint.best_valid_set=news"], tmp_path / "run")
    out = finish(proc, expect=2)  # a usage error
    assert "checkpoint.best_valid_set='news' is not a validation set; choose one of ['plays', 'wiki']" in out


def test_eval_scores_several_named_sets(mixture_run, corpora, tmp_path):
    run_dir = tmp_path / "run"
    finish(launch([*mixture_run, valid_sets(corpora, "plays", "wiki"), "optimization.max_update=2"], run_dir))
    last = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["split"] == "valid"][-1]
    own = subprocess.run([*EVAL, str(run_dir), "--last", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert own.returncode == 0, own.stderr
    result = json.loads(own.stdout)
    assert set(result["sets"]) == {"plays", "wiki"}
    for name in ("plays", "wiki"):  # the run's own sets: its last validation's figures
        assert result["sets"][name]["loss"] == pytest.approx(last[f"{name}/loss"], rel=1e-6)
    assert result["loss"] == result["sets"]["plays"]["loss"]
    named = subprocess.run([*EVAL, str(run_dir), "--last", "--no-progress", "--set", f"w={corpora['wiki_valid']}",
                            "--set", f"p={corpora['plays_valid']},{corpora['plays']}"],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert named.returncode == 0, named.stderr
    sets = json.loads(named.stdout)["sets"]
    assert list(sets) == ["w", "p"] and sets["p"]["samples"] > result["sets"]["plays"]["samples"]
    bad = subprocess.run([*EVAL, str(run_dir), "--set", "nofiles"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--set nofiles: write NAME=FILE[,FILE...]" in bad.stderr


def test_a_preprocessed_folder_is_a_source_and_lends_the_run_its_tokenizer(corpora, cache_dir, tmp_path):
    shards = tmp_path / "shards"
    prep = subprocess.run([str(Path(sys.executable).parent / "linformer-preprocess"), "dataset=text",
                           f"dataset.train_files=[{corpora['plays']}]", "dataset.valid_fraction=0.2",
                           "tokenizer.vocab_size=500", f"output={shards}", f"dataset.cache_dir={cache_dir}"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert prep.returncode == 0, prep.stderr
    run_dir = tmp_path / "run"
    out = finish(launch([
        "experiment=smoke", "dataset=mixture", f"dataset.cache_dir={cache_dir}", "logging.progress_bar=false",
        "logging.tensorboard=false", "optimization.max_update=3", "common.threads=1",
        f"dataset.sources=[{{name: plays, path: {shards}, weight: 1}},{{name: wiki, files: [{corpora['wiki']}], weight: 1}}]",
        valid_sets(corpora, "wiki"),
    ], run_dir))  # fmt: skip
    assert "source plays:" in out and "source wiki:" in out and "data valid wiki:" in out
    # the folder's tokenizer is the run's, and the wiki text was tokenized with it
    assert (run_dir / "tokenizer.json").read_bytes() == (shards / "tokenizer.json").read_bytes()
    other = tmp_path / "other.json"  # a tokenizer of other text
    made = subprocess.run([str(Path(sys.executable).parent / "linformer-train-tokenizer"), "dataset=text",
                           f"dataset.train_files=[{corpora['wiki']}]", "tokenizer.vocab_size=500", f"output={other}",
                           f"dataset.cache_dir={cache_dir}", f"hydra.run.dir={tmp_path / 'tok'}"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert made.returncode == 0, made.stderr
    refused = launch(["experiment=smoke", "dataset=mixture", f"tokenizer.path={other}", f"dataset.cache_dir={cache_dir}",
                      f"dataset.sources=[{{name: plays, path: {shards}}}]", valid_sets(corpora, "wiki")],
                     tmp_path / "refused")  # fmt: skip
    assert "was tokenized with another tokenizer than tokenizer.path" in finish(refused, expect=2)
