"""Masked-LM samples streamed from raw files: no preprocessing pass, no token cache, resumable by seeking.

Each (DDP rank, DataLoader worker) slot reads a disjoint part of the records (stream_reader), packs it by the break
mode as blocks.py packs a shard (a record is a document, a line a sentence) and masks sample i with a generator seeded
by (seed, epoch, rank, worker, i). Every sample carries its stream's state, so StreamingBatchIterator can save a
position and resume there without reading what came before. Validation reads one stream instead (rank 0 of 1,
worker 0, cut at a token budget) and shares its samples out: the same set and masks for any process count.
"""
import csv
import itertools
from functools import partial
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch.utils.data
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, IterableDataset

from linformer_pt.data.masking import MaskingConfig, collate, mask_tokens
from linformer_pt.data.sources import DELIMITED, PARQUET, expand_paths
from linformer_pt.data.blocks import BREAK_MODES
from linformer_pt.data.stream_reader import ArrowSplit, SlotReader, windows
from linformer_pt.data.tokenizer import text_only
from linformer_pt.errors import UserError

ENCODE_DOCS = 256  # records per encode_batch call
STREAM = "stream"  # the sample / batch key carrying (logical worker, stream state after it) to the main process
Sample = Dict[str, np.ndarray]
StreamState = Dict[str, Any]


def _check_columns(path: Union[Path, ArrowSplit], text_field: str) -> None:
    """Fail before streaming when a CSV/TSV header or a parquet schema lacks the text field (both are cheap to read)."""
    if isinstance(path, ArrowSplit):  # checked when it was loaded
        return
    suffix = path.suffix.lower()
    if suffix in DELIMITED:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            names = next(csv.reader(f, delimiter=DELIMITED[suffix]), [])
    elif suffix in PARQUET:
        import pyarrow.parquet as pq  # a dependency of `datasets`

        names = pq.ParquetFile(path).schema_arrow.names
    else:
        return
    if text_field not in names:
        raise UserError(f"{path}: no column {text_field!r} (dataset.text_field); it has {names}")


def start_state() -> StreamState:
    """A stream's state at the start of an epoch: no record read, no token pending, no sample made."""
    return {"position": None, "window": 0, "taken": 0, "tokens": np.empty(0, dtype=np.int64), "units": [], "number": 0}


def plain_state(state: StreamState) -> StreamState:
    """A stream state as plain Python values (lists, not arrays), as a checkpoint stores it."""
    return {**state, "tokens": np.asarray(state["tokens"]).tolist(), "units": list(state.get("units", []))}


def sentence_units(lengths: Sequence[int], block: int) -> np.ndarray:
    """Lengths of the units blocks.py packs: each sentence, an over-long one cut into full blocks and a remainder."""
    lengths = np.asarray(lengths, dtype=np.int64)
    pieces = (lengths - 1) // block + 1
    units = np.full(int(pieces.sum()), block, dtype=np.int64)
    units[np.cumsum(pieces) - 1] = lengths - (pieces - 1) * block
    return units


