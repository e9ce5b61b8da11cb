"""linformer-preprocess and linformer-train-tokenizer as users run them, and training from their shards."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA

SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
pytestmark = pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="shared/data (tiny-shakespeare) is not beside the repo")


def cli(entry: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / entry
    return subprocess.run([str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_preprocess_reuses_rebuilds_and_trains(cache_dir, tmp_path):
    corpus = tmp_path / "plays.txt"
    shutil.copy(SHAKESPEARE, corpus)
    out = tmp_path / "shards"
    args = ["dataset=text", f"dataset.train_files=[{corpus}]", "dataset.valid_fraction=0.05",
            "tokenizer.vocab_size=1000", f"output={out}", f"dataset.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    first = cli("linformer-preprocess", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"dataset.path={out}" in first.stdout and "tokenize train" in first.stderr  # progress bar
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"] == ["train", "valid"] and manifest["vocab_size"] == 1000
    assert manifest["stats"]["train"]["tokens"] > 100_000 and manifest["stats"]["train"]["dtype"] == "uint16"
    assert (out / "tokenizer.json").is_file() and list((out / "train").glob("shard-00000.tokens.npy"))
    stamp = (out / "manifest.json").stat().st_mtime_ns

    again = cli("linformer-preprocess", *args, cwd=tmp_path)
    assert again.returncode == 0 and (out / "manifest.json").stat().st_mtime_ns == stamp  # reused

    with open(corpus, "a") as f:
        f.write("\nA NEW SCENE.\nEnter the tests.\n")
    changed = cli("linformer-preprocess", *args, cwd=tmp_path)
    assert changed.returncode == 0 and (out / "manifest.json").stat().st_mtime_ns != stamp  # rebuilt

    train = cli("linformer-train", "experiment=smoke", "optimization.max_update=3", "dataset=shards",
                f"dataset.path={out}", "logging.tensorboard=false", f"hydra.run.dir={tmp_path / 'run'}",
                cwd=tmp_path)  # fmt: skip
    assert train.returncode == 0, train.stderr
    assert "vocabulary 1000" in train.stdout


@pytest.mark.slow
def test_shards_of_another_tokenizer_or_unfinished_are_refused(cache_dir, tmp_path):
    out = tmp_path / "shards"
    out.mkdir()
    unfinished = cli("linformer-train", "dataset=shards", f"dataset.path={out}", cwd=tmp_path)
    assert unfinished.returncode == 2
    assert "is not a finished linformer-preprocess folder" in unfinished.stderr

    tok = tmp_path / "tok.json"
    made = cli("linformer-train-tokenizer", "dataset=text", f"dataset.train_files=[{SHAKESPEARE}]",
               "tokenizer.vocab_size=600", f"output={tok}", cwd=tmp_path)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert f"tokenizer.path={tok}" in made.stdout and "(600 tokens)" in made.stdout
    prep = cli("linformer-preprocess", "dataset=text", f"dataset.train_files=[{SHAKESPEARE}]",
               "tokenizer.vocab_size=700", f"output={out}", f"dataset.cache_dir={tmp_path / 'cache'}",
               cwd=tmp_path)  # fmt: skip
    assert prep.returncode == 0, prep.stderr
    mismatch = cli("linformer-train", "dataset=shards", f"dataset.path={out}", f"tokenizer.path={tok}", cwd=tmp_path)
    assert mismatch.returncode == 2
    assert mismatch.stderr.strip().splitlines() == [
        f"linformer-train: error: dataset.path={out} was tokenized with another tokenizer than "
        f"tokenizer.path={tok}; re-run linformer-preprocess with it, or drop tokenizer.path"
    ]


def test_preprocess_never_replaces_a_folder_it_did_not_make(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "README.md").write_bytes(b"The project's data folder.\n")
    refused = cli("linformer-preprocess", "dataset=text", f"dataset.train_files={SHAKESPEARE}", "output=data",
                  f"dataset.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "linformer-preprocess: error: output=data already holds files and is not a folder this tool built "
        "(no manifest.json with a spec); refusing to replace it: choose a new or empty folder"
    ]
    assert [p.name for p in data.iterdir()] == ["README.md"]
    assert (data / "README.md").read_bytes() == b"The project's data folder.\n"
