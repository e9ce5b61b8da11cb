"""Optimizers and learning-rate schedules, registered by name (`optim=adamw`, `lr_scheduler=polynomial_decay`)."""
from dataclasses import dataclass, field
from typing import List

import torch
from torch import nn

from linformer_pt.config import check
from linformer_pt.registry import LR_SCHEDULERS, OPTIMIZERS, register_lr_scheduler, register_optimizer


@dataclass
class AdamWConfig:
    name: str = "adamw"
    lr: float = 5e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    weight_decay: float = 0.01
    fused: bool = False

    def __post_init__(self) -> None:
        check(self.lr > 0, f"optim.lr={self.lr} must be > 0")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"optim.betas={self.betas} must be two values in [0, 1)")
        check(self.eps > 0, f"optim.eps={self.eps} must be > 0")
        check(self.weight_decay >= 0, f"optim.weight_decay={self.weight_decay} must be >= 0")


def param_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    """Decay matrices only: biases and LayerNorm gains (1-D parameters) are excluded, as in BERT."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@register_optimizer("adamw", AdamWConfig)
def build_adamw(cfg: AdamWConfig, model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=cfg.fused or None
    )


@dataclass
class PolynomialDecayConfig:
    name: str = "polynomial_decay"
    warmup_updates: int = 0
    total_num_update: int = 0  # 0: optimization.max_update
    end_learning_rate: float = 0.0
    power: float = 1.0

    def __post_init__(self) -> None:
        check(self.warmup_updates >= 0, f"lr_scheduler.warmup_updates={self.warmup_updates} must be >= 0")
        check(self.total_num_update >= 0, f"lr_scheduler.total_num_update={self.total_num_update} must be >= 0")


class PolynomialDecay:
    """RoBERTa's schedule: linear warmup to lr, then (lr - end) * (1 - progress)^power + end."""

    def __init__(self, cfg: PolynomialDecayConfig, optimizer: torch.optim.Optimizer, max_update: int) -> None:
        self.cfg, self.optimizer = cfg, optimizer
        self.total = cfg.total_num_update or max_update
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.step(0)

    def lr_at(self, update: int, base_lr: float) -> float:
        """Learning rate for the update numbered `update` (0-based)."""
        warmup, end = self.cfg.warmup_updates, self.cfg.end_learning_rate
        if update < warmup:
            return base_lr * (update + 1) / (warmup + 1)
        if update >= self.total:
            return end
        remaining = 1.0 - (update - warmup) / max(1, self.total - warmup)
        return (base_lr - end) * remaining**self.cfg.power + end

    def step(self, update: int) -> None:
        """Set the optimizer's learning rates for update number `update`."""
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr_at(update, base)

    def state_dict(self) -> dict:
        return {"base_lrs": self.base_lrs}

    def load_state_dict(self, state: dict) -> None:
        self.base_lrs = state["base_lrs"]


register_lr_scheduler("polynomial_decay", PolynomialDecayConfig)(PolynomialDecay)


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by cfg.name, over model's trainable parameters."""
    return OPTIMIZERS.get(cfg.name).cls(cfg, model)


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer, max_update: int):
    """The LR schedule named by cfg.name; call .step(update) before each update."""
    return LR_SCHEDULERS.get(cfg.name).cls(cfg, optimizer, max_update)

