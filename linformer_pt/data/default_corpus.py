"""The embedded default corpus: English text that ships with CPython itself, so it exists offline everywhere.

Sources: the documentation topics in `pydoc_data` and the docstrings of the standard library's modules,
classes and functions, read from source with `ast` (nothing is imported). Documents are deduplicated and
split into train/valid by a hash of their text, so the split is stable across machines and runs.
"""
import ast
import hashlib
import re
import sys
import sysconfig
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

from linformer_pt.data.cache import cached_dir, sha256_file
from linformer_pt.data.sources import write_documents

RECIPE_VERSION = 1
MIN_CHARS = 80  # shorter docstrings ("Return self.") add repetition, not language
SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_BLANK_LINES = re.compile(r"\n\s*\n")


def _paragraphs(text: str) -> str:
    """Re-flow text: one paragraph per line, whitespace collapsed, no blank lines inside the document."""
    paras = (" ".join(p.split()) for p in _BLANK_LINES.split(text))
    return "\n".join(p for p in paras if p)


def _pydoc_topics(stdlib: Path) -> Iterator[str]:
    source = (stdlib / "pydoc_data" / "topics.py").read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Dict):
            for value in node.values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    yield value.value


def _docstrings(stdlib: Path) -> Iterator[str]:
    for path in sorted(stdlib.rglob("*.py")):
        if SKIPPED_DIRS & set(path.relative_to(stdlib).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few files are deliberately broken (bad_*.py) or not UTF-8
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    yield doc


def collect_documents(stdlib: Path) -> List[str]:
    """All distinct documents of the recipe, in a deterministic order."""
    seen, docs = set(), []
    for raw in [*_pydoc_topics(stdlib), *_docstrings(stdlib)]:
        doc = _paragraphs(raw)
        digest = hashlib.sha256(doc.lower().encode()).digest()
        if len(doc) >= MIN_CHARS and digest not in seen:
            seen.add(digest)
            docs.append(doc)
    return docs


def in_valid(doc: str, valid_fraction: float) -> bool:
    """Does a document belong to the held-out split? A hash of its text alone decides, one document at a time."""
    bucket = int.from_bytes(hashlib.sha256(b"split:" + doc.encode()).digest()[:8], "big") / 2**64
    return bucket < valid_fraction


def split_documents(docs: List[str], valid_fraction: float) -> Tuple[List[str], List[str]]:
    """Assign each document to valid when a hash of its text falls below valid_fraction."""
    train, valid = [], []
    for doc in docs:
        (valid if in_valid(doc, valid_fraction) else train).append(doc)
    return train, valid


def build_default_corpus(cache_dir: str, valid_fraction: float = 0.02) -> Dict[str, Path]:
    """Paths of the cached train/valid text files, built on first use (a few seconds)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    spec = {"recipe": RECIPE_VERSION, "python": sys.version, "stdlib": str(stdlib), "valid_fraction": valid_fraction}

    def build(folder: Path) -> Dict:
        train, valid = split_documents(collect_documents(stdlib), valid_fraction)
        stats = {}
        for split, docs in (("train", train), ("valid", valid)):
            write_documents(folder / f"{split}.txt", docs)
            stats[split] = {"documents": len(docs), "sha256": sha256_file(folder / f"{split}.txt")}
        return stats

    folder = cached_dir(cache_dir, "default_corpus", spec, build)
    return {"train": folder / "train.txt", "valid": folder / "valid.txt"}
