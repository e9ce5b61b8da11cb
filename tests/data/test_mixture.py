"""A mixture of sources: shares within binomial noise, epochs per source, exact resume, sharding, bad specs."""
from collections import Counter
from typing import Dict, List

import numpy as np
import pytest
from torch.utils.data import Dataset

import linformer_pt.data.mixture as mixture
from linformer_pt.config import DatasetConfig
from linformer_pt.data.mixture import MixtureBatchIterator
from linformer_pt.data.mixture_spec import best_set, mixture_shares
from linformer_pt.errors import UserError


class Tagged(Dataset):
    """Items that say where they came from: (source, epoch, index)."""

    def __init__(self, name: str, size: int) -> None:
        self.name, self.size, self.epoch = name, size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple:
        return (self.name, self.epoch, int(index))


def iterator(sizes: Dict[str, int], shares: List[float], batch_size: int = 8, rank: int = 0, world_size: int = 1,
             update_freq: int = 1, seed: int = 3) -> MixtureBatchIterator:  # fmt: skip
    datasets = [Tagged(name, size) for name, size in sizes.items()]
    return MixtureBatchIterator(datasets, list(sizes), shares, batch_size, list, seed, 0, rank, world_size, update_freq)


def updates(it: MixtureBatchIterator, count: int) -> List[List[list]]:
    stream = it.forever()
    return [next(stream) for _ in range(count)]


def flat(update: List[list]) -> List[tuple]:
    return [item for batch in update for item in batch]


def test_counts_per_source_match_the_weights_within_binomial_noise():
    shares = [0.5, 0.3, 0.2]
    it = iterator({"a": 50, "b": 500, "c": 7}, shares, batch_size=32)
    drawn = Counter(item[0] for update in updates(it, 300) for item in flat(update))
    n = sum(drawn.values())
    assert n == 300 * 32
    for name, p in zip("abc", shares):
        sigma = (n * p * (1 - p)) ** 0.5
        assert abs(drawn[name] - n * p) < 4 * sigma, (name, drawn[name], n * p)
    # ...and they are draws, not a fixed pattern: one update's counts vary from update to update
    per_update = {Counter(item[0] for item in flat(u))["a"] for u in updates(iterator({"a": 50, "b": 9}, [0.5, 0.5]), 20)}
    assert len(per_update) > 1


def test_temperature_zero_is_uniform_and_one_is_proportional_to_size():
    sizes = [1000, 100, 10]
    assert mixture_shares(sizes, [None] * 3, 0.0) == pytest.approx([1 / 3] * 3)
    assert mixture_shares(sizes, [None] * 3, 1.0) == pytest.approx(np.array(sizes) / 1110)
    assert mixture_shares(sizes, [None] * 3, None) == pytest.approx(np.array(sizes) / 1110)  # default: by size
    half = mixture_shares(sizes, [None] * 3, 0.5)
    assert half[0] < 1000 / 1110 and half[2] > 10 / 1110  # in between: flattened towards the small source
    assert mixture_shares(sizes, [2.0, 1.0, 1.0], None) == pytest.approx([0.5, 0.25, 0.25])
    # the sampler follows those shares: T=0 over sources of very different sizes draws each about equally
    it = iterator({"big": 1000, "mid": 100, "small": 10}, list(mixture_shares(sizes, [None] * 3, 0.0)), batch_size=30)
    drawn = Counter(item[0] for update in updates(it, 100) for item in flat(update))
    for name in ("big", "mid", "small"):
        assert abs(drawn[name] - 1000) < 4 * (3000 * (1 / 3) * (2 / 3)) ** 0.5


def test_each_source_has_its_own_epochs_a_small_one_repeats_a_large_one_is_not_finished():
    it = iterator({"small": 5, "large": 10_000}, [0.5, 0.5], batch_size=10)
    seen = [item for update in updates(it, 20) for item in flat(update)]
    small = [item for item in seen if item[0] == "small"]
    large = [item for item in seen if item[0] == "large"]
    # each epoch of a source is a permutation: within one epoch no index repeats, and all of it is used
    for epoch in {e for _, e, _ in small[:-5]}:
        indices = [i for _, e, i in small if e == epoch]
        if epoch < max(e for _, e, _ in small):
            assert sorted(indices) == list(range(5))
    assert max(e for _, e, _ in small) > 10  # about 100 draws of a 5-sample source
    assert {e for _, e, _ in large} == {1} and len(set(large)) == len(large)
    epochs = it.source_epochs()
    assert epochs["small"] == pytest.approx(len(small) / 5) and epochs["large"] == pytest.approx(len(large) / 10_000)
    assert it.log_fields() == {"epochs/small": epochs["small"], "epochs/large": epochs["large"]}
    # the epochs of two sources are different orders (seeded by the source's name, not its place in the list)
    swapped = iterator({"large": 10_000, "small": 5}, [0.5, 0.5], batch_size=10)
    first_small = [i for u in updates(swapped, 20) for (n, e, i) in flat(u) if n == "small" and e == 1]
    assert sorted(first_small[:5]) == list(range(5))


def test_the_same_seed_gives_the_same_sequences_another_seed_others():
    a = updates(iterator({"a": 40, "b": 60}, [0.3, 0.7]), 10)
    assert a == updates(iterator({"a": 40, "b": 60}, [0.3, 0.7]), 10)
    assert a != updates(iterator({"a": 40, "b": 60}, [0.3, 0.7], seed=4), 10)


