"""The numbers a sweep report draws from its finished runs: seed groups, noise, baselines and plain facts.

A "setting" is a set of finished runs whose configs differ only in the seed (or a single run): its mean is what
the k plot and the reading section compare, so that one lucky seed does not decide a comparison.
"""
import copy
import json
import statistics
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from linformer_pt.sweeps.labels import differing_labels, override_key
from linformer_pt.sweeps.runs import Run, format_k

# Keys that do not change what a run learns (where it writes, what it logs, how data is fed to it):
# runs that differ only in these and the seed are repeats of one setting.
NOT_SETTING = ("common.seed", "logging", "checkpoint", "dataset.cache_dir", "dataset.num_workers")
# Keys that make a run Linformer or standard attention, or shape only the projections.
ATTENTION_KEYS = ("model.attention", "model.k", "model.compressed", "model.sharing", "model.projection",
                  "model.projection_init", "model.freeze_projections")  # fmt: skip
LENGTH_KEYS = ("task.tokens_per_sample", "model.max_positions")  # n, which legends and facts name on their own


@dataclass
class Setting:
    """Finished runs with one config but for the seed (and NOT_SETTING keys)."""

    runs: List[Run]

    @property
    def first(self) -> Run:
        """The run that stands for the setting (its config but for the seed is theirs)."""
        return self.runs[0]

    @property
    def ppl(self) -> float:
        """The mean final validation ppl of its runs."""
        return statistics.fmean(final_ppl(r) for r in self.runs)

    @property
    def label(self) -> str:
        """Its runs' common label without the seed override."""
        kept = [o for o in self.first.label.split(" ") if override_key(o) != "common.seed"]
        return " ".join(kept) or self.first.name


def by_number(value: Any) -> Tuple[bool, Any]:
    """A sort key putting numbers in order and unknown values (None) last."""
    return (not isinstance(value, (int, float)), value if isinstance(value, (int, float)) else 0)


def final_ppl(run: Run) -> Optional[float]:
    """summary.json's final validation ppl, or None."""
    value = (run.final("final_valid") or {}).get("ppl")
    return float(value) if isinstance(value, (int, float)) else None


def unigram_ppl(run: Run) -> Optional[float]:
    """summary.json's unigram-baseline ppl of the validation set, or None when it was not measured."""
    value = (run.final("unigram_baseline") or {}).get("ppl")
    return float(value) if isinstance(value, (int, float)) else None


def setting_key(run: Run, ignored: Sequence[str] = NOT_SETTING) -> str:
    """The run's config without the `ignored` keys, as text; a run without a known config is a setting of its own."""
    if not run.config:
        return f"path:{run.path}"
    config = copy.deepcopy(run.config)
    for dotted in ignored:
        *parents, last = dotted.split(".")
        node: Any = config
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return json.dumps(config, sort_keys=True, default=str)


def comparable_key(run: Run) -> str:
    """The run's config without its attention and NOT_SETTING keys: runs with equal keys differ in attention only
    (same data, batch, schedule and budget), so only they are compared."""
    return setting_key(run, NOT_SETTING + ATTENTION_KEYS)


def flat_config(node: Any, prefix: str = "") -> Dict[str, Any]:
    """A nested config as {dotted key: value}."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: Dict[str, Any] = {}
    for key, value in node.items():
        out.update(flat_config(value, f"{prefix}{key}."))
    return {key.rstrip("."): value for key, value in out.items()}


def comparison_labels(groups: Sequence[Run]) -> List[str]:
    """For runs standing for different comparable groups: what sets each group apart (e.g.
    `optimization.max_update=3600`), apart from attention and n; '' for all when that is nothing."""
    ignored = NOT_SETTING + ATTENTION_KEYS + LENGTH_KEYS
    items = [[f"{key}={json.dumps(value, default=str)}" for key, value in flat_config(run.config).items()
              if not any(key == k or key.startswith(k + ".") for k in ignored)] for run in groups]  # fmt: skip
    labels = differing_labels(items, [""] * len(groups))
    return labels if any(labels) else [""] * len(groups)


def settings(runs: Sequence[Run]) -> List[Setting]:
    """Finished runs with a final ppl, grouped into settings, in the runs' order."""
    groups: Dict[str, List[Run]] = {}
    for run in runs:
        if run.status == "finished" and final_ppl(run) is not None:
            groups.setdefault(setting_key(run), []).append(run)
    return [Setting(group) for group in groups.values()]


@dataclass
class Spread:
    """The final-ppl spread of one setting's seeds."""

    setting: Setting
    low: float
    high: float

    @property
    def relative(self) -> float:
        """(max - min) / min, in percent."""
        return 100.0 * (self.high - self.low) / self.low


def seed_spreads(runs: Sequence[Run]) -> List[Spread]:
    """The spread of every setting run with two or more seeds."""
    spreads = []
    for setting in settings(runs):
        values = [final_ppl(r) for r in setting.runs]
        if len({r.seed for r in setting.runs}) > 1:
            spreads.append(Spread(setting, min(values), max(values)))
    return spreads


def noise_percent(spreads: Sequence[Spread]) -> Optional[float]:
    """The largest relative seed spread: ppl differences below it are not evidence of anything."""
    return max((s.relative for s in spreads), default=None)


def dataset_name(run: Run) -> str:
    """Which validation data a run used, e.g. `default` or `hf (wikitext)`."""
    detail = run.setting("dataset.hf_name") or run.setting("dataset.path") or ",".join(
        run.setting("dataset.valid_files") or []
    )
    name = str(run.setting("dataset.name", "?"))
    return f"{name} ({detail})" if detail else name


