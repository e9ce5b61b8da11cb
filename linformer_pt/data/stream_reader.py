"""Raw corpus records read from a saved position: the share of the files that one (rank, worker) slot streams.

Positions of text, JSONL and CSV/TSV files are byte offsets (resuming seeks; nothing before the offset is read,
except a CSV/TSV header row); parquet positions are row indices (resuming skips whole row groups, then rows of one),
as are those of a `datasets` split saved with save_to_disk (Arrow, read by row index).
"""
import csv
import itertools
import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from linformer_pt.data.sources import DELIMITED, JSONL, PARQUET, TEXT, load_hub_dataset
from linformer_pt.errors import UserError

Position = Dict[str, Any]  # {"file": index in the slot's files, "name", "offset": byte or row, "record": index}
Record = Tuple[List[str], Dict[str, Any]]  # (sentences, reader state after the record)
WINDOW_TAG = 0x5EED  # last seed element of shuffle windows: a mask seed zero-padded never equals it


class _Lines:
    """Decoded lines of a binary file from `offset` on; `offset` follows the byte after the last line handed out."""

    def __init__(self, f: Any, path: Path, offset: int, errors: str) -> None:
        f.seek(offset)
        self.f, self.path, self.offset, self.errors = f, path, offset, errors

    def __iter__(self) -> Iterator[str]:
        for raw in self.f:  # splits at b"\n" only, as read_documents does
            try:
                line = raw.decode("utf-8", errors=self.errors)
            except UnicodeDecodeError as err:
                raise UserError(
                    f"{self.path} is not UTF-8 text (invalid byte at offset {self.offset + err.start}); "
                    "fix the file or set dataset.encoding_errors=replace"
                ) from None
            self.offset += len(raw)
            yield line


def _paragraphs(f: Any, path: Path, offset: int, errors: str) -> Iterator[Tuple[Any, int]]:
    """Blank-line separated blocks of stripped non-empty lines (read_documents' documents), with their end offsets."""
    lines, block = _Lines(f, path, offset, errors), []
    for line in lines:
        line = line.strip()
        if line:
            block.append(line)
        elif block:
            yield block, lines.offset
            block = []
    if block:
        yield block, lines.offset


def _json_lines(f: Any, path: Path, offset: int, errors: str) -> Iterator[Tuple[Any, int]]:
    """Non-blank lines, parsed only for the slot that keeps them."""
    lines = _Lines(f, path, offset, errors)
    for line in lines:
        if line.strip():
            yield line, lines.offset


def _csv_rows(f: Any, path: Path, offset: int, errors: str) -> Iterator[Tuple[Any, int]]:
    """csv.DictReader rows (read_documents' reader); offset 0 means the first row after the header."""
    delimiter = DELIMITED[path.suffix.lower()]
    header = _Lines(f, path, 0, errors)
    # DictReader reads exactly one row here, and csv never reads past the end of the row it returns.
    fieldnames = csv.DictReader(header, delimiter=delimiter).fieldnames
    lines = _Lines(f, path, offset or header.offset, errors)
    for row in csv.DictReader(lines, fieldnames=fieldnames, delimiter=delimiter):
        yield row, lines.offset


def _parquet_rows(path: Path, text_field: str, row: int) -> Iterator[Tuple[Any, int]]:
    """Values of the text column from row `row` on: earlier row groups are never read."""
    import pyarrow.parquet as pq  # a dependency of `datasets`

    table = pq.ParquetFile(path)
    sizes = [table.metadata.row_group(i).num_rows for i in range(table.num_row_groups)]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    group = int(np.searchsorted(starts, row, side="right")) - 1
    if group >= len(sizes):
        return
    skip = row - int(starts[group])
    for batch in table.iter_batches(columns=[text_field], row_groups=list(range(group, len(sizes)))):
        values = batch.column(0).to_pylist()
        for value in values[skip:]:
            row += 1
            yield value, row
        skip = max(0, skip - len(values))


class ArrowSplit:
    """A split of a `datasets` dataset saved with save_to_disk: memory-mapped Arrow, one record per row."""

    ROWS = 1000  # rows fetched per read

    def __init__(self, folder: str, split: str, text_field: str) -> None:
        if not any((Path(folder) / name).is_file() for name in ("dataset_info.json", "dataset_dict.json")):
            raise UserError(f"dataset.streaming=true reads dataset.hf_name={folder!r} only as a local folder saved "
                            "with save_to_disk (hub names are not streamed); save it there or drop streaming")  # fmt: skip
        self.name = f"{Path(folder).name}:{split}"
        self.text = load_hub_dataset(folder, "", split, text_field).select_columns([text_field]).with_format("arrow")

    def rows(self, row: int, stride: int, phase: int) -> Iterator[Tuple[Any, int]]:
        """(text or None, next row) for each row from `row` on; only rows whose index is phase mod stride are read."""
        for begin in range(row, len(self.text), self.ROWS):
            end = min(begin + self.ROWS, len(self.text))
            kept = [i for i in range(begin, end) if i % stride == phase]
            values = iter(self.text[begin:end].column(0).take([i - begin for i in kept]).to_pylist())
            for i in range(begin, end):
                yield (next(values) if i % stride == phase else None), i + 1


