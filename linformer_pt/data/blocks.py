"""Packing a tokenized corpus into training samples of at most `block_size` tokens (`<s>` is added later).

Break modes follow fairseq (a sentence is a line of a document and ends with `</s>`):
  none          cut the token stream into equal blocks, ignoring sentences and documents
  complete      fill each block with whole sentences, across documents
  complete_doc  fill each block with whole sentences of one document
  eos           one sentence per block
A sentence longer than a block is split across blocks of its own in every mode. Blocks never cross shards.
"""
from typing import Tuple

import numpy as np

from linformer_pt.data.binarize import TokenizedCorpus, TokenizedShard

BREAK_MODES = ("none", "complete", "complete_doc", "eos")


def shard_blocks(shard: TokenizedShard, block_size: int, break_mode: str) -> Tuple[np.ndarray, np.ndarray]:
    """(starts, ends) into shard.tokens of each block."""
    total = len(shard.tokens)
    if break_mode == "none":
        starts = np.arange(0, total, block_size, dtype=np.int64)
        return starts, np.minimum(starts + block_size, total)
    if break_mode not in BREAK_MODES:
        raise ValueError(f"break mode {break_mode!r} is not one of {BREAK_MODES}")
    offsets = shard.sentence_offsets.tolist()
    must_start = np.zeros(len(offsets) - 1, dtype=bool)  # sentence i has to open a new block
    if break_mode == "eos":
        must_start[:] = True
    elif break_mode == "complete_doc":
        must_start[shard.doc_starts[:-1]] = True
    starts, ends = [], []
    block_start = None
    for i, (s, e) in enumerate(zip(offsets[:-1], offsets[1:])):
        if block_start is not None and (must_start[i] or e - block_start > block_size):
            starts.append(block_start)
            ends.append(s)
            block_start = None
        while e - s > block_size:  # an over-long sentence fills blocks on its own
            starts.append(s)
            ends.append(s + block_size)
            s += block_size
        if block_start is None:
            block_start = s
    if block_start is not None:
        starts.append(block_start)
        ends.append(total)
    return np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)


def corpus_blocks(corpus: TokenizedCorpus, block_size: int, break_mode: str) -> Tuple[np.ndarray, ...]:
    """(shard index, start, end) of every block of the corpus."""
    parts = [shard_blocks(shard, block_size, break_mode) for shard in corpus.shards]
    shard_ids = np.concatenate([np.full(len(s), i, dtype=np.int32) for i, (s, _) in enumerate(parts)])
    return shard_ids, np.concatenate([s for s, _ in parts]), np.concatenate([e for _, e in parts])
