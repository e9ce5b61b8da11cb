"""The runs of a sweep on disk: finding their folders and reading what each left behind.

A run folder holds summary.json (written when the run ends), .hydra/config.yaml or metrics.jsonl.
"""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from linformer_pt.errors import UserError
from linformer_pt.sweeps.labels import differing_labels, run_overrides

MARKERS = ("summary.json", os.path.join(".hydra", "config.yaml"), "metrics.jsonl")
ATTENTION_ORDER = ("linformer", "standard")
SHARING_ORDER = ("none", "headwise", "kv", "layerwise")
NO_SUMMARY = "no summary.json: still running, killed or preempted"
NO_SUMMARY_AT_END = "no summary.json, though its metrics reach max_update (older than summaries, or killed at the end)"


@dataclass
class Run:
    """One run folder: its summary (None until the run ends), resolved config and metrics records."""

    path: Path
    name: str
    status: str  # finished | unfinished | failed
    reason: str  # why a run is unfinished or failed; '' when finished
    overrides: List[str]
    config: Dict[str, Any]
    summary: Optional[Dict[str, Any]]
    records: List[Dict[str, Any]]
    unreadable_lines: int = 0  # metrics.jsonl lines that are not JSON (a line cut short by kill -9)
    label: str = field(default="")  # the overrides that set this run apart from the others of the report

    def setting(self, dotted: str, default: Any = None) -> Any:
        """A value of the resolved config by its dotted key (`model.k`), or `default` when it is absent."""
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def attention(self) -> str:
        """linformer or standard (model.attention)."""
        return str(self.setting("model.attention", "linformer"))

    @property
    def sharing(self) -> Optional[str]:
        """The sharing scheme of a Linformer run; None for standard attention, which projects nothing."""
        return str(self.setting("model.sharing", "?")) if self.attention == "linformer" else None

    @property
    def n(self) -> Optional[int]:
        """The sequence length trained on (task.tokens_per_sample)."""
        return self.setting("task.tokens_per_sample")

    @property
    def seed(self) -> Optional[int]:
        """common.seed."""
        return self.setting("common.seed")

    @property
    def ks(self) -> Optional[Tuple[int, ...]]:
        """The projected length per layer, one value when uniform; None for standard attention or when unknown."""
        if self.attention != "linformer":
            return None
        if self.setting("model.projection") == "identity":
            k: Any = self.n
        elif self.setting("model.compressed"):  # fairseq's alias, as LinformerRobertaConfig.layer_ks reads it
            k = int(self.setting("model.max_positions", 0)) // int(self.setting("model.compressed"))
        else:
            k = self.setting("model.k")
        ks = tuple(k) if isinstance(k, list) else (k,) if isinstance(k, int) else None
        return ks[:1] if ks and len(set(ks)) == 1 else ks

    def valid(self) -> List[Dict[str, Any]]:
        """The validation records, in the order they were logged."""
        return [r for r in self.records if r.get("split") == "valid" and "ppl" in r]

    def last_update(self) -> Optional[int]:
        """The highest update any metrics record reached, or None when nothing was logged."""
        updates = [r["update"] for r in self.records if isinstance(r.get("update"), int)]
        return max(updates) if updates else None

    def has_tokens(self) -> bool:
        """Whether its validation records count tokens seen (older logs do not)."""
        return any("tokens" in r for r in self.valid())

    def final(self, key: str) -> Any:
        """A field of summary.json, or None when the run has no summary or the field is missing."""
        return (self.summary or {}).get(key)


def describe(run: Run) -> str:
    """A run as the report names it, with its status when it is not finished."""
    name = run.label or run.name
    return name if run.status == "finished" else f"{name} ({run.status})"


def format_k(ks: Optional[Tuple[int, ...]]) -> str:
    """(64,) -> '64'; a per-layer list compactly, repeats counted: (128, 128, 64, 64) -> '[128×2,64×2]'."""
    if not ks:
        return "–"
    if len(ks) == 1:
        return str(ks[0])
    groups: List[List[int]] = []
    for k in ks:
        if groups and groups[-1][0] == k:
            groups[-1][1] += 1
        else:
            groups.append([k, 1])
    return "[" + ",".join(f"{k}×{count}" if count > 1 else str(k) for k, count in groups) + "]"


def sort_key(run: Run) -> Tuple:
    """Attention kind, sharing scheme, k, n, seed, name: neighbours in a table differ in one thing."""
    return (
        ATTENTION_ORDER.index(run.attention) if run.attention in ATTENTION_ORDER else len(ATTENTION_ORDER),
        SHARING_ORDER.index(run.sharing) if run.sharing in SHARING_ORDER else -1,
        run.ks or (),
        run.n or 0,
        run.seed if isinstance(run.seed, int) else 0,
        run.name,
    )


def is_run_dir(path: Path) -> bool:
    """Whether `path` holds one of the MARKERS of a run folder."""
    return any((path / marker).is_file() for marker in MARKERS)


