"""Epoch-based batch order seeded by (seed, epoch), with a resumable position (epoch, batches consumed).

The order of an epoch is a pure function of the seed and epoch, so a checkpoint needs only two integers.
"""
from typing import Any, Callable, Dict, Iterator, List

import numpy as np
from torch.utils.data import DataLoader, Dataset


class EpochBatchIterator:
    """Yields batches epoch after epoch, starting from a saved position."""

    def __init__(
        self, dataset: Dataset, batch_size: int, collate_fn: Callable, seed: int, shuffle: bool, num_workers: int = 0
    ) -> None:
        self.dataset, self.batch_size, self.collate_fn = dataset, batch_size, collate_fn
        self.seed, self.shuffle, self.num_workers = seed, shuffle, num_workers
        self.epoch, self.offset = 1, 0  # position of the next batch

    def batch_indices(self, epoch: int) -> List[np.ndarray]:
        """The index batches of `epoch`, in order."""
        n = len(self.dataset)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        return [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.epoch, self.offset = state["epoch"], state["offset"]

    def epoch_iter(self) -> Iterator[Any]:
        """Batches from the current position to the end of the current epoch, advancing the position."""
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        batches = self.batch_indices(self.epoch)[self.offset :]
        loader = DataLoader(
            self.dataset,
            batch_sampler=[b.tolist() for b in batches],
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
        )
        for batch in loader:
            # Advance before yielding, so the saved position after an epoch's last batch is (epoch + 1, 0).
            self.offset += 1
            if self.offset == len(self):
                self.epoch, self.offset = self.epoch + 1, 0
            yield batch

    def forever(self) -> Iterator[Any]:
        """Batches across epochs without end; the caller decides when to stop."""
        while True:
            yield from self.epoch_iter()