class StreamingMaskedLM(IterableDataset):
    """This process's masked-LM samples, streamed: `<s>` + at most tokens_per_sample - 1 tokens, packed by break_mode.

    Rank r's DataLoader worker w (of W) is slot r * W + w of world_size * W; stream_reader.SlotReader gives each
    slot its files or, with fewer files than slots, its records of every file, so each record is read by exactly
    one (rank, worker). With shuffle_buffer > 0 the file order is permuted per epoch (alike on every rank) and each
    slot permutes its records in windows of shuffle_buffer; resuming then re-reads at most that one window.
    """

    def __init__(
        self,
        paths: Sequence[Union[str, Path, ArrowSplit]],
        text_field: str,
        tokenizer: Tokenizer,
        special_ids: Dict[str, int],
        is_special: np.ndarray,
        tokens_per_sample: int,
        masking: MaskingConfig,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        word_begins: Optional[np.ndarray] = None,
        shuffle_buffer: int = 0,
        encoding_errors: str = "strict",
        key: str = "dataset.train_files",
        file_glob: str = "*",
        break_mode: str = "none",
        max_tokens: int = 0,
        share: Tuple[int, int] = (0, 1),
    ) -> None:
        if tokens_per_sample < 2:
            raise UserError(f"task.tokens_per_sample={tokens_per_sample} must be >= 2")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if break_mode not in BREAK_MODES:
            raise UserError(f"task.sample_break_mode={break_mode!r} is not one of {BREAK_MODES}")
        if paths and all(isinstance(p, ArrowSplit) for p in paths):
            self.paths: List[Union[Path, ArrowSplit]] = list(paths)
        else:
            self.paths = expand_paths([str(p) for p in paths], key, file_glob)
        self.break_mode = break_mode
        self.text_field, self.tokenizer, self.ids = text_field, tokenizer, special_ids
        # is_special: tokenizer.special_mask, a bool per vocabulary id (specials may sit anywhere in it).
        self.is_special, self.ordinary_ids = is_special, np.flatnonzero(~is_special)
        self.vocab_size = len(is_special)
        self.tokens_per_sample, self.masking, self.seed = tokens_per_sample, masking, seed
        self.rank, self.world_size, self.word_begins = rank, world_size, word_begins
        self.shuffle_buffer = shuffle_buffer
        self.encoding_errors = encoding_errors
        # Validation: one stream (rank 0 of 1) cut after max_tokens (0: none), of which this process keeps samples
        # share[0], share[0] + share[1], ...: the same samples and masks for any number of processes.
        self.max_tokens, self.share = max_tokens, share
        self.epoch = 0
        for path in self.paths:
            _check_columns(path, text_field)

    def set_epoch(self, epoch: int) -> None:
        """The epoch seeds the masks and, with shuffle_buffer > 0, the shuffle."""
        self.epoch = epoch

    def _records(self, worker: int, num_workers: int, start: StreamState) -> Iterator[Tuple[List[str], StreamState]]:
        """(sentences, reader state after it) of the records this (rank, worker) reads, from `start` on."""
        paths = list(self.paths)
        if self.shuffle_buffer > 0:  # the same order on every rank, so the slots still split the files
            paths = [paths[i] for i in np.random.default_rng([self.seed, self.epoch]).permutation(len(paths))]
        slot, num_slots = self.rank * num_workers + worker, self.world_size * num_workers
        reader = SlotReader(paths, self.text_field, self.encoding_errors, slot, num_slots)
        records = reader.records(start["position"])
        if self.shuffle_buffer > 0:
            yield from windows(records, self.shuffle_buffer, start, [self.seed, self.epoch, self.rank, worker])
            return
        for sentences, position in records:
            yield sentences, {"position": position, "window": 0, "taken": 0}

    def _tokens(self, records: List[List[str]]) -> List[Tuple[np.ndarray, List[int]]]:
        """Each record's tokens (every sentence's ids then `</s>`, back to back: write_shards' convention) and
        sentence lengths."""
        lines = [line for sentences in records for line in sentences]
        # Again here: a DataLoader worker may hold an unpickled copy, which forgets encode_special_tokens.
        encodings = text_only(self.tokenizer).encode_batch(lines, add_special_tokens=False) if lines else []
        ids = [e.ids + [self.ids["eos"]] for e in encodings]
        bounds = np.cumsum([0] + [len(sentences) for sentences in records])
        return [
            (np.fromiter(itertools.chain.from_iterable(ids[a:b]), np.int64), [len(i) for i in ids[a:b]])
            for a, b in zip(bounds, bounds[1:])
        ]

    def _sample(self, block: np.ndarray, worker: int, number: int) -> Dict[str, np.ndarray]:
        tokens = np.concatenate([[self.ids["bos"]], block]).astype(np.int64)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker, number])
        inputs, is_masked = mask_tokens(
            tokens, rng, self.masking, self.ids["mask"], self.is_special, self.word_begins, self.ordinary_ids
        )
        return {"inputs": inputs, "targets": tokens, "is_masked": is_masked}

    def stream(
        self, worker: int, num_workers: int, state: Optional[StreamState] = None
    ) -> Iterator[Tuple[Sample, StreamState]]:
        """Worker `worker`'s samples, each with its stream's state after it, from `state` (None: the epoch's start);
        with max_tokens or share (validation), only the samples of the stream's head that this process keeps."""
        samples = self._packed(worker, num_workers, state)
        if not self.max_tokens and self.share == (0, 1):
            yield from samples
            return
        if state is not None and state["number"]:
            raise ValueError("a token budget or share counts from the start of the stream, not from a saved state")
        rank, world_size = self.share
        seen = 0  # tokens of the stream's samples so far, every process's: the budget is the whole set's
        for sample, after in samples:
            if (after["number"] - 1) % world_size == rank:
                yield sample, after
            seen += len(sample["targets"])
            if self.max_tokens and seen >= self.max_tokens:  # just past the budget, as ValidSubset
                return

    def _packed(
        self, worker: int, num_workers: int, state: Optional[StreamState] = None
    ) -> Iterator[Tuple[Sample, StreamState]]:
        """All of worker `worker`'s samples, each with its stream's state after it, from `state` (None: the start).

        A state is where the reader stands after the last record that the sample used tokens of, plus those of
        that record's tokens not yet cut into a block (and their unit lengths), plus the sample counter: it never
        holds more than one record's tokens, and resuming from it reads only what follows.
        """
        state = start_state() if state is None else state
        if self.break_mode != "none":
            yield from self._sentence_stream(worker, num_workers, state)
            return
        block = self.tokens_per_sample - 1
        buffer, number = np.asarray(state["tokens"], dtype=np.int64), state["number"]
        last = {key: state[key] for key in ("position", "window", "taken")}  # the reader's state before `buffer`
        records = self._records(worker, num_workers, last)
        while True:  # the first pass may find no record but a saved buffer longer than a block
            chunk = list(itertools.islice(records, ENCODE_DOCS))
            pieces = [tokens for tokens, _ in self._tokens([sentences for sentences, _ in chunk])]
            tokens = np.concatenate([buffer, *pieces])
            ends = np.cumsum([len(buffer)] + [len(piece) for piece in pieces])  # where each record's tokens end
            marks = [last] + [after for _, after in chunk]
            full = len(tokens) - len(tokens) % block
            for cut in range(block, full + 1, block):
                r = int(np.searchsorted(ends, cut))  # the record holding the sample's last token
                after = {**marks[r], "tokens": tokens[cut : ends[r]], "number": number + 1}
                yield self._sample(tokens[cut - block : cut], worker, number), after
                number += 1
            buffer, last = tokens[full:], marks[-1]
            if not chunk:
                break
        if len(buffer):
            yield self._sample(buffer, worker, number), {**last, "tokens": buffer[:0], "number": number + 1}

    def _sentence_stream(
        self, worker: int, num_workers: int, state: StreamState
    ) -> Iterator[Tuple[Sample, StreamState]]:
        """stream() for complete, complete_doc and eos: greedy runs of sentence units, as blocks.py packs them.

        A block is handed out when the next unit does not fit (or, for complete_doc, a record starts; for eos,
        always): its state is the reader's state after the record of its last unit plus that record's units not
        yet packed, so resuming packs the same blocks. Blocks may span records and files (complete, eos).
        """
        block = self.tokens_per_sample - 1
        number, eos_mode, doc_mode = state["number"], self.break_mode == "eos", self.break_mode == "complete_doc"
        last = {key: state[key] for key in ("position", "window", "taken")}
        records = self._records(worker, num_workers, last)
        saved = (np.asarray(state["tokens"], dtype=np.int64), np.asarray(state.get("units", []), dtype=np.int64))
        current: List[np.ndarray] = []  # the units of the block being filled
        owner: StreamState = {**last, "tokens": saved[0][:0], "units": []}  # state after the block's last unit

        def parts() -> Iterator[Tuple[np.ndarray, np.ndarray, StreamState, bool]]:
            """(tokens, unit lengths, reader state after, opens a document) of the saved rest, then each record."""
            yield saved[0], saved[1], last, False
            while chunk := list(itertools.islice(records, ENCODE_DOCS)):
                for (tokens, lengths), (_, after) in zip(self._tokens([s for s, _ in chunk]), chunk):
                    yield tokens, sentence_units(lengths, block), after, True

        for tokens, units, after, new_doc in parts():
            if doc_mode and new_doc and len(units) and current:
                yield self._sample(np.concatenate(current), worker, number), {**owner, "number": number + 1}
                current, number = [], number + 1
            starts = np.concatenate([[0], np.cumsum(units)])
            for k, length in enumerate(units):
                if current and (eos_mode or sum(map(len, current)) + length > block):
                    yield self._sample(np.concatenate(current), worker, number), {**owner, "number": number + 1}
                    current, number = [], number + 1
                current.append(tokens[starts[k] : starts[k + 1]])
                owner = {**after, "tokens": tokens[starts[k + 1] :], "units": units[k + 1 :].tolist()}
        if current:
            yield self._sample(np.concatenate(current), worker, number), {**owner, "number": number + 1}

    def __iter__(self) -> Iterator[Sample]:
        """Samples of this (rank, DataLoader worker) for the epoch, from its start."""
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for sample, _ in self.stream(worker, num_workers):
            yield sample


