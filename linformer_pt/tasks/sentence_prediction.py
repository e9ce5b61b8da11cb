"""Sentence prediction (fine-tuning): classify or score single texts or pairs with a head on <s>, as RoBERTa does.

Data: TSV/CSV/JSONL/parquet files or a `datasets` save_to_disk folder with configurable columns. The model starts
from a pretraining run or export (checkpoint.finetune_from): its architecture, encoder weights and tokenizer.
"""
import dataclasses
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from linformer_pt.config import TrainConfig, check, check_choice, check_text
from linformer_pt.data.batching import EpochBatchIterator
from linformer_pt.data.buckets import TokenBudgetBatchIterator, batch_iterator_for
from linformer_pt.data.cache import sha256_file
from linformer_pt.data.labelled import TRUNCATIONS, LabelledExamples, encode_labels, encode_pairs, label_names, read_labelled
from linformer_pt.data.tokenizer import load_tokenizer, special_ids
from linformer_pt.errors import UserError
from linformer_pt.models.classifier import LinformerRobertaClassifier
from linformer_pt.registry import register_task
from linformer_pt.tasks.masked_lm import budget_subset
from linformer_pt.tasks.metrics import METRICS_HIGHER_IS_BETTER, classification_metrics, regression_metrics
from linformer_pt.training.distributed import world_from_env

# Model fields that define the pretrained network: taken from the checkpoint. The rest (max_positions, dropout,
# checkpointing, frozen projections) are the fine-tuning run's own choice.
ARCHITECTURE = ("layers", "embed_dim", "ffn_embed_dim", "heads", "attention", "k", "compressed", "sharing",
                "projection", "projection_init", "fairseq_compat", "normalize_before", "layer_norm_eps")  # fmt: skip
CLASSIFICATION_METRICS = ("accuracy", "f1", "mcc", "loss")
REGRESSION_METRICS = ("pearson", "spearman", "mse", "loss")


@dataclass
class SentencePredictionConfig:
    name: str = "sentence_prediction"
    num_classes: int = 2  # classification; ignored with regression=true (one output)
    regression: bool = False
    text_column: str = "sentence"
    pair_column: str = ""  # a second text per example (e.g. NLI hypothesis); "": single texts
    label_column: str = "label"
    labels: List[str] = field(default_factory=list)  # label names by class index; []: from the training labels
    tokens_per_sample: int = 512  # longest input, <s> and </s> included; longer texts are truncated
    truncation: str = "head"  # head | tail | head_tail (keep the start and the end)
    best_metric: str = ""  # checkpoint_best.pt by this validation metric; "": accuracy (pearson for regression)
    pooler_dropout: float = 0.0

    def __post_init__(self) -> None:
        check(self.regression or self.num_classes >= 2, f"task.num_classes={self.num_classes} must be >= 2")
        for key in ("text_column", "label_column"):
            check_text(f"task.{key}", getattr(self, key))
        check_text("task.pair_column", self.pair_column, allow_empty=True)
        check(isinstance(self.labels, list), f"task.labels={self.labels!r} must be a list, e.g. [negative,positive]")
        check(
            not self.labels or (not self.regression and len(self.labels) == self.num_classes),
            f"task.labels has {len(self.labels)} names but task.num_classes={self.num_classes}"
            + (" (regression has no label names)" if self.regression else ""),
        )
        check(len(set(self.labels)) == len(self.labels), f"task.labels={self.labels} has a name twice")
        check(self.tokens_per_sample >= 3, f"task.tokens_per_sample={self.tokens_per_sample} must be >= 3")
        check_choice("task.truncation", self.truncation, list(TRUNCATIONS))
        if self.best_metric:
            check_choice("task.best_metric", self.best_metric,
                         list(REGRESSION_METRICS if self.regression else CLASSIFICATION_METRICS))  # fmt: skip
        check(0.0 <= self.pooler_dropout < 1.0, f"task.pooler_dropout={self.pooler_dropout} must be in [0, 1)")

    @property
    def metric(self) -> str:
        return self.best_metric or ("pearson" if self.regression else "accuracy")


class LabelledDataset(Dataset):
    """Token ids and a label per example."""

    def __init__(self, ids: List[np.ndarray], labels: np.ndarray) -> None:
        self.ids, self.labels = ids, labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Tuple[np.ndarray, Any]:
        return self.ids[index], self.labels[index]


def collate(samples: List[Tuple[np.ndarray, Any]], pad_id: int) -> Dict[str, Tensor]:
    """Right-pad to the longest example; `targets` holds the labels."""
    n = max(len(ids) for ids, _ in samples)
    tokens = torch.full((len(samples), n), pad_id, dtype=torch.long)
    for row, (ids, _) in enumerate(samples):
        tokens[row, : len(ids)] = torch.from_numpy(ids)
    labels = torch.from_numpy(np.stack([label for _, label in samples]))
    return {"tokens": tokens, "padding_mask": tokens.eq(pad_id), "targets": labels}


def special_ids_of(tokenizer: Any) -> Dict[str, int]:
    """<s>, </s> and <pad> by role: an imported BERT's are [CLS], [SEP] and [PAD], at its own ids."""
    ids = special_ids(tokenizer)
    return {"bos": ids["bos"], "eos": ids["eos"], "pad": ids["pad"]}


