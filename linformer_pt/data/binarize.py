"""Tokenize documents once into memory-mapped token shards with a sentence and document index.

Each line of a document is a sentence and ends with `</s>` (fairseq's convention); documents are runs of
sentences. A shard holds whole documents: `shard-NNNNN.tokens.npy` (uint16 when the vocabulary fits, else
int32), `.sentences.npy` (token offset of each sentence, plus the end) and `.docs.npy` (sentence index of each
document, plus the end). Folders are written through cache.cached_dir, so an interrupted run is never used.

Memory stays flat whatever the corpus size: documents are encoded a chunk (`chunk_bytes` of text) at a time and
each chunk's arrays are appended to the open shard files at once, so at most a few chunks are ever held. With
`workers` > 1, chunks are encoded in worker processes and written back in input order (the same bytes).
"""
import multiprocessing
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from linformer_pt.data.tokenizer import text_only
from linformer_pt.errors import UserError

ENCODE_CHUNK = 2048  # at most this many documents per encode_batch call (which runs on all cores)
CHUNK_BYTES = 1 << 22  # at most about this much text (4 MB) per chunk: what bounds preprocessing memory
SHARD_TOKENS = 1 << 27  # 128M tokens (256 MB as uint16) per shard
PARALLELISM = "TOKENIZERS_PARALLELISM"


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


@dataclass
class EncodedChunk:
    """The tokens of a run of whole documents, as written to a shard."""

    tokens: np.ndarray  # every sentence's ids followed by </s>, back to back
    sentence_lengths: np.ndarray  # int64, tokens per sentence (including </s>)
    doc_sizes: np.ndarray  # int64, sentences per document
    num_bytes: int  # UTF-8 bytes of the chunk's text, for progress bars


def encode_chunk(tokenizer: Tokenizer, documents: List[str], eos_id: int, dtype: np.dtype) -> EncodedChunk:
    """Encode documents (each line a sentence; blank lines dropped) into one chunk of arrays."""
    per_doc = [[line for line in doc.split("\n") if line.strip()] for doc in documents]
    encodings = tokenizer.encode_batch([line for lines in per_doc for line in lines], add_special_tokens=False)
    flat: List[int] = []
    for encoding in encodings:
        flat += encoding.ids
        flat.append(eos_id)
    return EncodedChunk(
        np.array(flat, dtype=dtype),
        np.fromiter((len(e.ids) + 1 for e in encodings), dtype=np.int64, count=len(encodings)),
        np.fromiter((len(lines) for lines in per_doc), dtype=np.int64, count=len(per_doc)),
        sum(len(doc.encode("utf-8")) for doc in documents),
    )


class NpyAppender:
    """A 1-D .npy file written piece by piece; the header is rewritten with the final length on close."""

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.file, self.dtype, self.length = open(path, "wb"), np.dtype(dtype), 0
        self.header_bytes = self._write_header()

    def _write_header(self) -> int:
        self.file.seek(0)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (self.length,)}
        np.lib.format.write_array_header_1_0(self.file, header)
        return self.file.tell()

    def append(self, values: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(values, dtype=self.dtype).tobytes())
        self.length += len(values)

    def close(self) -> None:
        # The header is padded to 64 bytes, so any length up to 10**20 fits the space the first one took.
        if self._write_header() != self.header_bytes:
            raise RuntimeError("npy header grew; cannot finish the shard in place")
        self.file.close()


class ShardWriter:
    """Appends encoded chunks to the open shard's files and starts a new shard once `shard_tokens` is reached.

    A shard ends after the first document that brings it to `shard_tokens` or more (documents never straddle
    shards), so the layout depends only on the documents, never on how they were chunked.
    """

    def __init__(self, folder: Path, dtype: np.dtype, shard_tokens: int) -> None:
        self.folder, self.dtype, self.shard_tokens = folder, dtype, shard_tokens
        self.shards = 0
        self.stats = {"documents": 0, "sentences": 0, "tokens": 0}
        self.files: Optional[Tuple[NpyAppender, NpyAppender, NpyAppender]] = None
        self.tokens = self.sentences = 0  # in the open shard

    def _open(self) -> Tuple[NpyAppender, NpyAppender, NpyAppender]:
        if self.files is None:
            name = self.folder / f"shard-{self.shards:05d}"
            self.files = (
                NpyAppender(Path(f"{name}.tokens.npy"), self.dtype),
                NpyAppender(Path(f"{name}.sentences.npy"), np.dtype(np.int64)),
                NpyAppender(Path(f"{name}.docs.npy"), np.dtype(np.int64)),
            )
            self.files[1].append(np.zeros(1))
            self.files[2].append(np.zeros(1))
        return self.files

    def add(self, sentences: List[List[int]], eos_id: int) -> None:
        """Append one document given as the token ids of its sentences."""
        tokens = np.array([i for ids in sentences for i in (*ids, eos_id)], dtype=self.dtype)
        lengths = np.array([len(ids) + 1 for ids in sentences], dtype=np.int64)
        self.add_chunk(EncodedChunk(tokens, lengths, np.array([len(sentences)], dtype=np.int64), 0))

    def add_chunk(self, chunk: EncodedChunk) -> None:
        """Append a chunk's documents, splitting it where a shard fills up."""
        lengths, docs = chunk.sentence_lengths, chunk.doc_sizes
        token_ends = np.concatenate([[0], np.cumsum(lengths)])  # token offset of each sentence in the chunk
        sentence_ends = np.concatenate([[0], np.cumsum(docs)])  # sentence offset of each document in the chunk
        first = 0  # the chunk's first document not written yet
        while first < len(docs):
            doc_token_ends = token_ends[sentence_ends[first + 1 :]] - token_ends[sentence_ends[first]]
            full = np.flatnonzero(self.tokens + doc_token_ends >= self.shard_tokens)
            last = first + (int(full[0]) + 1 if len(full) else len(docs) - first)  # one past the last doc here
            s0, s1 = sentence_ends[first], sentence_ends[last]
            tokens_file, sentences_file, docs_file = self._open()
            tokens_file.append(chunk.tokens[token_ends[s0] : token_ends[s1]])
            sentences_file.append(self.tokens + token_ends[s0 + 1 : s1 + 1] - token_ends[s0])
            docs_file.append(self.sentences + sentence_ends[first + 1 : last + 1] - s0)
            self.stats["documents"] += last - first
            self.tokens += int(token_ends[s1] - token_ends[s0])
            self.sentences += int(s1 - s0)
            if len(full):
                self.flush()
            first = last

    def flush(self) -> None:
        """Finish the open shard, if any."""
        if self.files is None:
            return
        for appender in self.files:
            appender.close()
        self.stats["sentences"] += self.sentences
        self.stats["tokens"] += self.tokens
        self.files = None
        self.tokens = self.sentences = 0
        self.shards += 1


