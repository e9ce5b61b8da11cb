"""Labelled examples for fine-tuning: a text, an optional second text and a label per row, read from TSV, CSV,
JSONL, parquet or a `datasets` save_to_disk folder; label maps, label arrays and RoBERTa token layouts.
"""
import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from tokenizers import Tokenizer

from linformer_pt.data.sources import JSONL, PARQUET, _decoded_lines
from linformer_pt.data.tokenizer import text_only
from linformer_pt.errors import UserError

SUFFIXES = (".tsv", ".csv") + JSONL + PARQUET
TRUNCATIONS = ("head", "tail", "head_tail")
SHOWN_LABELS = 20  # known labels listed in an error message
INTEGER = re.compile(r"-?[0-9]+")

Row = Tuple[str, Dict[str, Any]]  # (where, e.g. "line 7" or "row 3", {column: value})


@dataclass
class LabelledExamples:
    """Rows of one or more files, in order; texts are stripped, labels are the raw strings as read."""

    texts: List[str]
    pairs: Optional[List[str]]  # None unless a pair column was asked for
    labels: Optional[List[str]]  # None when the files have no label column and labels are not required
    source: str  # the files, for messages


def _tsv(path: Path, errors: str) -> Tuple[List[str], Iterator[Row]]:
    """Tab-separated with a header row and no quoting: GLUE's TSVs hold literal quote characters (SST-2, IMDB)."""
    lines = enumerate(_decoded_lines(path, errors), 1)
    header: Optional[List[str]] = None
    for _, line in lines:  # blank lines before the header are skipped, as are blank lines between rows
        if line.strip():
            header = line.rstrip("\r\n").lstrip("\ufeff").split("\t")  # a BOM would glue onto the first name
            break
    if header is None:
        return [], iter(())

    def rows() -> Iterator[Row]:
        for number, line in lines:
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != len(header):
                raise UserError(f"{path}: line {number} has {len(fields)} tab-separated fields, the header has "
                                f"{len(header)} ({', '.join(header)}); TSV cells cannot hold tabs (no quoting)")  # fmt: skip
            yield f"line {number}", dict(zip(header, fields))

    return header, rows()


def _csv(path: Path, errors: str) -> Tuple[List[str], Iterator[Row]]:
    """Comma-separated with a header row and standard CSV quoting (a quoted cell may hold commas and newlines)."""
    reader = csv.reader(_decoded_lines(path, errors))
    try:
        header = next((row for row in reader if row), None)
    except csv.Error as err:
        raise UserError(f"{path}: line {reader.line_num} is not valid CSV ({err})") from None
    if header is None:
        return [], iter(())
    header[0] = header[0].lstrip("\ufeff")

    def rows() -> Iterator[Row]:
        try:
            for fields in reader:
                if not fields:  # a blank line
                    continue
                if len(fields) != len(header):
                    raise UserError(f"{path}: line {reader.line_num} has {len(fields)} comma-separated fields, the "
                                    f"header has {len(header)} ({', '.join(header)}); quote cells that hold commas")  # fmt: skip
                yield f"line {reader.line_num}", dict(zip(header, fields))
        except csv.Error as err:
            raise UserError(f"{path}: line {reader.line_num} is not valid CSV ({err})") from None

    return header, rows()


def _jsonl(path: Path, errors: str) -> Tuple[List[str], Iterator[Row]]:
    """One JSON object per line; the first object's fields are the columns (each row is checked when read)."""
    records: List[Row] = []
    for number, line in enumerate(_decoded_lines(path, errors), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: line {number} is not JSON ({err.msg}); expected one object per line") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}: line {number} is not a JSON object; expected one object per line")
        records.append((f"line {number}", record))
    return (list(records[0][1]) if records else []), iter(records)


def _columnar(columns: List[str], values: Dict[str, List[Any]]) -> Iterator[Row]:
    """Rows of column lists (parquet, Arrow), numbered from 1."""
    for i, row in enumerate(zip(*values.values())):
        yield f"row {i + 1}", dict(zip(values, row))


def _parquet(path: Path, wanted: Sequence[str]) -> Tuple[List[str], Iterator[Row]]:
    import pyarrow.parquet as pq  # a dependency of `datasets`

    try:
        table = pq.ParquetFile(path)
    except Exception as err:  # pyarrow reports a damaged or non-parquet file with several exception types
        raise UserError(f"{path} is not a readable parquet file ({type(err).__name__}: {err})") from None
    columns = table.schema_arrow.names
    read = [c for c in wanted if c in columns]
    data = table.read(columns=read)
    return columns, _columnar(columns, {c: data.column(c).to_pylist() for c in read})


def _saved_dataset(folder: Path, split: str, wanted: Sequence[str]) -> Tuple[List[str], Iterator[Row]]:
    """A `datasets` Dataset saved with save_to_disk, or one split ("folder:split") of a saved DatasetDict."""
    import datasets

    try:
        data = datasets.load_from_disk(str(folder))
    except Exception as err:  # a damaged folder arrives as one of several exception types
        raise UserError(f"{folder}: cannot load the saved dataset ({type(err).__name__}: {err})") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise UserError(f"{folder} is a DatasetDict with splits {', '.join(data)}; name one as {folder}:SPLIT")
        data = data[split]
    elif split:
        raise UserError(f"{folder} is a single saved Dataset (no splits); give {folder} without ':{split}'")
    read = [c for c in wanted if c in data.column_names]
    return data.column_names, _columnar(data.column_names, data.select_columns(read).to_dict())