def find_run_dirs(root: Path) -> List[Path]:
    """Run folders at or below `root`, sorted; a run's own subfolders (checkpoints, .hydra) are not searched.

    Links are followed (a sweep may link a run it shares with another sweep), each real folder once, by its
    shallowest path: a link to a folder above it cannot make the search loop. The search is breadth-first, so
    which path names a folder reached twice does not depend on the order the file system lists folders in.
    """
    found: List[Path] = []
    seen = set()
    level = [root]
    while level:
        deeper = []
        for folder in level:
            real = os.path.realpath(folder)
            if real in seen:
                continue
            seen.add(real)
            if is_run_dir(folder):
                found.append(folder)
                continue
            try:  # hidden folders (.submitit logs, .git) hold no runs
                deeper += sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError as err:  # an unreadable folder may hold runs: never drop them silently
                raise UserError(f"cannot search {folder} for runs: {err.strerror}") from None
        level = deeper
    return sorted(found)


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    """A JSON object file, or None when it does not exist; a broken one is a UserError naming it."""
    if not path.is_file():
        return None
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UserError(f"{path} is not valid JSON ({err}); fix or remove it") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{path} must hold a JSON object, not {type(loaded).__name__}")
    return loaded


def read_metrics(path: Path) -> Tuple[List[Dict[str, Any]], int]:
    """(records, unreadable lines) of a metrics.jsonl; a run killed mid-write leaves its last line cut short."""
    if not path.is_file():
        return [], 0
    records, unreadable = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            unreadable += 1
            continue
        if isinstance(record, dict):
            records.append(record)
    return records, unreadable


def read_config(path: Path, summary: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The resolved config: summary.json's copy, else .hydra/config.yaml, else empty."""
    if summary and isinstance(summary.get("config"), dict):
        return summary["config"]
    config_file = path / ".hydra" / "config.yaml"
    if config_file.is_file():
        try:
            loaded = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise UserError(f"{config_file} is not valid YAML ({str(err).splitlines()[0]})") from None
        return loaded if isinstance(loaded, dict) else {}
    return {}


def run_status(summary: Optional[Dict[str, Any]]) -> Tuple[str, str]:
    """(status, reason) from summary.json: finished, failed (with its error) or unfinished (and why)."""
    if summary is None:
        return "unfinished", NO_SUMMARY
    status = summary.get("status")
    if status == "finished":
        return "finished", ""
    if status == "failed":
        return "failed", str(summary.get("error") or "failed; summary.json records no error")
    if status == "interrupted":
        return "unfinished", "interrupted (Ctrl-C or a scheduler's signal); rerun to resume"
    return "unfinished", f"summary.json has status {status!r}"


def load_run(path: Path, name: str) -> Run:
    """Read one run folder."""
    summary = read_json(path / "summary.json")
    records, unreadable = read_metrics(path / "metrics.jsonl")
    status, reason = run_status(summary)
    run = Run(path, name, status, reason, run_overrides(path), read_config(path, summary), summary, records,
              unreadable)  # fmt: skip
    max_update = run.setting("optimization.max_update")
    if summary is None and max_update and (run.last_update() or 0) >= max_update:
        run.reason = NO_SUMMARY_AT_END
    return run


def check_dirs(dirs: Sequence[Path]) -> Dict[Path, List[Path]]:
    """The run folders under each DIR; a missing DIR or one without runs is a UserError naming it."""
    found: Dict[Path, List[Path]] = {}
    seen: set = set()
    for root in dirs:
        if not root.exists():
            raise UserError(f"no such folder: {root}")
        if not root.is_dir():
            raise UserError(f"{root} is not a folder; give sweep or run folders")
        run_dirs = find_run_dirs(root)
        if not run_dirs:
            raise UserError(
                f"no run found in {root} (a run folder holds summary.json, .hydra/config.yaml or metrics.jsonl)"
            )
        # A DIR inside another DIR of the same command would report its runs twice.
        found[root] = [d for d in run_dirs if d.resolve() not in seen]
        seen.update(d.resolve() for d in run_dirs)
    return found


def collect_runs(dirs: Sequence[Path]) -> List[Run]:
    """Every run under `dirs`, named by its path below its DIR and labelled by the overrides that set it apart."""
    found = check_dirs(dirs)
    named = [(root, run_dir, run_dir.relative_to(root).as_posix() if run_dir != root else run_dir.name)
             for root, run_dirs in found.items() for run_dir in run_dirs]  # fmt: skip
    names = [name for _, _, name in named]
    # The same sweep layout under two DIRs gives the same names: those are told apart by their DIR.
    runs = [load_run(run_dir, f"{root.name}/{name}" if names.count(name) > 1 else name)
            for root, run_dir, name in named]  # fmt: skip
    for run, label in zip(runs, differing_labels([r.overrides for r in runs], [r.name for r in runs])):
        run.label = label
    return sorted(runs, key=sort_key)
