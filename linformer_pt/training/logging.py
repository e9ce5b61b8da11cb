"""Metric sinks: a JSONL file (one record per line, flushed at once) and TensorBoard scalars."""
import json
import math
from pathlib import Path
from typing import Any, Dict, Optional


class MetricsLogger:
    """Write each record to metrics.jsonl and, when enabled, numeric fields to TensorBoard."""

    def __init__(self, output_dir: Path, tensorboard: bool = False) -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        self.path = output_dir / "metrics.jsonl"
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb: Optional[Any] = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: it takes a second

            self._tb = SummaryWriter(str(output_dir / "tensorboard"))

    def log(self, record: Dict[str, Any]) -> None:
        """Append `record` (it must have 'split' and 'update') to the log."""
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("update", "epoch") and math.isfinite(value):
                    self._tb.add_scalar(f"{record['split']}/{key}", value, record["update"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
