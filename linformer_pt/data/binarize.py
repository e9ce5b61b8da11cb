"""Tokenize documents once into memory-mapped token shards with a sentence and document index.

Each line of a document is a sentence and ends with `</s>` (fairseq's convention); documents are runs of
sentences. A shard holds whole documents: `shard-NNNNN.tokens.npy` (uint16 when the vocabulary fits, else
int32), `.sentences.npy` (token offset of each sentence, plus the end) and `.docs.npy` (sentence index of each
document, plus the end). Folders are written through cache.cached_dir, so an interrupted run is never used.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from linformer_pt.data.tokenizer import text_only
from linformer_pt.errors import UserError

ENCODE_CHUNK = 2048  # documents per encode_batch call (which runs on all cores)
SHARD_TOKENS = 1 << 27  # 128M tokens (256 MB as uint16) per shard


@dataclass
class TokenizedShard:
    tokens: np.ndarray  # all sentences back to back, each ending with </s>
    sentence_offsets: np.ndarray  # (sentences + 1,) start of each sentence in `tokens`; last = len(tokens)
    doc_starts: np.ndarray  # (documents + 1,) first sentence of each document; last = sentences


@dataclass
class TokenizedCorpus:
    shards: List[TokenizedShard]

    @property
    def num_documents(self) -> int:
        return sum(len(s.doc_starts) - 1 for s in self.shards)

    @property
    def num_tokens(self) -> int:
        return sum(len(s.tokens) for s in self.shards)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


class ShardWriter:
    """Accumulates tokenized documents and writes a shard whenever `shard_tokens` is reached."""

    def __init__(self, folder: Path, dtype: np.dtype, shard_tokens: int) -> None:
        self.folder, self.dtype, self.shard_tokens = folder, dtype, shard_tokens
        self.shards = 0
        self.stats = {"documents": 0, "sentences": 0, "tokens": 0}
        self._reset()

    def _reset(self) -> None:
        self.pieces: List[np.ndarray] = []
        self.sentence_lengths: List[int] = []
        self.doc_sizes: List[int] = []
        self.tokens = 0

    def add(self, sentences: List[List[int]], eos_id: int) -> None:
        for ids in sentences:
            self.pieces.append(np.asarray(ids + [eos_id], dtype=self.dtype))
            self.sentence_lengths.append(len(ids) + 1)
            self.tokens += len(ids) + 1
        self.doc_sizes.append(len(sentences))
        if self.tokens >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self.doc_sizes:
            return
        name = self.folder / f"shard-{self.shards:05d}"
        np.save(f"{name}.tokens.npy", np.concatenate(self.pieces))
        np.save(f"{name}.sentences.npy", np.concatenate([[0], np.cumsum(self.sentence_lengths)]).astype(np.int64))
        np.save(f"{name}.docs.npy", np.concatenate([[0], np.cumsum(self.doc_sizes)]).astype(np.int64))
        self.stats["documents"] += len(self.doc_sizes)
        self.stats["sentences"] += len(self.sentence_lengths)
        self.stats["tokens"] += self.tokens
        self.shards += 1
        self._reset()


def _chunks(documents: Iterable[str], size: int) -> Iterator[List[str]]:
    chunk: List[str] = []
    for doc in documents:
        chunk.append(doc)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_shards(
    documents: Iterable[str],
    tokenizer: Tokenizer,
    eos_id: int,
    folder: Path,
    shard_tokens: int = SHARD_TOKENS,
    progress: Optional[tqdm] = None,
) -> Dict[str, int]:
    """Tokenize `documents` (each line a sentence, no <s>/</s> from the tokenizer) into shards under `folder`.

    Special-token strings in the text are encoded as text: the only special id in the shards is the `</s>`
    ending each sentence.
    """
    # Corpus text never yields special ids, even through a tokenizer that was not loaded by load_tokenizer.
    tokenizer = text_only(tokenizer)
    writer = ShardWriter(folder, token_dtype(tokenizer.get_vocab_size()), shard_tokens)
    for chunk in _chunks(documents, ENCODE_CHUNK):
        per_doc = [[line for line in doc.split("\n") if line.strip()] for doc in chunk]
        encodings = tokenizer.encode_batch([line for lines in per_doc for line in lines], add_special_tokens=False)
        cursor = 0
        for lines in per_doc:
            writer.add([e.ids for e in encodings[cursor : cursor + len(lines)]], eos_id)
            cursor += len(lines)
        if progress is not None:
            progress.update(sum(len(doc.encode("utf-8")) for doc in chunk))
    writer.flush()
    if writer.stats["documents"] == 0:
        raise UserError("the sources hold no documents")
    return {**writer.stats, "shards": writer.shards, "dtype": writer.dtype.name}


def load_shards(folder: Path) -> TokenizedCorpus:
    """The shards of a folder written by write_shards, memory-mapped."""
    names = sorted(p.name[: -len(".tokens.npy")] for p in Path(folder).glob("shard-*.tokens.npy"))
    if not names:
        raise UserError(f"{folder} holds no token shards (shard-*.tokens.npy)")
    return TokenizedCorpus([
        TokenizedShard(
            np.load(folder / f"{name}.tokens.npy", mmap_mode="r"),
            np.load(folder / f"{name}.sentences.npy"),
            np.load(folder / f"{name}.docs.npy"),
        )
        for name in names
    ])  # fmt: skip
