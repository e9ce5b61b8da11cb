"""BERT/RoBERTa masking and the masked-LM dataset whose every sample is a pure function of (seed, epoch, index).

That determinism lets a resumed run rebuild any batch exactly without replaying the data before it.
Masking units are tokens, or whole words (`mask_whole_words`); spans (`mask_multiple_length`) extend each
chosen unit over the following ones, as fairseq does.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from linformer_pt.data.binarize import TokenizedCorpus
from linformer_pt.data.blocks import corpus_blocks
from linformer_pt.modules.masked_grid import MaskedGrid


@dataclass(frozen=True)
class MaskingConfig:
    mask_prob: float = 0.15
    leave_unmasked_prob: float = 0.1
    random_token_prob: float = 0.1
    mask_multiple_length: int = 1  # units per masked span


def mask_tokens(
    tokens: np.ndarray,
    rng: np.random.Generator,
    cfg: MaskingConfig,
    mask_id: int,
    is_special: np.ndarray,
    word_begins: Optional[np.ndarray] = None,
    ordinary_ids: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """(inputs, is_masked): mask about mask_prob of the non-special tokens, 80/10/10 <mask>/random/kept.

    `is_special` (a bool per vocabulary id) marks the special tokens: never masked, never drawn as replacements;
    random replacements are drawn uniformly from the other ids, `ordinary_ids` (np.flatnonzero(~is_special),
    which callers masking many samples compute once). With `word_begins` (a bool per vocabulary id: does the
    token start a word?) whole words are masked together.
    """
    candidates = np.flatnonzero(~is_special[tokens])
    if word_begins is None:
        unit_of = np.arange(len(candidates))
    else:
        # A unit starts at a word-initial token or right after a special token (a sentence start).
        starts = word_begins[tokens[candidates]] | (np.diff(candidates, prepend=-2) > 1)
        starts[:1] = True
        unit_of = np.cumsum(starts) - 1
    num_units = int(unit_of[-1]) + 1 if len(unit_of) else 0
    span = cfg.mask_multiple_length
    # fairseq's rounding: the expected count is exact on average, even for short samples.
    num_spans = min(num_units, int(cfg.mask_prob * num_units / span + rng.random()))
    chosen = rng.choice(num_units, size=num_spans, replace=False)
    units = np.zeros(num_units + span, dtype=bool)
    for step in range(span):
        units[chosen + step] = True
    chosen_positions = candidates[units[unit_of]]
    is_masked = np.zeros(len(tokens), dtype=bool)
    is_masked[chosen_positions] = True
    inputs = tokens.astype(np.int64)
    fate = rng.random(len(chosen_positions))
    keep_cut = 1.0 - cfg.leave_unmasked_prob
    random_cut = keep_cut - cfg.random_token_prob
    to_random = chosen_positions[(fate >= random_cut) & (fate < keep_cut)]
    inputs[chosen_positions[fate < random_cut]] = mask_id
    if ordinary_ids is None:
        ordinary_ids = np.flatnonzero(~is_special)
    # An index into the ordinary ids: with specials 0..4 this is the same draw as integers(5, vocab_size).
    inputs[to_random] = ordinary_ids[rng.integers(0, len(ordinary_ids), size=len(to_random))]
    return inputs, is_masked


class MaskedLMDataset(Dataset):
    """Blocks of a tokenized corpus with `<s>` prepended, masked by a generator seeded with (seed, epoch, index)."""

    def __init__(
        self,
        corpus: TokenizedCorpus,
        tokens_per_sample: int,
        break_mode: str,
        masking: MaskingConfig,
        special_ids: Dict[str, int],
        is_special: np.ndarray,
        seed: int,
        word_begins: Optional[np.ndarray] = None,
    ) -> None:
        """`special_ids` names bos/pad/eos/mask; `is_special` (tokenizer.special_mask) spans the vocabulary."""
        self.corpus = corpus
        self.shard_ids, self.starts, self.ends = corpus_blocks(corpus, tokens_per_sample - 1, break_mode)
        self.masking, self.ids, self.seed = masking, special_ids, seed
        self.is_special, self.ordinary_ids = is_special, np.flatnonzero(~is_special)
        self.vocab_size = len(is_special)
        self.word_begins = word_begins
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
        shard = self.corpus.shards[self.shard_ids[index]]
        block = np.asarray(shard.tokens[self.starts[index] : self.ends[index]])
        tokens = np.concatenate([[self.ids["bos"]], block]).astype(np.int64)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        inputs, is_masked = mask_tokens(
            tokens, rng, self.masking, self.ids["mask"], self.is_special, self.word_begins, self.ordinary_ids
        )
        return {"inputs": inputs, "targets": tokens, "is_masked": is_masked}


def collate(samples: List[Dict[str, np.ndarray]], pad_id: int) -> Dict[str, torch.Tensor]:
    """Right-pad to the longest sample. `targets` holds the original ids at masked positions, row-major;
    `masked_index` their flat row-major indices (what the model's LM head gathers without a device sync), and
    `masked_grid_*` the same positions laid out per sample (what lets the last layer compute only them)."""
    n = max(len(s["inputs"]) for s in samples)
    tokens = torch.full((len(samples), n), pad_id, dtype=torch.long)
    masked = torch.zeros((len(samples), n), dtype=torch.bool)
    targets = []
    for row, s in enumerate(samples):
        length = len(s["inputs"])
        tokens[row, :length] = torch.from_numpy(s["inputs"])
        masked[row, :length] = torch.from_numpy(s["is_masked"])
        targets.append(torch.from_numpy(s["targets"][s["is_masked"]]))
    grid = MaskedGrid.from_mask(masked)  # the same positions per sample, for the last layer (modules/masked_grid.py)
    return {
        "tokens": tokens,
        "padding_mask": tokens.eq(pad_id),
        "masked_positions": masked,
        "masked_index": masked.flatten().nonzero().squeeze(1),  # the same positions, counted here on the host
        "masked_grid_rows": grid.rows,
        "masked_grid_real": grid.real,
        "targets": torch.cat(targets),
    }
