"""Training batches drawn from several sources in given shares: deterministic, resumable, sharded, epochs per source.

Update u's global batch is a pure function of the seed, u and where each source stands: each of its slots picks
a source with a generator seeded by (seed, u), and takes that source's next sample in its own order, a permutation
seeded by (seed, source name, source epoch). A small source thus repeats (its epoch count grows fast) and a large
one is not finished; masks follow the source's epoch, as a single corpus's do. Processes cut the global batch as
EpochBatchIterator does (rank r reads slice r of each micro-step), so any process count with the same global batch
sees the same sequences. The position (u and each source's epoch and offset) is what the checkpoint saves.
"""
import zlib
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

import numpy as np
from torch.utils.data import DataLoader, Dataset

from linformer_pt.errors import UserError

DRAW_STREAM = 11  # seeds the per-update source draws apart from every other generator of the seed
ORDER_STREAM = 12
UPDATES_PER_LOADER = 512  # updates planned per DataLoader (workers restart between plans, as between epochs)
Key = Tuple[int, int, int]  # (source, source epoch, index in the source)


class MixtureSamples(Dataset):
    """Samples addressed by (source, epoch, index): each source's masks are those of its own epoch."""

    def __init__(self, datasets: Sequence[Dataset]) -> None:
        self.datasets = list(datasets)

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, key: Key) -> Any:
        source, epoch, index = key
        dataset = self.datasets[source]
        dataset.set_epoch(epoch)  # MaskedLMDataset seeds its masks by (seed, epoch, index)
        return dataset[index]


