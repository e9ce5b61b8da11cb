"""Masked-LM pretraining: corpus -> tokenizer -> token arrays -> blocks -> masked batches, and the loss.

The loss is cross-entropy over masked positions only; the model computes logits only there.
"""
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linformer_pt.config import TrainConfig, check, check_choice
from linformer_pt.data.batching import EpochBatchIterator
from linformer_pt.data.binarize import TokenizedCorpus, cached_tokenized
from linformer_pt.data.blocks import BREAK_MODES
from linformer_pt.data.cache import sha256_file
from linformer_pt.data.default_corpus import build_default_corpus, split_documents
from linformer_pt.data.masking import MaskedLMDataset, MaskingConfig, collate
from linformer_pt.data.text import check_text_files, iter_documents, write_documents
from linformer_pt.data.tokenizer import BOS, EOS, MASK, PAD, cached_tokenizer, load_tokenizer
from linformer_pt.data.cache import cached_dir
from linformer_pt.errors import UserError
from linformer_pt.registry import register_task


@dataclass
class MaskedLMConfig:
    name: str = "masked_lm"
    tokens_per_sample: int = 128  # including <s>
    sample_break_mode: str = "complete"  # none | complete
    mask_prob: float = 0.15
    leave_unmasked_prob: float = 0.1
    random_token_prob: float = 0.1

    def __post_init__(self) -> None:
        check(self.tokens_per_sample >= 2, f"task.tokens_per_sample={self.tokens_per_sample} must be >= 2")
        check_choice("task.sample_break_mode", self.sample_break_mode, list(BREAK_MODES))
        check(0.0 < self.mask_prob < 1.0, f"task.mask_prob={self.mask_prob} must be in (0, 1)")
        check(
            self.leave_unmasked_prob >= 0 and self.random_token_prob >= 0
            and self.leave_unmasked_prob + self.random_token_prob <= 1.0,
            "task.leave_unmasked_prob and task.random_token_prob must be >= 0 and sum to at most 1",
        )  # fmt: skip


def resolve_corpus(cfg: TrainConfig) -> Dict[str, List[Path]]:
    """Train/valid text files: the embedded corpus, or the user's files with an optional held-out split."""
    data = cfg.dataset
    if data.name == "default":
        files = build_default_corpus(data.cache_dir, data.valid_fraction)
        return {"train": [files["train"]], "valid": [files["valid"]]}
    train = check_text_files(data.train_files, "dataset.train_files")
    if data.valid_files:
        return {"train": train, "valid": check_text_files(data.valid_files, "dataset.valid_files")}
    return held_out_split(data.cache_dir, train, data.valid_fraction)


def held_out_split(cache_dir: str, files: List[Path], fraction: float) -> Dict[str, List[Path]]:
    """Split documents of `files` into train/valid by a hash of their text (stable across runs)."""
    spec = {"files": [sha256_file(f) for f in files], "valid_fraction": fraction}

    def build(folder: Path) -> Dict:
        train, valid = split_documents(list(iter_documents(files)), fraction)
        if not train or not valid:
            raise UserError(
                f"dataset.valid_fraction={fraction} leaves {len(train)} train and {len(valid)} valid documents; "
                "give dataset.valid_files or more documents (separated by blank lines)"
            )
        write_documents(folder / "train.txt", train)
        write_documents(folder / "valid.txt", valid)
        return {"train_documents": len(train), "valid_documents": len(valid)}

    folder = cached_dir(cache_dir, "held_out", spec, build)
    return {"train": [folder / "train.txt"], "valid": [folder / "valid.txt"]}


@register_task("masked_lm", MaskedLMConfig)
class MaskedLMTask:
    """Owns the tokenizer and datasets of a masked-LM run and computes its loss."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg, self.task_cfg = cfg, cfg.task
        files = resolve_corpus(cfg)
        tok_cfg = cfg.tokenizer
        self.tokenizer_path = (
            Path(tok_cfg.path).expanduser()
            if tok_cfg.path
            else cached_tokenizer(cfg.dataset.cache_dir, files["train"], tok_cfg.vocab_size, tok_cfg.min_frequency)
        )
        self.tokenizer = load_tokenizer(self.tokenizer_path)
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.special_ids = {
            name: self.tokenizer.token_to_id(tok) for name, tok in [("bos", BOS), ("pad", PAD), ("eos", EOS), ("mask", MASK)]
        }
        self.pad_id = self.special_ids["pad"]
        self.corpora: Dict[str, TokenizedCorpus] = {
            split: cached_tokenized(cfg.dataset.cache_dir, paths, self.tokenizer_path, self.tokenizer, self.special_ids["eos"])
            for split, paths in files.items()
        }
        self.files = files

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

    def dataset(self, split: str) -> MaskedLMDataset:
        t = self.task_cfg
        masking = MaskingConfig(t.mask_prob, t.leave_unmasked_prob, t.random_token_prob)
        return MaskedLMDataset(
            self.corpora[split], t.tokens_per_sample, t.sample_break_mode, masking, self.special_ids,
            self.vocab_size, self.cfg.common.seed,
        )  # fmt: skip

    def batch_iterator(self, split: str, rank: int = 0, world_size: int = 1) -> EpochBatchIterator:
        """Shuffled batches for train, a fixed order for validation; this process's share under DDP."""
        return EpochBatchIterator(
            self.dataset(split), self.cfg.dataset.batch_size, partial(collate, pad_id=self.pad_id),
            self.cfg.common.seed, shuffle=split == "train", num_workers=self.cfg.dataset.num_workers,
            rank=rank, world_size=world_size,
        )  # fmt: skip

    def loss(self, model: nn.Module, batch: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, float]]:
        """Summed cross-entropy over masked tokens, and counts for logging/normalising."""
        logits = model(batch["tokens"], batch["padding_mask"], batch["masked_positions"])
        loss = F.cross_entropy(logits.float(), batch["targets"], reduction="sum")
        stats = {
            "loss_sum": loss.item(),
            "masked": int(batch["targets"].numel()),
            "tokens": int((~batch["padding_mask"]).sum().item()),
        }
        return loss, stats

    def provenance(self) -> Dict[str, Any]:
        """Hashes that identify the data and tokenizer a model was trained on."""
        return {
            "tokenizer_sha256": sha256_file(self.tokenizer_path),
            "data_sha256": {split: [sha256_file(p) for p in paths] for split, paths in self.files.items()},
        }
