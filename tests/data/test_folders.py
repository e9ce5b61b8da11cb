"""Folders in and out: which files a corpus folder gives, and output folders that are not ours are left alone."""
import json
from pathlib import Path

import pytest
from conftest import compose_config

from linformer_pt.cli.preprocess import preprocess
from linformer_pt.config import DatasetConfig, PreprocessConfig, TokenizerConfig, load_config
from linformer_pt.data.cache import build_folder
from linformer_pt.data.corpus import resolve_sources
from linformer_pt.data.sources import expand_paths
from linformer_pt.errors import UserError


@pytest.fixture
def corpus_folder(tmp_path) -> Path:
    """A corpus folder as people keep them: data files beside a README, a manifest, a license and hidden files."""
    folder = tmp_path / "books"
    (folder / "more").mkdir(parents=True)
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / "a.txt").write_text("The first book.\n\nIts second document.\n")
    (folder / "more" / "b.jsonl").write_text(json.dumps({"text": "The second book."}) + "\n")
    (folder / "README.md").write_text("# Books\nHow this folder was made.\n")
    (folder / "MANIFEST.tsv").write_text("id\ttitle\n1\tThe first book\n")
    (folder / "LICENSE.txt").write_text("Public domain.\n")
    (folder / "Manifesto.txt").write_text("A book whose name only starts like a manifest.\n")
    (folder / ".ipynb_checkpoints" / "a-checkpoint.txt").write_text("A stale copy.\n")
    (folder / "cover.png").write_bytes(b"\x89PNG")
    return folder


def test_a_folder_gives_its_data_files_and_says_which(corpus_folder, capsys):
    paths = expand_paths([str(corpus_folder)], "dataset.train_files", announce=True)
    assert paths == [corpus_folder / "Manifesto.txt", corpus_folder / "a.txt", corpus_folder / "more" / "b.jsonl"]
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"dataset.train_files: {corpus_folder}: 3 file(s), ")
    assert "(Manifesto.txt, a.txt, b.jsonl); skipped 4 (LICENSE.txt, MANIFEST.tsv, README.md, cover.png)" in line
    assert expand_paths([str(corpus_folder)], "k", file_glob="*.jsonl") == [corpus_folder / "more" / "b.jsonl"]
    # named explicitly, a README is taken like any file
    assert expand_paths([str(corpus_folder / "README.md")], "k") == [corpus_folder / "README.md"]


def test_a_folder_without_matching_files_names_the_folder_and_the_glob(corpus_folder):
    with pytest.raises(UserError, match=r"the folder .*books holds no file matching dataset.file_glob='\*.csv'") as info:
        expand_paths([str(corpus_folder)], "dataset.train_files", file_glob="*.csv")
    assert "\n" not in str(info.value)


def test_train_files_may_be_one_path_and_file_glob_reaches_the_sources(corpus_folder, tmp_path):
    one = load_config(compose_config(["dataset=text", f"dataset.train_files={corpus_folder / 'a.txt'}"]))
    assert one.dataset.train_files == [str(corpus_folder / "a.txt")]
    cfg = load_config(compose_config([
        "dataset=text", f"dataset.train_files={corpus_folder}", f"dataset.valid_files={corpus_folder / 'a.txt'}",
        "dataset.file_glob=*.jsonl", f"dataset.cache_dir={tmp_path / 'cache'}",
    ]))  # fmt: skip
    assert [f["name"] for f in resolve_sources(cfg.dataset)["train"].spec["files"]] == ["b.jsonl"]
    with pytest.raises(UserError, match="dataset.file_glob='a/b' must be a file name pattern"):
        load_config(compose_config(["dataset=text", "dataset.train_files=a.txt", "dataset.file_glob=a/b"]))


def test_an_output_folder_with_files_we_did_not_write_is_refused_and_left_as_it_was(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_bytes(b"my notes\x00\xff")
    with pytest.raises(UserError, match=f"{out} already holds files and is not a folder this tool built") as info:
        build_folder(out, {"v": 1}, lambda f: (f / "shard").write_text("x") and {})
    assert "\n" not in str(info.value)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_bytes() == b"my notes\x00\xff"
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temporary folder left behind

    ours = tmp_path / "ours"  # our own folder, built for other inputs, is still replaced
    build_folder(ours, {"v": 1}, lambda f: (f / "shard").write_text("v1") and {})
    build_folder(ours, {"v": 2}, lambda f: (f / "shard").write_text("v2") and {})
    assert (ours / "shard").read_text() == "v2"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (build_folder(empty, {"v": 1}, lambda f: {}) / "manifest.json").is_file()


def test_preprocess_refuses_an_output_folder_it_did_not_make_before_any_work(tmp_path):
    (tmp_path / "c.txt").write_text("Some text to tokenize.\n\nAnd a second document of it.\n")
    out = tmp_path / "data"
    out.mkdir()
    (out / "README.md").write_text("The project's data folder.\n")
    cfg = PreprocessConfig(
        DatasetConfig(name="text", train_files=[str(tmp_path / "c.txt")], valid_files=[str(tmp_path / "c.txt")],
                      cache_dir=str(tmp_path / "cache")),
        TokenizerConfig(vocab_size=300), output=str(out),
    )  # fmt: skip
    with pytest.raises(UserError, match="output=.*data already holds files"):
        preprocess(cfg)
    assert (out / "README.md").read_text() == "The project's data folder.\n" and len(list(out.iterdir())) == 1
    assert not (tmp_path / "cache").exists()  # refused before training a tokenizer
