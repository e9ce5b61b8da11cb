"""What the console shows while a run trains: a progress bar on a terminal, fairseq-style lines elsewhere.

A bar redrawn with carriage returns is unreadable in a batch job's log file, so when stderr is not a terminal (a
Slurm job, `> log 2>&1`, nohup) or `logging.progress_bar=false`, each train record and each validation is printed
as one line instead:

    train | epoch 001 | update 20/300 | loss 7.412 | ppl 1659.2 | lr 1.20e-04 | gnorm 1.31 | tok/s 8053 | eta 4m12s
    valid | epoch 001 | update 20 | loss 7.163 | ppl 1290.3 | masked 717
"""
import sys
import time
from typing import Any, Dict, Optional

from tqdm import tqdm


def duration(seconds: float) -> str:
    """4m12s, 1h03m, 12s."""
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """The console view of one training session (main process only: the others pass enabled=False)."""

    def __init__(self, total: int, initial: int, enabled: bool, bar: bool, language_model: bool,
                 stream: Optional[Any] = None) -> None:  # fmt: skip
        """`bar`: logging.progress_bar (a bar is drawn only on a terminal); `language_model`: ppl means something."""
        stream = stream or sys.stderr
        self.use_bar = enabled and bar and stream.isatty()
        self.lines = enabled and not self.use_bar
        self.total, self.initial, self.language_model = total, initial, language_model
        self.started = time.perf_counter()
        self.bar = tqdm(total=total, initial=initial, unit="upd", dynamic_ncols=True, desc="train",
                        disable=not self.use_bar, file=stream)  # fmt: skip

    def step(self) -> None:
        self.bar.update(1)

    def train(self, update: int, epoch: int, summary: Dict[str, float]) -> None:
        """A train record: the bar's figures, or one line."""
        shown = {"loss": f"{summary['loss']:.3f}"}
        if self.language_model:  # a classifier's exp(cross-entropy) is no perplexity
            shown["ppl"] = f"{summary['ppl']:.1f}"
        shown.update(lr=f"{summary['lr']:.2e}", gnorm=f"{summary['gnorm']:.2f}", tok_s=f"{summary['tokens_per_s']:.0f}")
        if "loss_scale" in summary:
            shown["scale"] = f"{summary['loss_scale']:g}"
        self.bar.set_postfix(shown)
        if self.lines:
            done = update - self.initial
            eta = (self.total - update) * (time.perf_counter() - self.started) / done if done > 0 else 0.0
            fields = " | ".join(f"{key.replace('_', '/')} {value}" for key, value in shown.items())
            print(f"train | epoch {epoch:03d} | update {update}/{self.total} | {fields} | eta {duration(eta)}", flush=True)

    def valid(self, update: int, epoch: int, result: Dict[str, float]) -> None:
        """A validation result, on its own line (above the bar on a terminal)."""
        if not (self.lines or self.use_bar):
            return
        # Named sets ("books/ppl") show their headline figure only: a line per validation must stay readable.
        hidden = ("/loss", "/masked") if self.language_model else ("/masked",)
        fields = " | ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                            for key, value in result.items() if not key.endswith(hidden))  # fmt: skip
        line = f"valid | epoch {epoch:03d} | update {update} | {fields}"
        if self.use_bar:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def close(self) -> None:
        self.bar.close()
