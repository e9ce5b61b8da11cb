"""Run folders written by hand in the formats a training run leaves behind (no training needed)."""
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

TOKENS_PER_UPDATE = 8192
UNIGRAM = {"loss": 7.1, "ppl": 1230.0}


def config(attention: str, k, sharing: str, n: int, seed: int, max_update: int) -> Dict:
    """The resolved config a run writes into .hydra/config.yaml (the keys the report reads, and some it ignores)."""
    return {
        "common": {"seed": seed, "device": "cpu", "threads": 0},
        "dataset": {"name": "default", "valid_files": [], "cache_dir": "data/cache", "num_workers": 0},
        "task": {"name": "masked_lm", "tokens_per_sample": n},
        "model": {"name": "linformer_roberta", "layers": 2, "max_positions": n, "attention": attention, "k": k,
                  "compressed": 0, "sharing": sharing, "projection": "linear"},
        "optimization": {"max_update": max_update},
        "trainer": {"precision": "fp32"},
        "checkpoint": {"save_dir": "checkpoints"},
        "logging": {"log_interval": 10},
    }  # fmt: skip


def valid_records(ppls: Sequence[Tuple[int, float]], with_tokens: bool = True) -> List[Dict]:
    """Validation records at (update, ppl), 0.5 s per update, TOKENS_PER_UPDATE tokens per update."""
    records = []
    for update, ppl in ppls:
        record = {"split": "valid", "update": update, "epoch": 1, "wall": 0.5 * update, "loss": 0.0, "ppl": ppl,
                  "masked": 1000}  # fmt: skip
        if with_tokens:
            record["tokens"] = update * TOKENS_PER_UPDATE
        records.append(record)
    return records


def write_run(
    sweep: Path,
    name: str,
    overrides: List[str],
    *,
    attention: str = "linformer",
    k=64,
    sharing: str = "headwise",
    n: int = 256,
    seed: int = 1,
    ppls: Sequence[Tuple[int, float]] = ((100, 900.0), (200, 400.0)),
    status: Optional[str] = "finished",
    error: str = "",
    max_update: int = 200,
    with_tokens: bool = True,
    tokens_per_s: float = 9400.0,
    peak_memory_mb: float = 812.0,
) -> Path:
    """A run folder: .hydra/{overrides,config}.yaml, metrics.jsonl, and summary.json unless status is None."""
    run = sweep / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    cfg = config(attention, k, sharing, n, seed, max_update)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    train = [{"split": "train", "update": u, "epoch": 1, "wall": 0.5 * u, "tokens": u * TOKENS_PER_UPDATE,
              "loss": 7.0, "ppl": 1100.0, "gnorm": 1.0, "tokens_per_s": tokens_per_s, "lr": 1e-4}
             for u, _ in ppls]  # fmt: skip
    records = [r for pair in zip(train, valid_records(ppls, with_tokens)) for r in pair]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if status is not None:
        last, final = ppls[-1]
        best_update, best = min(ppls, key=lambda p: p[1])
        summary = {
            "status": status, "run_name": name, "overrides": overrides, "config": cfg, "parameters": 1234567,
            "updates": last, "max_update": max_update, "tokens_seen": last * TOKENS_PER_UPDATE,
            "final_valid": {"loss": 6.0, "ppl": final}, "best_valid": {"loss": 6.0, "ppl": best, "update": best_update},
            "unigram_baseline": UNIGRAM, "tokens_per_s": tokens_per_s, "peak_memory_mb": peak_memory_mb,
            "peak_memory_kind": "process_max_rss", "wall_seconds": 0.5 * last, "finished_at": "2026-11-29T07:00:00",
        }  # fmt: skip
        if error:
            summary["error"] = error
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def table_rows(report: str, heading: str) -> List[List[str]]:
    """The body rows of the first Markdown table after `heading`, as lists of cells."""
    lines = report.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows
