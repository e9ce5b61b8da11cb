"""Masked-LM pretraining: corpus -> tokenizer -> token shards -> blocks -> masked batches, and the loss.

The loss is cross-entropy over masked positions only; the model computes logits only there.
"""
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from linformer_pt.config import TrainConfig, check, check_choice
from linformer_pt.data.batching import EpochBatchIterator
from linformer_pt.data.binarize import TokenizedCorpus
from linformer_pt.data.blocks import BREAK_MODES
from linformer_pt.data.cache import sha256_file
from linformer_pt.data.corpus import cached_corpus, preprocessed_corpora, resolve_sources
from linformer_pt.data.masking import MaskedLMDataset, MaskingConfig, collate
from linformer_pt.data.buckets import batch_iterator_for, budget_summary, sample_lengths
from linformer_pt.data.named_corpora import named_corpora
from linformer_pt.data.stream_reader import ArrowSplit
from linformer_pt.data.streaming import StreamingBatchIterator, StreamingMaskedLM
from linformer_pt.data.tokenizer import cached_tokenizer, load_tokenizer, special_ids, special_mask, word_begins
from linformer_pt.data.unigram import token_counts, unigram_baseline
from linformer_pt.errors import UserError
from linformer_pt.modules.masked_grid import MaskedGrid
from linformer_pt.registry import register_task
from linformer_pt.tasks.mlm_sets import MLMSets
from linformer_pt.training.distributed import world_from_env

VALID_SUBSET_STREAM = 7  # seeds the validation subset apart from the training order (seed, epoch)


@dataclass
class MaskedLMConfig:
    name: str = "masked_lm"
    tokens_per_sample: int = 128  # including <s>
    sample_break_mode: str = "complete"  # none | complete | complete_doc | eos
    mask_prob: float = 0.15
    leave_unmasked_prob: float = 0.1
    random_token_prob: float = 0.1
    mask_whole_words: bool = False  # mask all tokens of a word together
    mask_multiple_length: int = 1  # mask spans of this many tokens (or words)

    def __post_init__(self) -> None:
        check(self.tokens_per_sample >= 2, f"task.tokens_per_sample={self.tokens_per_sample} must be >= 2")
        check_choice("task.sample_break_mode", self.sample_break_mode, list(BREAK_MODES))
        check(0.0 < self.mask_prob < 1.0, f"task.mask_prob={self.mask_prob} must be in (0, 1)")
        check(
            self.leave_unmasked_prob >= 0 and self.random_token_prob >= 0
            and self.leave_unmasked_prob + self.random_token_prob <= 1.0,
            "task.leave_unmasked_prob and task.random_token_prob must be >= 0 and sum to at most 1",
        )  # fmt: skip
        check(self.mask_multiple_length >= 1, f"task.mask_multiple_length={self.mask_multiple_length} must be >= 1")

    def masking(self) -> MaskingConfig:
        """The masking these settings describe (training, validation, streamed or not, and linformer-eval)."""
        return MaskingConfig(self.mask_prob, self.leave_unmasked_prob, self.random_token_prob, self.mask_multiple_length)


def budget_subset(lengths: np.ndarray, max_tokens: int, seed: int) -> np.ndarray:
    """Sorted indices of a fixed subset of items (samples, examples) whose lengths sum to just past max_tokens.

    Items are taken in the order of a permutation seeded by `seed` alone, so the subset is the same in every run
    and for any number of processes; all of them when they hold fewer tokens.
    """
    order = np.random.default_rng([seed, VALID_SUBSET_STREAM]).permutation(len(lengths))
    tokens = np.cumsum(np.asarray(lengths)[order])
    return np.sort(order[: int(np.searchsorted(tokens, max_tokens)) + 1])


class ValidSubset(Dataset):
    """A fixed subset of validation samples holding about max_tokens tokens, the same in every run (budget_subset);
    the batch iterator shards it afterwards, so it never depends on the number of processes."""

    def __init__(self, dataset: MaskedLMDataset, max_tokens: int, seed: int) -> None:
        self.dataset = dataset
        self.indices = budget_subset(dataset.ends - dataset.starts + 1, max_tokens, seed)  # + 1: <s>
        self.num_tokens = int((dataset.ends[self.indices] - dataset.starts[self.indices] + 1).sum())

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
        return self.dataset[int(self.indices[index])]  # masks seeded by the full set's index: as without a budget


