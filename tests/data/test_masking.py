"""MLM masking: proportions, special tokens, determinism by (seed, epoch, index); collation."""
import numpy as np
import pytest

from linformer_pt.data.binarize import TokenizedCorpus, TokenizedShard
from linformer_pt.data.masking import MaskedLMDataset, MaskingConfig, collate, mask_tokens

MASK, NUM_SPECIAL, VOCAB = 4, 5, 1000
IS_SPECIAL = np.arange(VOCAB) < NUM_SPECIAL  # the standard layout: <s> <pad> </s> <unk> <mask> = 0..4


def test_masking_proportions_match_bert():
    rng = np.random.default_rng(0)
    tokens = rng.integers(NUM_SPECIAL, VOCAB, size=200_000)
    tokens[::50] = 2  # </s> sprinkled in: never masked
    inputs, masked = mask_tokens(tokens, rng, MaskingConfig(), MASK, IS_SPECIAL)
    candidates = tokens >= NUM_SPECIAL
    assert not masked[~candidates].any()
    assert masked.sum() / candidates.sum() == pytest.approx(0.15, abs=0.002)
    replaced_by_mask = (inputs[masked] == MASK).mean()
    kept = (inputs[masked] == tokens[masked]).mean()
    assert replaced_by_mask == pytest.approx(0.8, abs=0.01)
    # kept = the 10% left unchanged + random draws that happen to hit the original (1 in 995)
    assert kept == pytest.approx(0.1 + 0.1 / (VOCAB - NUM_SPECIAL), abs=0.01)
    assert (inputs[masked] >= NUM_SPECIAL).sum() == pytest.approx(0.2 * masked.sum(), rel=0.05)
    assert np.array_equal(inputs[~masked], tokens[~masked])


def make_dataset(seed: int = 1) -> MaskedLMDataset:
    rng = np.random.default_rng(123)
    docs = [np.append(rng.integers(NUM_SPECIAL, VOCAB, size=n), 2) for n in (30, 5, 60, 12, 44)]
    offsets = np.cumsum([0] + [len(d) for d in docs])
    shard = TokenizedShard(np.concatenate(docs).astype(np.uint16), offsets, np.arange(len(docs) + 1))
    corpus = TokenizedCorpus([shard])
    ids = {"bos": 0, "pad": 1, "eos": 2, "mask": MASK}
    return MaskedLMDataset(corpus, 32, "none", MaskingConfig(), ids, IS_SPECIAL, seed)


def test_samples_are_a_pure_function_of_seed_epoch_and_index():
    a, b = make_dataset(), make_dataset()
    a.set_epoch(3)
    b.set_epoch(3)
    for index in reversed(range(len(a))):  # order of access must not matter
        assert all(np.array_equal(a[index][key], b[index][key]) for key in a[index])
    b.set_epoch(4)
    assert any(not np.array_equal(a[i]["is_masked"], b[i]["is_masked"]) for i in range(len(a)))
    c = make_dataset(seed=2)
    c.set_epoch(3)
    assert any(not np.array_equal(a[i]["is_masked"], c[i]["is_masked"]) for i in range(len(a)))


def test_samples_start_with_bos_and_never_mask_it():
    ds = make_dataset()
    for i in range(len(ds)):
        sample = ds[i]
        assert sample["targets"][0] == 0 and not sample["is_masked"][0]
        assert len(sample["inputs"]) <= 32


def test_collate_pads_and_lists_targets_row_major():
    ds = make_dataset()
    samples = [ds[len(ds) - 1], ds[0]]  # the last block is the short one
    batch = collate(samples, pad_id=1)
    lengths = [len(s["inputs"]) for s in samples]
    assert batch["tokens"].shape == (2, max(lengths))
    assert batch["padding_mask"].sum() == max(lengths) - min(lengths)
    expected = np.concatenate([s["targets"][s["is_masked"]] for s in samples])
    assert batch["targets"].tolist() == expected.tolist()
    assert (batch["tokens"][batch["masked_positions"]] != 1).all()


def test_whole_word_masking_masks_words_entirely():
    rng = np.random.default_rng(0)
    tokens = rng.integers(NUM_SPECIAL, VOCAB, size=50_000)
    begins = np.zeros(VOCAB, dtype=bool)
    begins[NUM_SPECIAL::3] = True  # a third of the vocabulary starts words
    inputs, masked = mask_tokens(tokens, rng, MaskingConfig(), MASK, IS_SPECIAL, word_begins=begins)
    word_id = np.cumsum(begins[tokens]) - 1
    per_word = np.bincount(word_id, weights=masked) / np.bincount(word_id)
    assert set(np.unique(per_word)) <= {0.0, 1.0}  # never part of a word
    assert masked.mean() == pytest.approx(0.15, abs=0.01)


def test_span_masking_masks_runs_of_the_given_length():
    rng = np.random.default_rng(0)
    tokens = rng.integers(NUM_SPECIAL, VOCAB, size=50_000)
    _, masked = mask_tokens(tokens, rng, MaskingConfig(mask_multiple_length=3), MASK, IS_SPECIAL)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], masked.astype(int), [0]])))
    runs = edges[1::2] - edges[::2]
    assert masked.mean() == pytest.approx(0.15, abs=0.01)
    assert np.median(runs) == 3 and (runs % 3 == 0).mean() > 0.9  # overlapping spans merge into longer runs
