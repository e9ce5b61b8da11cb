"""What `dataset.sources` and `dataset.valid_sets` declare: named corpora, their weights, and the shares they give.

A source is `{name, files | hf_name (+ hf_split) | path, weight}`: files, folders or globs; a `datasets` folder
saved with save_to_disk (or a hub name); or a linformer-preprocess folder. A validation set is the same without a
weight, with its own optional `max_valid_tokens`. Weights are given for every source or for none; without them
the shares follow the sources' sizes to the power `dataset.temperature` (XLM-R's sampling: 1 is proportional to
size, 0 uniform over sources, in between flattens towards the small ones).
"""
import re
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

import numpy as np

from linformer_pt.errors import UserError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # used in metric keys ("books/ppl") and TensorBoard tags
SOURCE_KEYS = ("name", "files", "hf_name", "hf_config", "hf_split", "path", "weight")
VALID_KEYS = ("name", "files", "hf_name", "hf_config", "hf_split", "path", "max_valid_tokens")


@dataclass
class CorpusSpec:
    """One named corpus of a mixture (a training source) or one named validation set."""

    name: str
    files: List[str] = field(default_factory=list)
    hf_name: str = ""
    hf_config: str = ""
    hf_split: str = ""  # default: train for a source, validation for a validation set
    path: str = ""
    weight: Optional[float] = None  # sources only
    max_valid_tokens: Optional[int] = None  # validation sets only; None: dataset.max_valid_tokens


def _as_list(value: Any) -> Any:
    return [str(value)] if isinstance(value, (str, int, float)) and not isinstance(value, bool) else value


def parse_specs(value: Any, key: str, allowed: Sequence[str]) -> List[CorpusSpec]:
    """Checked specs from the config's list of mappings; every mistake is a one-line UserError naming `key`."""
    if value is None or value == []:
        return []
    if not isinstance(value, list):
        raise UserError(f"{key}={value!r} must be a list of {{name: ..., files: [...], ...}} entries")
    specs: List[CorpusSpec] = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise UserError(f"{where}={item!r} must be a mapping such as {{name: books, files: [books/]}}")
        unknown = sorted(set(item) - set(allowed))
        if unknown:
            raise UserError(f"{where} has unknown key(s) {unknown}; allowed: {', '.join(allowed)}")
        name = item.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise UserError(f"{where}.name={name!r} must be a name of letters, digits, '_', '.', '-' (e.g. books)")
        files = _as_list(item.get("files") or [])
        if not isinstance(files, list) or not all(isinstance(f, str) and f.strip() == f and f for f in files):
            raise UserError(f"{where}.files={item.get('files')!r} must be a list of files, folders or globs")
        given = [k for k in ("files", "hf_name", "path") if item.get(k)]
        if len(given) != 1:
            raise UserError(f"{where} ({name}) needs exactly one of files, hf_name or path; it has {given or 'none'}")
        spec = CorpusSpec(name, files, str(item.get("hf_name") or ""), str(item.get("hf_config") or ""),
                          str(item.get("hf_split") or ""), str(item.get("path") or ""))  # fmt: skip
        if "weight" in item and item["weight"] is not None:
            weight = item["weight"]
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0 or weight == float("inf"):
                raise UserError(f"{where}.weight={weight!r} must be a finite number > 0")
            spec.weight = float(weight)
        if item.get("max_valid_tokens") is not None:
            budget = item["max_valid_tokens"]
            if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
                raise UserError(f"{where}.max_valid_tokens={budget!r} must be an integer >= 0 (0: all)")
            spec.max_valid_tokens = budget
        specs.append(spec)
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"{key}: the name(s) {twice} are used twice; each entry needs its own name")
    return specs


def check_weights(sources: List[CorpusSpec], temperature: Optional[float]) -> None:
    """Weights for all sources or none; a temperature only without weights."""
    weighted = [s.name for s in sources if s.weight is not None]
    if weighted and len(weighted) != len(sources):
        unweighted = [s.name for s in sources if s.weight is None]
        raise UserError(f"dataset.sources: {unweighted} have no weight while {weighted} do; give every source a "
                        "weight, or none and set dataset.temperature")  # fmt: skip
    if weighted and temperature is not None:
        raise UserError("dataset.temperature sets the weights from the sources' sizes; drop it or the sources' weights")
    if temperature is not None and not 0 <= temperature <= 10:
        raise UserError(f"dataset.temperature={temperature} must be in [0, 10] (1: by size, 0: uniform)")


def mixture_shares(sizes: Sequence[int], weights: Sequence[Optional[float]], temperature: Optional[float]) -> np.ndarray:
    """The probability of each source per sampled sequence: the given weights normalised, else size^T normalised."""
    if all(w is not None for w in weights):
        raw = np.asarray(weights, dtype=np.float64)
    else:
        t = 1.0 if temperature is None else temperature
        raw = np.asarray(sizes, dtype=np.float64) ** t
    if not raw.sum() > 0:
        raise UserError(f"dataset.sources: the weights {list(raw)} do not give a distribution (sizes {list(sizes)})")
    return raw / raw.sum()


def describe_shares(names: Sequence[str], sizes: Sequence[int], shares: np.ndarray, samples: int) -> List[str]:
    """Start-up lines, one per source: size, share of the sequences drawn, and epochs over `samples` draws."""
    lines = []
    for name, size, share in zip(names, sizes, shares):
        epochs = share * samples / size if size else float("inf")
        lines.append(f"  source {name}: {size:,} samples, share {share:.1%} of the sequences drawn, "
                     f"{epochs:.2f} epochs of it in the run")  # fmt: skip
    return lines


def best_set(names: Sequence[str], chosen: str) -> str:
    """checkpoint.best_valid_set among the validation sets' names ("" alone: one unnamed set); "": the first."""
    if chosen and chosen not in names:
        if list(names) == [""]:
            raise UserError(f"checkpoint.best_valid_set={chosen!r} names a set, but this run has one unnamed "
                            "validation set; name them with dataset.valid_sets")  # fmt: skip
        raise UserError(f"checkpoint.best_valid_set={chosen!r} is not a validation set; choose one of {list(names)}")
    return chosen or names[0]


def set_budget(data: Any, name: str) -> int:
    """A validation set's token budget: its own max_valid_tokens, else dataset.max_valid_tokens (0: all of it)."""
    for spec in parse_specs(data.valid_sets, "dataset.valid_sets", VALID_KEYS):
        if spec.name == name and spec.max_valid_tokens is not None:
            return spec.max_valid_tokens
    return data.max_valid_tokens