def _record_sentences(text: Any) -> List[str]:
    """A record's non-empty lines: the record is stripped as a whole, its lines keep their inner spacing."""
    return [line for line in str(text or "").strip().split("\n") if line.strip()]


class SlotReader:
    """The records one of `num_slots` (rank, worker) slots reads, so that each record has exactly one reader.

    With at least as many files as slots, slot s reads files s, s + num_slots, ... whole; with fewer, every slot
    reads all files and keeps the records whose index within their file is s modulo num_slots.
    """

    def __init__(
        self, paths: Sequence[Union[Path, ArrowSplit]], text_field: str, errors: str, slot: int, num_slots: int
    ) -> None:
        spread = len(paths) >= num_slots
        self.files = list(paths[slot::num_slots]) if spread else list(paths)
        self.stride, self.phase = (1, 0) if spread else (num_slots, slot)
        self.text_field, self.errors = text_field, errors

    def _raw(self, path: Union[Path, ArrowSplit], offset: int) -> Iterator[Tuple[Any, int]]:
        if isinstance(path, ArrowSplit):
            yield from path.rows(offset, self.stride, self.phase)
            return
        suffix = path.suffix.lower()
        if suffix in PARQUET:
            yield from _parquet_rows(path, self.text_field, offset)
            return
        read = _paragraphs if suffix in TEXT else _json_lines if suffix in JSONL else _csv_rows
        with open(path, "rb") as f:
            yield from read(f, path, offset, self.errors)

    def _sentences(self, path: Union[Path, ArrowSplit], raw: Any, start: int) -> List[str]:
        suffix = ".arrow" if isinstance(path, ArrowSplit) else path.suffix.lower()
        if suffix in TEXT:
            return raw
        if suffix in PARQUET + (".arrow",):  # the text column's value (its presence is checked before streaming)
            return _record_sentences(raw)
        if suffix in JSONL:
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}: the line at byte {start} is not JSON ({err.msg})") from None
            if not isinstance(raw, dict):
                raise UserError(f"{path}: the line at byte {start} is not a JSON object")
        if self.text_field not in raw:
            raise UserError(f"{path}: records have no field {self.text_field!r} (dataset.text_field); "
                            f"the one at byte/row {start} has {sorted(raw)}")  # fmt: skip
        return _record_sentences(raw[self.text_field])

    def records(self, position: Optional[Position] = None) -> Iterator[Record]:
        """(sentences, position after the record) for this slot's records from `position` (None: the start)."""
        at = position or {"file": 0, "offset": 0, "record": 0}
        first, offset, index = at["file"], at["offset"], at["record"]
        if position is not None and first < len(self.files) and self.files[first].name != position["name"]:
            raise UserError(
                f"the saved stream position is in {position['name']}, but this run's file there is "
                f"{self.files[first].name}: the streamed files changed; set checkpoint.reset_dataloader=true"
            )
        for number in range(first, len(self.files)):
            path = self.files[number]
            start = offset
            for raw, end in self._raw(path, offset):
                if index % self.stride == self.phase:
                    after = {"file": number, "name": path.name, "offset": end, "record": index + 1}
                    yield self._sentences(path, raw, start), after
                index, start = index + 1, end
            offset, index = 0, 0


def windows(records: Iterator[Record], size: int, start: Dict[str, Any], seed: Sequence[int]) -> Iterator[Record]:
    """Shuffle `records` in consecutive windows of `size`, each permuted by a generator seeded by seed + its number.

    The state after each record is (position of its window's first record, window number, records taken from it):
    resuming re-reads at most one window (`size` records after the saved position), never what came before.
    """
    position, window, taken = start["position"], start["window"], start["taken"]
    while items := list(itertools.islice(records, size)):
        order = np.random.default_rng([*seed, window, WINDOW_TAG]).permutation(len(items))
        for j in range(taken, len(items)):
            if j + 1 < len(items):
                after = {"position": position, "window": window, "taken": j + 1}
            else:  # a finished window: resuming starts the next one
                after = {"position": items[-1][1], "window": window + 1, "taken": 0}
            yield items[order[j]][0], after
        position, window, taken = items[-1][1], window + 1, 0
