"""The unigram baseline: the perplexity of predicting every masked token by its frequency in the training data.

A masked-LM that has learned nothing from context scores about this; every validation ppl reads against it.
Counts get add-one smoothing over the ordinary (non-special) vocabulary, so a token the training data lacks still
has a finite probability. Special tokens are never prediction targets and are left out of the counts.
"""
import math
from typing import Dict, Iterable

import numpy as np

from linformer_pt.data.binarize import TokenizedCorpus

COUNT_CHUNK = 1 << 24  # tokens counted at a time: memory-mapped shards are never loaded whole


def token_counts(corpus: TokenizedCorpus, vocab_size: int) -> np.ndarray:
    """How often each id occurs in the corpus (int64, length vocab_size)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for shard in corpus.shards:
        for start in range(0, len(shard.tokens), COUNT_CHUNK):
            chunk = np.asarray(shard.tokens[start : start + COUNT_CHUNK])
            counts += np.bincount(chunk, minlength=vocab_size)[:vocab_size]
    return counts


def unigram_baseline(counts: np.ndarray, is_special: np.ndarray, targets: Iterable[np.ndarray]) -> Dict[str, float]:
    """Cross-entropy (nats) and perplexity of the smoothed unigram distribution on the given target ids."""
    ordinary = ~np.asarray(is_special, dtype=bool)
    smoothed = np.where(ordinary, counts.astype(np.float64) + 1.0, 0.0)
    log_probs = np.log(smoothed / smoothed.sum(), where=ordinary, out=np.full(len(smoothed), -np.inf))
    total, count = 0.0, 0
    for ids in targets:
        total -= float(log_probs[ids].sum())
        count += len(ids)
    if count == 0:
        return {"loss": math.nan, "ppl": math.nan, "targets": 0}
    loss = total / count
    return {"loss": loss, "ppl": math.exp(loss), "targets": count}
