"""Preprocessing at scale: memory bounded by the chunk size, parallel workers, and the on-the-fly held-out split."""
import filecmp
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from linformer_pt.config import DatasetConfig, PreprocessConfig, TokenizerConfig
from linformer_pt.data.binarize import write_shards
from linformer_pt.data.corpus import file_source, resolve_sources
from linformer_pt.data.default_corpus import split_documents
from linformer_pt.data.sources import iter_documents, read_documents, write_documents
from linformer_pt.data.tokenizer import EOS, train_tokenizer

SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
pytestmark = pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="shared/data (tiny-shakespeare) is not beside the repo")


def copies(path: Path, times: int) -> Path:
    """`times` copies of tiny-shakespeare in one file, each opening with its own line (about 1.1 MB each)."""
    text = SHAKESPEARE.read_text(encoding="utf-8")
    with open(path, "w", encoding="utf-8") as f:
        for i in range(times):
            f.write(f"Copy number {i} of the plays.\n\n{text}\n\n")
    return path


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer(read_documents(SHAKESPEARE), 1000).save(str(path))
    return path


# The child caps its address space at what it already maps plus BUDGET_MB, then preprocesses. Encoding one
# chunk takes a few MB; the old code held every document (the held-out split) and every sentence of a shard
# as a small array: for this 13 MB corpus it needed 40-80 MB and failed under this cap (MemoryError).
BUDGET_MB = 40
CHILD = textwrap.dedent("""
    import json, resource, sys
    from linformer_pt.cli.preprocess import preprocess
    from linformer_pt.config import DatasetConfig, PreprocessConfig, TokenizerConfig
    corpus, tokenizer, out, cache, budget = sys.argv[1:]
    data = DatasetConfig(name="text", train_files=[corpus], valid_fraction=0.05, cache_dir=cache)
    cfg = PreprocessConfig(data, TokenizerConfig(path=tokenizer), out, shard_tokens=200_000, chunk_bytes=1 << 18)
    with open("/proc/self/status") as f:
        mapped = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (mapped + int(budget) * 2**20, resource.RLIM_INFINITY))
    preprocess(cfg)
    print(json.dumps({"mapped_mb": mapped / 2**20}))
""")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc to read the mapped size")
def test_preprocessing_a_corpus_runs_in_memory_far_below_its_size(tmp_path, tokenizer_file):
    corpus = copies(tmp_path / "plays.txt", 12)
    out = tmp_path / "shards"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "MALLOC_ARENA_MAX": "1"}  # no thread arenas
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(corpus), str(tokenizer_file), str(out), str(tmp_path / "cache"),
         str(BUDGET_MB)], capture_output=True, text=True, env=env, timeout=180,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    stats = json.loads((out / "manifest.json").read_text())["stats"]
    documents = sum(1 for _ in iter_documents([corpus]))
    assert stats["train"]["documents"] + stats["valid"]["documents"] == documents
    assert stats["train"]["tokens"] > 3_000_000 and stats["train"]["shards"] > 10  # the text is 13 MB: > 4x budget


def test_two_workers_write_the_same_bytes_as_one(tmp_path, tokenizer_file):
    from tokenizers import Tokenizer

    corpus = copies(tmp_path / "plays.txt", 2)
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    folders = {}
    for workers, chunk in ((1, 1 << 22), (2, 1 << 16)):  # other chunk sizes too: neither may change the output
        folders[workers] = tmp_path / f"workers{workers}"
        folders[workers].mkdir()
        stats = write_shards(iter_documents([corpus]), tokenizer, tokenizer.token_to_id(EOS), folders[workers],
                             shard_tokens=100_000, chunk_bytes=chunk, workers=workers)  # fmt: skip
    names = sorted(p.name for p in folders[1].iterdir())
    assert stats["shards"] > 3 and names == sorted(p.name for p in folders[2].iterdir())
    assert all(filecmp.cmp(folders[1] / n, folders[2] / n, shallow=False) for n in names)


@pytest.mark.parametrize("kind", ["text", "jsonl"])
def test_the_streamed_held_out_split_equals_the_split_of_the_listed_documents(tmp_path, kind):
    """The split made document by document is the one the earlier code made from a full list (same hash rule)."""
    if kind == "text":
        path = copies(tmp_path / "plays.txt", 1)
    else:  # records whose text has blank lines and indented lines: split as the earlier text files did
        path = tmp_path / "records.jsonl"
        docs = [f"Record {i}\n\n  indented line {i}\nlast line {i * 31 % 7}" for i in range(300)]
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    listed = list(iter_documents([path]))
    old_train, old_valid = split_documents(listed, 0.1)
    for split, docs in (("train", old_train), ("valid", old_valid)):  # the earlier code's files, read back
        write_documents(tmp_path / f"old-{split}.txt", docs)
    sources = resolve_sources(DatasetConfig(name="text", train_files=[str(path)], valid_fraction=0.1,
                                            cache_dir=str(tmp_path / "cache")))  # fmt: skip
    for split in ("train", "valid"):
        assert list(sources[split].documents()) == list(read_documents(tmp_path / f"old-{split}.txt"))
    assert 10 < len(old_valid) < len(old_train)
    assert not (tmp_path / "cache").exists()  # nothing copied to disk


def test_a_held_out_split_left_empty_is_one_line(tmp_path):
    from linformer_pt.data.corpus import held_out
    from linformer_pt.errors import UserError

    path = tmp_path / "one.txt"
    path.write_text("A single document.\n")
    sources = held_out(file_source([path], "text", "strict"), 0.02)
    with pytest.raises(UserError, match=r"valid_fraction=0.02 leaves no valid documents"):
        list(sources["valid"].documents())


def test_the_tokenizer_trains_on_max_train_bytes(tmp_path):
    from linformer_pt.data.tokenizer import first_bytes

    docs = [f"document {i} " * 10 for i in range(100)]
    taken = list(first_bytes(iter(docs), 500))
    assert sum(len(d) for d in taken[:-1]) < 500 <= sum(len(d) for d in taken) and len(taken) < len(docs)
    assert list(first_bytes(iter(docs), 0)) == docs