def _dataset_folder(path: str) -> Optional[Tuple[Path, str]]:
    """(folder, split) when `path` names a save_to_disk folder, as "folder" or "folder:split"; else None."""
    folder, split = Path(path).expanduser(), ""
    if not folder.exists() and ":" in path:
        head, split = path.rsplit(":", 1)
        folder = Path(head).expanduser()
    if not folder.is_dir():
        return None
    if not any((folder / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
        raise UserError(f"{path} is a folder but not a `datasets` save_to_disk folder (it has no dataset_info.json, "
                        f"state.json or dataset_dict.json); give files ({', '.join(SUFFIXES)}) or such a folder")  # fmt: skip
    return folder, split


def _table(path: str, key: str, wanted: Sequence[str], errors: str) -> Tuple[List[str], Iterator[Row]]:
    """The columns and rows of one file or saved dataset, by suffix."""
    saved = _dataset_folder(path)
    if saved:
        return _saved_dataset(*saved, wanted)
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{key}: no such file: {path}")
    suffix = file.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"{key}: {path} has an unsupported suffix {suffix or '(none)'!r}; use one of "
                        f"{', '.join(SUFFIXES)} or a `datasets` save_to_disk folder (folder or folder:split)")  # fmt: skip
    if suffix == ".tsv":
        return _tsv(file, errors)
    if suffix == ".csv":
        return _csv(file, errors)
    return _jsonl(file, errors) if suffix in JSONL else _parquet(file, wanted)


def _cell(row: Dict[str, Any], column: str, where: str, path: str) -> str:
    """The stripped string in `column`; a JSON row without the field, or an empty cell, is an error."""
    if column not in row:
        raise UserError(f"{path}: {where} has no field {column!r}; it has {', '.join(row)}")
    value = row[column]
    text = "" if value is None else str(value).strip()  # GLUE TSVs keep a space before the tab
    if not text:
        raise UserError(f"{path}: {where} has an empty {column!r} cell")
    return text


def read_labelled(
    paths: List[str],
    text_column: str,
    pair_column: str,
    label_column: str,
    key: str,
    require_labels: bool,
    encoding_errors: str = "strict",
) -> LabelledExamples:
    """Texts (and pairs, labels) of the rows of `paths` in order; `key` names the setting in error messages.

    pair_column "" means single texts. Labels are None only when no file has `label_column` and require_labels
    is False (data to predict on); files that mix labelled and unlabelled are an error.
    """
    if not paths:
        raise UserError(f"{key} is empty; give one or more files ({', '.join(SUFFIXES)}) or save_to_disk folders")
    roles = [(text_column, "text column"), (pair_column, "pair column"), (label_column, "label column")]
    texts: List[str] = []
    pairs: Optional[List[str]] = [] if pair_column else None
    labels: List[Optional[List[str]]] = []
    for path in paths:
        columns, rows = _table(path, key, [c for c, _ in roles if c], encoding_errors)
        if not columns:
            raise UserError(f"{key}: {path} is empty (no header and no rows)")
        for column, role in roles[:2] + (roles[2:] if require_labels else []):
            if column and column not in columns:
                raise UserError(f"{key}: {path} has no column {column!r} (the {role}); its columns are "
                                f"{', '.join(columns)}")  # fmt: skip
        file_labels: Optional[List[str]] = [] if label_column in columns else None
        count = len(texts)
        for where, row in rows:
            texts.append(_cell(row, text_column, where, path))
            if pairs is not None:
                pairs.append(_cell(row, pair_column, where, path))
            if file_labels is not None:
                file_labels.append(_cell(row, label_column, where, path))
        if len(texts) == count:
            raise UserError(f"{key}: {path} has no rows")
        labels.append(file_labels)
    if any(part is None for part in labels) and any(part is not None for part in labels):
        unlabelled = [p for p, part in zip(paths, labels) if part is None]
        raise UserError(f"{key}: {unlabelled[0]} has no column {label_column!r} (the label column) while other "
                        f"files of {key} have one; give labels for all files or for none")  # fmt: skip
    joined = None if labels[0] is None else [label for part in labels for label in part]  # type: ignore[union-attr]
    return LabelledExamples(texts, pairs, joined, ", ".join(paths))


def label_names(raw: List[str], num_classes: int, given: List[str]) -> List[str]:
    """The label map, index -> name: `given` if set; "0".."C-1" for digit labels; else the sorted distinct labels.

    Digit labels that include "0" are class indices, so one of C or more is an error. Other integer labels
    (stars 1-5) sort numerically ("2" before "10"), anything else as strings.
    """
    if given:
        if len(given) != num_classes or len(set(given)) != len(given):
            raise UserError(f"label_names {list(given)} must be {num_classes} distinct names (num_classes={num_classes})")
        return list(given)
    distinct = set(raw)
    numeric = all(INTEGER.fullmatch(x) for x in distinct)
    indices = numeric and all(str(int(x)) == x and int(x) >= 0 for x in distinct)
    outside = sorted((x for x in distinct if int(x) >= num_classes), key=int) if indices else []
    if indices and not outside:
        return [str(i) for i in range(num_classes)]  # classes missing from a small file keep their index
    if indices and "0" in distinct:  # labels from 0 are class indices: one past num_classes is a mistake
        raise UserError(f"the label {outside[0]} is outside 0..{num_classes - 1} (num_classes={num_classes}); "
                        "labels counted from 0 are class indices: raise num_classes or fix the labels")  # fmt: skip
    names = sorted(distinct, key=int) if numeric else sorted(distinct)
    if len(names) != num_classes:
        shown = ", ".join(names[:SHOWN_LABELS]) + (", ..." if len(names) > SHOWN_LABELS else "")
        raise UserError(f"the labels have {len(names)} distinct values ({shown}) but num_classes={num_classes}; "
                        "set num_classes to match, or list the label names")  # fmt: skip
    return names


def encode_labels(raw: List[str], names: Optional[List[str]], key: str) -> np.ndarray:
    """Class indices (int64) into `names`, or regression targets (float32) when names is None.

    Rows in messages count the examples from 1 across all files of `key`.
    """
    if names is None:
        targets = np.empty(len(raw), dtype=np.float32)
        for i, label in enumerate(raw):
            try:
                value = float(label)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise UserError(f"{key}: example {i + 1} has the label {label!r}, not a finite number (regression)")
            targets[i] = value
        return targets
    index = {name: i for i, name in enumerate(names)}
    out = np.empty(len(raw), dtype=np.int64)
    for i, label in enumerate(raw):
        if label not in index:
            shown = ", ".join(names[:SHOWN_LABELS]) + (", ..." if len(names) > SHOWN_LABELS else "")
            raise UserError(f"{key}: example {i + 1} has the label {label!r}, which is not a known label ({shown})")
        out[i] = index[label]
    return out


def _kept_lengths(a: int, b: int, budget: int) -> Tuple[int, int]:
    """Lengths of two sides after dropping tokens one at a time from the longer side (the second on a tie)
    until they fit `budget`: the short side stays whole unless both exceed half, then they split it evenly."""
    if a + b <= budget:
        return a, b
    kept_a = min(a, max(budget - b, (budget + 1) // 2))
    return kept_a, min(b, budget - kept_a)


def _cut(ids: List[int], keep: int, truncation: str) -> List[int]:
    """`keep` tokens of ids by the truncation policy.

    head_tail keeps the first quarter (rounded up) and the last three quarters of the budget: 128 + 382 of a
    510-token budget (512 less <s> and </s>), the split Sun et al. 2019 ("How to Fine-Tune BERT for Text
    Classification?") found best for long reviews.
    """
    if keep >= len(ids):
        return ids
    head = keep if truncation == "head" else 0 if truncation == "tail" else (keep + 3) // 4
    return ids[:head] + ids[len(ids) - (keep - head):]


def encode_pairs(
    tokenizer: Tokenizer,
    texts: List[str],
    pairs: Optional[List[str]],
    max_tokens: int,
    truncation: str,
    special_ids: Dict[str, int],
) -> Tuple[List[np.ndarray], int]:
    """RoBERTa inputs `<s> A </s>` or `<s> A </s> </s> B </s>` (int64), at most max_tokens each, and the number
    of examples whose text was truncated. Pairs lose tokens from the longer side first, then each side is cut
    by `truncation` (one of TRUNCATIONS). Special-token strings in the texts are encoded as text."""
    if truncation not in TRUNCATIONS:
        raise UserError(f"truncation={truncation!r} is not one of {', '.join(TRUNCATIONS)}")
    specials = 2 if pairs is None else 4
    budget = max_tokens - specials
    if budget < (1 if pairs is None else 2):
        raise UserError(f"max_tokens={max_tokens} leaves no room for text beside the {specials} special tokens")
    if pairs is not None and len(pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs")
    tokenizer = text_only(tokenizer)  # "<mask>" in a review is text, never the mask id
    firsts = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    seconds = [e.ids for e in tokenizer.encode_batch(pairs, add_special_tokens=False)] if pairs is not None else None
    bos, eos = special_ids["bos"], special_ids["eos"]
    out: List[np.ndarray] = []
    truncated = 0
    for i, a in enumerate(firsts):
        if seconds is None:
            kept = _cut(a, budget, truncation)
            ids = [bos, *kept, eos]
            truncated += len(kept) < len(a)
        else:
            b = seconds[i]
            keep_a, keep_b = _kept_lengths(len(a), len(b), budget)
            ids = [bos, *_cut(a, keep_a, truncation), eos, eos, *_cut(b, keep_b, truncation), eos]
            truncated += keep_a + keep_b < len(a) + len(b)
        out.append(np.array(ids, dtype=np.int64))
    return out, truncated
