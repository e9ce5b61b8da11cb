"""Stop requests from outside: Ctrl-C, and the signals schedulers send before they kill a job (SIGTERM, SIGUSR1).

A signal only records the request; the trainer acts on it at the next update boundary (all processes agree),
writes checkpoint_last.pt and stops with RunInterrupted. Under Slurm's submitit launcher, SIGUSR2 (submitit's
timeout/preemption signal) is also caught, and after the checkpoint is written submitit's own handler runs, which
requeues the job; the requeued job resumes from the checkpoint.
"""
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Dict, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on request with a checkpoint written; rerun (or requeue) to resume

ALWAYS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """Context manager that turns stop signals into a flag checked between updates; restores the old handlers."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self  # Python delivers signals to the main thread only; nothing to install elsewhere
        for sig in ALWAYS:
            self._previous[sig] = signal.signal(sig, self._handle)
        if callable(signal.getsignal(signal.SIGUSR2)):  # submitit's requeue handler is installed
            self._previous[signal.SIGUSR2] = signal.signal(signal.SIGUSR2, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait for the update to finish
        self.received = signum

    @property
    def requested(self) -> bool:
        return self.received is not None

    def describe(self) -> str:
        return "Ctrl-C" if self.received == signal.SIGINT else signal.Signals(self.received).name

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.received == signal.SIGINT else EXIT_PREEMPTED

    def hand_over(self) -> None:
        """After the checkpoint: let a handler that was there before us (submitit's requeue) see the signal."""
        previous = self._previous.get(self.received) if self.received is not None else None
        if self.received == signal.SIGUSR2 and callable(previous):
            previous(self.received, None)


def multirun_sweep_dir() -> Optional[Path]:
    """The sweep folder when Hydra started this run with --multirun, else None (a single run, or no Hydra at all)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir).absolute()  # resolved once per sweep, the same for all its jobs


def interrupted_message(reason: str, update: int, output_dir: Path, sweep_dir: Optional[Path]) -> str:
    """The line a stopped run ends with: what happened, and the command that resumes it.

    A single run is resumed by naming its folder. A --multirun job is resumed by rerunning the whole sweep: finished
    runs are skipped, this one resumes from its folder, and the jobs the stop kept from starting run too. Folders
    are named because the default ones are named by the clock: the same command alone would start afresh.
    """
    stopped = f"{reason}: interrupted at update {update}; checkpoint written; rerun to resume"
    if sweep_dir is None:
        return f"{stopped} (the same command with hydra.run.dir={output_dir})"
    return (f"{stopped} (the same --multirun command with hydra.sweep.dir={sweep_dir}: finished runs are skipped, "
            f"this one resumes from {output_dir})")  # fmt: skip
