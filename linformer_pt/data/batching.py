"""Epoch-based batch order seeded by (seed, epoch), cut into global update batches, with a resumable position.

The order of an epoch is a pure function of the seed and epoch. Training cuts it into global batches of
batch_size x processes x update_freq samples, one per update; the partial last one is dropped (its samples come
back in other epochs' orders), so every process count and accumulation that gives the same global batch sees
the same updates, epoch after epoch. The position is (epoch, updates done in it): it means the same on any
number of processes, which is what lets a run checkpointed on N processes resume on M.
"""
from typing import Any, Callable, Dict, Iterator, List

import numpy as np
from torch.utils.data import DataLoader, Dataset

from linformer_pt.errors import UserError


class EpochBatchIterator:
    """Yields this rank's micro-batches, update after update and epoch after epoch, from a saved position.

    Training (shuffle=True): each update's global batch g is split into update_freq micro-steps of
    batch_size x world_size samples, and rank r reads slice r of each micro-step. Validation (shuffle=False,
    update_freq=1): every sample once, in order, the last step possibly short (ranks may then get fewer batches).
    """

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
        update_freq: int = 1,
    ) -> None:
        self.dataset, self.batch_size, self.collate_fn = dataset, batch_size, collate_fn
        self.seed, self.shuffle, self.num_workers = seed, shuffle, num_workers
        self.rank, self.world_size, self.update_freq = rank, world_size, update_freq
        self.global_batch = batch_size * world_size * update_freq
        self.epoch, self.offset = 1, 0  # position of the next update: epoch, updates already done in it

    def _steps(self, epoch: int) -> List[np.ndarray]:
        """The epoch's global batches (training: full ones only) or validation steps, as sample indices."""
        n = len(self.dataset)
        if not self.shuffle:
            step = self.batch_size * self.world_size
            return [np.arange(i, min(i + step, n)) for i in range(0, n, step)]
        order = np.random.default_rng([self.seed, epoch]).permutation(n)
        return [order[i : i + self.global_batch] for i in range(0, n - self.global_batch + 1, self.global_batch)]

    def _micro_batches(self, step: np.ndarray) -> List[List[int]]:
        """This rank's update_freq micro-batches of one step (for validation: its one batch, maybe empty)."""
        b, w = self.batch_size, self.world_size
        return [step[(i * w + self.rank) * b : (i * w + self.rank + 1) * b].tolist() for i in range(self.update_freq)]

    def updates_per_epoch(self) -> int:
        return len(self._steps(self.epoch))

    def state_dict(self) -> Dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.offset, "global_batch": self.global_batch,
                "num_samples": len(self.dataset)}  # fmt: skip

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue at a saved position; it must come from the same data cut into the same global batches."""
        # max_tokens: a position among token-budget batches (data/buckets.py) counts other updates.
        for key, mine in (("global_batch", self.global_batch), ("num_samples", len(self.dataset)), ("max_tokens", 0)):
            if state.get(key, mine) != mine:
                raise UserError(
                    f"the saved data position is for {key}={state[key]}, this run has {key}={mine}; keep "
                    "dataset.batch_size x processes x optimization.update_freq equal, or set checkpoint.reset_dataloader=true"
                )
        self.epoch, self.offset = state["epoch"], state["offset"]

    def restart(self) -> None:
        """Back to the first update of epoch 1 (validation reads its set from the start every time)."""
        self.epoch, self.offset = 1, 0

    def _epoch_updates(self) -> Iterator[List[Any]]:
        """Lists of update_freq collated micro-batches, from the position to the end of the epoch."""
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        steps = self._steps(self.epoch)
        micro = [batch for step in steps[self.offset :] for batch in self._micro_batches(step)]
        loader = DataLoader(self.dataset, batch_sampler=[b for b in micro if b], collate_fn=self.collate_fn,
                            num_workers=self.num_workers)  # fmt: skip
        loaded = iter(loader)
        for step_batches in (micro[i : i + self.update_freq] for i in range(0, len(micro), self.update_freq)):
            group = [next(loaded) for b in step_batches if b]
            # Advance before yielding, so the saved position after an epoch's last update is (epoch + 1, 0).
            self.offset += 1
            if self.offset == len(steps):
                self.epoch, self.offset = self.epoch + 1, 0
            yield group

    def epoch_iter(self) -> Iterator[Any]:
        """Single micro-batches from the position to the end of the epoch (validation)."""
        for group in self._epoch_updates():
            yield from group

    def forever(self) -> Iterator[List[Any]]:
        """One update's micro-batches at a time, across epochs without end; the caller decides when to stop."""
        while True:
            produced = False
            for group in self._epoch_updates():
                produced = True
                yield group
            if not produced:
                raise UserError(
                    f"an epoch of {len(self.dataset)} samples gives no global batch of {self.batch_size} x "
                    f"{self.world_size} processes x {self.update_freq} micro-batches; use more data or a smaller "
                    "dataset.batch_size"
                )
