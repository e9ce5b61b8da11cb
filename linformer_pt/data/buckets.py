"""Token-budget batches (fairseq's --max-tokens): items sorted by length, cut greedily into batches of at most
max_tokens padded tokens (batch length x longest item), the batch order shuffled per (seed, epoch).

Sorted items of similar length share a batch, so little is padded; the budget makes batches of short items hold
many and batches of long ones few, so a forward costs about the same whatever the lengths. The position is
EpochBatchIterator's (epoch, updates done in it), which the trainer saves and resumes unchanged.
"""
from typing import Any, Callable, Dict, List, Sequence

import numpy as np
from torch.utils.data import Dataset

from linformer_pt.data.batching import EpochBatchIterator
from linformer_pt.errors import UserError

TIES_STREAM, ORDER_STREAM = 11, 12  # seed the tie order and the batch order apart from other (seed, epoch) streams


def sorted_by_length(lengths: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """Item indices by increasing length; equal lengths in the order of a permutation seeded by (seed, epoch)."""
    tie_order = np.random.default_rng([seed, epoch, TIES_STREAM]).permutation(len(lengths))
    return tie_order[np.argsort(lengths[tie_order], kind="stable")]


def budget_bounds(sorted_lengths: np.ndarray, max_tokens: int, key: str = "dataset.max_tokens") -> List[int]:
    """Where a greedy cut of lengths sorted in increasing order starts each batch, and the end: the longest item of
    a batch is its last, so a batch grows while (items + 1) x the next length fits max_tokens.

    An item longer than max_tokens is an error, as in fairseq's batch_by_size: a one-item batch would break the
    budget the user chose to bound memory, and a budget below the longest input is almost always a typo.
    """
    if len(sorted_lengths) and int(sorted_lengths[-1]) > max_tokens:
        raise UserError(f"{key}={max_tokens} is smaller than the longest item ({int(sorted_lengths[-1])} tokens); "
                        f"allow at least that many (or 0 for fixed-size batches)")  # fmt: skip
    bounds, start = [0], 0
    for i, length in enumerate(sorted_lengths.tolist()):
        if (i - start + 1) * length > max_tokens:
            bounds.append(i)
            start = i
    return bounds + [len(sorted_lengths)] if len(sorted_lengths) else bounds


def cut_by_budget(order: np.ndarray, lengths: np.ndarray, max_tokens: int, key: str = "--max-tokens") -> List[np.ndarray]:
    """`order` (indices by increasing length) cut into batches of at most max_tokens padded tokens."""
    bounds = budget_bounds(np.asarray(lengths)[order], max_tokens, key)
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


class TokenBudgetBatchIterator(EpochBatchIterator):
    """EpochBatchIterator's interface and position over token-budget batches.

    Training (shuffle=True): each update takes world_size x update_freq consecutive batches of the epoch's shuffled
    batch order; micro-step i of rank r is batch i x world_size + r of them. The batches of an update are therefore
    the same for every world_size x update_freq giving the same product (2 processes x 1 = 1 process x 2), though
    which process holds which differs. The tail that fills no update is dropped that epoch. The batch boundaries
    depend on the sorted lengths only, so every epoch has the same number of updates even though ties (items of
    equal length) are reshuffled per epoch. Validation (shuffle=False): every item once, batches shortest first,
    dealt to the ranks in turn (a rank may get one batch fewer).
    """

    def __init__(
        self,
        dataset: Dataset,
        lengths: Sequence[int],
        max_tokens: int,
        collate_fn: Callable,
        seed: int,
        shuffle: bool,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        update_freq: int = 1,
        key: str = "dataset.max_tokens",
    ) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if len(self.lengths) != len(dataset):
            raise ValueError(f"{len(self.lengths)} lengths for a dataset of {len(dataset)} items")
        self.max_tokens = max_tokens
        self.bounds = budget_bounds(np.sort(self.lengths), max_tokens, key)  # the same cut every epoch
        super().__init__(dataset, 0, collate_fn, seed, shuffle, num_workers, rank, world_size, update_freq)
        self.per_update = world_size * update_freq  # batches per update (global_batch counts items: 0 here)
        if shuffle and self.num_batches < self.per_update:
            raise UserError(f"{len(dataset)} items give {self.num_batches} batches of {key}={max_tokens}, fewer than "
                            f"one update's {world_size} processes x {update_freq} micro-batches; lower {key}")  # fmt: skip

    @property
    def num_batches(self) -> int:
        return len(self.bounds) - 1

    def batches(self, epoch: int) -> List[np.ndarray]:
        """The epoch's batches as item indices, shortest first (training reorders them in _steps)."""
        order = sorted_by_length(self.lengths, self.seed, epoch if self.shuffle else 1)
        return [order[a:b] for a, b in zip(self.bounds[:-1], self.bounds[1:])]

    def _steps(self, epoch: int) -> List[List[np.ndarray]]:  # type: ignore[override]
        """The epoch's updates (training: full ones only) or validation steps, each a list of global batches."""
        batches = self.batches(epoch)
        if not self.shuffle:
            w = self.world_size
            return [batches[i : i + w] for i in range(0, len(batches), w)]
        shuffled = [batches[i] for i in np.random.default_rng([self.seed, epoch, ORDER_STREAM]).permutation(len(batches))]
        g = self.per_update
        return [shuffled[i : i + g] for i in range(0, len(shuffled) - g + 1, g)]

    def _micro_batches(self, step: List[np.ndarray]) -> List[List[int]]:  # type: ignore[override]
        """This rank's update_freq micro-batches of one step (for validation: its one batch, maybe empty)."""
        w, r = self.world_size, self.rank
        return [step[i * w + r].tolist() if i * w + r < len(step) else [] for i in range(self.update_freq)]

    def state_dict(self) -> Dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.offset, "max_tokens": self.max_tokens,
                "num_samples": len(self.dataset), "batches_per_update": self.per_update}  # fmt: skip

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue at a saved position; it must come from the same items cut by the same budget into updates of
        the same number of batches (a position of fixed-size batches has max_tokens 0)."""
        mine = {"max_tokens": self.max_tokens, "num_samples": len(self.dataset), "batches_per_update": self.per_update}
        for key, value in mine.items():
            saved = state.get(key, 0 if key == "max_tokens" else value)
            if saved != value:
                raise UserError(
                    f"the saved data position is for {key}={saved}, this run has {key}={value}; keep dataset.max_tokens "
                    "and processes x optimization.update_freq equal, or set checkpoint.reset_dataloader=true"
                )
        self.epoch, self.offset = state["epoch"], state["offset"]

    def summary(self) -> str:
        """Batches per epoch, mean items per batch and the share of padded tokens, for the start-up data lines."""
        sizes = np.diff(self.bounds)
        longest = np.sort(self.lengths)[np.asarray(self.bounds[1:], dtype=np.int64) - 1] if len(sizes) else sizes
        padded = int((sizes * longest).sum())
        padding = 100.0 * (1 - int(self.lengths.sum()) / padded) if padded else 0.0
        return (f"token-budget batches: {self.num_batches:,} per epoch, mean {sizes.mean() if len(sizes) else 0:.1f} "
                f"items, padding {padding:.1f}% (dataset.max_tokens={self.max_tokens})")  # fmt: skip


def batch_iterator_for(
    dataset: Dataset,
    lengths: Callable[[], Sequence[int]],
    batch_size: int,
    max_tokens: int,
    collate_fn: Callable,
    seed: int,
    shuffle: bool,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    update_freq: int = 1,
) -> EpochBatchIterator:
    """Fixed batches of batch_size items (max_tokens 0) or token-budget batches; `lengths` is called only for the
    latter (item lengths in tokens, padding-free)."""
    if not max_tokens:
        return EpochBatchIterator(dataset, batch_size, collate_fn, seed, shuffle, num_workers, rank, world_size,
                                  update_freq)  # fmt: skip
    return TokenBudgetBatchIterator(dataset, lengths(), max_tokens, collate_fn, seed, shuffle, num_workers, rank,
                                    world_size, update_freq)  # fmt: skip


def budget_summary(iterator: Any) -> str:
    """What a start-up data line appends: "; token-budget batches: ..." for a token-budget iterator, else ""."""
    return f"; {iterator.summary()}" if isinstance(iterator, TokenBudgetBatchIterator) else ""


def sample_lengths(dataset: Any) -> np.ndarray:
    """Tokens per masked-LM sample: its block plus <s> (ends - starts + 1); a ValidSubset's through its indices."""
    full = getattr(dataset, "dataset", dataset)
    picked = getattr(dataset, "indices", slice(None))
    return np.asarray(full.ends[picked] - full.starts[picked] + 1, dtype=np.int64)