def valid_subset(full: MaskedLMDataset, max_tokens: int, seed: int) -> Union[MaskedLMDataset, ValidSubset]:
    """What validation reads: the whole set (max_tokens 0), or its fixed subset of about max_tokens tokens."""
    return ValidSubset(full, max_tokens, seed) if max_tokens else full


def streamed_valid(
    cfg: TrainConfig, tokenizer: Any, special_ids: Dict[str, int], is_special: np.ndarray,
    word_begins: Optional[np.ndarray], rank: int = 0, world_size: int = 1,
) -> StreamingMaskedLM:  # fmt: skip
    """The streamed validation set: the head of the valid files up to dataset.max_valid_tokens (0: all of them),
    read whole by every process as one stream (rank 0 of 1, so its samples and masks do not depend on the process
    count), of which process `rank` keeps every world_size-th sample. linformer-eval reads it the same way."""
    t, data = cfg.task, cfg.dataset
    files: List[Any] = list(data.valid_files)
    if data.name == "hf" and data.hf_valid_split:  # else valid_files (the config check asks for one of them)
        files = [ArrowSplit(data.hf_name, data.hf_valid_split, data.text_field)]
    masking = t.masking()
    return StreamingMaskedLM(
        files, data.text_field, tokenizer, special_ids, is_special, t.tokens_per_sample, masking, cfg.common.seed,
        0, 1, word_begins, 0, data.encoding_errors, key="dataset.valid_files", file_glob=data.file_glob,
        break_mode=t.sample_break_mode, max_tokens=data.max_valid_tokens, share=(rank, world_size),
    )  # fmt: skip


def data_summary(split: str, full: MaskedLMDataset, used: Dataset, iterator: EpochBatchIterator, cfg: TrainConfig) -> str:
    """One line, printed once at start-up: what this split holds and, for train, how long the run is in epochs."""
    corpus = full.corpus
    line = (f"data {split}: {corpus.num_documents:,} documents, {corpus.num_tokens:,} tokens, "
            f"{len(full):,} samples per epoch")  # fmt: skip
    if split == "train":
        updates = iterator.updates_per_epoch()
        epochs = cfg.optimization.max_update / updates if updates else float("inf")
        return line + f", {updates:,} updates per epoch; max_update={cfg.optimization.max_update} is {epochs:.2f} epochs"
    if isinstance(used, ValidSubset):
        return line + (f"; validating on {len(used):,} of them ({used.num_tokens:,} tokens, "
                       f"dataset.max_valid_tokens={cfg.dataset.max_valid_tokens}; 0: all)")  # fmt: skip
    return line


