"""The training window: sums of the statistics since the last train record, and the averages a record reports.

Rates (tokens/s, TFLOP/s, MFU, the data share) are over the window's *training* time only, the time spent in
updates and waiting for their data, as summary.json counts it: start-up, validation and checkpoint writes between
updates are left out, so the first record of a run or of a resumed session and the one after a validation are
not diluted. The time is part of the sums, so a run resumed mid-window reports what an uninterrupted one would.

The updates leave their loss sums and gradient norms on the device (DeviceSums) until the host reads them into
the window, once per record or when a validation or checkpoint needs them: a read makes the host wait for the
device, so no update does one (linformer_pt/training/step.py).
"""
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor


class Window:
    """Sums of training statistics since the last log record."""

    KEYS = ("loss_sum", "masked", "tokens", "flops", "data_time", "seconds")

    def __init__(self) -> None:
        self.sums = dict.fromkeys(self.KEYS, 0.0)
        self.gnorm_sum, self.updates = 0.0, 0

    def add(self, stats: Dict[str, float], updates: int = 1) -> None:
        """Sums over `updates` updates (`gnorm`: the sum of their norms; `seconds`: their wall time, the wait for
        their data included); a key left out adds nothing (the host's times and the device's sums come apart)."""
        for key in self.KEYS:
            self.sums[key] += stats.get(key, 0.0)
        self.gnorm_sum += stats.get("gnorm", 0.0)
        self.updates += updates

    def state_dict(self) -> Dict[str, Any]:
        return {"sums": dict(self.sums), "gnorm_sum": self.gnorm_sum, "updates": self.updates}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state:
            self.sums = {**dict.fromkeys(self.KEYS, 0.0), **state["sums"]}
            self.gnorm_sum, self.updates = state["gnorm_sum"], state["updates"]

    def summary(self, peak: float) -> Dict[str, float]:
        """Loss, ppl, gradient norm and the rates of the window; `peak` (TFLOP/s, 0: unknown) gives MFU."""
        elapsed = max(self.sums["seconds"], 1e-9)
        loss = self.sums["loss_sum"] / max(self.sums["masked"], 1)
        tflops = self.sums["flops"] / elapsed / 1e12
        out = {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "gnorm": self.gnorm_sum / max(self.updates, 1),
               "tokens_per_s": self.sums["tokens"] / elapsed, "tflops": tflops,
               "data_share": self.sums["data_time"] / elapsed}  # fmt: skip
        if peak:
            out["mfu"] = tflops / peak
        return out


@dataclass
class Reading:
    """What DeviceSums held, summed over processes: totals, per-update counts, the first non-finite update."""

    updates: List[int]  # the update numbers read, in order
    loss_sum: float
    gnorm_sum: float
    masked: List[float]  # one per update
    tokens: List[float]
    flops: List[float]
    nonfinite: Optional[Tuple[int, float, float]]  # (update, its loss sum, its gradient norm), or None


class DeviceSums:
    """The updates since the last read: loss sums and gradient norms summed on the device, counts on the host.

    With `watch_finite` (fp32, bf16: their run stops on a non-finite gradient norm) the device also keeps the first
    non-finite update (number, loss sum, norm), which the host learns of at the next read.
    """

    def __init__(self, watch_finite: bool) -> None:
        self.watch_finite = watch_finite
        self.reset()

    def reset(self) -> None:
        self.sums: Optional[Tensor] = None  # float64 [loss sum, gradient norm sum], on the device
        self.first_bad: Optional[Tensor] = None  # float64 [update, loss sum, norm]; update 0: none yet
        self.updates: List[int] = []
        self.masked: List[float] = []
        self.tokens: List[float] = []
        self.flops: List[float] = []

    def add(self, update: int, loss_sum: Tensor, gnorm: Tensor, masked: float, tokens: float, flops: float) -> None:
        """One update's figures: `loss_sum` (float64) and `gnorm` on the device, the rest from the host."""
        both = torch.stack([loss_sum, gnorm.to(torch.float64)])
        self.sums = both if self.sums is None else self.sums + both
        if self.first_bad is None:
            self.first_bad = torch.zeros(3, dtype=torch.float64, device=both.device)
        if self.watch_finite:
            # torch.where, not an `if`: the decision stays on the device (full_like fills, it copies nothing).
            fresh = ~torch.isfinite(both[1]) & (self.first_bad[0] == 0)
            self.first_bad = torch.where(fresh, torch.stack([torch.full_like(both[0], update), *both]), self.first_bad)
        self.updates.append(update)
        self.masked.append(masked)
        self.tokens.append(tokens)
        self.flops.append(flops)

    def read(self) -> Optional[Reading]:
        """Everything since the last read, in one device read (and one collective with several processes); then
        start afresh. None when no update ran since."""
        if not self.updates:
            return None
        n, device = len(self.updates), self.sums.device
        counts = torch.tensor(self.masked + self.tokens + self.flops, dtype=torch.float64).to(device)
        # Loss sums and counts are this process's; gradient norms are every process's (gradients are reduced first).
        summed = torch.cat([self.sums[:1], self.first_bad[1:2], counts])
        if dist.is_initialized():
            dist.all_reduce(summed)
        values = torch.cat([summed, self.sums[1:], self.first_bad[::2]]).tolist()  # the read: waits for the device
        (loss_sum, bad_loss), counts_read, (gnorm_sum, bad_update, bad_gnorm) = values[:2], values[2:-3], values[-3:]
        updates = self.updates
        self.reset()
        bad = (int(bad_update), bad_loss, bad_gnorm) if bad_update else None
        return Reading(updates, loss_sum, gnorm_sum, counts_read[:n], counts_read[n : 2 * n], counts_read[2 * n :], bad)
