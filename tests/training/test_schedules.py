"""Learning-rate schedules: values at chosen updates equal their formulas."""
import math

import pytest
import torch

from linformer_pt.training.optim import ScheduleConfig, build_lr_scheduler

LR, WARMUP, TOTAL = 1e-3, 10, 110


def lrs(name: str, updates, **kw):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    sched = build_lr_scheduler(ScheduleConfig(name=name, warmup_updates=WARMUP, **kw), opt, max_update=TOTAL)
    out = []
    for u in updates:
        sched.step(u)
        out.append(opt.param_groups[0]["lr"])
    return out


def test_warmup_is_linear_for_every_schedule():
    for name in ["polynomial_decay", "linear", "cosine", "inverse_sqrt", "constant"]:
        assert lrs(name, [0, 4, 9]) == pytest.approx([LR * 1 / 11, LR * 5 / 11, LR * 10 / 11])


def test_decay_formulas():
    at = [10, 35, 60, 110, 200]
    progress = [0.0, 0.25, 0.5, 1.0, 1.0]
    end = 1e-5
    assert lrs("linear", at, end_learning_rate=end) == pytest.approx([(LR - end) * (1 - p) + end for p in progress])
    assert lrs("polynomial_decay", at, power=2.0) == pytest.approx([LR * (1 - p) ** 2 for p in progress])
    assert lrs("cosine", at, end_learning_rate=end) == pytest.approx(
        [end + 0.5 * (LR - end) * (1 + math.cos(math.pi * p)) for p in progress]
    )
    assert lrs("inverse_sqrt", at) == pytest.approx([LR * math.sqrt(WARMUP / (u + 1)) for u in at])
    assert lrs("constant", at) == pytest.approx([LR] * len(at))
    assert lrs("linear", [60], total_num_update=210) == pytest.approx([LR * (1 - 50 / 200)])