class MixtureBatchIterator:
    """This rank's micro-batches, update after update, drawn from weighted sources (see the module docstring)."""

    def __init__(
        self,
        datasets: Sequence[Dataset],
        names: Sequence[str],
        shares: Sequence[float],
        batch_size: int,
        collate_fn: Callable,
        seed: int,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        update_freq: int = 1,
    ) -> None:
        empty = [n for n, d in zip(names, datasets) if len(d) == 0]
        if empty:
            raise UserError(f"dataset.sources: {empty} hold no sample at task.tokens_per_sample; give them more text")
        self.samples, self.names = MixtureSamples(datasets), list(names)
        self.sizes = [len(d) for d in datasets]
        self.shares = np.asarray(shares, dtype=np.float64)
        self.batch_size, self.collate_fn, self.seed, self.num_workers = batch_size, collate_fn, seed, num_workers
        self.rank, self.world_size, self.update_freq = rank, world_size, update_freq
        self.global_batch = batch_size * world_size * update_freq
        self.update = 0  # updates drawn so far
        self.positions = [[1, 0] for _ in names]  # per source: epoch, samples taken in it

    # --- what the trainer reads -------------------------------------------------------------------------------
    def updates_per_epoch(self) -> int:
        """A mixture epoch: as many sequences as all sources hold together (max_epoch and the progress use it)."""
        return max(1, sum(self.sizes) // self.global_batch)

    @property
    def epoch(self) -> int:
        return 1 + self.update // self.updates_per_epoch()

    @property
    def offset(self) -> int:
        return self.update % self.updates_per_epoch()

    def source_epochs(self) -> Dict[str, float]:
        """How many times each source has been read through (fractional), for the logs."""
        return {name: round(epoch - 1 + taken / size, 4)
                for name, (epoch, taken), size in zip(self.names, self.positions, self.sizes)}  # fmt: skip

    def log_fields(self) -> Dict[str, float]:
        return {f"epochs/{name}": value for name, value in self.source_epochs().items()}

    # --- the plan ---------------------------------------------------------------------------------------------
    def _order(self, source: int, epoch: int) -> np.ndarray:
        name_seed = zlib.crc32(self.names[source].encode())  # by name: reordering the list keeps each order
        return np.random.default_rng([self.seed, ORDER_STREAM, name_seed, epoch]).permutation(self.sizes[source])

    def draws(self, update: int) -> np.ndarray:
        """The source of each slot of update `update`'s global batch."""
        rng = np.random.default_rng([self.seed, DRAW_STREAM, update])
        return rng.choice(len(self.names), size=self.global_batch, p=self.shares)

    def _take(self, source: int, positions: List[List[int]], orders: Dict[Tuple[int, int], np.ndarray]) -> Key:
        epoch, taken = positions[source]
        if taken == self.sizes[source]:  # this source's epoch is over: the next one, in a new order
            epoch, taken = epoch + 1, 0
        if (source, epoch) not in orders:
            orders.clear()  # keep one order per source in memory
            orders[(source, epoch)] = self._order(source, epoch)
        positions[source] = [epoch, taken + 1]
        return source, epoch, int(orders[(source, epoch)][taken])

    def _plan(self, count: int) -> Tuple[List[List[Key]], List[Tuple[int, List[List[int]]]]]:
        """The next `count` updates: this rank's micro-batches in order, and the position after each update."""
        positions = [list(p) for p in self.positions]
        cache: Dict[int, Dict[Tuple[int, int], np.ndarray]] = {s: {} for s in range(len(self.names))}
        micro: List[List[Key]] = []
        after = []
        for update in range(self.update, self.update + count):
            keys = [self._take(int(s), positions, cache[int(s)]) for s in self.draws(update)]
            b, w = self.batch_size, self.world_size
            micro += [keys[(i * w + self.rank) * b : (i * w + self.rank + 1) * b] for i in range(self.update_freq)]
            after.append((update + 1, [list(p) for p in positions]))
        return micro, after

    # --- iteration --------------------------------------------------------------------------------------------
    def forever(self) -> Iterator[List[Any]]:
        """One update's micro-batches at a time, without end; the position advances before each yield."""
        while True:
            micro, after = self._plan(UPDATES_PER_LOADER)
            loader = iter(DataLoader(self.samples, batch_sampler=micro, collate_fn=self.collate_fn,
                                     num_workers=self.num_workers))  # fmt: skip
            for update, positions in after:
                group = [next(loader) for _ in range(self.update_freq)]
                self.update, self.positions = update, positions
                yield group

    def state_dict(self) -> Dict[str, Any]:
        return {"mixture": {name: {"epoch": e, "taken": t, "num_samples": n}
                            for name, (e, t), n in zip(self.names, self.positions, self.sizes)},
                "update": self.update, "global_batch": self.global_batch}  # fmt: skip

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue at a saved position: the same sources (by name and size) cut into the same global batches."""
        saved = state.get("mixture")
        if saved is None:
            raise UserError("the checkpoint's data position is not a mixture's (dataset.sources); "
                            "set checkpoint.reset_dataloader=true to start the mixture from its beginning")  # fmt: skip
        mine = dict(zip(self.names, self.sizes))
        if sorted(saved) != sorted(mine):
            raise UserError(f"the checkpoint's mixture has sources {sorted(saved)}, this run has {sorted(mine)}; "
                            "keep dataset.sources, or set checkpoint.reset_dataloader=true")  # fmt: skip
        for name, position in saved.items():
            if position["num_samples"] != mine[name]:
                raise UserError(f"source {name} had {position['num_samples']} samples in the checkpoint, now "
                                f"{mine[name]}; keep its data, or set checkpoint.reset_dataloader=true")  # fmt: skip
        if state["global_batch"] != self.global_batch:
            raise UserError(
                f"the saved data position is for global_batch={state['global_batch']}, this run has "
                f"global_batch={self.global_batch}; keep dataset.batch_size x processes x optimization.update_freq "
                "equal, or set checkpoint.reset_dataloader=true"
            )
        self.update = int(state["update"])
        self.positions = [[saved[n]["epoch"], saved[n]["taken"]] for n in self.names]

    def restart(self) -> None:
        self.update, self.positions = 0, [[1, 0] for _ in self.names]
