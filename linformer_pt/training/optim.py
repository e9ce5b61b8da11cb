"""Optimizers and learning-rate schedules, registered by name (`optim=adamw`, `lr_scheduler=cosine`, ...).

NVIDIA apex's FusedAdam and FusedLAMB are used when the real `apex.optimizers` is importable (never required;
PyPI's unrelated `apex` package does not provide it).
"""
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from linformer_pt.config import check
from linformer_pt.errors import UserError
from linformer_pt.registry import LR_SCHEDULERS, OPTIMIZERS, register_lr_scheduler, register_optimizer


@dataclass
class AdamConfig:
    name: str = "adamw"
    lr: float = 5e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    weight_decay: float = 0.01
    decay_embeddings: bool = True  # apply weight decay to embedding matrices (biases and norms never decay)
    fused: bool = False  # torch's fused AdamW kernel (CPU and CUDA)
    # The sequence projections' (E/F, conv taps) lr is optim.lr times this: new E/F in an imported encoder may
    # need to move faster than the weights that already fit.
    projection_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        check(self.lr > 0, f"optim.lr={self.lr} must be > 0")
        check(self.projection_lr_scale > 0, f"optim.projection_lr_scale={self.projection_lr_scale} must be > 0")
        check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"optim.betas={self.betas} must be two values in [0, 1)",
        )
        check(self.eps > 0, f"optim.eps={self.eps} must be > 0")
        check(self.weight_decay >= 0, f"optim.weight_decay={self.weight_decay} must be >= 0")


def projection_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The parameters of the sequence projections (E/F, conv taps): what a swap to Linformer adds to an encoder."""
    from linformer_pt.modules.projections import SequenceProjection

    found = {id(p): p for m in model.modules() if isinstance(m, SequenceProjection) for p in m.parameters()}
    return list(found.values())


def waiting_parameters(model: nn.Module, projections_only_updates: int) -> List[nn.Parameter]:
    """What optimization.projections_only_updates holds still: every parameter but the sequence projections."""
    if not projections_only_updates:
        return []
    projections = {id(p) for p in projection_parameters(model)}
    if not projections:
        raise UserError(f"optimization.projections_only_updates={projections_only_updates} trains only learned "
                        "sequence projections, and this model has none (model.attention=linformer with "
                        "projection=linear or conv has them)")  # fmt: skip
    return [p for p in model.parameters() if id(p) not in projections]


def param_groups(model: nn.Module, weight_decay: float, decay_embeddings: bool = True,
                 projection_lr: Optional[float] = None) -> List[dict]:  # fmt: skip
    """Decay matrices only: biases and LayerNorm gains (1-D) never, embeddings as configured.

    `projection_lr`: the projections' own learning rate, in groups of their own (the schedule scales every group's).
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    projections = {id(p) for p in projection_parameters(model)} if projection_lr is not None else set()
    groups: Dict[Tuple[bool, bool], List[nn.Parameter]] = {(d, p): [] for d in (True, False) for p in (False, True)}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim < 2 or (not decay_embeddings and id(p) in embeddings))
        groups[decay, id(p) in projections].append(p)
    out = []
    for (decay, projection), params in groups.items():
        if params or not projection:  # the two plain groups always exist (saved optimizer states count on them)
            group = {"params": params, "weight_decay": weight_decay if decay else 0.0}
            out.append({**group, "lr": projection_lr} if projection else group)
    return out


def _groups(cfg: AdamConfig, model: nn.Module) -> List[dict]:
    scaled = cfg.lr * cfg.projection_lr_scale if cfg.projection_lr_scale != 1.0 else None
    return param_groups(model, cfg.weight_decay, cfg.decay_embeddings, scaled)


@register_optimizer("adamw", AdamConfig)
def build_adamw(cfg: AdamConfig, model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        _groups(cfg, model), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=cfg.fused or None
    )


def apex_optimizers():
    """NVIDIA apex's optimizers module, or a UserError saying how to get it."""
    try:
        from apex import optimizers  # type: ignore[import-not-found]
    except ImportError:
        optimizers = None
    if optimizers is None or not hasattr(optimizers, "FusedAdam"):
        raise UserError(
            "this optimizer needs NVIDIA apex (github.com/NVIDIA/apex, built with --cuda_ext); "
            "PyPI's 'apex' is an unrelated package. Use optim=adamw (optim.fused=true) instead"
        )
    return optimizers


@register_optimizer("fused_adam", AdamConfig)
def build_fused_adam(cfg: AdamConfig, model: nn.Module) -> torch.optim.Optimizer:
    return apex_optimizers().FusedAdam(
        _groups(cfg, model), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, adam_w_mode=True
    )