@register_task("masked_lm", MaskedLMConfig)
class MaskedLMTask:
    """Owns the tokenizer and datasets of a masked-LM run and computes its loss."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg, self.task_cfg = cfg, cfg.task
        data, tok_cfg = cfg.dataset, cfg.tokenizer
        given = Path(tok_cfg.path).expanduser() if tok_cfg.path else None
        named = None  # a mixture's sources and named validation sets (data/named_corpora.py)
        if data.name == "shards":
            pre = preprocessed_corpora(data.path, given)
            self.tokenizer_path, corpora = pre["tokenizer_path"], pre["corpora"]
            self.data_provenance: Any = pre["manifest"]["sources"]
        elif data.name == "mixture":  # several named sources, tokenized apart (data/named_corpora.py)
            named = named_corpora(data, tok_cfg, given, with_train=not data.streaming)
            self.tokenizer_path, corpora, self.data_provenance = named.tokenizer_path, {}, named.provenance
        else:
            sources = resolve_sources(data)
            self.tokenizer_path = given or cached_tokenizer(
                data.cache_dir, sources["train"], tok_cfg.vocab_size, tok_cfg.min_frequency, tok_cfg.max_train_bytes
            )
            self.data_provenance = {split: source.spec for split, source in sources.items()}
        self.tokenizer = load_tokenizer(self.tokenizer_path)
        self.vocab_size = self.tokenizer.get_vocab_size()
        # By role, wherever the tokenizer's convention puts them (RoBERTa's <s>..., an imported BERT's [CLS]...).
        self.special_ids = {name: id for name, id in special_ids(self.tokenizer).items() if name != "unk"}
        self.is_special = special_mask(self.tokenizer)  # a set of ids: a user tokenizer may put them anywhere
        if self.is_special.all():
            raise UserError(
                f"tokenizer {self.tokenizer_path}: all {self.vocab_size} ids are special tokens, so masked-LM "
                "has no token to mask; use a tokenizer with an ordinary vocabulary"
            )
        self.pad_id = self.special_ids["pad"]
        if data.streaming:
            check(
                not (cfg.optimization.max_epoch and world_from_env().enabled),
                "dataset.streaming=true with several processes cannot stop by optimization.max_epoch "
                "(ranks may see different numbers of batches); use optimization.max_update",
            )
            corpora = {}
        elif data.name not in ("shards", "mixture"):
            corpora = {
                split: cached_corpus(data.cache_dir, source, self.tokenizer_path, self.tokenizer, self.special_ids["eos"])
                for split, source in sources.items()
            }
        self.corpora: Dict[str, TokenizedCorpus] = corpora
        if data.valid_sets and data.name != "mixture":  # named validation sets beside a single training corpus
            named = named_corpora(data, tok_cfg, self.tokenizer_path)
            self.data_provenance = {"train": self.data_provenance, **named.provenance}
        self.sets = MLMSets(self, named)
        self.word_begins = word_begins(self.tokenizer) if self.task_cfg.mask_whole_words else None

    @classmethod
    def setup(cls, cfg: TrainConfig) -> "MaskedLMTask":
        return cls(cfg)

    def check_model(self, model_cfg: Any) -> None:
        """Fail early when samples would not fit the model."""
        max_positions = getattr(model_cfg, "max_positions", None)
        if max_positions is not None and self.task_cfg.tokens_per_sample > max_positions:
            raise UserError(
                f"task.tokens_per_sample={self.task_cfg.tokens_per_sample} exceeds model.max_positions={max_positions}"
            )

    def dataset(self, split: str, rank: int = 0, world_size: int = 1) -> Union[MaskedLMDataset, StreamingMaskedLM]:
        t, data = self.task_cfg, self.cfg.dataset
        masking = t.masking()
        if data.streaming and split == "valid":
            return streamed_valid(self.cfg, self.tokenizer, self.special_ids, self.is_special, self.word_begins,
                                  rank, world_size)  # fmt: skip
        if data.streaming:
            files: List[Any] = data.train_files
            if data.name == "hf" and data.hf_train_split:
                files = [ArrowSplit(data.hf_name, data.hf_train_split, data.text_field)]
            return StreamingMaskedLM(
                files, data.text_field, self.tokenizer, self.special_ids, self.is_special, t.tokens_per_sample,
                masking, self.cfg.common.seed, rank, world_size, self.word_begins, data.shuffle_buffer,
                data.encoding_errors, key="dataset.train_files", file_glob=data.file_glob,
                break_mode=t.sample_break_mode,
            )  # fmt: skip
        return MaskedLMDataset(
            self.corpora[split], t.tokens_per_sample, t.sample_break_mode, masking, self.special_ids,
            self.is_special, self.cfg.common.seed, self.word_begins,
        )  # fmt: skip

    def batch_iterator(
        self, split: str, rank: int = 0, world_size: int = 1
    ) -> Union[EpochBatchIterator, StreamingBatchIterator]:
        """Shuffled updates of update_freq micro-batches for train, a fixed order for validation; this process's share."""
        data = self.cfg.dataset
        update_freq = self.cfg.optimization.update_freq if split == "train" else 1
        if split == "train" and self.sets.mixture:  # weighted sources, cached or streamed (tasks/mlm_sets.py)
            return self.sets.train_iterator(rank, world_size, update_freq)
        if data.streaming:
            dataset = self.dataset(split, rank, world_size)
            if split == "train":
                return StreamingBatchIterator(dataset, data.batch_size, data.num_workers, update_freq)
            if rank == 0:
                budget = data.max_valid_tokens
                head = f"the first ~{budget:,} tokens of the stream" if budget else "the whole stream"
                print(f"data valid: streamed from {len(dataset.paths)} file(s); validating on {head} "
                      f"(dataset.max_valid_tokens={budget}; 0: all)", flush=True)  # fmt: skip
            # No DataLoader workers: they would each be a stream of their own, and the set would depend on them.
            return StreamingBatchIterator(dataset, data.batch_size, 0)
        full = self.dataset(split)
        dataset = self.valid_samples(full) if split == "valid" else full
        iterator = self.epoch_iterator(dataset, split == "train", rank, world_size, update_freq)
        if rank == 0:
            print(data_summary(split, full, dataset, iterator, self.cfg) + budget_summary(iterator), flush=True)
        return iterator

    def epoch_iterator(
        self, dataset: Dataset, shuffle: bool, rank: int = 0, world_size: int = 1, update_freq: int = 1
    ) -> EpochBatchIterator:
        """Epochs of fixed-size or token-budget batches (dataset.max_tokens) of a map-style dataset."""
        data = self.cfg.dataset
        return batch_iterator_for(
            dataset, lambda: sample_lengths(dataset), data.batch_size, data.max_tokens,
            partial(collate, pad_id=self.pad_id), self.cfg.common.seed, shuffle=shuffle,
            num_workers=data.num_workers, rank=rank, world_size=world_size, update_freq=update_freq,
        )  # fmt: skip

    def valid_iterators(self, rank: int = 0, world_size: int = 1) -> Dict[str, Any]:
        """The validation sets by name: dataset.valid_sets (or a mixture's held-out parts), else one unnamed set."""
        if self.sets.named is not None:
            return self.sets.valid_iterators(rank, world_size)
        return {"": self.batch_iterator("valid", rank, world_size)}

    def valid_samples(self, full: MaskedLMDataset) -> Union[MaskedLMDataset, ValidSubset]:
        """What validation reads: the whole set, or its fixed subset under dataset.max_valid_tokens."""
        return valid_subset(full, self.cfg.dataset.max_valid_tokens, self.cfg.common.seed)

    def unigram_baseline(self) -> Optional[Dict[str, Any]]:
        """The unigram ppl of exactly the masked tokens validation scores (None when streaming: no counts)."""
        if self.cfg.dataset.streaming:
            return None
        if self.sets.named is not None:
            return self.sets.unigram_baseline()
        counts = token_counts(self.corpora["train"], self.vocab_size)
        samples = self.valid_samples(self.dataset("valid"))
        samples.set_epoch(1)  # validation always reads epoch 1's masks (EpochBatchIterator.restart)
        targets = (item["targets"][item["is_masked"]] for item in (samples[i] for i in range(len(samples))))
        return unigram_baseline(counts, self.is_special, targets)

    def loss(self, model: nn.Module, batch: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Any]]:
        """Summed cross-entropy over masked tokens, and its value (a detached tensor) and token count for logging."""
        loss = F.cross_entropy(masked_logits(model, batch).float(), batch["targets"], reduction="sum")
        # The loss sum stays a device tensor: reading it here would make the host wait for the forward pass before
        # it can queue the backward (the trainer sums it on the device and reads it once per log record).
        return loss, {"loss_sum": loss.detach(), "masked": int(batch["targets"].numel())}

    def provenance(self) -> Dict[str, Any]:
        """Hashes that identify the data and tokenizer a model was trained on."""
        return {"tokenizer_sha256": sha256_file(self.tokenizer_path), "data": self.data_provenance}


def masked_logits(model: nn.Module, batch: Dict[str, Tensor]) -> Tensor:
    """Vocabulary logits (M, V) at a batch's masked positions, in the order of its targets.

    With collate's grid the last layer computes only the masked rows (modules/masked_grid.py); batches without it
    (the trainer's empty batch, older callers) gather them from the full output.
    """
    if "masked_grid_rows" in batch:
        grid = MaskedGrid(batch["masked_grid_rows"], batch["masked_grid_real"])
        return model(batch["tokens"], batch["padding_mask"], grid=grid)
    positions = batch["masked_index"] if "masked_index" in batch else batch["masked_positions"]
    return model(batch["tokens"], batch["padding_mask"], positions)
