"""Streaming masked-LM data: rank x worker splits cover the corpus once, determinism, exact resume, masking."""
import csv
import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.utils.data

from linformer_pt.config import DatasetConfig
from linformer_pt.data.binarize import load_shards, write_shards
from linformer_pt.data.blocks import corpus_blocks
from linformer_pt.data.masking import MaskingConfig
from linformer_pt.data.sources import iter_documents, write_documents
from linformer_pt.data.stream_reader import ArrowSplit
from linformer_pt.data.streaming import StreamingBatchIterator, StreamingMaskedLM
from linformer_pt.data.tokenizer import BOS, EOS, MASK, PAD, special_mask, train_tokenizer
from linformer_pt.errors import UserError

TOKENS_PER_SAMPLE = 16


def make_documents(count: int = 48) -> List[str]:
    rng = np.random.default_rng(7)
    words = ["".join(rng.choice(list("abcdefghijklmnop"), size=rng.integers(2, 7))) for _ in range(60)]
    lines = lambda: " ".join(rng.choice(words, size=rng.integers(3, 10)))  # noqa: E731
    return ["\n".join(lines() for _ in range(rng.integers(1, 4))) for _ in range(count)]


DOCS = make_documents()


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(iter(DOCS), vocab_size=400)


@pytest.fixture(scope="module")
def special_ids(tokenizer) -> Dict[str, int]:
    names = [("bos", BOS), ("pad", PAD), ("eos", EOS), ("mask", MASK)]
    return {name: tokenizer.token_to_id(tok) for name, tok in names}


def corpus_tokens(tokenizer, docs: Sequence[str]) -> List[int]:
    """The token stream write_shards would produce: each line's ids, then </s>."""
    eos = tokenizer.token_to_id(EOS)
    lines = [line for doc in docs for line in doc.split("\n") if line.strip()]
    return [t for e in tokenizer.encode_batch(lines, add_special_tokens=False) for t in e.ids + [eos]]


def write(path: Path, docs: Sequence[str]) -> Path:
    """docs in the format named by the suffix."""
    if path.suffix == ".txt":
        write_documents(path, docs)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    elif path.suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([["label", "text"]] + [[i, d] for i, d in enumerate(docs)])
    else:
        pq.write_table(pa.table({"text": list(docs)}), path)
    return path


LAYOUTS = {
    # 4 files, 2 ranks x 2 workers: one whole file per (rank, worker) slot
    "4 files, one per format": ["a.txt", "b.jsonl", "c.csv", "d.parquet"],
    # 3 files, 4 slots: every slot reads every 4th record of each file
    "3 files": ["a.txt", "b.txt", "c.jsonl"],
    # 1 file: the same, within the one file
    "1 file": ["a.txt"],
}


def write_layout(folder: Path, names: List[str]) -> List[Path]:
    return [write(folder / name, DOCS[i :: len(names)]) for i, name in enumerate(names)]


def make_dataset(tokenizer, special_ids, paths, rank=0, world_size=1, **kwargs) -> StreamingMaskedLM:
    return StreamingMaskedLM(
        paths, "text", tokenizer, special_ids, special_mask(tokenizer), TOKENS_PER_SAMPLE, MaskingConfig(),
        seed=3, rank=rank, world_size=world_size, **kwargs,
    )  # fmt: skip


def stream(dataset: StreamingMaskedLM, worker: int, num_workers: int, monkeypatch) -> List[Dict[str, np.ndarray]]:
    """The samples DataLoader worker `worker` of `num_workers` would produce, read in this process."""
    info = SimpleNamespace(id=worker, num_workers=num_workers, seed=0, dataset=dataset)
    with monkeypatch.context() as m:
        m.setattr(torch.utils.data, "get_worker_info", lambda: info)
        return list(dataset)