@register_optimizer("lamb", AdamConfig)
def build_lamb(cfg: AdamConfig, model: nn.Module) -> torch.optim.Optimizer:
    return apex_optimizers().FusedLAMB(_groups(cfg, model), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


# ---- learning-rate schedules ------------------------------------------------------------------------------
@dataclass
class ScheduleConfig:
    name: str = "polynomial_decay"
    warmup_updates: int = 0  # linear warmup: lr 0 at update 0, optim.lr at update warmup_updates
    total_num_update: int = 0  # 0: optimization.max_update
    end_learning_rate: float = 0.0  # polynomial_decay / linear: final lr; cosine: minimum lr
    power: float = 1.0  # polynomial_decay only

    def __post_init__(self) -> None:
        check(self.warmup_updates >= 0, f"lr_scheduler.warmup_updates={self.warmup_updates} must be >= 0")
        check(self.total_num_update >= 0, f"lr_scheduler.total_num_update={self.total_num_update} must be >= 0")
        check(self.end_learning_rate >= 0, f"lr_scheduler.end_learning_rate={self.end_learning_rate} must be >= 0")
        check(self.power > 0, f"lr_scheduler.power={self.power} must be > 0")
        check(  # lr * sqrt(warmup / update) is defined by its warmup
            self.name != "inverse_sqrt" or self.warmup_updates > 0,
            f"lr_scheduler.warmup_updates={self.warmup_updates} must be > 0 for lr_scheduler=inverse_sqrt",
        )


class Schedule:
    """Sets the optimizer's learning rates for each update: linear warmup, then `after_warmup(update, base_lr)`.

    `step(u)` sets the learning rate of update u (0-based: u updates are already done), which is what fairseq's
    scheduler sets with step_update(u). fairseq's trainer calls step_update(0) as soon as the scheduler is built
    (replacing the lr / warmup_updates its __init__ sets) and step_update(u + 1) after update u, so update u runs
    at step_update(u). Warmup is therefore lr * u / warmup_updates for u < warmup_updates: the first update runs at
    lr 0 (Adam's moments still take its gradient, as in fairseq) and update warmup_updates at the full lr.
    """

    def __init__(self, cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, max_update: int) -> None:
        self.cfg, self.optimizer = cfg, optimizer
        self.total = cfg.total_num_update or max_update
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.step(0)

    def lr_at(self, update: int, base_lr: float) -> float:
        """Learning rate for the update numbered `update` (0-based)."""
        warmup = self.cfg.warmup_updates
        if update < warmup:
            return base_lr * update / warmup
        return self.after_warmup(update, base_lr)

    def after_warmup(self, update: int, base_lr: float) -> float:
        raise NotImplementedError

    def progress(self, update: int) -> float:
        """Fraction of the post-warmup updates done, in [0, 1]."""
        warmup = self.cfg.warmup_updates
        return min(1.0, (update - warmup) / max(1, self.total - warmup))

    def step(self, update: int) -> None:
        """Set the optimizer's learning rates for update number `update`."""
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr_at(update, base)

    def state_dict(self) -> dict:
        return {"base_lrs": self.base_lrs}

    def load_state_dict(self, state: dict) -> None:
        self.base_lrs = state["base_lrs"]


def schedule(name: str) -> Callable[[type], type]:
    return register_lr_scheduler(name, ScheduleConfig)


@schedule("polynomial_decay")
class PolynomialDecay(Schedule):
    """RoBERTa's (fairseq's polynomial_decay): (lr - end) * (1 - progress)^power + end, end from total_num_update."""

    def after_warmup(self, update: int, base_lr: float) -> float:
        end = self.cfg.end_learning_rate
        return (base_lr - end) * (1.0 - self.progress(update)) ** self.cfg.power + end


@schedule("linear")
class LinearDecay(Schedule):
    """lr falls linearly to end_learning_rate at total_num_update (polynomial decay of power 1)."""

    def after_warmup(self, update: int, base_lr: float) -> float:
        end = self.cfg.end_learning_rate
        return (base_lr - end) * (1.0 - self.progress(update)) + end


@schedule("cosine")
class CosineDecay(Schedule):
    """Half a cosine from lr to end_learning_rate over the post-warmup updates."""

    def after_warmup(self, update: int, base_lr: float) -> float:
        end = self.cfg.end_learning_rate
        return end + 0.5 * (base_lr - end) * (1.0 + math.cos(math.pi * self.progress(update)))


@schedule("inverse_sqrt")
class InverseSqrt(Schedule):
    """lr * sqrt(warmup / update) after warmup: fairseq's inverse_sqrt with its default warmup_init_lr of 0."""

    def after_warmup(self, update: int, base_lr: float) -> float:
        return base_lr * math.sqrt(self.cfg.warmup_updates) / math.sqrt(update)  # update >= warmup_updates > 0


@schedule("constant")
class Constant(Schedule):
    """lr after warmup."""

    def after_warmup(self, update: int, base_lr: float) -> float:
        return base_lr


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by cfg.name, over model's trainable parameters."""
    return OPTIMIZERS.get(cfg.name).cls(cfg, model)


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer, max_update: int) -> Schedule:
    """The LR schedule named by cfg.name; call .step(update) before each update."""
    return LR_SCHEDULERS.get(cfg.name).cls(cfg, optimizer, max_update)