class _ResumedStreams(IterableDataset):
    """One epoch as the DataLoader sees it: worker p continues logical worker (p + shift) % W from its saved state.

    The DataLoader takes batches from its workers in turn, starting at worker 0 and skipping workers whose stream
    has ended; shifting the logical ids so that worker 0 holds the stream due next keeps that order on resume.
    """

    def __init__(self, dataset: StreamingMaskedLM, shift: int, states: Dict[int, StreamState], streams: int) -> None:
        self.dataset, self.shift, self.states, self.streams = dataset, shift, states, streams

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker = ((info.id if info is not None else 0) + self.shift) % self.streams
        for sample, state in self.dataset.stream(worker, self.streams, self.states.get(worker)):
            yield {**sample, STREAM: (worker, state)}


def _worker_errors_in_one_line(loader: DataLoader) -> Iterator[Dict[str, Any]]:
    """The loader's batches; a UserError from a worker arrives wrapped in the worker's traceback: keep its line."""
    try:
        yield from loader
    except UserError as err:
        text = str(err).rstrip()
        if "Original Traceback" not in text:
            raise
        raise UserError(text.splitlines()[-1].split(": ", 1)[-1]) from None


def _collate(samples: List[Dict[str, Any]], pad_id: int) -> Dict[str, Any]:
    """collate, plus the producing worker's stream state after the batch's last sample."""
    return {**collate(samples, pad_id), STREAM: samples[-1][STREAM]}


