"""BERT/RoBERTa masking and the masked-LM dataset whose every sample is a pure function of (seed, epoch, index).

That determinism lets a resumed run rebuild any batch exactly without replaying the data before it.
"""
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from linformer_pt.data.binarize import TokenizedCorpus
from linformer_pt.data.blocks import block_boundaries


@dataclass(frozen=True)
class MaskingConfig:
    mask_prob: float = 0.15
    leave_unmasked_prob: float = 0.1
    random_token_prob: float = 0.1


def mask_tokens(
    tokens: np.ndarray, rng: np.random.Generator, cfg: MaskingConfig, mask_id: int, num_special: int, vocab_size: int
) -> Tuple[np.ndarray, np.ndarray]:
    """(inputs, is_masked): choose mask_prob of the non-special tokens; of those 80/10/10 <mask>/random/kept.

    Ids below `num_special` are special tokens: never chosen, never drawn as random replacements.
    """
    candidates = np.flatnonzero(tokens >= num_special)
    # fairseq's rounding: the expected count is exact on average, even for short samples.
    num_mask = min(len(candidates), int(cfg.mask_prob * len(candidates) + rng.random()))
    chosen = rng.choice(candidates, size=num_mask, replace=False)
    is_masked = np.zeros(len(tokens), dtype=bool)
    is_masked[chosen] = True
    inputs = tokens.astype(np.int64)
    fate = rng.random(num_mask)
    random_cut = 1.0 - cfg.leave_unmasked_prob - cfg.random_token_prob
    to_mask = chosen[fate < random_cut]
    to_random = chosen[(fate >= random_cut) & (fate < 1.0 - cfg.leave_unmasked_prob)]
    inputs[to_mask] = mask_id
    inputs[to_random] = rng.integers(num_special, vocab_size, size=len(to_random))
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
        vocab_size: int,
        seed: int,
    ) -> None:
        self.corpus = corpus
        self.starts, self.ends = block_boundaries(corpus, tokens_per_sample - 1, break_mode)
        self.masking, self.ids, self.vocab_size, self.seed = masking, special_ids, vocab_size, seed
        self.num_special = max(special_ids.values()) + 1
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.starts)

    def num_tokens(self, index: int) -> int:
        return int(self.ends[index] - self.starts[index]) + 1

    def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
        block = np.asarray(self.corpus.tokens[self.starts[index] : self.ends[index]])
        tokens = np.concatenate([[self.ids["bos"]], block]).astype(np.int64)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        inputs, is_masked = mask_tokens(tokens, rng, self.masking, self.ids["mask"], self.num_special, self.vocab_size)
        return {"inputs": inputs, "targets": tokens, "is_masked": is_masked}


def collate(samples: List[Dict[str, np.ndarray]], pad_id: int) -> Dict[str, torch.Tensor]:
    """Right-pad to the longest sample. `targets` holds the original ids at masked positions, row-major."""
    n = max(len(s["inputs"]) for s in samples)
    tokens = torch.full((len(samples), n), pad_id, dtype=torch.long)
    masked = torch.zeros((len(samples), n), dtype=torch.bool)
    targets = []
    for row, s in enumerate(samples):
        length = len(s["inputs"])
        tokens[row, :length] = torch.from_numpy(s["inputs"])
        masked[row, :length] = torch.from_numpy(s["is_masked"])
        targets.append(torch.from_numpy(s["targets"][s["is_masked"]]))
    return {
        "tokens": tokens,
        "padding_mask": tokens.eq(pad_id),
        "masked_positions": masked,
        "targets": torch.cat(targets),
    }