def encode_examples(
    tokenizer: Any, examples: LabelledExamples, task_cfg: SentencePredictionConfig, special_ids: Dict[str, int]
) -> Tuple[List[np.ndarray], int]:
    """Token ids of each example in RoBERTa's layout, truncated by the task's policy, and how many were cut."""
    return encode_pairs(tokenizer, examples.texts, examples.pairs, task_cfg.tokens_per_sample, task_cfg.truncation,
                        special_ids)  # fmt: skip


def split_paths(cfg: TrainConfig) -> Dict[str, List[str]]:
    """Files per split: dataset=text's train/valid files, or dataset=hf's save_to_disk folder and split names."""
    data = cfg.dataset
    if data.name == "text":
        return {"train": list(data.train_files), "valid": list(data.valid_files)}
    if data.name == "hf":
        valid = [f"{data.hf_name}:{data.hf_valid_split}"] if data.hf_valid_split else list(data.valid_files)
        return {"train": [f"{data.hf_name}:{data.hf_train_split}"], "valid": valid}
    raise UserError(f"task=sentence_prediction reads dataset=text (files) or dataset=hf (a save_to_disk folder), "
                    f"not dataset={data.name}")  # fmt: skip


@register_task("sentence_prediction", SentencePredictionConfig)
class SentencePredictionTask:
    """Owns the tokenizer, label map and labelled datasets of a fine-tuning run, and computes its loss and metrics."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg, self.task_cfg = cfg, cfg.task
        source = cfg.checkpoint.finetune_from
        self.pretrained = None
        if source:
            from linformer_pt.hub.export_folder import load_any  # the hub loads exports and checkpoints alike

            self.pretrained = load_any(source)
        given = cfg.tokenizer.path or (self.pretrained.tokenizer_path if self.pretrained is not None else None)
        if not given:
            raise UserError("task=sentence_prediction needs checkpoint.finetune_from=<pretraining run, checkpoint or "
                            "export> (or tokenizer.path=<tokenizer.json> to train from scratch)")  # fmt: skip
        self.tokenizer_path = Path(given).expanduser()
        self.tokenizer = load_tokenizer(self.tokenizer_path)
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.special_ids = special_ids_of(self.tokenizer)
        self.pad_id = self.special_ids["pad"]
        self.files = split_paths(cfg)
        examples = {split: self._read(split) for split in ("train", "valid") if self.files[split]}
        if "valid" not in examples:
            examples["train"], examples["valid"] = self._hold_out(examples["train"])
        t = self.task_cfg
        self.label_names = None if t.regression else label_names(examples["train"].labels, t.num_classes, t.labels)
        self.datasets = {split: self._encode(split, ex) for split, ex in examples.items()}

    @classmethod
    def setup(cls, cfg: TrainConfig) -> "SentencePredictionTask":
        return cls(cfg)

    # ---- data ---------------------------------------------------------------------------------------------
    def _read(self, split: str) -> LabelledExamples:
        t, data = self.task_cfg, self.cfg.dataset
        return read_labelled(self.files[split], t.text_column, t.pair_column, t.label_column,
                             key=f"dataset.{split}_files", require_labels=True,
                             encoding_errors=data.encoding_errors)  # fmt: skip

    def _hold_out(self, train: LabelledExamples) -> Tuple[LabelledExamples, LabelledExamples]:
        """No validation source: a seeded dataset.valid_fraction of the training examples."""
        order = np.random.default_rng(self.cfg.common.seed).permutation(len(train.texts))
        cut = max(1, int(len(order) * self.cfg.dataset.valid_fraction))

        def pick(indices: np.ndarray) -> LabelledExamples:
            select = lambda values: None if values is None else [values[i] for i in sorted(indices)]  # noqa: E731
            return dataclasses.replace(train, texts=select(train.texts), pairs=select(train.pairs),
                                       labels=select(train.labels))  # fmt: skip

        return pick(order[cut:]), pick(order[:cut])

    def _encode(self, split: str, examples: LabelledExamples) -> LabelledDataset:
        ids, truncated = encode_examples(self.tokenizer, examples, self.task_cfg, self.special_ids)
        labels = encode_labels(examples.labels, self.label_names, f"dataset.{split}_files")
        line = (f"data {split}: {len(ids):,} examples from {examples.source}; {truncated:,} truncated to "
                f"task.tokens_per_sample={self.task_cfg.tokens_per_sample} ({self.task_cfg.truncation})")  # fmt: skip
        budget = self.cfg.dataset.max_valid_tokens
        if split == "valid" and budget:
            # Whole examples, a fixed seeded choice: every validation (and every process count) scores the same ones.
            kept = budget_subset(np.array([len(i) for i in ids]), budget, self.cfg.common.seed)
            if len(kept) < len(ids):
                ids, labels = [ids[i] for i in kept], labels[kept]
                line += (f"; validating on {len(ids):,} of them ({sum(map(len, ids)):,} tokens, "
                         f"dataset.max_valid_tokens={budget}; 0: all)")  # fmt: skip
        if world_from_env().is_main:  # what the split holds and what was cut, once per run
            print(line, flush=True)
        return LabelledDataset(ids, labels)

    def batch_iterator(self, split: str, rank: int = 0, world_size: int = 1) -> EpochBatchIterator:
        """batch_size examples per batch, or token-budget batches of examples of similar length (dataset.max_tokens)."""
        data, dataset = self.cfg.dataset, self.datasets[split]
        iterator = batch_iterator_for(
            dataset, lambda: [len(ids) for ids in dataset.ids], data.batch_size, data.max_tokens,
            partial(collate, pad_id=self.pad_id), self.cfg.common.seed, shuffle=split == "train",
            num_workers=data.num_workers, rank=rank, world_size=world_size,
            update_freq=self.cfg.optimization.update_freq if split == "train" else 1,
        )  # fmt: skip
        if rank == 0 and isinstance(iterator, TokenBudgetBatchIterator):
            print(f"data {split}: {iterator.summary()}", flush=True)
        return iterator

    # ---- model --------------------------------------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        return 1 if self.task_cfg.regression else self.task_cfg.num_classes

    def model_config(self, model_cfg: Any) -> Any:
        """The pretrained model's architecture with this run's max_positions, dropout and memory settings."""
        if self.pretrained is None:
            return model_cfg
        pretrained = {key: getattr(self.pretrained.cfg, key) for key in ARCHITECTURE}
        return dataclasses.replace(model_cfg, **pretrained)

    def check_model(self, model_cfg: Any) -> None:
        if self.task_cfg.tokens_per_sample > model_cfg.max_positions:
            raise UserError(f"task.tokens_per_sample={self.task_cfg.tokens_per_sample} exceeds "
                            f"model.max_positions={model_cfg.max_positions}")  # fmt: skip

    def build_model(self, model_cfg: Any) -> LinformerRobertaClassifier:
        return LinformerRobertaClassifier(model_cfg, self.vocab_size, self.pad_id, self.num_outputs,
                                          self.task_cfg.pooler_dropout)  # fmt: skip

    def init_model(self, model: LinformerRobertaClassifier) -> str:
        """Load the pretrained encoder (a fresh run, not a resumed one); returns a line saying what was loaded."""
        if self.pretrained is None:
            return "no checkpoint.finetune_from: the encoder starts from random weights"
        dropped = model.load_encoder(self.pretrained.state_dict(), self.pretrained.cfg.projection)
        old, new = self.pretrained.cfg.max_positions, model.cfg.max_positions
        resized = f"; positions and projections resized from {old} to {new}" if old != new else ""
        return (f"fine-tuning from {self.cfg.checkpoint.finetune_from}: encoder loaded, LM head dropped "
                f"({len(dropped)} tensors){resized}")  # fmt: skip

    # ---- loss and metrics ---------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Any]]:
        """Summed cross-entropy (or squared error) over the batch; `masked` counts examples, for normalising."""
        targets = batch["targets"]
        # [: len(targets)]: the trainer's filler batch (FSDP, a rank whose validation share ran out) has one row and
        # no label; it must run the forward (FSDP gathers weights in it) and count nothing.
        logits = model(batch["tokens"], batch["padding_mask"]).float()[: len(targets)]
        if self.task_cfg.regression:
            loss = F.mse_loss(logits.squeeze(-1), targets.float(), reduction="sum")
        else:
            loss = F.cross_entropy(logits, targets, reduction="sum")
        # The loss sum stays a device tensor and training leaves the outputs out: a host read per micro-batch would
        # make the host wait for the device (the trainer reads its sums once per log record). Validation scores them.
        stats = {"loss_sum": loss.detach(), "masked": int(targets.numel())}
        if not model.training:
            stats["outputs"] = (logits.detach().cpu().numpy(), targets.cpu().numpy())
        return loss, stats

    def valid_metrics(self, outputs: List[Tuple[np.ndarray, np.ndarray]]) -> Dict[str, float]:
        if not outputs:
            return {}
        logits = np.concatenate([logit for logit, _ in outputs])
        gold = np.concatenate([label for _, label in outputs])
        if self.task_cfg.regression:
            return regression_metrics(logits[:, 0], gold)
        return classification_metrics(logits, gold)

    def best_score(self, result: Dict[str, float]) -> float:
        """task.best_metric as a score where lower is better (checkpoint_best.pt keeps the lowest)."""
        metric = self.task_cfg.metric
        value = result[metric]
        return -value if METRICS_HIGHER_IS_BETTER[metric] else value

    def state_dict(self) -> Dict[str, Any]:
        """Saved in checkpoints: what linformer-predict needs to read labels and outputs back."""
        return {"labels": self.label_names, "regression": self.task_cfg.regression, "num_outputs": self.num_outputs}

    def provenance(self) -> Dict[str, Any]:
        files = {split: [(p, sha256_file(p)) if Path(p).is_file() else (p, "") for p in paths]
                 for split, paths in self.files.items()}  # fmt: skip
        return {"tokenizer_sha256": sha256_file(self.tokenizer_path), "data": files}
