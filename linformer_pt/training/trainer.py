"""The training loop: accumulation, clipping, LR schedule, validation, checkpoints, logging.

Every update is a pure function of (seed, update, data position): dropout is reseeded per update and batches
are rebuilt from (seed, epoch, index), which is what makes a resumed run match an uninterrupted one.
"""
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn
from tqdm import tqdm

from linformer_pt.config import TrainConfig
from linformer_pt.training.checkpoint import CHECKPOINT_LAST, provenance, rng_states, save_checkpoint
from linformer_pt.training.logging import MetricsLogger
from linformer_pt.training.optim import build_lr_scheduler, build_optimizer


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Window:
    """Sums of training statistics since the last log record."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.loss_sum = self.masked = self.tokens = self.gnorm_sum = 0.0
        self.updates = 0

    def add(self, stats: Dict[str, float]) -> None:
        self.loss_sum += stats["loss_sum"]
        self.masked += stats["masked"]
        self.tokens += stats["tokens"]
        self.gnorm_sum += stats["gnorm"]
        self.updates += 1

    def summary(self) -> Dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        loss = self.loss_sum / max(self.masked, 1)
        return {
            "loss": loss,
            "ppl": math.exp(min(loss, 50.0)),
            "gnorm": self.gnorm_sum / max(self.updates, 1),
            "tokens_per_s": self.tokens / elapsed,
        }


class Trainer:
    """Fits `model` on `task` as configured by `cfg`, writing logs and checkpoints under `output_dir`."""

    def __init__(self, cfg: TrainConfig, task: Any, model: nn.Module, output_dir: Path) -> None:
        self.cfg, self.task, self.output_dir = cfg, task, Path(output_dir)
        self.device = resolve_device(cfg.common.device)
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(cfg.optim, self.model)
        self.lr_scheduler = build_lr_scheduler(cfg.lr_scheduler, self.optimizer, cfg.optimization.max_update)
        self.train_iterator = task.batch_iterator("train")
        self.valid_iterator = task.batch_iterator("valid")
        self.update = 0
        self.best_valid_loss = math.inf
        self.last_valid: Dict[str, float] = {}
        self.start_time = time.perf_counter()

    # ---- one update -------------------------------------------------------------------------------------
    def _to_device(self, batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def train_step(self, batches: List[Dict[str, Tensor]]) -> Dict[str, float]:
        """One optimizer update over `batches` (update_freq micro-batches), normalised by all their masked tokens."""
        self.model.train()
        torch.manual_seed(self.cfg.common.seed * 1_000_003 + self.update)  # dropout depends on (seed, update) only
        self.lr_scheduler.step(self.update)
        total_masked = max(sum(int(b["targets"].numel()) for b in batches), 1)
        stats = {"loss_sum": 0.0, "masked": 0, "tokens": 0}
        for batch in batches:
            loss, micro = self.task.loss(self.model, self._to_device(batch))
            (loss / total_masked).backward()
            for key in stats:
                stats[key] += micro[key]
        if not math.isfinite(stats["loss_sum"]):
            raise FloatingPointError(f"loss is {stats['loss_sum']} at update {self.update + 1}; stopping")
        max_norm = self.cfg.optimization.clip_norm or math.inf
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.update += 1
        return {**stats, "gnorm": float(gnorm), "lr": self.optimizer.param_groups[0]["lr"]}

    @torch.no_grad()
    def validate(self) -> Dict[str, float]:
        """Loss over the whole validation set, with the same masks every time (a fixed epoch)."""
        self.model.eval()
        self.valid_iterator.load_state_dict({"epoch": 1, "offset": 0})
        loss_sum, masked = 0.0, 0
        for batch in self.valid_iterator.epoch_iter():
            _, stats = self.task.loss(self.model, self._to_device(batch))
            loss_sum, masked = loss_sum + stats["loss_sum"], masked + stats["masked"]
        loss = loss_sum / max(masked, 1)
        self.last_valid = {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "masked": masked}
        self.best_valid_loss = min(self.best_valid_loss, loss)
        return self.last_valid

    # ---- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "update": self.update,
            "train_iterator": self.train_iterator.state_dict(),
            "best_valid_loss": self.best_valid_loss,
            "last_valid": self.last_valid,
            "rng": rng_states(),
            "cfg": asdict(self.cfg),
            "model_args": {"vocab_size": self.task.vocab_size, "pad_id": self.task.pad_id},
            "provenance": provenance(self.task.provenance()),
        }

    def save(self) -> Path:
        return save_checkpoint(self.output_dir / self.cfg.checkpoint.save_dir / CHECKPOINT_LAST, self.state_dict())

    # ---- the loop ---------------------------------------------------------------------------------------
    def fit(self, logger: Optional[MetricsLogger] = None) -> Dict[str, Any]:
        """Train until max_update (or max_epoch); validate at the start, every N updates and at the end."""
        opt, log_cfg = self.cfg.optimization, self.cfg.logging
        logger = logger or MetricsLogger(self.output_dir, tensorboard=log_cfg.tensorboard)
        first_valid = dict(self.validate())
        self._log(logger, "valid", first_valid)
        batches = self.train_iterator.forever()
        window = Window()
        bar = tqdm(total=opt.max_update, initial=self.update, unit="upd", disable=not log_cfg.progress_bar,
                   dynamic_ncols=True, desc="train")  # fmt: skip
        try:
            while self.update < opt.max_update and not self._epochs_done():
                stats = self.train_step([next(batches) for _ in range(opt.update_freq)])
                window.add(stats)
                bar.update(1)
                last = self.update >= opt.max_update or self._epochs_done()
                if self.update % log_cfg.log_interval == 0 or last:
                    summary = {**window.summary(), "lr": stats["lr"]}
                    bar.set_postfix(loss=f"{summary['loss']:.3f}", lr=f"{stats['lr']:.2e}",
                                    tok_s=f"{summary['tokens_per_s']:.0f}")  # fmt: skip
                    self._log(logger, "train", summary)
                    window = Window()
                if opt.validate_interval_updates and self.update % opt.validate_interval_updates == 0 and not last:
                    self._log(logger, "valid", self.validate())
                if self.cfg.checkpoint.save_interval_updates and self.update % self.cfg.checkpoint.save_interval_updates == 0:
                    self.save()
        finally:
            bar.close()
        final_valid = self.validate()
        self._log(logger, "valid", final_valid)
        checkpoint = self.save()
        logger.close()
        return {"first_valid": first_valid, "final_valid": final_valid, "updates": self.update,
                "checkpoint": str(checkpoint), "metrics": str(logger.path)}  # fmt: skip

    def _epochs_done(self) -> bool:
        return bool(self.cfg.optimization.max_epoch) and self.train_iterator.epoch > self.cfg.optimization.max_epoch

    def _log(self, logger: MetricsLogger, split: str, values: Dict[str, float]) -> None:
        wall = time.perf_counter() - self.start_time
        logger.log({"split": split, "update": self.update, "epoch": self.train_iterator.epoch, "wall": wall, **values})
