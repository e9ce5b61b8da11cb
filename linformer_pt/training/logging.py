"""Metric sinks: a JSONL file (one record per line, flushed at once), TensorBoard scalars and wandb.

Only the main process logs; the others get a disabled logger. Also: the peak FLOP/s used for MFU.
"""
import json
import math
import secrets
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from linformer_pt.errors import UserError

# Dense bf16/fp16 tensor-core peaks (TFLOP/s), by device name: what MFU is measured against.
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "V100": 125.0}


def peak_tflops(device: torch.device) -> float:
    """The device's peak for MFU, or 0 when unknown (CPUs: set trainer.peak_tflops to get MFU)."""
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in GPU_PEAK_TFLOPS.items() if key in name), 0.0)


class MetricsLogger:
    """Write each record to metrics.jsonl and, when enabled, to TensorBoard and wandb."""

    def __init__(
        self,
        output_dir: Path,
        cfg: Any,
        enabled: bool = True,
        keep_lines: Optional[int] = None,
        purge_step: Optional[int] = None,
    ) -> None:
        """`keep_lines`: the lines of an existing metrics.jsonl a (re)started run keeps: those its checkpoint saw
        (0 without one); later ones were written after that checkpoint and are logged again. None appends.
        `purge_step` does the same in TensorBoard."""
        self.path = output_dir / "metrics.jsonl"
        self.enabled = enabled
        self._file = self._tb = self._wandb = None
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        if keep_lines is not None:
            cut_lines(self.path, keep_lines)
        self._file = open(self.path, "a", encoding="utf-8")
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: it takes a second

            self._tb = SummaryWriter(str(output_dir / "tensorboard"), purge_step=purge_step)
        if cfg.logging.wandb:
            self._wandb = start_wandb(output_dir, cfg)

    def log(self, record: Dict[str, Any]) -> None:
        """Append `record` (it must have 'split' and 'update') to the log."""
        if not self.enabled:
            return
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        scalars = {
            f"{record['split']}/{key}": value
            for key, value in record.items()
            if isinstance(value, (int, float)) and key not in ("update", "epoch") and math.isfinite(value)
        }
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, record["update"])
        if self._wandb is not None:
            self._wandb.log(scalars, step=record["update"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def cut_lines(path: Path, keep: int) -> None:
    """Keep the first `keep` lines of a log file (atomically: a crash leaves the old or the new file)."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    if len(lines) <= keep and all(line.endswith("\n") for line in lines):
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(line if line.endswith("\n") else line + "\n" for line in lines[:keep])
    tmp.replace(path)


def start_wandb(output_dir: Path, cfg: Any) -> Optional[Any]:
    """A wandb run whose id is kept in the output folder, so a resumed run continues the same curve."""
    try:
        import wandb
    except ImportError:
        raise UserError("logging.wandb=true needs wandb: pip install 'linformer-pt[wandb]'") from None
    id_file = output_dir / "wandb_run_id"
    run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)  # wandb's own id length
    id_file.write_text(run_id)
    return wandb.init(
        project=cfg.logging.wandb_project, id=run_id, resume="allow", dir=str(output_dir),
        name=output_dir.name, config=asdict(cfg),
    )  # fmt: skip
