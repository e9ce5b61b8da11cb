"""Where documents come from: text, JSONL, CSV/TSV and parquet files, folders and globs, or `datasets` datasets.

Plain text has one paragraph per line and a blank line between documents; the other formats hold one document
per record in a text field (`dataset.text_field`). Every source is checked up front, so a bad path fails with
one line naming it; invalid UTF-8 names the file and byte offset (or is replaced with dataset.encoding_errors).
"""
import csv
import fnmatch
import glob
import json
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Sequence

from linformer_pt.errors import UserError

TEXT = (".txt", ".text", ".md", ".raw")
JSONL = (".jsonl", ".json")
DELIMITED = {".csv": ",", ".tsv": "\t"}
PARQUET = (".parquet",)
SUFFIXES = TEXT + JSONL + tuple(DELIMITED) + PARQUET
# Inside folders these describe the corpus rather than hold it (gutenberg/MANIFEST.tsv, README.md, LICENSE.txt):
# skipped unless named explicitly, as are hidden files and folders (.git, .ipynb_checkpoints). "Manifesto.txt" is data.
NOT_DATA = re.compile(r"(readme|manifest|licen[cs]e)([-_.].*)?", re.IGNORECASE)


def _is_hidden(path: Path, folder: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(folder).parts)


def _is_data(path: Path, file_glob: str) -> bool:
    """Is `path`, found in a folder, a corpus file: matching file_glob, of a known format, not a README etc.?"""
    return (
        fnmatch.fnmatch(path.name, file_glob)
        and path.suffix.lower() in SUFFIXES
        and not NOT_DATA.fullmatch(path.name)
    )


def _names(paths: List[Path], first: int = 4) -> str:
    return ", ".join(p.name for p in paths[:first]) + (", ..." if len(paths) > first else "")


def _describe(key: str, folder: str, taken: List[Path], skipped: List[Path]) -> str:
    """One line: what a folder gave (count, size, first names) and what it skipped, so a stray file shows."""
    size = sum(p.stat().st_size for p in taken)
    line = f"{key}: {folder}: {len(taken)} file(s), {size / 1e6:.1f} MB ({_names(taken)})"
    return line + (f"; skipped {len(skipped)} ({_names(skipped)})" if skipped else "")


def expand_paths(patterns: Sequence[str], key: str, file_glob: str = "*", announce: bool = False) -> List[Path]:
    """Files named by `patterns` (files, folders searched recursively, globs), sorted, with clear errors.

    Named files and glob matches are always taken. A folder gives its files whose name matches `file_glob`
    (dataset.file_glob) and has a supported suffix, except READMEs, manifests, licenses and hidden files;
    with `announce`, one line per folder says what it gave.
    """
    if not patterns:
        raise UserError(f"{key} is empty; give one or more files, folders or globs")
    out: List[Path] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if any(ch in pattern for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            if not matches:
                raise UserError(f"{key}: the glob {pattern} matches no file")
            out += matches
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not _is_hidden(p, path))
            found = [p for p in files if _is_data(p, file_glob)]
            if not found:
                raise UserError(
                    f"{key}: the folder {pattern} holds no file matching dataset.file_glob={file_glob!r} "
                    f"with a supported suffix ({'/'.join(SUFFIXES)})"
                )
            if announce:
                taken = set(found)
                print(_describe(key, pattern, found, [p for p in files if p not in taken]), flush=True)
            out += found
        elif path.is_file():
            out.append(path)
        else:
            raise UserError(f"{key}: no such file: {pattern}")
    for path in out:
        if path.suffix.lower() not in SUFFIXES:
            raise UserError(f"{key}: {path} has an unknown format; use one of {', '.join(SUFFIXES)}")
    return out


def _decoded_lines(path: Path, errors: str) -> Iterator[str]:
    """Lines of a UTF-8 file; on a bad byte, a UserError with its offset (errors='strict') or U+FFFD ('replace')."""
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                yield raw.decode("utf-8", errors=errors)
            except UnicodeDecodeError as err:
                raise UserError(
                    f"{path} is not UTF-8 text (invalid byte at offset {offset + err.start}); "
                    "fix the file or set dataset.encoding_errors=replace"
                ) from None
            offset += len(raw)