class StreamingBatchIterator:
    """EpochBatchIterator's contract over a StreamingMaskedLM: epoch, forever, epoch_iter, restart, state_dict.

    `forever()` yields lists of update_freq micro-batches without end; `epoch_iter()` single micro-batches to the
    end of the epoch. The position (state_dict) is the epoch plus, for each logical worker, its stream state after
    its last batch handed out and which worker is due next: load_state_dict then continues with exactly the batches
    of a run that never stopped, reading nothing before the saved positions. It holds for this rank, world size,
    num_workers and batch_size only (each rank saves its own). A worker's last batch of an epoch may be short and
    ranks may get different batch counts per epoch: `forever()` never runs dry, so DDP steps stay in lockstep.
    """

    def __init__(
        self, dataset: StreamingMaskedLM, batch_size: int, num_workers: int = 0, update_freq: int = 1
    ) -> None:
        self.dataset, self.batch_size, self.num_workers = dataset, batch_size, num_workers
        self.update_freq = update_freq
        self.streams = max(1, num_workers)  # logical workers: the main process is the one stream without workers
        self.restart()

    def _begin(self, epoch: int) -> None:
        self.epoch, self.batches, self.next_worker = epoch, 0, 0  # batches handed out in the epoch; worker due next
        self.states: Dict[int, StreamState] = {}  # logical worker -> its stream state after its last batch handed out

    def restart(self) -> None:
        """Back to the start of epoch 1 (validation reads its files from the start every time)."""
        self._begin(1)

    def _setting(self) -> Dict[str, int]:
        d = self.dataset
        return {"rank": d.rank, "world_size": d.world_size, "num_workers": self.streams, "batch_size": self.batch_size}

    def state_dict(self) -> Dict[str, Any]:
        """The position after the last batch handed out; plain Python values, one entry per logical worker."""
        streams = {w: plain_state(s) for w, s in self.states.items()}
        return {"epoch": self.epoch, "batches": self.batches, "next_worker": self.next_worker, "streams": streams,
                **self._setting()}  # fmt: skip

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue at a saved position; an epoch start saved as {"epoch", "offset": 0} is accepted too."""
        if "streams" not in state:
            if state.get("offset", 0) != 0:
                raise UserError(f"the saved streaming position (epoch {state['epoch']}, batch {state['offset']}) "
                                "cannot be sought; set checkpoint.reset_dataloader=true")  # fmt: skip
            self._begin(state["epoch"])
            return
        for key, mine in self._setting().items():
            if state[key] != mine:
                raise UserError(
                    f"the saved streaming position is for {key}={state[key]}, this run has {key}={mine}; streams "
                    "depend on it: keep it, or set checkpoint.reset_dataloader=true"
                )
        self._begin(state["epoch"])
        self.batches, self.next_worker = state["batches"], state["next_worker"]
        self.states = {int(w): dict(s) for w, s in state["streams"].items()}

    def epoch_iter(self) -> Iterator[Dict[str, Any]]:
        """Single micro-batches from the position to the end of the epoch, advancing the position."""
        epoch = self.epoch
        self.dataset.set_epoch(epoch)
        loader = DataLoader(
            _ResumedStreams(self.dataset, self.next_worker, dict(self.states), self.streams),
            batch_size=self.batch_size,
            collate_fn=partial(_collate, pad_id=self.dataset.ids["pad"]),
            num_workers=self.num_workers,
        )
        batches = _worker_errors_in_one_line(loader)
        pending = next(batches, None)
        while pending is not None:
            # One batch of look-ahead, so the position after an epoch's last batch is the next epoch's start, as
            # in EpochBatchIterator: the end of a stream is only known when the next read comes back empty.
            following = next(batches, None)
            worker, state = pending.pop(STREAM)
            self.states[worker], self.next_worker = state, (worker + 1) % self.streams
            self.batches += 1
            if following is None:
                self._begin(epoch + 1)
            yield pending
            pending = following
        if self.epoch == epoch:  # nothing was left of the epoch
            self._begin(epoch + 1)

    def forever(self) -> Iterator[List[Dict[str, Any]]]:
        """Lists of update_freq micro-batches (one update's share for this rank), across epochs without end."""
        group: List[Dict[str, Any]] = []
        while True:
            from_start, produced = self.batches == 0, False
            for batch in self.epoch_iter():
                produced = True
                group.append(batch)
                if len(group) == self.update_freq:
                    yield group
                    group = []
            if from_start and not produced:
                raise UserError(
                    f"rank {self.dataset.rank} of {self.dataset.world_size} streams no sample from "
                    f"{len(self.dataset.paths)} file(s); use more data or fewer processes"
                )
