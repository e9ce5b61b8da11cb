"""Streaming resume: a saved position continues bit-identically (workers, accumulation, epochs), seeking only."""
import json
import pickle
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from linformer_pt.data.masking import MaskingConfig
from linformer_pt.data.sources import write_documents
from linformer_pt.data.stream_reader import ArrowSplit
from linformer_pt.data.streaming import StreamingBatchIterator, StreamingMaskedLM
from linformer_pt.data.tokenizer import BOS, EOS, MASK, PAD, special_mask, train_tokenizer
from linformer_pt.errors import UserError

BATCH = 3


def make_documents(count: int, seed: int) -> List[str]:
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(list("abcdefghijklmnop"), size=rng.integers(2, 7))) for _ in range(60)]
    line = lambda: " ".join(rng.choice(words, size=rng.integers(2, 12)))  # noqa: E731
    return ["\n".join(line() for _ in range(rng.integers(1, 5))) for _ in range(count)]


DOCS = make_documents(60, seed=11)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(iter(DOCS), vocab_size=300)


def write(path: Path, docs: Sequence[str]) -> Path:
    """docs in the format named by the suffix (parquet in row groups of 4, so resuming skips groups)."""
    if path.suffix == ".txt":
        write_documents(path, docs)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    elif path.suffix == ".csv":
        path.write_text("text\n" + "".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")  # quoted cells
    else:
        pq.write_table(pa.table({"text": list(docs)}), path, row_group_size=4)
    return path


def make(tokenizer, paths, num_workers=0, update_freq=1, **kwargs) -> StreamingBatchIterator:
    """A new dataset and iterator, as a resumed run builds them."""
    ids = {name: tokenizer.token_to_id(tok) for name, tok in [("bos", BOS), ("pad", PAD), ("eos", EOS), ("mask", MASK)]}
    dataset = StreamingMaskedLM(
        paths, "text", tokenizer, ids, special_mask(tokenizer), 16, MaskingConfig(), seed=5, **kwargs
    )
    return StreamingBatchIterator(dataset, BATCH, num_workers=num_workers, update_freq=update_freq)


def take(iterator: StreamingBatchIterator, updates: int) -> List[Dict[str, torch.Tensor]]:
    """The micro-batches of the next `updates` updates of forever(), flattened."""
    groups = [group for _, group in zip(range(updates), iterator.forever())]
    assert all(len(group) == iterator.update_freq for group in groups)
    return [batch for group in groups for batch in group]


def assert_same(a: List[Dict[str, torch.Tensor]], b: List[Dict[str, torch.Tensor]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys() == {
            "tokens", "padding_mask", "masked_positions", "masked_index", "masked_grid_rows", "masked_grid_real",
            "targets",
        }
        assert all(torch.equal(x[k], y[k]) for k in x)


def saved(iterator: StreamingBatchIterator) -> Dict[str, Any]:
    """The position as a checkpoint holds it: pickled plain values."""
    return pickle.loads(pickle.dumps(iterator.state_dict()))


def check_resumes(tokenizer, paths, points: Sequence[int], after: int, **kwargs) -> None:
    """Saving after each number of updates in `points` and resuming in a new iterator gives the same next updates."""
    uninterrupted = make(tokenizer, paths, **kwargs)
    updates, reference, states = uninterrupted.forever(), [], {}
    for done in range(max(points) + after):
        if done in points:
            states[done] = (saved(uninterrupted), uninterrupted.epoch)
        reference.append(next(updates))
    for point, (state, epoch) in states.items():
        resumed = make(tokenizer, paths, **kwargs)
        resumed.load_state_dict(state)
        assert resumed.epoch == epoch
        expected = [batch for group in reference[point : point + after] for batch in group]
        assert_same(take(resumed, after), expected)


@pytest.mark.parametrize("break_mode", ["none", "complete_doc"])
@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
@pytest.mark.parametrize("files", [3, 1])
@pytest.mark.parametrize("update_freq", [1, 2])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_gives_the_batches_of_an_uninterrupted_run(
    tmp_path, tokenizer, suffix, files, update_freq, num_workers, break_mode
):
    paths = [write(tmp_path / f"{i}{suffix}", DOCS[i::files]) for i in range(files)]
    per_epoch = len(list(make(tokenizer, paths, num_workers, break_mode=break_mode).epoch_iter()))
    updates = per_epoch // update_freq
    assert updates >= 6, "the test wants resumes inside epoch 1, at its end and across into epoch 2"
    # Early, mid-epoch, the update holding the epoch's end, and inside epoch 2.
    check_resumes(tokenizer, paths, [1, updates // 2, updates, updates + 2], after=3,
                  num_workers=num_workers, update_freq=update_freq, break_mode=break_mode)  # fmt: skip


@pytest.mark.parametrize("break_mode", ["complete", "eos"])
def test_resume_with_the_other_sentence_break_modes(tmp_path, tokenizer, break_mode):
    paths = [write(tmp_path / f"{i}.txt", DOCS[i::2]) for i in range(2)]
    check_resumes(tokenizer, paths, [1, 5, 9], after=3, num_workers=2, break_mode=break_mode)


@pytest.mark.parametrize("break_mode", ["none", "complete_doc"])
def test_resume_streaming_a_save_to_disk_folder(tmp_path, tokenizer, break_mode):
    """dataset=hf: row-index positions in an Arrow split spread over several files, resumed by index alone."""
    import datasets

    folder = tmp_path / "hf"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS})}).save_to_disk(
        str(folder), max_shard_size="2KB"
    )
    arrow = [ArrowSplit(str(folder), "train", "text")]
    assert len(list(folder.glob("train/*.arrow"))) > 1
    per_epoch = len(list(make(tokenizer, arrow, break_mode=break_mode).epoch_iter()))
    check_resumes(tokenizer, arrow, [1, per_epoch // 2, per_epoch, per_epoch + 2], after=3, break_mode=break_mode)
    check_resumes(tokenizer, arrow, [1, 4, 7], after=3, num_workers=2, shuffle_buffer=3, rank=1, world_size=2,
                  break_mode=break_mode)  # fmt: skip
    iterator = make(tokenizer, arrow, num_workers=2, break_mode=break_mode)
    take(iterator, 3)
    rows = [stream["position"]["offset"] for stream in saved(iterator)["streams"].values()]
    assert all(isinstance(row, int) and row > 0 for row in rows)  # row indices: seekable


def test_resume_with_csv_parquet_shuffling_and_ranks(tmp_path, tokenizer):
    """Row-index positions (parquet, across row groups), byte positions of CSV rows, shuffle windows, rank 1 of 2."""
    paths = [write(tmp_path / name, DOCS[i::4]) for i, name in enumerate(["a.csv", "b.parquet", "c.txt", "d.jsonl"])]
    check_resumes(tokenizer, paths, [1, 4, 7], after=3, num_workers=2)
    check_resumes(tokenizer, paths[:2], [2, 5], after=3, num_workers=2)  # fewer files than workers: interleaved rows
    check_resumes(tokenizer, paths, [1, 3, 6], after=4, num_workers=2, shuffle_buffer=3, rank=1, world_size=2)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_reads_nothing_before_the_saved_positions(tmp_path, tokenizer, suffix, num_workers):
    path = write(tmp_path / f"corpus{suffix}", DOCS)
    reference = make(tokenizer, [path], num_workers)
    first_epoch = list(reference.epoch_iter())
    interrupted = make(tokenizer, [path], num_workers)
    done = take(interrupted, 2 * max(1, num_workers) + 1)
    state = saved(interrupted)
    offsets = [stream["position"]["offset"] for stream in state["streams"].values()]
    assert len(offsets) == max(1, num_workers) and min(offsets) > 100
    # Everything before the earliest saved position becomes bytes that fail to decode if anyone reads them.
    data = path.read_bytes()
    path.write_bytes(b"\xff" * min(offsets) + data[min(offsets) :])
    resumed = make(tokenizer, [path], num_workers)
    resumed.load_state_dict(state)
    assert_same(list(resumed.epoch_iter()), first_epoch[len(done) :])
    with pytest.raises(UserError, match="not UTF-8"):  # the garbage is real: the next epoch trips on it
        list(resumed.epoch_iter())


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
@pytest.mark.slow
def test_resume_when_worker_streams_end_unevenly(tmp_path, tokenizer):
    # One file per worker, the middle one short: the DataLoader goes on taking batches in turn from the others.
    docs = [DOCS[:5], DOCS[5:7], DOCS[7:13]]
    paths = [write(tmp_path / f"{i}.txt", d) for i, d in enumerate(docs)]
    iterator = make(tokenizer, paths, num_workers=3)
    workers = [(iterator.state_dict()["next_worker"] - 1) % 3 for _ in iterator.epoch_iter()]
    counts = [workers.count(w) for w in range(3)]
    assert counts[1] < counts[0] < counts[2]
    # Round-robin from worker 0, skipping finished workers: the order the resumed worker ids must reproduce.
    assert workers == [w for turn in range(max(counts)) for w in range(3) if turn < counts[w]]
    check_resumes(tokenizer, paths, range(1, len(workers) + 2), after=3, num_workers=3)


def test_positions_from_another_setting_are_refused(tmp_path, tokenizer):
    paths = [write(tmp_path / f"{i}.txt", DOCS[i::2]) for i in range(2)]
    iterator = make(tokenizer, paths, num_workers=2)
    take(iterator, 3)
    state = saved(iterator)
    with pytest.raises(UserError, match="num_workers=2, this run has num_workers=1"):
        make(tokenizer, paths, num_workers=0).load_state_dict(state)
    with pytest.raises(UserError, match="cannot be sought"):
        make(tokenizer, paths).load_state_dict({"epoch": 1, "offset": 3})
    epoch_start = make(tokenizer, paths)
    epoch_start.load_state_dict({"epoch": 2, "offset": 0})  # an epoch start needs no stream state
    assert epoch_start.epoch == 2
    (tmp_path / "0.txt").rename(tmp_path / "renamed.txt")
    resumed = make(tokenizer, [tmp_path / "renamed.txt", paths[1]], num_workers=2)
    resumed.load_state_dict(state)
    with pytest.raises(UserError, match="streamed files changed") as raised:
        next(resumed.forever())
    assert "\n" not in str(raised.value)  # raised in a DataLoader worker, still one line
