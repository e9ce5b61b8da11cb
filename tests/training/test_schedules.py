"""Learning-rate schedules: fairseq's values for polynomial_decay and inverse_sqrt, our formulas for the others."""
import math
from typing import Callable, List

import pytest
import torch

from linformer_pt.training.optim import ScheduleConfig, build_lr_scheduler

LR, WARMUP, TOTAL = 1e-3, 10, 110
ALL = ["polynomial_decay", "linear", "cosine", "inverse_sqrt", "constant"]


def lrs(name: str, updates, warmup: int = WARMUP, max_update: int = TOTAL, **kw) -> List[float]:
    """Our learning rate for each update number, set as the trainer does: step(u) just before update u."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    sched = build_lr_scheduler(ScheduleConfig(name=name, warmup_updates=warmup, **kw), opt, max_update=max_update)
    out = []
    for u in updates:
        sched.step(u)
        out.append(opt.param_groups[0]["lr"])
    return out


# ---- fairseq's schedules, written out (fairseq/optim/lr_scheduler) --------------------------------------------
class FairseqPolynomialDecay:
    """PolynomialDecayLRSchedule with zero_lr_warmup_steps=0 and no force_anneal; `lr` is what it last set."""

    def __init__(self, lr: float, warmup: int, total: int, end: float = 0.0, power: float = 1.0) -> None:
        self.base, self.warmup_updates, self.total_num_update = lr, warmup, total
        self.end_learning_rate, self.power = end, power
        self.warmup_factor = 1.0 / warmup if warmup > 0 else 1
        self.lr = self.warmup_factor * self.base  # __init__: optimizer.set_lr(warmup_factor * lr)

    def step_update(self, num_updates: int) -> None:
        if self.warmup_updates > 0 and num_updates <= self.warmup_updates:
            self.warmup_factor = num_updates / float(self.warmup_updates)
            self.lr = self.warmup_factor * self.base
        elif num_updates >= self.total_num_update:
            self.lr = self.end_learning_rate
        else:
            warmup = self.warmup_updates
            lr_range = self.base - self.end_learning_rate
            pct_remaining = 1 - (num_updates - warmup) / (self.total_num_update - warmup)
            self.lr = lr_range * pct_remaining**self.power + self.end_learning_rate


class FairseqInverseSqrt:
    """InverseSquareRootSchedule with warmup_init_lr=-1 (its default: 0 when warmup_updates > 0)."""

    def __init__(self, lr: float, warmup: int) -> None:
        self.warmup_updates, self.warmup_init_lr = warmup, 0.0
        self.lr_step = (lr - self.warmup_init_lr) / warmup
        self.decay_factor = lr * warmup**0.5
        self.lr = self.warmup_init_lr

    def step_update(self, num_updates: int) -> None:
        if num_updates < self.warmup_updates:
            self.lr = self.warmup_init_lr + num_updates * self.lr_step
        else:
            self.lr = self.decay_factor * num_updates**-0.5


def fairseq_lrs(make: Callable[[], object], updates) -> List[float]:
    """The lr fairseq's Trainer uses for each update number: it calls step_update(0) right after building the
    scheduler (Trainer._build_optimizer, again at begin_epoch) and step_update(n) once num_updates becomes n."""
    sched = make()
    sched.step_update(0)
    used = []
    for u in range(max(updates) + 1):
        used.append(sched.lr)  # the optimizer step of update u runs at this lr
        sched.step_update(u + 1)
    return [used[u] for u in updates]


CHECKPOINTS = [0, 1, WARMUP - 1, WARMUP, WARMUP + 1, 60, TOTAL - 1, TOTAL]


@pytest.mark.parametrize("end, power", [(0.0, 1.0), (1e-5, 2.0)])
def test_polynomial_decay_equals_fairseq(end, power):
    expected = fairseq_lrs(lambda: FairseqPolynomialDecay(LR, WARMUP, TOTAL, end, power), CHECKPOINTS)
    assert expected[0] == 0.0  # fairseq's first update runs at lr 0
    got = lrs("polynomial_decay", CHECKPOINTS, end_learning_rate=end, power=power)
    assert got == pytest.approx(expected, rel=1e-12, abs=0)


def test_polynomial_decay_equals_fairseq_without_warmup_and_with_total_num_update():
    updates = [0, 1, 2, 50, 99, 100, 120]
    assert lrs("polynomial_decay", updates, warmup=0) == pytest.approx(
        fairseq_lrs(lambda: FairseqPolynomialDecay(LR, 0, TOTAL), updates), rel=1e-12, abs=0
    )
    assert lrs("polynomial_decay", CHECKPOINTS, total_num_update=210, max_update=TOTAL) == pytest.approx(
        fairseq_lrs(lambda: FairseqPolynomialDecay(LR, WARMUP, 210), CHECKPOINTS), rel=1e-12, abs=0
    )


def test_inverse_sqrt_equals_fairseq():
    expected = fairseq_lrs(lambda: FairseqInverseSqrt(LR, WARMUP), CHECKPOINTS)
    assert lrs("inverse_sqrt", CHECKPOINTS) == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize("name", ALL)
def test_every_schedule_warms_up_as_fairseq_does(name):
    # lr * u / W before update W, the full lr at update W (where each decay starts from lr).
    expected = [0.0, LR / WARMUP, LR * (WARMUP - 1) / WARMUP, LR]
    assert lrs(name, [0, 1, WARMUP - 1, WARMUP]) == pytest.approx(expected, rel=1e-12, abs=0)


def test_decay_formulas():
    at = [10, 35, 60, 110, 200]
    progress = [0.0, 0.25, 0.5, 1.0, 1.0]
    end = 1e-5
    assert lrs("linear", at, end_learning_rate=end) == pytest.approx([(LR - end) * (1 - p) + end for p in progress])
    assert lrs("polynomial_decay", at, power=2.0) == pytest.approx([LR * (1 - p) ** 2 for p in progress])
    assert lrs("cosine", at, end_learning_rate=end) == pytest.approx(
        [end + 0.5 * (LR - end) * (1 + math.cos(math.pi * p)) for p in progress]
    )
    assert lrs("inverse_sqrt", at) == pytest.approx([LR * math.sqrt(WARMUP / u) for u in at])
    assert lrs("constant", at) == pytest.approx([LR] * len(at))
    assert lrs("linear", [60], total_num_update=210) == pytest.approx([LR * (1 - 50 / 200)])



def test_projection_lr_scale_gives_the_projections_their_own_scheduled_lr():
    from linformer_pt.models.linformer_roberta import LinformerRoberta, LinformerRobertaConfig
    from linformer_pt.training.optim import AdamConfig, ScheduleConfig, build_lr_scheduler, build_optimizer, \
        projection_parameters  # fmt: skip

    model = LinformerRoberta(LinformerRobertaConfig(layers=1, embed_dim=16, ffn_embed_dim=32, heads=2,
                                                    max_positions=32, k=8), 50, 1)  # fmt: skip
    plain = build_optimizer(AdamConfig(lr=1e-3), model)
    assert len(plain.param_groups) == 2  # unchanged layout without a scale (saved optimizer states still load)
    optimizer = build_optimizer(AdamConfig(lr=1e-3, projection_lr_scale=10.0), model)
    schedule = build_lr_scheduler(ScheduleConfig(name="linear", warmup_updates=4), optimizer, 20)
    schedule.step(2)
    ids = {id(p) for p in projection_parameters(model)}
    rates = {all(id(p) in ids for p in g["params"]): g["lr"] for g in optimizer.param_groups if g["params"]}
    assert rates[False] == pytest.approx(5e-4) and rates[True] == pytest.approx(5e-3)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
