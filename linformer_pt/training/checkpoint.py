"""Checkpoints on disk: full training state, written atomically, with provenance.

A checkpoint holds model, optimizer, LR schedule, update count, data position, RNG states, metrics, the
resolved config and provenance (package version, git revision, tokenizer and data hashes).
"""
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

import linformer_pt

CHECKPOINT_LAST = "checkpoint_last.pt"
CHECKPOINT_BEST = "checkpoint_best.pt"  # lowest validation loss so far


def git_revision() -> Optional[str]:
    """The git commit of the package source, if it runs from a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(linformer_pt.__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def provenance(extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """What produced a checkpoint: package version, git revision, torch version, plus `extra` (data hashes)."""
    return {
        "linformer_pt": linformer_pt.__version__,
        "git_revision": git_revision(),
        "torch": torch.__version__,
        **(extra or {}),
    }


def rng_states() -> Dict[str, Any]:
    states: Dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def save_checkpoint(path: Union[str, Path], state: Dict[str, Any]) -> Path:
    """torch.save through a temporary file + fsync + rename: a crash never leaves a truncated checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load a checkpoint written by save_checkpoint (it contains the config as plain containers)."""
    return torch.load(path, map_location=map_location, weights_only=False)