def baselines(runs: Sequence[Run]) -> Dict[Tuple[str, Any], float]:
    """The unigram ppl of the validation set per (dataset, n), from the finished runs that measured it."""
    found: Dict[Tuple[str, Any], float] = {}
    for run in runs:
        if run.status == "finished" and unigram_ppl(run) is not None:
            found.setdefault((dataset_name(run), run.n), unigram_ppl(run))
    return found


def series_name(setting: Setting, vary: Sequence[str]) -> str:
    """`sharing=kv`, plus the projection and n when those vary among the Linformer settings."""
    run = setting.first
    parts = [f"sharing={run.sharing}"]
    parts += [f"projection={run.setting('model.projection')}"] if "projection" in vary else []
    parts += [f"n={run.n}"] if "n" in vary else []
    return ", ".join(parts)


def group_labels(all_settings: Sequence[Setting]) -> Dict[str, str]:
    """comparable_key -> what sets its group apart from the others at the same n (see comparison_labels)."""
    groups: Dict[str, Run] = {}
    for setting in all_settings:
        groups.setdefault(comparable_key(setting.first), setting.first)
    labels: Dict[str, str] = {}
    for n in {run.n for run in groups.values()}:
        keys = [key for key, run in groups.items() if run.n == n]
        labels.update(zip(keys, comparison_labels([groups[key] for key in keys])))
    return labels


def linformer_series(runs: Sequence[Run]) -> Dict[str, List[Setting]]:
    """Linformer settings with one k for all layers, per sharing scheme (and projection, n when they vary) and
    comparable group (other data or budget: another series, named by what differs), by k."""
    all_settings = settings(runs)
    labels = group_labels(all_settings)
    linformer = [s for s in all_settings if s.first.attention == "linformer" and s.first.ks and len(s.first.ks) == 1]
    vary = [name for name, value in (("projection", lambda r: r.setting("model.projection")), ("n", lambda r: r.n))
            if len({value(s.first) for s in linformer}) > 1]  # fmt: skip
    series: Dict[str, List[Setting]] = {}
    for setting in linformer:
        label = labels[comparable_key(setting.first)]
        series.setdefault(series_name(setting, vary) + (f", {label}" if label else ""), []).append(setting)
    return {name: sorted(group, key=lambda s: s.first.ks) for name, group in series.items()}


def standard_references(runs: Sequence[Run]) -> List[Tuple[str, List[Setting], List[Setting]]]:
    """(label, standard settings, Linformer settings) per comparable group holding both, by n: only runs that
    differ in attention alone are compared (the label says what sets the group apart; '' when nothing)."""
    all_settings = settings(runs)
    labels = group_labels(all_settings)
    groups: Dict[str, List[Setting]] = {}
    for setting in all_settings:
        groups.setdefault(comparable_key(setting.first), []).append(setting)
    found = []
    for key, group in sorted(groups.items(), key=lambda item: by_number(item[1][0].first.n)):
        standard = [s for s in group if s.first.attention == "standard"]
        linformer = [s for s in group if s.first.attention == "linformer"]
        if standard and linformer:
            found.append((labels[key], standard, linformer))
    return found


def monotone_facts(runs: Sequence[Run], noise: Optional[float]) -> List[str]:
    """'ppl falls as k grows' per series with at least three values of k: yes or no, with the numbers."""
    facts = []
    for name, group in linformer_series(runs).items():
        if len(group) < 3:
            continue
        ppls = [s.ppl for s in group]
        monotone = all(b <= a for a, b in zip(ppls, ppls[1:]))
        numbers = ", ".join(f"k={format_k(s.first.ks)}: {s.ppl:,.1f}" for s in group)
        fact = f"ppl is monotone in k (lower for larger k) for {name}: {'yes' if monotone else 'no'} ({numbers})"
        if noise is not None and any(abs(b - a) / min(a, b) * 100 < noise for a, b in zip(ppls, ppls[1:])):
            fact += f"; some steps are smaller than the seed noise ({noise:.1f}%)"
        facts.append(fact)
    return facts


def standard_vs_linformer_facts(runs: Sequence[Run], noise: Optional[float]) -> List[str]:
    """Per n and comparable group (same data and budget) with both kinds: the best Linformer setting against
    standard attention, in % ppl."""
    facts = []
    for label, standard, linformer in standard_references(runs):
        n = standard[0].first.n
        reference = statistics.fmean(s.ppl for s in standard)
        best = min(linformer, key=lambda s: s.ppl)
        change = 100.0 * (best.ppl - reference) / reference
        where = f"n={n}, {label}" if label else f"n={n}"
        fact = (f"best Linformer vs standard attention at {where}: {change:+.1f}% ppl "
                f"({best.label}: {best.ppl:,.1f} vs {reference:,.1f})")  # fmt: skip
        if noise is not None and abs(change) < noise:
            fact += f"; within the seed noise ({noise:.1f}%)"
        facts.append(fact)
    return facts


def unigram_facts(runs: Sequence[Run]) -> List[str]:
    """Whether every finished run with a measured baseline ended below the unigram ppl."""
    compared = [r for r in runs if r.status == "finished" and final_ppl(r) is not None and unigram_ppl(r)]
    if not compared:
        return []
    worse = [r.name for r in compared if final_ppl(r) >= unigram_ppl(r)]
    if not worse:
        return ["every finished run ends below the unigram baseline ppl: yes"]
    return [f"every finished run ends below the unigram baseline ppl: no ({', '.join(worse)} do not)"]


def reading(runs: Sequence[Run], noise: Optional[float]) -> List[str]:
    """Facts that follow from the numbers alone; none when the sweep holds nothing to compare."""
    return unigram_facts(runs) + monotone_facts(runs, noise) + standard_vs_linformer_facts(runs, noise)
