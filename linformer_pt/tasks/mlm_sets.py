"""A masked-LM task's named data: the weighted training sources of a mixture and the named validation sets.

Each validation set is read exactly as a run with it alone would read it (the same samples, subset and masks), so
its figure is comparable with a single-set run's. The unigram baseline of each set uses the token counts of the
training data as the mixture weighs it: each source's counts scaled to its share of the sampled sequences.
"""
from typing import Any, Dict, List, Optional

import numpy as np

from linformer_pt.data.masking import MaskedLMDataset
from linformer_pt.data.mixture import MixtureBatchIterator
from linformer_pt.data.mixture_spec import SOURCE_KEYS, best_set, describe_shares, mixture_shares, parse_specs, set_budget
from linformer_pt.data.mixture_stream import StreamingMixtureIterator
from linformer_pt.data.stream_reader import ArrowSplit
from linformer_pt.data.streaming import StreamingMaskedLM
from linformer_pt.data.named_corpora import NamedCorpora
from linformer_pt.data.unigram import token_counts, unigram_baseline
from linformer_pt.errors import UserError


class MLMSets:
    """The mixture's sources and the named validation sets of `task` (a MaskedLMTask); `named` None: neither."""

    def __init__(self, task: Any, named: Optional[NamedCorpora]) -> None:
        self.task, self.named = task, named
        self._datasets: Dict[int, MaskedLMDataset] = {}
        if named is not None and not named.valid:
            raise UserError("this mixture has no validation set: give dataset.valid_sets or dataset.valid_files "
                            "(preprocessed sources hold none out)")  # fmt: skip

    @property
    def mixture(self) -> bool:
        return self.task.cfg.dataset.name == "mixture"

    def _dataset(self, corpus: Any) -> MaskedLMDataset:
        """The corpus's samples, built once: the iterators and the unigram baseline read the same ones."""
        if id(corpus) not in self._datasets:
            self._datasets[id(corpus)] = self._build(corpus)
        return self._datasets[id(corpus)]

    def _build(self, corpus: Any) -> MaskedLMDataset:
        t, task = self.task.task_cfg, self.task
        return MaskedLMDataset(corpus, t.tokens_per_sample, t.sample_break_mode, t.masking(), task.special_ids,
                               task.is_special, task.cfg.common.seed, task.word_begins)  # fmt: skip

    def shares(self, datasets: List[MaskedLMDataset]) -> np.ndarray:
        """Each source's probability per sampled sequence (weights, or sizes in samples to the temperature)."""
        data = self.task.cfg.dataset
        weights = [spec.get("weight") for spec in data.sources]
        return mixture_shares([len(d) for d in datasets], weights, data.temperature)

    def train_iterator(self, rank: int, world_size: int, update_freq: int) -> MixtureBatchIterator:
        from functools import partial

        from linformer_pt.data.masking import collate

        data = self.task.cfg.dataset
        if data.streaming:
            return self.streamed_iterator(rank, world_size, update_freq)
        assert self.named is not None
        names = list(self.named.train)
        datasets = [self._dataset(self.named.train[name]) for name in names]
        shares = self.shares(datasets)
        iterator = MixtureBatchIterator(datasets, names, shares, data.batch_size, partial(collate, pad_id=self.task.pad_id),
                                        self.task.cfg.common.seed, data.num_workers, rank, world_size, update_freq)  # fmt: skip
        if rank == 0:
            print(self.summary(names, datasets, shares, iterator), flush=True)
        return iterator

    def streamed_iterator(self, rank: int, world_size: int, update_freq: int) -> StreamingMixtureIterator:
        """Each source streamed from its files for this rank (weights are required: stream sizes are unknown)."""
        from functools import partial

        from linformer_pt.data.masking import collate

        task, t, data = self.task, self.task.task_cfg, self.task.cfg.dataset
        specs = parse_specs(data.sources, "dataset.sources", SOURCE_KEYS)
        datasets = [StreamingMaskedLM(
            spec.files or [ArrowSplit(spec.hf_name, spec.hf_split or "train", data.text_field)], data.text_field,
            task.tokenizer, task.special_ids, task.is_special, t.tokens_per_sample, t.masking(), task.cfg.common.seed,
            rank, world_size, task.word_begins, data.shuffle_buffer, data.encoding_errors,
            key=f"dataset.sources[{spec.name}]", file_glob=data.file_glob, break_mode=t.sample_break_mode,
        ) for spec in specs]  # fmt: skip
        shares = mixture_shares([0] * len(specs), [s.weight for s in specs], None)
        if rank == 0:
            lines = [f"data train: a streamed mixture of {len(specs)} sources; {data.batch_size * world_size * update_freq}"
                     " sequences per update"]  # fmt: skip
            lines += [f"  source {s.name}: {len(d.paths)} file(s), share {p:.1%} of the sequences drawn"
                      for s, d, p in zip(specs, datasets, shares)]  # fmt: skip
            print("\n".join(lines), flush=True)
        return StreamingMixtureIterator(datasets, [s.name for s in specs], shares, data.batch_size,
                                        partial(collate, pad_id=task.pad_id), task.cfg.common.seed, rank, world_size,
                                        update_freq)  # fmt: skip

    def summary(self, names: List[str], datasets: List[MaskedLMDataset], shares: np.ndarray, iterator: MixtureBatchIterator) -> str:
        """The start-up lines of a mixture: each source's size, share of sequences and of tokens, epochs in the run."""
        max_update = self.task.cfg.optimization.max_update
        drawn = max_update * iterator.global_batch
        mean_tokens = np.array([(d.ends - d.starts + 1).mean() for d in datasets])
        token_shares = shares * mean_tokens / (shares * mean_tokens).sum()
        lines = [f"data train: a mixture of {len(names)} sources; {iterator.global_batch} sequences per update, "
                 f"max_update={max_update} draws {drawn:,}"]  # fmt: skip
        for line, corpus, token_share in zip(describe_shares(names, [len(d) for d in datasets], shares, drawn),
                                             (d.corpus for d in datasets), token_shares):  # fmt: skip
            lines.append(f"{line}; {corpus.num_tokens:,} tokens, {token_share:.1%} of the tokens trained on")
        return "\n".join(lines)

    def budget(self, name: str) -> int:
        return set_budget(self.task.cfg.dataset, name)

    def valid_samples(self, name: str) -> Any:
        from linformer_pt.tasks.masked_lm import valid_subset  # here: masked_lm imports this module

        assert self.named is not None
        return valid_subset(self._dataset(self.named.valid[name]), self.budget(name), self.task.cfg.common.seed)

    def valid_iterators(self, rank: int, world_size: int) -> Dict[str, Any]:
        assert self.named is not None
        iterators = {}
        for name in self.named.valid:
            samples = self.valid_samples(name)
            iterators[name] = self.task.epoch_iterator(samples, False, rank, world_size)
            if rank == 0:
                tokens = getattr(samples, "num_tokens", None)  # a ValidSubset's; None: the whole set
                held = f"{len(samples):,} samples ({tokens:,} tokens, " if tokens else f"all {len(samples):,} samples ("
                print(f"data valid {name}: {self.named.valid[name].num_tokens:,} tokens; validating on {held}"
                      f"max_valid_tokens={self.budget(name)}; 0: all)", flush=True)  # fmt: skip
        return iterators

    def _train_counts(self) -> np.ndarray:
        assert self.named is not None
        vocab = self.task.vocab_size
        if not self.mixture:
            return token_counts(self.task.corpora["train"], vocab).astype(np.float64)
        names = list(self.named.train)
        datasets = [self._dataset(self.named.train[name]) for name in names]
        own = [token_counts(self.named.train[name], vocab).astype(np.float64) for name in names]
        total = sum(c.sum() for c in own)  # the mixture's distribution on the scale of the tokens it holds
        return sum(share * c / max(c.sum(), 1.0) * total for share, c in zip(self.shares(datasets), own))

    def unigram_baseline(self) -> Dict[str, Any]:
        """Per set: the unigram ppl of exactly its scored masked tokens; the first set's figures at the top."""
        assert self.named is not None
        counts = np.rint(self._train_counts()).astype(np.int64)
        per_set = {}
        for name in self.named.valid:
            samples = self.valid_samples(name)
            samples.set_epoch(1)  # validation always reads epoch 1's masks
            targets = (item["targets"][item["is_masked"]] for item in (samples[i] for i in range(len(samples))))
            per_set[name] = unigram_baseline(counts, self.task.is_special, targets)
        first = per_set[self.best_set()]
        return {**first, "sets": per_set}

    def best_set(self) -> str:
        assert self.named is not None
        return best_set(list(self.named.valid), self.task.cfg.checkpoint.best_valid_set)
