"""Epoch-based batch order seeded by (seed, epoch), sharded over DDP ranks, with a resumable position.

The order of an epoch is a pure function of the seed and epoch, so a checkpoint needs only (epoch, offset).
With W ranks, each step takes W * batch_size samples of that order and rank r reads its r-th slice: W processes
at batch b see exactly the samples one process sees at batch W * b.
"""
from typing import Any, Callable, Dict, Iterator, List

import numpy as np
from torch.utils.data import DataLoader, Dataset

from linformer_pt.errors import UserError


class EpochBatchIterator:
    """Yields this rank's batches epoch after epoch, starting from a saved position."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        collate_fn: Callable,
        seed: int,
        shuffle: bool,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.dataset, self.batch_size, self.collate_fn = dataset, batch_size, collate_fn
        self.seed, self.shuffle, self.num_workers = seed, shuffle, num_workers
        self.rank, self.world_size = rank, world_size
        self.epoch, self.offset = 1, 0  # position of the next batch

    def batch_indices(self, epoch: int) -> List[np.ndarray]:
        """This rank's index batches of `epoch`, in order."""
        n = len(self.dataset)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        step = self.batch_size * self.world_size
        steps = [order[i : i + step] for i in range(0, n, step)]
        if self.world_size == 1:
            return steps
        if self.shuffle and len(steps[-1]) < step:
            steps = steps[:-1]  # training ranks must take the same number of steps; the tail is reshuffled next epoch
        mine = (s[self.rank * self.batch_size : (self.rank + 1) * self.batch_size] for s in steps)
        return [b for b in mine if len(b)]

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.epoch, self.offset = state["epoch"], state["offset"]

    def epoch_iter(self) -> Iterator[Any]:
        """Batches from the current position to the end of the current epoch, advancing the position."""
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        all_batches = self.batch_indices(self.epoch)
        loader = DataLoader(
            self.dataset,
            batch_sampler=[b.tolist() for b in all_batches[self.offset :]],
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
        )
        for batch in loader:
            # Advance before yielding, so the saved position after an epoch's last batch is (epoch + 1, 0).
            self.offset += 1
            if self.offset == len(all_batches):
                self.epoch, self.offset = self.epoch + 1, 0
            yield batch

    def forever(self) -> Iterator[Any]:
        """Batches across epochs without end; the caller decides when to stop."""
        while True:
            produced = False
            for batch in self.epoch_iter():
                produced = True
                yield batch
            if not produced:
                raise UserError(
                    f"an epoch of {len(self.dataset)} samples gives no batch of {self.batch_size} x {self.world_size} "
                    "processes; use more data or a smaller dataset.batch_size"
                )
