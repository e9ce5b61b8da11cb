"""Plain-text corpora: one paragraph per line, documents separated by blank lines.

Reading checks the files up front, so a bad path or encoding fails with one line naming the file.
"""
from pathlib import Path
from typing import Iterator, List, Sequence

from linformer_pt.errors import UserError


def check_text_files(paths: Sequence[str], key: str) -> List[Path]:
    """Resolve `paths` (the config key `key`), failing clearly on a missing, empty or non-UTF-8 file."""
    if not paths:
        raise UserError(f"{key} is empty; give one or more text files")
    out = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.is_file():
            raise UserError(f"{key}: no such file: {raw}")
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UserError(f"{key}: {raw} is not UTF-8 text (invalid byte at offset {err.start})") from None
        if not text.strip():
            raise UserError(f"{key}: {raw} contains no text")
        out.append(path)
    return out


def iter_documents(paths: Sequence[Path]) -> Iterator[str]:
    """Documents of the files in order: runs of non-blank lines, joined with newlines."""
    for path in paths:
        lines: List[str] = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    lines.append(line)
                elif lines:
                    yield "\n".join(lines)
                    lines = []
        if lines:
            yield "\n".join(lines)


def write_documents(path: Path, documents: Sequence[str]) -> None:
    """Write documents in the format iter_documents reads (blank line between documents)."""
    with open(path, "w", encoding="utf-8") as f:
        for doc in documents:
            f.write(doc.strip() + "\n\n")
