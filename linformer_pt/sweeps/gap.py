"""Linformer against standard attention over training: the ppl gap at equal tokens, at every shared validation.

The final-ppl comparison says who is ahead at the end of one budget; this one says whether the gap grows or
closes as the runs approach convergence, the regime of the paper's figures. A Linformer run is compared with the
standard-attention runs whose configs equal its own but for the attention (and the seed): same data, batch,
schedule and budget. Their validations are paired by update, and only where both had seen the same number of
tokens (within TOKEN_TOLERANCE: another seed packs slightly different blocks). Unfinished runs take part with the
validations they reached: a long pair is worth reading while it runs.
"""
import statistics
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from linformer_pt.sweeps.analysis import ATTENTION_KEYS, comparable_key  # noqa: F401  (ATTENTION_KEYS: gap's API)
from linformer_pt.sweeps.runs import Run, describe

TOKEN_TOLERANCE = 0.01
MAX_ROWS = 10  # a long run validates dozens of times: the table shows evenly spaced ones, always the last


@dataclass
class GapPoint:
    """One shared validation of a Linformer run and its standard-attention reference."""

    update: int
    tokens: Optional[int]
    standard: float
    linformer: float

    @property
    def percent(self) -> float:
        """How much higher the Linformer's ppl is, in percent of standard attention's (negative: lower)."""
        return 100.0 * (self.linformer / self.standard - 1.0)


@dataclass
class GapCurve:
    """A Linformer run against the mean of its comparable standard-attention runs."""

    run: Run
    reference: List[Run]
    points: List[GapPoint]

    @property
    def finished(self) -> bool:
        """Whether the Linformer run and all of its reference finished (else the curve may still move)."""
        return all(run.status == "finished" for run in (self.run, *self.reference))


def reference_ppls(standard: Sequence[Run]) -> Dict[int, Tuple[Optional[int], float]]:
    """update -> (tokens, mean ppl) at the updates where every run of `standard` validated, update 0 left out."""
    per_run = [{r["update"]: r for r in run.valid() if isinstance(r.get("update"), int) and r["update"] > 0}
               for run in standard]  # fmt: skip
    shared = set.intersection(*(set(records) for records in per_run)) if per_run else set()
    return {update: (per_run[0][update].get("tokens"), statistics.fmean(r[update]["ppl"] for r in per_run))
            for update in sorted(shared)}  # fmt: skip


def same_tokens(a: Optional[int], b: Optional[int]) -> bool:
    """Whether two token counts agree within TOKEN_TOLERANCE (two logs without token counts agree)."""
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= TOKEN_TOLERANCE * max(a, b, 1)


def gap_curve(run: Run, standard: List[Run]) -> GapCurve:
    """The Linformer run's validations paired with the reference's."""
    reference = reference_ppls(standard)
    points = []
    for record in run.valid():
        update = record.get("update")
        if update in reference and same_tokens(record.get("tokens"), reference[update][0]):
            points.append(GapPoint(update, record.get("tokens"), reference[update][1], record["ppl"]))
    return GapCurve(run, standard, points)


def gap_curves(runs: Sequence[Run]) -> List[GapCurve]:
    """Every Linformer run that has comparable standard-attention runs and at least one shared validation."""
    standard: Dict[str, List[Run]] = {}
    for run in runs:
        if run.attention == "standard":
            standard.setdefault(comparable_key(run), []).append(run)
    curves = []
    for run in runs:
        if run.attention == "linformer" and comparable_key(run) in standard:
            curve = gap_curve(run, standard[comparable_key(run)])
            if curve.points:
                curves.append(curve)
    return curves


def spaced(points: Sequence[GapPoint], count: int = MAX_ROWS) -> List[GapPoint]:
    """At most `count` evenly spaced points, the first and the last among them."""
    if len(points) <= count:
        return list(points)
    step = (len(points) - 1) / (count - 1)
    return [points[round(i * step)] for i in range(count)]


def gap_facts(runs: Sequence[Run], noise: Optional[float]) -> List[str]:
    """Per Linformer run with two or more shared validations: its gap early, halfway and at the last one."""
    facts = []
    for curve in gap_curves(runs):
        if len(curve.points) < 2:
            continue
        first, middle, last = curve.points[0], curve.points[len(curve.points) // 2], curve.points[-1]
        if noise is not None and abs(last.percent - middle.percent) < noise:
            trend = "holds within the seed noise"
        elif round(abs(last.percent), 1) == round(abs(middle.percent), 1):  # equal as printed: neither way
            trend = "holds"
        else:
            trend = "narrows" if abs(last.percent) < abs(middle.percent) else "widens"
        fact = (f"{describe(curve.run)} vs standard attention at equal tokens: {first.percent:+.1f}% at update "
                f"{first.update}, {middle.percent:+.1f}% at {middle.update}, {last.percent:+.1f}% at {last.update} "
                f"(the gap {trend} in the second half)")  # fmt: skip
        if noise is not None and abs(last.percent) < noise:
            fact += f"; the last is within the seed noise ({noise:.1f}%)"
        facts.append(fact)
    return facts
