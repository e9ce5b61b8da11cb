"""The embedded corpus, user text files, the BPE tokenizer, token caching and atomic cache folders."""
import json

import numpy as np
import pytest

from linformer_pt.data.binarize import cached_tokenized
from linformer_pt.data.cache import cached_dir
from linformer_pt.data.default_corpus import build_default_corpus
from linformer_pt.data.text import check_text_files, iter_documents
from linformer_pt.data.tokenizer import SPECIAL_TOKENS, cached_tokenizer, load_tokenizer
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
    return cached_tokenizer(str(cache_dir), [corpus["train"]], 2000, 2)


def test_tokenizer_has_roberta_specials_and_round_trips(tokenizer_path):
    tok = load_tokenizer(tokenizer_path)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tok.get_vocab_size() == 2000
    text = "Return the number of items — naïve café 🙂."
    enc = tok.encode(text)
    assert enc.ids[0] == 0 and enc.ids[-1] == 2
    assert 3 not in enc.ids  # byte-level: nothing is unknown
    assert tok.decode(enc.ids) == text


def test_tokenized_cache_equals_direct_tokenization(tokenizer_path, corpus, cache_dir):
    tok = load_tokenizer(tokenizer_path)
    tokens = cached_tokenized(str(cache_dir), [corpus["valid"]], tokenizer_path, tok, eos_id=2)
    docs = list(iter_documents([corpus["valid"]]))
    assert tokens.num_documents == len(docs)
    for i in (0, len(docs) // 2, len(docs) - 1):
        doc = tokens.tokens[tokens.doc_offsets[i] : tokens.doc_offsets[i + 1]]
        assert list(doc) == tok.encode(docs[i], add_special_tokens=False).ids + [2]
    assert tokens.tokens.dtype == np.uint16


def test_bad_text_files_fail_with_one_line(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 au lait".encode("latin-1"))
    cases = [
        ([str(tmp_path / "missing.txt")], "no such file: .*missing.txt"),
        ([str(empty)], "empty.txt contains no text"),
        ([str(latin)], "latin1.txt is not UTF-8 text \\(invalid byte at offset 3\\)"),
        ([], "dataset.train_files is empty"),
    ]
    for paths, message in cases:
        with pytest.raises(UserError, match=message):
            check_text_files(paths, "dataset.train_files")


def test_bad_tokenizer_file_is_reported(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not a tokenizers JSON file"):
        load_tokenizer(bad)
    with pytest.raises(UserError, match="no such file"):
        load_tokenizer(tmp_path / "nope.json")


def test_interrupted_cache_build_is_never_used(tmp_path):
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
