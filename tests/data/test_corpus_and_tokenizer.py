"""Sources in every format, the embedded corpus, the BPE tokenizer, token shards and atomic cache folders."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from linformer_pt.data.binarize import load_shards, write_shards
from linformer_pt.data.cache import build_folder, cached_dir
from linformer_pt.data.corpus import cached_corpus, file_source
from linformer_pt.data.default_corpus import build_default_corpus
from linformer_pt.data.sources import check_sources, expand_paths, iter_documents
from linformer_pt.data.tokenizer import SPECIAL_TOKENS, cached_tokenizer, load_tokenizer, word_begins
from linformer_pt.errors import UserError


@pytest.fixture(scope="module")
def corpus(cache_dir):
    return build_default_corpus(str(cache_dir))


def test_default_corpus_is_deduplicated_english_split_by_hash(corpus, cache_dir):
    train, valid = (list(iter_documents([corpus[s]])) for s in ("train", "valid"))
    assert len(train) > 3000 and len(valid) > 30
    assert not set(train) & set(valid)
    assert len(set(train)) == len(train)
    words = " ".join(train).split()
    assert len(words) > 200_000
    assert sum(w.lower() in {"the", "of", "and", "is", "a", "to"} for w in words) / len(words) > 0.08
    assert build_default_corpus(str(cache_dir)) == corpus  # cached: same files
    manifest = json.loads((corpus["train"].parent / "manifest.json").read_text())
    assert manifest["train"]["documents"] == len(train)


@pytest.fixture(scope="module")
def tokenizer_path(corpus, cache_dir):
    return cached_tokenizer(str(cache_dir), file_source([corpus["train"]], "text", "strict"), 2000, 2)


def test_tokenizer_has_roberta_specials_and_round_trips(tokenizer_path):
    tok = load_tokenizer(tokenizer_path)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tok.get_vocab_size() == 2000
    text = "Return the number of items — naïve café 🙂."
    enc = tok.encode(text)
    assert enc.ids[0] == 0 and enc.ids[-1] == 2
    assert 3 not in enc.ids  # byte-level: nothing is unknown
    assert tok.decode(enc.ids) == text
    begins = word_begins(tok)
    assert begins[tok.token_to_id("Ġthe")] and not begins[tok.token_to_id("the")]


def test_shards_round_trip_equals_direct_tokenization(tokenizer_path, corpus, tmp_path):
    tok = load_tokenizer(tokenizer_path)
    docs = list(iter_documents([corpus["valid"]]))
    stats = write_shards(iter(docs), tok, 2, tmp_path, shard_tokens=5000)  # several small shards
    shards = load_shards(tmp_path).shards
    assert stats["shards"] == len(shards) > 1 and stats["documents"] == len(docs)
    rebuilt = []
    for shard in shards:
        for d in range(len(shard.doc_starts) - 1):
            first, last = shard.sentence_offsets[shard.doc_starts[d]], shard.sentence_offsets[shard.doc_starts[d + 1]]
            rebuilt.append(list(shard.tokens[first:last]))
    expected = [[i for line in doc.split("\n") for i in tok.encode(line, add_special_tokens=False).ids + [2]]
                for doc in docs]  # fmt: skip
    assert rebuilt == expected
    assert shards[0].tokens.dtype == np.uint16 and isinstance(shards[0].tokens, np.memmap)


def test_every_file_format_gives_the_same_documents(tmp_path):
    docs = ["First document.\nIts second line.", "Second, with a comma and \"quotes\".", "Third ünïcode 🙂"]
    (tmp_path / "a.txt").write_text("\n\n".join(docs) + "\n")
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    import csv

    for name, delimiter in (("a.csv", ","), ("a.tsv", "\t")):
        with open(tmp_path / name, "w", newline="") as f:
            writer = csv.writer(f, delimiter=delimiter)
            writer.writerow(["id", "text"])
            writer.writerows(enumerate(docs))
    pq.write_table(pa.table({"text": docs}), tmp_path / "a.parquet")
    for name in ("a.txt", "a.jsonl", "a.csv", "a.tsv", "a.parquet"):
        assert list(iter_documents([tmp_path / name])) == docs, name
    assert len(expand_paths([str(tmp_path)], "k")) == 5  # a folder: every supported file in it
    assert [p.name for p in expand_paths([str(tmp_path / "*.json*")], "k")] == ["a.jsonl"]


def test_bad_sources_fail_with_one_line(tmp_path):
    (tmp_path / "empty.txt").write_text("\n \n")
    (tmp_path / "latin1.txt").write_bytes("first line\ncaf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "nofield.jsonl").write_text('{"body": "x"}\n')
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "no_text").mkdir()
    key = "dataset.train_files"
    cases = [
        (lambda: expand_paths([str(tmp_path / "missing.txt")], key), "no such file: .*missing.txt"),
        (lambda: expand_paths([str(tmp_path / "*.md")], key), "the glob .*\\*.md matches no file"),
        (lambda: expand_paths([str(tmp_path / "no_text")], key), "the folder .*no_text holds no"),
        (lambda: expand_paths([str(tmp_path / "image.png")], key), "image.png has an unknown format"),
        (lambda: expand_paths([], key), "dataset.train_files is empty"),
        (lambda: check_sources([tmp_path / "empty.txt"], key), "empty.txt contains no text"),
        (lambda: list(iter_documents([tmp_path / "latin1.txt"])), "latin1.txt is not UTF-8 text \\(invalid byte at offset 14\\)"),
        (lambda: list(iter_documents([tmp_path / "nofield.jsonl"])), "line 1 has no field 'text'"),
    ]
    for call, message in cases:
        with pytest.raises(UserError, match=message) as info:
            call()
        assert "\n" not in str(info.value)
    replaced = list(iter_documents([tmp_path / "latin1.txt"], errors="replace"))
    assert replaced == ["first line\ncaf\ufffd au lait"]


def test_bad_tokenizer_file_is_reported(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not a tokenizers JSON file"):
        load_tokenizer(bad)
    with pytest.raises(UserError, match="no such file"):
        load_tokenizer(tmp_path / "nope.json")


def test_token_cache_is_keyed_by_content(tokenizer_path, cache_dir, tmp_path):
    tok = load_tokenizer(tokenizer_path)
    text = tmp_path / "c.txt"
    text.write_text("one two three\n\nfour five\n")
    first = cached_corpus(str(cache_dir), file_source([text], "text", "strict"), tokenizer_path, tok, 2)
    text.write_text("one two three\n\nfour five six\n")
    second = cached_corpus(str(cache_dir), file_source([text], "text", "strict"), tokenizer_path, tok, 2)
    assert second.num_tokens > first.num_tokens  # the changed file was tokenized anew


def test_interrupted_builds_are_never_used_and_never_clobber(tmp_path):
    def crash(folder):
        (folder / "half.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_dir(tmp_path, "thing", {"v": 1}, crash)
    assert list(tmp_path.iterdir()) == []  # no half-built folder left behind

    calls = []
    folder = cached_dir(tmp_path, "thing", {"v": 1}, lambda f: calls.append(f) or {"ok": True})
    again = cached_dir(tmp_path, "thing", {"v": 1}, lambda f: calls.append(f) or {"ok": True})
    assert folder == again and len(calls) == 1
    assert cached_dir(tmp_path, "thing", {"v": 2}, lambda f: {}) != folder

    out = tmp_path / "named"
    build_folder(out, {"v": 1}, lambda f: (f / "data").write_text("v1") and {})
    with pytest.raises(KeyboardInterrupt):
        build_folder(out, {"v": 2}, crash)
    assert (out / "data").read_text() == "v1"  # a failed rebuild leaves the earlier output whole
    build_folder(out, {"v": 2}, lambda f: (f / "data").write_text("v2") and {})
    assert (out / "data").read_text() == "v2" and not (out / "half.txt").exists()


def test_a_local_datasets_dataset_is_a_source_with_a_held_out_split(cache_dir, tmp_path):
    import datasets

    from linformer_pt.config import DatasetConfig
    from linformer_pt.data.corpus import resolve_sources

    texts = [f"Document number {i} says something different: {i * 7919 % 1000}." for i in range(400)]
    datasets.Dataset.from_dict({"text": texts, "n": list(range(400))}).save_to_disk(str(tmp_path / "ds"))
    cfg = DatasetConfig(name="hf", hf_name=str(tmp_path / "ds"), hf_valid_split="", valid_fraction=0.1,
                        cache_dir=str(cache_dir))  # fmt: skip
    sources = resolve_sources(cfg)
    train, valid = list(sources["train"].documents()), list(sources["valid"].documents())
    assert sorted(train + valid) == sorted(texts) and 10 < len(valid) < 80
    with pytest.raises(UserError, match="has no column 'body'"):
        resolve_sources(DatasetConfig(name="hf", hf_name=str(tmp_path / "ds"), text_field="body"))
    with pytest.raises(UserError, match="cannot load split"):
        resolve_sources(DatasetConfig(name="hf", hf_name=str(tmp_path / "nope")))