def _chunks(documents: Iterable[str], max_docs: int, max_bytes: int) -> Iterator[List[str]]:
    """Runs of documents holding at most max_docs documents and (beyond one document) max_bytes characters."""
    chunk: List[str] = []
    size = 0
    for doc in documents:
        chunk.append(doc)
        size += len(doc)
        if len(chunk) == max_docs or size >= max_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


_WORKER: Dict[str, Any] = {}  # the tokenizer and settings of a worker process


def _init_worker(tokenizer_json: str, eos_id: int, dtype: str) -> None:
    _WORKER.update(tokenizer=text_only(Tokenizer.from_str(tokenizer_json)), eos_id=eos_id, dtype=np.dtype(dtype))


def _encode_in_worker(documents: List[str]) -> EncodedChunk:
    return encode_chunk(_WORKER["tokenizer"], documents, _WORKER["eos_id"], _WORKER["dtype"])


def encoded_chunks(
    chunks: Iterable[List[str]], tokenizer: Tokenizer, eos_id: int, dtype: np.dtype, workers: int = 1
) -> Iterator[EncodedChunk]:
    """Encoded chunks in input order; with workers > 1, encoded by that many processes, a few chunks ahead."""
    if workers <= 1:
        for chunk in chunks:
            yield encode_chunk(tokenizer, chunk, eos_id, dtype)
        return
    # fork where there is one: spawn would re-import the caller's main module (scripts without a main guard
    # fail). Each worker encodes on one thread (tokenizers turns its thread pool off in a forked child; the
    # variable, set only while forking, says so without its warning): the parallelism is the processes.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    saved = os.environ.get(PARALLELISM)
    os.environ[PARALLELISM] = "false"
    try:
        pool = multiprocessing.get_context(method).Pool(workers, _init_worker, (tokenizer.to_str(), eos_id, dtype.str))
    finally:
        if saved is None:
            del os.environ[PARALLELISM]
        else:
            os.environ[PARALLELISM] = saved
    with pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_encode_in_worker, (chunk,)))
            if len(pending) >= 2 * workers:  # a bounded window: memory stays a few chunks, not the corpus
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def write_shards(
    documents: Iterable[str],
    tokenizer: Tokenizer,
    eos_id: int,
    folder: Path,
    shard_tokens: int = SHARD_TOKENS,
    progress: Optional[tqdm] = None,
    chunk_bytes: int = CHUNK_BYTES,
    workers: int = 1,
) -> Dict[str, Any]:
    """Tokenize `documents` (each line a sentence, no <s>/</s> from the tokenizer) into shards under `folder`.

    Special-token strings in the text are encoded as text: the only special id in the shards is the `</s>`
    ending each sentence. The output does not depend on chunk_bytes or workers.
    """
    # Corpus text never yields special ids, even through a tokenizer that was not loaded by load_tokenizer.
    tokenizer = text_only(tokenizer)
    writer = ShardWriter(folder, token_dtype(tokenizer.get_vocab_size()), shard_tokens)
    chunks = _chunks(documents, ENCODE_CHUNK, chunk_bytes)
    for encoded in encoded_chunks(chunks, tokenizer, eos_id, writer.dtype, workers):
        writer.add_chunk(encoded)
        if progress is not None:
            progress.update(encoded.num_bytes)
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
            np.load(folder / f"{name}.sentences.npy", mmap_mode="r"),
            np.load(folder / f"{name}.docs.npy", mmap_mode="r"),
        )
        for name in names
    ])  # fmt: skip