def unmasked_tokens(batch: Dict[str, torch.Tensor], pad_id: int) -> List[int]:
    """The original tokens of a collated batch (masked positions restored), without <s> and padding."""
    tokens = batch["tokens"].clone()
    tokens[batch["masked_positions"]] = batch["targets"]
    return tokens[:, 1:][~batch["padding_mask"][:, 1:]].tolist()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_ranks_and_workers_read_disjoint_parts_covering_the_corpus(
    layout, tmp_path, tokenizer, special_ids, monkeypatch
):
    paths = write_layout(tmp_path, LAYOUTS[layout])
    seen: Counter = Counter()
    for rank in range(2):
        dataset = make_dataset(tokenizer, special_ids, paths, rank=rank, world_size=2)
        for worker in range(2):
            samples = stream(dataset, worker, 2, monkeypatch)
            assert len(samples) >= 2, f"rank {rank} worker {worker} is idle"
            assert all(len(s["targets"]) == TOKENS_PER_SAMPLE for s in samples[:-1])
            assert all(s["targets"][0] == special_ids["bos"] for s in samples)
            seen.update(t for s in samples for t in s["targets"][1:].tolist())
    assert seen == Counter(corpus_tokens(tokenizer, DOCS))


def test_real_dataloader_workers_cover_the_corpus(tmp_path, tokenizer, special_ids):
    paths = write_layout(tmp_path, LAYOUTS["4 files, one per format"])
    seen: Counter = Counter()
    for rank in range(2):
        dataset = make_dataset(tokenizer, special_ids, paths, rank=rank, world_size=2)
        for batch in StreamingBatchIterator(dataset, batch_size=4, num_workers=2).epoch_iter():
            seen.update(unmasked_tokens(batch, special_ids["pad"]))
    assert seen == Counter(corpus_tokens(tokenizer, DOCS))


def test_shuffled_streams_still_cover_the_corpus_and_change_with_the_epoch(tmp_path, tokenizer, special_ids):
    # No parquet file here: datasets 5.x sleeps 5 s after a shuffled stream that reads parquet (arrow issue 45214).
    paths = write_layout(tmp_path, LAYOUTS["3 files"])
    orders = {}
    for epoch in (1, 2):
        seen: Counter = Counter()
        for rank in range(2):
            dataset = make_dataset(tokenizer, special_ids, paths, rank, 2, shuffle_buffer=8)
            dataset.set_epoch(epoch)
            targets = [t for s in dataset for t in s["targets"][1:].tolist()]
            seen.update(targets)
            orders[epoch, rank] = targets
        assert seen == Counter(corpus_tokens(tokenizer, DOCS))
    assert orders[1, 0] != orders[2, 0]


def epoch_batches(iterator: StreamingBatchIterator) -> List[Dict[str, torch.Tensor]]:
    return list(iterator.epoch_iter())