def _text_documents(path: Path, errors: str) -> Iterator[str]:
    yield from _paragraph_documents(_decoded_lines(path, errors))


def as_text_documents(document: str) -> Iterator[str]:
    """The documents that writing `document` as plain text (write_documents) and reading it back gives."""
    yield from _paragraph_documents(document.strip().split("\n"))


def _paragraph_documents(lines_in: Iterable[str]) -> Iterator[str]:
    """Stripped non-blank lines, grouped into documents at blank lines."""
    lines: List[str] = []
    for line in lines_in:
        line = line.strip()
        if line:
            lines.append(line)
        elif lines:
            yield "\n".join(lines)
            lines = []
    if lines:
        yield "\n".join(lines)


def _field(record: dict, field: str, path: Path, where: str) -> str:
    if field not in record:
        raise UserError(f"{path}: {where} has no field {field!r} (dataset.text_field); it has {sorted(record)}")
    return str(record[field] or "")


def read_documents(path: Path, text_field: str = "text", errors: str = "strict") -> Iterator[str]:
    """Non-empty documents of one file, in order."""
    suffix = path.suffix.lower()
    if suffix in TEXT:
        yield from _text_documents(path, errors)
    elif suffix in JSONL:
        for number, line in enumerate(_decoded_lines(path, errors), 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise UserError(f"{path}: line {number} is not JSON ({err.msg})") from None
                yield from _nonempty(_field(record, text_field, path, f"line {number}"))
    elif suffix in DELIMITED:
        rows = csv.DictReader(_decoded_lines(path, errors), delimiter=DELIMITED[suffix])
        for number, row in enumerate(rows, 2):
            yield from _nonempty(_field(row, text_field, path, f"row {number}"))
    else:
        import pyarrow.parquet as pq  # a dependency of `datasets`

        table = pq.ParquetFile(path)
        if text_field not in table.schema_arrow.names:
            raise UserError(f"{path}: no column {text_field!r} (dataset.text_field); it has {table.schema_arrow.names}")
        for batch in table.iter_batches(columns=[text_field]):
            for value in batch.column(0).to_pylist():
                yield from _nonempty(str(value or ""))


def _nonempty(text: str) -> Iterator[str]:
    text = text.strip()
    if text:
        yield text


def iter_documents(paths: Sequence[Path], text_field: str = "text", errors: str = "strict") -> Iterator[str]:
    """Documents of all files in order."""
    for path in paths:
        yield from read_documents(path, text_field, errors)


def check_sources(paths: Sequence[Path], key: str, text_field: str = "text", errors: str = "strict") -> None:
    """Fail early on an empty file; decoding and field errors surface when the file is first read."""
    for path in paths:
        if next(read_documents(path, text_field, errors), None) is None:
            raise UserError(f"{key}: {path} contains no text")


def load_hub_dataset(name: str, config: str, split: str, text_field: str) -> Any:
    """A split of a `datasets` dataset: a folder saved with save_to_disk, a local loading folder, or a hub name."""
    import datasets

    try:
        if (Path(name) / "dataset_info.json").is_file() or (Path(name) / "dataset_dict.json").is_file():
            data = datasets.load_from_disk(name)
            data = data[split] if isinstance(data, datasets.DatasetDict) else data
        else:
            data = datasets.load_dataset(name, config or None, split=split)
    except Exception as err:  # offline hub misses, unknown names and splits arrive as many exception types
        raise UserError(f"dataset.hf_name={name!r}: cannot load split {split!r} ({type(err).__name__}: {err})") from None
    if text_field not in data.column_names:
        raise UserError(f"dataset.hf_name={name!r} has no column {text_field!r}; it has {data.column_names}")
    return data


def hub_documents(data: Any, text_field: str) -> Iterator[str]:
    """Non-empty texts of a `datasets` Dataset, read in batches (no full copy in memory)."""
    for batch in data.iter(batch_size=1000):
        for value in batch[text_field]:
            yield from _nonempty(str(value or ""))


def write_documents(path: Path, documents: Sequence[str]) -> None:
    """Write documents as plain text (blank line between documents), the format read_documents reads."""
    with open(path, "w", encoding="utf-8") as f:
        for doc in documents:
            f.write(doc.strip() + "\n\n")
