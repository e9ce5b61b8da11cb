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
    """(starts, ends) into shard.tokens of each block, computed with array operations (no loop over sentences).

    Sentences are first cut into units of at most block_size tokens (an over-long sentence gives full pieces
    and a remainder). Blocks are greedy runs of units: from unit i, a block takes units while they fit and no
    unit the break mode makes open a block comes up; `_path` follows those jumps from the first unit.
    """
    total = len(shard.tokens)
    if break_mode == "none":
        starts = np.arange(0, total, block_size, dtype=np.int64)
        return starts, np.minimum(starts + block_size, total)
    if break_mode not in BREAK_MODES:
        raise ValueError(f"break mode {break_mode!r} is not one of {BREAK_MODES}")
    offsets = np.asarray(shard.sentence_offsets, dtype=np.int64)
    per_sentence = (np.diff(offsets) - 1) // block_size + 1  # units of each sentence
    first_unit = np.concatenate([[0], np.cumsum(per_sentence)])
    sentence_of = np.repeat(np.arange(len(per_sentence)), per_sentence)
    piece = np.arange(first_unit[-1]) - first_unit[sentence_of]
    bounds = np.append(offsets[sentence_of] + piece * block_size, total)  # unit starts, then the end
    units = len(bounds) - 1
    opens = np.zeros(units + 1, dtype=bool)  # units that must open a block (the end counts as one)
    opens[units] = True
    if break_mode == "eos":
        return bounds[:-1].copy(), bounds[1:].copy()
    if break_mode == "complete_doc":
        opens[first_unit[np.asarray(shard.doc_starts[:-1], dtype=np.int64)]] = True
    # The first unit at or after each position that must open a block.
    index = np.where(opens, np.arange(units + 1), units)
    next_open = np.minimum.accumulate(index[::-1])[::-1]
    fits = np.searchsorted(bounds, bounds + block_size, side="right") - 1  # units [i, fits[i]) fit one block
    jump = np.minimum(fits, np.append(next_open[1:], units))
    jump[units] = units
    on_path = _path(jump, units)
    starts = bounds[:-1][on_path]
    return starts, np.append(starts[1:], total)


def _path(jump: np.ndarray, end: int) -> np.ndarray:
    """A bool per node: is it reached from node 0 by following `jump` (jump[end] == end)? Pointer doubling.

    After step l the nodes 0..2**l - 1 jumps away are marked, so log2(blocks) array passes suffice.
    """
    on_path = np.zeros(end + 1, dtype=bool)
    on_path[0] = True
    while jump[0] != end:
        on_path[jump[on_path]] = True
        jump = jump[jump]
    on_path[jump[on_path]] = True
    return on_path[:end]


def corpus_blocks(corpus: TokenizedCorpus, block_size: int, break_mode: str) -> Tuple[np.ndarray, ...]:
    """(shard index, start, end) of every block of the corpus."""
    parts = [shard_blocks(shard, block_size, break_mode) for shard in corpus.shards]
    shard_ids = np.concatenate([np.full(len(s), i, dtype=np.int32) for i, (s, _) in enumerate(parts)])
    return shard_ids, np.concatenate([s for s, _ in parts]), np.concatenate([e for _, e in parts])
