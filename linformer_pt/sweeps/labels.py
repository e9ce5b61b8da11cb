"""Names for runs in legends and tables: the overrides that differ between them.

Shared by the sweep report and scripts/plot_metrics.py; reads only YAML, so it imports neither torch nor Hydra.
"""
import re
from pathlib import Path
from typing import List, Sequence

import yaml

# Hydra's multirun subdir is `<job num>_<override dirname>`; the job number says nothing about the run.
JOB_NUMBER = re.compile(r"^\d+_(?=[\w.+~/@-]+=)")
# Items of an override dirname are joined by commas, but a list value (model.k=[64,32]) has commas too:
# split only before a comma that starts the next `key=`.
ITEM_SEPARATOR = re.compile(r",(?=[\w.+~/@-]+=)")


def override_key(override: str) -> str:
    """`+model.k=64` -> `model.k` (the key an override sets)."""
    return override.lstrip("+~").split("=", 1)[0]


def folder_overrides(name: str) -> List[str]:
    """The overrides a Hydra override dirname such as `0_attention=k64,common.seed=2` stands for."""
    return [item for item in ITEM_SEPARATOR.split(JOB_NUMBER.sub("", name)) if item]


def run_overrides(run_dir: Path) -> List[str]:
    """A run's overrides from `.hydra/overrides.yaml`, else from its folder name (Hydra's override dirname)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if path.is_file():
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(loaded, list):
            return [str(item) for item in loaded]
    return folder_overrides(run_dir.name)


def differing_labels(overrides: Sequence[Sequence[str]], names: Sequence[str]) -> List[str]:
    """One label per run: its overrides whose value is not the same in every run, joined by spaces.

    Overrides of hydra.* keys name folders, not experiments, and are left out. A run whose label would be empty or
    shared with another run is labelled by its name instead, so that every legend entry stays distinct.
    """
    parsed = [{override_key(o): o for o in run if not override_key(o).startswith("hydra.")} for run in overrides]
    # A key is common when every run sets it to the same value; a key missing from some run differs.
    common = {key for key, item in (parsed[0] if parsed else {}).items() if all(p.get(key) == item for p in parsed)}
    labels = [" ".join(item for key, item in p.items() if key not in common) for p in parsed]
    return [
        label if label and labels.count(label) == 1 else name for label, name in zip(labels, names)
    ]


def run_labels(run_dirs: Sequence[Path]) -> List[str]:
    """Legend labels for run folders: the overrides that differ between them (see differing_labels)."""
    return differing_labels([run_overrides(d) for d in run_dirs], [d.name for d in run_dirs])