@pytest.mark.parametrize("stop", [1, 7, 13])
def test_resume_from_a_saved_position_gives_the_rest_of_an_uninterrupted_run(stop, monkeypatch):
    monkeypatch.setattr(mixture, "UPDATES_PER_LOADER", 5)  # the plan is cut into loaders: resume across a cut
    sizes, shares = {"a": 9, "b": 31, "c": 4}, [0.2, 0.5, 0.3]
    uninterrupted = updates(iterator(sizes, shares), 20)
    first = iterator(sizes, shares)
    assert updates(first, stop) == uninterrupted[:stop]
    state = first.state_dict()
    resumed = iterator(sizes, shares)
    resumed.load_state_dict(state)
    assert resumed.update == stop and resumed.epoch == first.epoch
    assert updates(resumed, 20 - stop) == uninterrupted[stop:]


def test_two_processes_read_the_global_batch_of_one_process_at_double_accumulation():
    sizes, shares = {"a": 13, "b": 50}, [0.4, 0.6]
    one = updates(iterator(sizes, shares, batch_size=4, update_freq=2), 12)
    ranks = [updates(iterator(sizes, shares, batch_size=4, rank=r, world_size=2), 12) for r in range(2)]
    for u in range(12):
        assert sorted(flat(one[u])) == sorted(flat(ranks[0][u]) + flat(ranks[1][u]))
        assert [len(b) for b in ranks[0][u] + ranks[1][u]] == [4, 4]


def test_a_position_from_other_data_is_refused_in_one_line():
    it = iterator({"a": 10, "b": 20}, [0.5, 0.5])
    updates(it, 3)
    state = it.state_dict()
    for other, message in [
        (iterator({"a": 10, "c": 20}, [0.5, 0.5]), "has sources ['a', 'b'], this run has ['a', 'c']"),
        (iterator({"a": 10, "b": 21}, [0.5, 0.5]), "source b had 20 samples in the checkpoint, now 21"),
        (iterator({"a": 10, "b": 20}, [0.5, 0.5], batch_size=4), "global_batch=8, this run has global_batch=4"),
    ]:
        with pytest.raises(UserError, match="reset_dataloader") as err:
            other.load_state_dict(state)
        assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="not a mixture's"):
        it.load_state_dict({"epoch": 1, "offset": 0, "global_batch": 8, "num_samples": 30})


def test_an_empty_source_is_named():
    with pytest.raises(UserError, match=r"\['b'\] hold no sample"):
        iterator({"a": 10, "b": 0}, [0.5, 0.5])


BOOKS = {"name": "books", "files": ["b.txt"]}


@pytest.mark.parametrize("sources, extra, message", [
    ([], {}, "dataset=mixture needs dataset.sources"),
    ([{"files": ["b.txt"]}], {}, "dataset.sources[0].name=None must be a name"),
    ([{"name": "a b", "files": ["b.txt"]}], {}, "dataset.sources[0].name='a b'"),
    ([BOOKS, BOOKS], {}, "the name(s) ['books'] are used twice"),
    ([{"name": "x"}], {}, "(x) needs exactly one of files, hf_name or path; it has none"),
    ([{"name": "x", "files": ["a"], "path": "p"}], {}, "it has ['files', 'path']"),
    ([{**BOOKS, "weight": -1}], {}, "dataset.sources[0].weight=-1 must be a finite number > 0"),
    ([{**BOOKS, "weight": "x"}], {}, "weight='x'"),
    ([{**BOOKS, "wieght": 1}], {}, "unknown key(s) ['wieght']"),
    ([{**BOOKS, "weight": 1}, {"name": "wiki", "files": ["w.txt"]}], {}, "['wiki'] have no weight while ['books'] do"),
    ([{**BOOKS, "weight": 1}], {"temperature": 0.5}, "drop it or the sources' weights"),
    ([BOOKS], {"temperature": -1.0}, "dataset.temperature=-1.0 must be in [0, 10]"),
    ([BOOKS], {"streaming": True, "valid_files": ["v.txt"]}, "needs a weight for every source"),
    ([BOOKS], {"max_tokens": 4096}, "a mixture draws dataset.batch_size sequences per micro-batch"),
    ([{"name": "s", "path": "p", "weight": 1}], {"streaming": True, "valid_files": ["v"]}, "a source with a path"),
    ([{**BOOKS, "weight": 1}], {"streaming": True}, "dataset.streaming=true needs dataset=text or mixture with"),
    ([BOOKS], {"valid_sets": [{"name": "v", "files": ["v.txt"], "max_valid_tokens": -5}]}, "max_valid_tokens=-5"),
    ([BOOKS], {"valid_sets": [{"name": "v", "files": ["v"]}], "valid_files": ["w"]}, "not both"),
])  # fmt: skip
def test_bad_sources_are_refused_in_one_line(sources, extra, message):
    with pytest.raises(UserError) as err:
        DatasetConfig(name="mixture", sources=sources, **extra)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_sources_need_the_mixture_dataset_and_best_set_must_exist():
    with pytest.raises(UserError, match="read by dataset=mixture only"):
        DatasetConfig(name="text", train_files=["a.txt"], sources=[BOOKS])
    assert best_set(["books", "wiki"], "") == "books" and best_set(["books", "wiki"], "wiki") == "wiki"
    with pytest.raises(UserError, match=r"best_valid_set='news' is not a validation set; choose one of \['books'"):
        best_set(["books", "wiki"], "news")
    with pytest.raises(UserError, match="one unnamed validation set; name them with dataset.valid_sets"):
        best_set([""], "books")
