"""summary.json: what a run did, written when it ends (finished, interrupted or failed), read by sweep reports.

A rerun of a finished run (the same command, e.g. a multirun sweep started again) finds its summary and trains
nothing; an interrupted or killed run has no finished summary and resumes from its checkpoint.
"""
import datetime
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from linformer_pt.config import TrainConfig
from linformer_pt.data.cache import write_json_atomic
from linformer_pt.errors import UserError

SUMMARY_FILE = "summary.json"
STATUSES = ("finished", "interrupted", "failed")


def plain_config(config: TrainConfig) -> Dict[str, Any]:
    """The resolved config as JSON would give it back (tuples become lists), so saved and current compare equal."""
    return json.loads(json.dumps(asdict(config)))


def run_summary(
    trainer: Any, status: str, run_name: str, overrides: Sequence[str], unigram: Optional[Dict[str, float]]
) -> Dict[str, Any]:
    """The summary of a run whose trainer exists (finished or interrupted; failed inside training)."""
    stats = trainer.stats
    seconds = trainer.training_seconds()
    train_only = max(seconds - stats.valid_seconds, 1e-9)
    final = {key: value for key, value in trainer.last_valid.items() if not key.endswith("masked")} or None
    return {
        "status": status,
        "run_name": run_name,
        "overrides": list(overrides),
        "config": plain_config(trainer.cfg),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "updates": trainer.update,
        "max_update": trainer.cfg.optimization.max_update,
        "tokens_seen": stats.tokens_seen,
        "final_valid": final,
        "best_valid": stats.best_valid or None,
        "unigram_baseline": unigram,
        "tokens_per_s": stats.tokens_seen / train_only,  # validation time left out
        "peak_memory_mb": stats.note_memory(),
        "peak_memory_kind": stats.memory_kind,
        "wall_seconds": seconds,
        "valid_seconds": stats.valid_seconds,
        "world_size": trainer.dist.world_size,
        "finished_at": now(),
    }


def failure_summary(config: Optional[TrainConfig], error: str, run_name: str, overrides: Sequence[str]) -> Dict[str, Any]:
    """The summary of a run that stopped on an error before or during training."""
    return {"status": "failed", "error": error, "run_name": run_name, "overrides": list(overrides),
            "config": plain_config(config) if config is not None else None, "finished_at": now()}  # fmt: skip


def write_summary(output_dir: Path, summary: Dict[str, Any]) -> Path:
    """Write summary.json atomically (a reader never sees half a file); a full disk is one UserError line.

    On failure no temporary file is left and an earlier summary.json stays as it was, so a sweep report still
    reads that run's previous state.
    """
    path = Path(output_dir) / SUMMARY_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, summary)
    except OSError as err:
        raise UserError(f"could not write {path}: {err.strerror or err}") from None
    return path


def read_summary(output_dir: Path) -> Optional[Dict[str, Any]]:
    """The run's summary, or None when it has none (or an unreadable one)."""
    try:
        return json.loads((Path(output_dir) / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def finished_summary(output_dir: Path, config: TrainConfig) -> Optional[Dict[str, Any]]:
    """The summary of a run that already finished in this folder with exactly this config, else None."""
    summary = read_summary(output_dir)
    if summary and summary.get("status") == "finished" and summary.get("config") == plain_config(config):
        return summary
    return None


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")

