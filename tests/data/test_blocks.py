"""Packing into blocks with fairseq's break modes, on hand-made documents."""
import numpy as np
import pytest

from linformer_pt.data.binarize import TokenizedCorpus, TokenizedShard
from linformer_pt.data.blocks import BREAK_MODES, corpus_blocks, shard_blocks


def shard_of(docs):
    """docs: a list of documents, each a list of sentence lengths (</s> included)."""
    lengths = [n for doc in docs for n in doc]
    sentence_offsets = np.cumsum([0] + lengths)
    doc_starts = np.cumsum([0] + [len(doc) for doc in docs])
    return TokenizedShard(np.arange(sentence_offsets[-1]), sentence_offsets, doc_starts)


def spans(shard, size, mode):
    starts, ends = shard_blocks(shard, size, mode)
    return list(zip(starts.tolist(), ends.tolist()))


# Two documents: sentences [0,3) [3,5) | [5,9) [9,21) [21,23)
DOCS = shard_of([[3, 2], [4, 12, 2]])


def test_none_cuts_the_stream():
    assert spans(DOCS, 6, "none") == [(0, 6), (6, 12), (12, 18), (18, 23)]


def test_complete_packs_whole_sentences_across_documents():
    assert spans(DOCS, 6, "complete") == [(0, 5), (5, 9), (9, 15), (15, 21), (21, 23)]


def test_complete_doc_never_crosses_a_document():
    assert spans(shard_of([[3, 2], [1, 2]]), 6, "complete_doc") == [(0, 5), (5, 8)]
    assert spans(shard_of([[3, 2], [1, 2]]), 6, "complete") == [(0, 6), (6, 8)]


def test_eos_gives_one_sentence_per_block():
    assert spans(DOCS, 6, "eos") == [(0, 3), (3, 5), (5, 9), (9, 15), (15, 21), (21, 23)]


@pytest.mark.parametrize("mode", BREAK_MODES)
def test_blocks_cover_every_token_once_and_stay_in_their_shard(mode):
    rng = np.random.default_rng(0)
    shards = [shard_of([list(rng.integers(1, 30, size=rng.integers(1, 5))) for _ in range(50)]) for _ in range(2)]
    shard_ids, starts, ends = corpus_blocks(TokenizedCorpus(shards), 16, mode)
    assert (ends - starts).max() <= 16 and (ends > starts).all()
    for i, shard in enumerate(shards):
        mine = shard_ids == i
        assert starts[mine][0] == 0 and ends[mine][-1] == len(shard.tokens)
        assert np.array_equal(starts[mine][1:], ends[mine][:-1])


def loop_blocks(shard, block_size, mode):
    """The plain reference: walk the sentences one by one, as fairseq's TokenBlockDataset does."""
    offsets = list(shard.sentence_offsets)
    opens = {"eos": set(range(len(offsets) - 1)), "complete_doc": set(shard.doc_starts[:-1].tolist())}.get(mode, set())
    out, start = [], None
    for i, (s, e) in enumerate(zip(offsets[:-1], offsets[1:])):
        if start is not None and (i in opens or e - start > block_size):
            out.append((start, s))
            start = None
        while e - s > block_size:
            out.append((s, s + block_size))
            s += block_size
        start = s if start is None else start
    return out + [(start, offsets[-1])]


@pytest.mark.parametrize("mode", ["complete", "complete_doc", "eos"])
def test_the_array_packing_equals_the_sentence_loop(mode):
    rng = np.random.default_rng(1)
    for _ in range(300):  # short, long and over-long sentences, block sizes from 1 up
        top = rng.choice([4, 30, 90])
        shard = shard_of([list(rng.integers(1, top, size=rng.integers(1, 6))) for _ in range(rng.integers(1, 9))])
        size = int(rng.integers(1, 40))
        assert spans(shard, size, mode) == loop_blocks(shard, size, mode), (size, shard.sentence_offsets)
