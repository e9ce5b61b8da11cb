"""What a run has done so far, kept across resumes: tokens seen, time spent validating, peak memory, best result.

These feed the `tokens` column of metrics.jsonl and the run's summary.json (linformer_pt/training/summary.py).
"""
import math
import re
import resource
import sys
from pathlib import Path
from typing import Any, Dict

import torch


def reset_peak_memory(device: torch.device) -> bool:
    """Restart the peak from the memory in use now, so that runs sharing a process (Hydra's basic launcher runs a
    multirun's jobs one after another in one process) do not report each other's peaks.

    False where the system cannot reset it: the CPU peak then counts from the process's start.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:  # Linux: writing 5 to clear_refs resets the resident set's high-water mark (proc(5))
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mb(device: torch.device) -> float:
    """This process's peak memory: CUDA's peak allocation on a GPU, else the peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:  # the high-water mark that reset_peak_memory resets
        match = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        match = None
    if match:
        return int(match.group(1)) / 2**10
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def memory_kind(device: torch.device, reset: bool) -> str:
    """How peak_memory_mb was measured; `reset` says whether reset_peak_memory succeeded at the run's start."""
    if device.type == "cuda":
        return "cuda_max_allocated"
    return "process_max_rss" if reset else "process_max_rss_since_process_start"


class RunStats:
    """Counters of one run over all its sessions (saved in every checkpoint)."""

    def __init__(self, device: torch.device) -> None:
        """Made when a trainer starts: this session's peak memory counts from here, not from an earlier run in
        this process (a multirun's jobs share one)."""
        self.device = device
        self.memory_kind = memory_kind(device, reset=reset_peak_memory(device))
        self.tokens_seen = 0  # padding-free training tokens, summed over processes
        self.valid_seconds = 0.0  # part of the training time spent validating (tokens/s leaves it out)
        self.peak_memory_mb = 0.0  # the largest peak of any session so far
        self.best_valid: Dict[str, float] = {}  # the best validation result (loss, ppl, ...) and its update
        self.best_score = math.inf

    def add_update(self, tokens: float) -> None:
        self.tokens_seen += int(tokens)

    def add_validation(self, result: Dict[str, float], update: int, seconds: float, score: float) -> None:
        """`score` is the task's measure of the best result (lower is better; the loss unless the task says)."""
        self.valid_seconds += seconds
        if score < self.best_score:
            self.best_score = score
            self.best_valid = {**{key: value for key, value in result.items() if key != "masked"}, "update": update}

    def note_memory(self) -> float:
        self.peak_memory_mb = max(self.peak_memory_mb, peak_memory_mb(self.device))
        return self.peak_memory_mb

    def state_dict(self) -> Dict[str, Any]:
        return {"tokens_seen": self.tokens_seen, "valid_seconds": self.valid_seconds,
                "peak_memory_mb": self.peak_memory_mb, "best_valid": dict(self.best_valid),
                "best_score": self.best_score}  # fmt: skip

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.tokens_seen = state.get("tokens_seen", 0)
        self.valid_seconds = state.get("valid_seconds", 0.0)
        self.peak_memory_mb = state.get("peak_memory_mb", 0.0)
        self.best_valid = dict(state.get("best_valid", {}))
        self.best_score = state.get("best_score", math.inf)
