"""Tokenize a text corpus once into a flat token array plus document offsets, cached by content.

Each document is followed by `</s>` (fairseq's convention); tokens are uint16 when the vocabulary fits.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
from tokenizers import Tokenizer

from linformer_pt.data.cache import cached_dir, sha256_file
from linformer_pt.data.text import iter_documents
from linformer_pt.errors import UserError

ENCODE_CHUNK = 1024  # documents per encode_batch call (which runs on all cores)


@dataclass
class TokenizedCorpus:
    tokens: np.ndarray  # (total,) all documents back to back, each ending with </s>
    doc_offsets: np.ndarray  # (documents + 1,) start of each document in `tokens`; last = total

    @property
    def num_documents(self) -> int:
        return len(self.doc_offsets) - 1


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def tokenize_files(files: Sequence[Path], tokenizer: Tokenizer, eos_id: int) -> TokenizedCorpus:
    """Tokenize the documents of `files` without <s>/</s> and append </s> to each."""
    dtype = token_dtype(tokenizer.get_vocab_size())
    pieces: List[np.ndarray] = []
    lengths: List[int] = []

    def flush(batch: List[str]) -> None:
        for enc in tokenizer.encode_batch(batch, add_special_tokens=False):
            ids = np.asarray(enc.ids + [eos_id], dtype=dtype)
            pieces.append(ids)
            lengths.append(len(ids))

    batch: List[str] = []
    for doc in iter_documents(files):
        batch.append(doc)
        if len(batch) == ENCODE_CHUNK:
            flush(batch)
            batch = []
    flush(batch)
    if not pieces:
        raise UserError(f"no documents in {', '.join(map(str, files))}")
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return TokenizedCorpus(np.concatenate(pieces), offsets)


def cached_tokenized(
    cache_dir: str, files: Sequence[Path], tokenizer_path: Path, tokenizer: Tokenizer, eos_id: int
) -> TokenizedCorpus:
    """Tokenized `files`, cached under a key of the tokenizer's and the files' content hashes."""
    spec = {"tokenizer": sha256_file(tokenizer_path), "files": [sha256_file(f) for f in files]}

    def build(folder: Path) -> Dict:
        corpus = tokenize_files(files, tokenizer, eos_id)
        np.save(folder / "tokens.npy", corpus.tokens)
        np.save(folder / "doc_offsets.npy", corpus.doc_offsets)
        return {"documents": corpus.num_documents, "tokens": int(len(corpus.tokens))}

    folder = cached_dir(cache_dir, "tokens", spec, build)
    return TokenizedCorpus(
        np.load(folder / "tokens.npy", mmap_mode="r"), np.load(folder / "doc_offsets.npy")
    )
