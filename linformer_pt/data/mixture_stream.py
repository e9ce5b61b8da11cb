"""A mixture of streamed sources (dataset=mixture with dataset.streaming=true): no token cache, resumable by seeking.

The draws are MixtureBatchIterator's (update u's slots pick sources with a generator seeded by (seed, u)); each of
this rank's slots takes the next sample of its source's stream for this rank (StreamingMaskedLM: each rank reads
its own records). A source's stream starts again, in its next epoch, when it runs out. The position is the update
and, per source, its epoch and the stream state after its last sample taken, so a resumed run reads nothing before
it. As for a single stream, a position holds for this rank, world size and batch size only, and samples are read in
the main process (no DataLoader workers: the draws interleave the sources sample by sample).
"""
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

from linformer_pt.data.mixture import DRAW_STREAM
from linformer_pt.data.streaming import StreamingMaskedLM, plain_state
from linformer_pt.errors import UserError


class SourceStream:
    """One source's samples for this rank, epoch after epoch, from a saved epoch and stream state."""

    def __init__(self, name: str, dataset: StreamingMaskedLM) -> None:
        self.name, self.dataset = name, dataset
        self.epoch, self.state, self.taken = 1, None, 0  # state: after the last sample taken (None: epoch start)
        self.epoch_size: Optional[int] = None  # samples in an epoch, known once one has ended
        self._samples: Optional[Iterator[Any]] = None

    def next(self) -> Dict[str, np.ndarray]:
        while True:
            if self._samples is None:
                self.dataset.set_epoch(self.epoch)  # masks are seeded by the epoch
                self._samples = self.dataset.stream(0, 1, self.state)
            item = next(self._samples, None)
            if item is not None:
                sample, self.state = item
                self.taken += 1
                return sample
            if self.taken == 0:
                raise UserError(f"source {self.name}: rank {self.dataset.rank} of {self.dataset.world_size} streams no "
                                "sample from its files; give it more text or use fewer processes")  # fmt: skip
            self.epoch, self.epoch_size = self.epoch + 1, self.taken
            self.state, self.taken, self._samples = None, 0, None

    def epochs(self) -> float:
        """Epochs read: whole ones, plus the fraction of this one once an epoch's size is known."""
        return self.epoch - 1 + (self.taken / self.epoch_size if self.epoch_size else 0.0)

    def state_dict(self) -> Dict[str, Any]:
        state = None if self.state is None else plain_state(self.state)
        return {"epoch": self.epoch, "state": state, "taken": self.taken, "epoch_size": self.epoch_size}

    def load_state_dict(self, saved: Dict[str, Any]) -> None:
        self.epoch, self.taken, self.epoch_size = saved["epoch"], saved["taken"], saved["epoch_size"]
        self.state, self._samples = (dict(saved["state"]) if saved["state"] is not None else None), None


class StreamingMixtureIterator:
    """MixtureBatchIterator's contract (forever, state_dict, epoch, log_fields) over streamed sources."""

    def __init__(
        self,
        datasets: Sequence[StreamingMaskedLM],
        names: Sequence[str],
        shares: Sequence[float],
        batch_size: int,
        collate_fn: Callable,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        update_freq: int = 1,
    ) -> None:
        self.streams = [SourceStream(name, dataset) for name, dataset in zip(names, datasets)]
        self.names, self.shares = list(names), np.asarray(shares, dtype=np.float64)
        self.batch_size, self.collate_fn, self.seed = batch_size, collate_fn, seed
        self.rank, self.world_size, self.update_freq = rank, world_size, update_freq
        self.global_batch = batch_size * world_size * update_freq
        self.update = 0

    @property
    def epoch(self) -> int:
        """The epoch of the first source (a stream's size is unknown up front, so there is no mixture epoch)."""
        return self.streams[0].epoch

    def log_fields(self) -> Dict[str, float]:
        return {f"epochs/{s.name}": round(s.epochs(), 4) for s in self.streams}

    def forever(self) -> Iterator[List[Any]]:
        b, w = self.batch_size, self.world_size
        while True:
            rng = np.random.default_rng([self.seed, DRAW_STREAM, self.update])
            draws = rng.choice(len(self.names), size=self.global_batch, p=self.shares)
            group = []
            for i in range(self.update_freq):
                mine = draws[(i * w + self.rank) * b : (i * w + self.rank + 1) * b]
                group.append(self.collate_fn([self.streams[int(s)].next() for s in mine]))
            self.update += 1
            yield group

    def _setting(self) -> Dict[str, Any]:
        return {"rank": self.rank, "world_size": self.world_size, "global_batch": self.global_batch,
                "sources": self.names}  # fmt: skip

    def state_dict(self) -> Dict[str, Any]:
        return {"streamed_mixture": {s.name: s.state_dict() for s in self.streams}, "update": self.update,
                **self._setting()}  # fmt: skip

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if "streamed_mixture" not in state:
            raise UserError("the checkpoint's data position is not a streamed mixture's; set "
                            "checkpoint.reset_dataloader=true to start the mixture from its beginning")  # fmt: skip
        for key, mine in self._setting().items():
            if state[key] != mine:
                raise UserError(f"the saved streamed-mixture position is for {key}={state[key]}, this run has "
                                f"{key}={mine}; keep it, or set checkpoint.reset_dataloader=true")  # fmt: skip
        self.update = int(state["update"])
        for stream in self.streams:
            stream.load_state_dict(state["streamed_mixture"][stream.name])