def assert_same_batches(a: List[Dict[str, torch.Tensor]], b: List[Dict[str, torch.Tensor]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        assert all(torch.equal(x[k], y[k]) for k in x)


def test_same_settings_give_the_same_batches_and_epochs_change_the_masks(tmp_path, tokenizer, special_ids):
    paths = write_layout(tmp_path, LAYOUTS["3 files"])
    make = lambda: StreamingBatchIterator(make_dataset(tokenizer, special_ids, paths), 4)  # noqa: E731
    iterator = make()
    first, again = epoch_batches(iterator), epoch_batches(make())
    assert_same_batches(first, again)
    assert iterator.epoch == 2
    second = epoch_batches(iterator)
    assert len(second) == len(first)
    assert any(not torch.equal(a["masked_positions"], b["masked_positions"]) for a, b in zip(first, second))
    # Same text (no shuffle), different masks.
    pad = special_ids["pad"]
    assert [unmasked_tokens(b, pad) for b in first] == [unmasked_tokens(b, pad) for b in second]
    iterator.restart()
    assert (iterator.epoch, iterator.state_dict()["streams"]) == (1, {})
    assert_same_batches(epoch_batches(iterator), first)


def test_position_after_an_epoch_last_batch_is_the_next_epoch(tmp_path, tokenizer, special_ids):
    paths = write_layout(tmp_path, LAYOUTS["1 file"])
    iterator = StreamingBatchIterator(make_dataset(tokenizer, special_ids, paths), 4)
    positions = [iterator.state_dict() for _ in iterator.epoch_iter()]
    assert [p["epoch"] for p in positions] == [1] * (len(positions) - 1) + [2]
    assert positions[-2]["batches"] == len(positions) - 1 and positions[-2]["streams"]
    assert (positions[-1]["batches"], positions[-1]["streams"]) == (0, {})


def test_forever_groups_update_freq_batches_across_epochs(tmp_path, tokenizer, special_ids):
    paths = write_layout(tmp_path, LAYOUTS["1 file"])
    per_epoch = epoch_batches(StreamingBatchIterator(make_dataset(tokenizer, special_ids, paths), 4))
    iterator = StreamingBatchIterator(make_dataset(tokenizer, special_ids, paths), 4, update_freq=3)
    groups = [group for _, group in zip(range(len(per_epoch)), iterator.forever())]
    assert all(len(group) == 3 for group in groups)
    flat = [batch for group in groups for batch in group]
    assert_same_batches(flat[: len(per_epoch)], per_epoch)
    assert iterator.epoch == 4  # the groups hold exactly 3 epochs' batches: the last one ends epoch 3


def test_masking_rate_and_special_tokens(tmp_path, tokenizer, special_ids):
    samples = list(make_dataset(tokenizer, special_ids, write_layout(tmp_path, LAYOUTS["1 file"])))
    targets = np.concatenate([s["targets"] for s in samples])
    masked = np.concatenate([s["is_masked"] for s in samples])
    special = targets <= max(special_ids.values())
    assert not any(s["is_masked"][0] for s in samples)  # <s> is never masked
    assert not masked[special].any()
    assert masked[~special].mean() == pytest.approx(0.15, abs=0.04)
    inputs = np.concatenate([s["inputs"] for s in samples])
    assert np.array_equal(inputs[~masked], targets[~masked])


def test_jsonl_and_text_files_give_the_same_samples(tmp_path, tokenizer, special_ids):
    txt = write(tmp_path / "docs.txt", DOCS)
    jsonl = write(tmp_path / "docs.jsonl", DOCS)
    from_txt = list(make_dataset(tokenizer, special_ids, [txt]))
    from_jsonl = list(make_dataset(tokenizer, special_ids, [jsonl]))
    assert [t for s in from_txt for t in s["targets"][1:].tolist()] == corpus_tokens(tokenizer, DOCS)
    assert len(from_txt) == len(from_jsonl)
    for a, b in zip(from_txt, from_jsonl):
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_streams_match_read_documents_on_untidy_files(tmp_path, tokenizer, special_ids):
    """Sentences are exactly those read_documents + write_shards produce: stripped in text files, not in records."""
    txt = tmp_path / "a.txt"
    txt.write_bytes(b"  first line  \r\n\tsecond\r\n \r\n\r\n\r\nnext doc\n   \nlast\n\n\n")
    jsonl = tmp_path / "b.jsonl"
    records = ['{"text": "  a b\\n   indented  \\n\\n c\\r\\nd "}', '{"text": null}', "", '{"text": ""}']
    jsonl.write_text("\n".join(records) + "\n", encoding="utf-8")
    table = write(tmp_path / "c.csv", ["  spaced out ", "", "NA", "007"])
    paths = [txt, jsonl, table]
    samples = list(make_dataset(tokenizer, special_ids, paths))
    streamed = [t for s in samples for t in s["targets"][1:].tolist()]
    assert streamed == corpus_tokens(tokenizer, list(iter_documents(paths)))


def test_bad_sources_fail_with_one_line(tmp_path, tokenizer, special_ids):
    with pytest.raises(UserError, match="no such file"):
        make_dataset(tokenizer, special_ids, [tmp_path / "missing.txt"])
    table = write(tmp_path / "t.csv", DOCS[:3])
    with pytest.raises(UserError, match="no column 'body'"):
        StreamingMaskedLM([table], "body", tokenizer, special_ids, special_mask(tokenizer), 16, MaskingConfig(), seed=0)
    records = write(tmp_path / "r.jsonl", DOCS[:3])
    with pytest.raises(UserError, match="no field 'body'"):
        list(StreamingMaskedLM([records], "body", tokenizer, special_ids, special_mask(tokenizer), 16, MaskingConfig(), seed=0))
    broken = tmp_path / "broken.txt"
    broken.write_bytes(b"good line\n\xff\xfe bad\n")
    with pytest.raises(UserError, match="not UTF-8.*encoding_errors=replace"):
        list(make_dataset(tokenizer, special_ids, [broken]))
    replaced = list(make_dataset(tokenizer, special_ids, [broken], encoding_errors="replace"))
    assert "\ufffd\ufffd bad" in tokenizer.decode(np.concatenate([s["targets"] for s in replaced]).tolist())


def blocks_py_samples(tokenizer, special_ids, paths, folder: Path, break_mode: str) -> List[List[int]]:
    """The blocks blocks.py cuts from the corpus write_shards makes of the same files (one shard)."""
    folder.mkdir()
    write_shards(iter_documents(paths), tokenizer, special_ids["eos"], folder)
    corpus = load_shards(folder)
    assert len(corpus.shards) == 1
    shard_ids, starts, ends = corpus_blocks(corpus, TOKENS_PER_SAMPLE - 1, break_mode)
    return [corpus.shards[i].tokens[a:b].tolist() for i, a, b in zip(shard_ids, starts, ends)]


@pytest.mark.parametrize("break_mode", ["complete", "complete_doc", "eos"])
@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_sentence_break_modes_pack_like_blocks_py(tmp_path, tokenizer, special_ids, break_mode, suffix):
    long_line = " ".join(DOCS[0].split() * 4)  # longer than a block: split into pieces of its own
    docs = DOCS[:20] + [long_line + "\n" + DOCS[21], DOCS[22] + "\n" + long_line] + DOCS[23:]
    paths = [write(tmp_path / f"a{suffix}", docs[:30]), write(tmp_path / f"b{suffix}", docs[30:])]
    expected = blocks_py_samples(tokenizer, special_ids, paths, tmp_path / "shards", break_mode)
    samples = list(make_dataset(tokenizer, special_ids, paths, break_mode=break_mode))
    assert [s["targets"][1:].tolist() for s in samples] == expected
    assert all(s["targets"][0] == special_ids["bos"] for s in samples)
    if break_mode == "complete_doc":  # the mode is not a no-op: complete packs across documents
        assert len(expected) > len(blocks_py_samples(tokenizer, special_ids, paths, tmp_path / "c", "complete"))


def save_hf(folder: Path, splits: Dict[str, Sequence[str]]) -> Path:
    """A `datasets` DatasetDict saved with save_to_disk (Arrow files), small shards so rows span files."""
    import datasets

    datasets.DatasetDict({k: datasets.Dataset.from_dict({"text": list(v)}) for k, v in splits.items()}).save_to_disk(
        str(folder), max_shard_size="2KB"
    )
    return folder


@pytest.mark.parametrize("break_mode", ["none", "complete_doc"])
def test_hf_save_to_disk_streams_like_jsonl_records(tmp_path, tokenizer, special_ids, break_mode, monkeypatch):
    folder = save_hf(tmp_path / "hf", {"train": DOCS, "validation": DOCS[:4]})
    jsonl = write(tmp_path / "docs.jsonl", DOCS)
    for rank in range(2):
        arrow = make_dataset(tokenizer, special_ids, [ArrowSplit(str(folder), "train", "text")], rank, 2,
                             break_mode=break_mode)  # fmt: skip
        records = make_dataset(tokenizer, special_ids, [jsonl], rank, 2, break_mode=break_mode)
        for worker in range(2):
            a, b = stream(arrow, worker, 2, monkeypatch), stream(records, worker, 2, monkeypatch)
            assert len(a) == len(b) >= 2
            assert all(all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def test_hf_streaming_config_and_hub_names(tmp_path):
    with pytest.raises(UserError, match="hf_valid_split or dataset.valid_files"):
        DatasetConfig(name="hf", hf_name="some/hub-name", hf_valid_split="", streaming=True)
    DatasetConfig(name="hf", hf_name="some/hub-name", streaming=True)
    with pytest.raises(UserError, match="only as a local folder saved with save_to_disk") as raised:
        ArrowSplit("some/hub-name", "train", "text")
    assert "\n" not in str(raised.value)
    with pytest.raises(UserError, match="cannot load split 'nope'"):
        ArrowSplit(str(save_hf(tmp_path / "hf", {"train": DOCS[:3]})), "nope", "text")
