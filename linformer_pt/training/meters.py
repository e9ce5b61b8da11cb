"""The training window: sums of the statistics since the last train record, and the averages a record reports.

Rates (tokens/s, TFLOP/s, MFU, the data share) are over the window's *training* time only, the time spent in
updates and waiting for their data, as summary.json counts it: start-up, validation and checkpoint writes between
updates are left out, so the first record of a run or of a resumed session and the one after a validation are
not diluted. The time is part of the sums, so a run resumed mid-window reports what an uninterrupted one would.
"""
import math
from typing import Any, Dict


class Window:
    """Sums of training statistics since the last log record."""

    KEYS = ("loss_sum", "masked", "tokens", "flops", "data_time", "seconds")

    def __init__(self) -> None:
        self.sums = dict.fromkeys(self.KEYS, 0.0)
        self.gnorm_sum, self.updates = 0.0, 0

    def add(self, stats: Dict[str, float]) -> None:
        """One update's statistics; `seconds` is its wall time, the wait for its data included."""
        for key in self.KEYS:
            self.sums[key] += stats[key]
        self.gnorm_sum += stats["gnorm"]
        self.updates += 1

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
