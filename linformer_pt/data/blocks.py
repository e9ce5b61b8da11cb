"""Packing a tokenized corpus into training samples of at most `tokens_per_sample` tokens (with `<s>`).

Break modes follow fairseq: `none` cuts the token stream into equal blocks regardless of documents;
`complete` fills each block with whole documents (a document longer than a block is split across blocks).
"""
from typing import Tuple

import numpy as np

from linformer_pt.data.binarize import TokenizedCorpus

BREAK_MODES = ("none", "complete")


def block_boundaries(corpus: TokenizedCorpus, block_size: int, break_mode: str) -> Tuple[np.ndarray, np.ndarray]:
    """(starts, ends) into corpus.tokens of each block of at most block_size tokens."""
    total = int(corpus.doc_offsets[-1])
    if break_mode == "none":
        starts = np.arange(0, total, block_size, dtype=np.int64)
        return starts, np.minimum(starts + block_size, total)
    if break_mode != "complete":
        raise ValueError(f"break mode {break_mode!r} is not one of {BREAK_MODES}")
    starts, ends = [], []
    block_start = None
    for doc_start, doc_end in zip(corpus.doc_offsets[:-1].tolist(), corpus.doc_offsets[1:].tolist()):
        if block_start is not None and doc_end - block_start > block_size:
            starts.append(block_start)
            ends.append(doc_start)
            block_start = None
        while doc_end - doc_start > block_size:  # an over-long document fills blocks on its own
            starts.append(doc_start)
            ends.append(doc_start + block_size)
            doc_start += block_size
        if block_start is None:
            block_start = doc_start
    if block_start is not None:
        starts.append(block_start)
        ends.append(total)
    return np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
