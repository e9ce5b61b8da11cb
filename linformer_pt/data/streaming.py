"""Masked-LM samples streamed from raw files with `datasets` streaming: no preprocessing pass, no token cache.

Each (DDP rank, DataLoader worker) reads a disjoint part of the documents, packs it like break mode `none` and
masks sample i with a generator seeded by (seed, epoch, rank, worker, i); StreamingBatchIterator resumes by position.
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
from linformer_pt.data.sources import DELIMITED, JSONL, PARQUET, TEXT, expand_paths
from linformer_pt.errors import UserError

ENCODE_DOCS = 256  # records per encode_batch call
READ_BATCH = 256  # records per read when workers split a stream record by record
LINES = "_lines"  # the one column every source is mapped to: its sentences, "\n"-separated


def _builder(path: Path) -> Tuple[str, Tuple[Tuple[str, Any], ...]]:
    """(datasets packaged builder, its options) for a file; `sources` decides which suffixes exist."""
    suffix = path.suffix.lower()
    if suffix in TEXT:
        return "text", (("sample_by", "paragraph"),)  # one record per blank-line-separated block
    if suffix in JSONL:
        return "json", ()
    if suffix in DELIMITED:
        return "csv", (("delimiter", DELIMITED[suffix]),)
    assert suffix in PARQUET, suffix
    return "parquet", ()


def _check_columns(path: Path, builder: str, options: Dict[str, Any], text_field: str) -> None:
    """Fail before streaming when a CSV/TSV header or a parquet schema lacks the text field (both are cheap to read)."""
    if builder == "csv":
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            names = next(csv.reader(f, delimiter=options["delimiter"]), [])
    elif builder == "parquet":
        import pyarrow.parquet as pq  # a dependency of `datasets`

        names = pq.ParquetFile(path).schema_arrow.names
    else:
        return
    if text_field not in names:
        raise UserError(f"{path}: no column {text_field!r} (dataset.text_field); it has {names}")


def _sentences(record: Dict[str, Any], text_field: str, paragraphs: bool, where: str) -> Dict[str, str]:
    """A record's sentences (its non-empty lines) as read_documents + write_shards would tokenize them.

    Text files arrive as blank-line blocks whose lines read_documents strips; other records are one document,
    stripped as a whole, whose lines keep their inner spacing. Document boundaries are dropped: break mode
    `none` packs across them anyway.
    """
    if text_field not in record:
        raise UserError(
            f"{where}: records have no field {text_field!r} (dataset.text_field); they have {sorted(record)}"
        )
    text = str(record[text_field] or "")
    if paragraphs:
        lines = [line.strip() for line in text.split("\n") if line.strip()]
    else:
        lines = [line for line in text.strip().split("\n") if line.strip()]
    return {LINES: "\n".join(lines)}


def open_stream(paths: Sequence[Path], text_field: str, encoding_errors: str = "strict") -> Any:
    """One `datasets` IterableDataset over all files, in order, with the single column LINES (one shard per file)."""
    import datasets

    parts = []
    for (builder, options), group in itertools.groupby(paths, key=_builder):
        files = list(group)
        kwargs: Dict[str, Any] = dict(options)
        for path in files:
            _check_columns(path, builder, kwargs, text_field)
        if builder in ("text", "json", "csv"):
            kwargs["encoding_errors"] = encoding_errors
        if builder == "csv":  # only the text column, as strings, with empty cells and "NA" kept as text
            kwargs.update(usecols=[text_field], keep_default_na=False,
                          features=datasets.Features({text_field: datasets.Value("string")}))  # fmt: skip
        elif builder == "parquet":
            kwargs["columns"] = [text_field]
        field = "text" if builder == "text" else text_field
        where = files[0].name if len(files) == 1 else f"{files[0].name} (or one of {len(files)} {builder} files)"
        ds = datasets.load_dataset(builder, data_files=[str(p) for p in files], split="train", streaming=True, **kwargs)
        ds = ds.map(partial(_sentences, text_field=field, paragraphs=builder == "text", where=where))
        parts.append(ds.select_columns([LINES]))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


class StreamingMaskedLM(IterableDataset):
    """This process's masked-LM samples, streamed: `<s>` + tokens_per_sample - 1 tokens (the last one may be shorter).

    Splitting: `split_dataset_by_node` gives each rank whole files when their count is a multiple of world_size,
    else every world_size-th record. Inside a DataLoader worker, `datasets` hands each worker whole files of its
    rank's share when there are at least as many as workers; otherwise every worker reads the rank's stream and
    keeps every (num_workers)-th record. Either way each record is read by exactly one (rank, worker).
    """

    def __init__(
        self,
        paths: Sequence[Union[str, Path]],
        text_field: str,
        tokenizer: Tokenizer,
        special_ids: Dict[str, int],
        vocab_size: int,
        tokens_per_sample: int,
        masking: MaskingConfig,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        word_begins: Optional[np.ndarray] = None,
        shuffle_buffer: int = 0,
        encoding_errors: str = "strict",
        key: str = "dataset.train_files",
    ) -> None:
        if tokens_per_sample < 2:
            raise UserError(f"task.tokens_per_sample={tokens_per_sample} must be >= 2")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.paths = expand_paths([str(p) for p in paths], key)
        self.text_field, self.tokenizer, self.ids, self.vocab_size = text_field, tokenizer, special_ids, vocab_size
        self.tokens_per_sample, self.masking, self.seed = tokens_per_sample, masking, seed
        self.rank, self.world_size, self.word_begins = rank, world_size, word_begins
        self.shuffle_buffer = shuffle_buffer
        self.num_special = max(special_ids.values()) + 1
        self.epoch = 0
        self.source = open_stream(self.paths, text_field, encoding_errors)
        if shuffle_buffer > 0:  # the same seed on every rank, so ranks still split one shared order
            self.source = self.source.shuffle(seed=seed, buffer_size=shuffle_buffer)

    def set_epoch(self, epoch: int) -> None:
        """The epoch seeds the masks and, with shuffle_buffer > 0, the shuffle."""
        self.epoch = epoch

    def _texts(self, worker: int, num_workers: int) -> Iterator[str]:
        """LINES of the records this (rank, worker) reads, in stream order."""
        from datasets.distributed import split_dataset_by_node

        ds = split_dataset_by_node(self.source, rank=self.rank, world_size=self.world_size)
        if self.shuffle_buffer > 0:
            ds.set_epoch(self.epoch)  # only then: datasets reorders files whenever the epoch is set
        if num_workers == 1 or ds.n_shards >= num_workers:
            # Iterated inside a DataLoader worker, datasets gives this worker its files (shard i -> worker i % n).
            for record in ds:
                yield record[LINES]
            return
        # Fewer files than workers: ds.iter() skips datasets' per-worker split; keep every num_workers-th record.
        records = (text for batch in ds.iter(batch_size=READ_BATCH) for text in batch[LINES])
        yield from itertools.islice(records, worker, None, num_workers)

    def _tokens(self, texts: List[str]) -> np.ndarray:
        """Each sentence's ids followed by `</s>`, back to back (write_shards' convention)."""
        lines = [line for text in texts if text for line in text.split("\n")]
        if not lines:
            return np.empty(0, dtype=np.int64)
        eos = self.ids["eos"]
        encodings = self.tokenizer.encode_batch(lines, add_special_tokens=False)
        return np.fromiter(itertools.chain.from_iterable(e.ids + [eos] for e in encodings), dtype=np.int64)

    def _sample(self, block: np.ndarray, worker: int, number: int) -> Dict[str, np.ndarray]:
        tokens = np.concatenate([[self.ids["bos"]], block]).astype(np.int64)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker, number])
        inputs, is_masked = mask_tokens(
            tokens, rng, self.masking, self.ids["mask"], self.num_special, self.vocab_size, self.word_begins
        )
        return {"inputs": inputs, "targets": tokens, "is_masked": is_masked}

    def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        block = self.tokens_per_sample - 1
        buffer = np.empty(0, dtype=np.int64)  # tokens not yet cut into a block (fewer than `block` between chunks)
        number = 0
        texts = self._texts(worker, num_workers)
        try:
            while chunk := list(itertools.islice(texts, ENCODE_DOCS)):
                buffer = np.concatenate([buffer, self._tokens(chunk)])
                full = len(buffer) - len(buffer) % block
                for start in range(0, full, block):
                    yield self._sample(buffer[start : start + block], worker, number)
                    number += 1
                buffer = buffer[full:]
        except UnicodeDecodeError as err:
            raise UserError(
                f"a file of {[p.name for p in self.paths]} is not UTF-8 ({err.reason}); "
                "fix it or set dataset.encoding_errors=replace"
            ) from None
        if len(buffer):
            yield self._sample(buffer, worker, number)


class StreamingBatchIterator:
    """EpochBatchIterator's interface over a StreamingMaskedLM: `epoch`, `offset`, state_dict, epoch_iter, forever.

    The position is (epoch, batches already yielded in it). Resuming re-reads the epoch's stream from its start and
    drops `offset` batches: slower than a seek, but the batches that follow are exactly those of a run that never
    stopped (samples depend only on seed, epoch, world size and num_workers; the DataLoader takes one batch from
    each worker in turn). Each worker's last batch of an epoch may be short, and ranks may get different batch
    counts per epoch: `forever()` never runs dry, so DDP steps stay in lockstep.
    """

    def __init__(self, dataset: StreamingMaskedLM, batch_size: int, num_workers: int = 0) -> None:
        self.dataset, self.batch_size, self.num_workers = dataset, batch_size, num_workers
        self.epoch, self.offset = 1, 0  # position of the next batch

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.epoch, self.offset = state["epoch"], state["offset"]

    def epoch_iter(self) -> Iterator[Dict[str, Any]]:
        """Batches from the current position to the end of the current epoch, advancing the position."""
        self.dataset.set_epoch(self.epoch)
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            collate_fn=partial(collate, pad_id=self.dataset.ids["pad"]),
            num_workers=self.num_workers,
        )
        batches = itertools.islice(loader, self.offset, None)
        # One batch of look-ahead, so the position after an epoch's last batch is (epoch + 1, 0), as in
        # EpochBatchIterator: the end of a stream is only known when the next read comes back empty.
        pending = next(batches, None)
        for following in batches:
            self.offset += 1
            yield pending
            pending = following
        self.epoch, self.offset = self.epoch + 1, 0
        if pending is not None:
            yield pending

    def forever(self) -> Iterator[Dict[str, Any]]:
        """Batches across epochs without end; the caller decides when to stop."""
        while True:
            from_start, produced = self.offset == 0, False
            for batch in self.epoch_iter():
                produced = True
                yield batch
            if from_start and not produced:
                raise UserError(
                    f"rank {self.dataset.rank} of {self.dataset.world_size} streams no sample from "
                    f"{len(self.dataset.paths)} file(s); use more data or fewer processes"
                )
