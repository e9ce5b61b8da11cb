"""Packing into blocks: `none` cuts the stream, `complete` keeps documents whole where they fit."""
import numpy as np
import pytest

from linformer_pt.data.binarize import TokenizedCorpus
from linformer_pt.data.blocks import block_boundaries


def corpus_of(lengths):
    return TokenizedCorpus(np.arange(sum(lengths)), np.cumsum([0] + list(lengths)))


def spans(corpus, size, mode):
    starts, ends = block_boundaries(corpus, size, mode)
    return list(zip(starts.tolist(), ends.tolist()))


def test_none_cuts_the_stream_into_equal_blocks():
    assert spans(corpus_of([3, 4, 5]), 5, "none") == [(0, 5), (5, 10), (10, 12)]


def test_complete_packs_whole_documents_and_splits_only_overlong_ones():
    # documents: [0,3) [3,7) [7,19) [19,21) with block size 5
    assert spans(corpus_of([3, 4, 12, 2]), 5, "complete") == [(0, 3), (3, 7), (7, 12), (12, 17), (17, 21)]


@pytest.mark.parametrize("mode", ["none", "complete"])
def test_blocks_cover_every_token_once(mode):
    rng = np.random.default_rng(0)
    corpus = corpus_of(rng.integers(1, 40, size=200))
    starts, ends = block_boundaries(corpus, 16, mode)
    assert (ends - starts).max() <= 16 and (ends > starts).all()
    assert starts[0] == 0 and ends[-1] == corpus.doc_offsets[-1]
    assert np.array_equal(starts[1:], ends[:-1])
