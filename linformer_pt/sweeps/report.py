"""The report of a sweep: report.md with tables of finished and unfinished runs, seed noise, plots and a reading.

build_report() is what `linformer-sweep-report` runs; the numbers come from analysis.py, the PNGs from plots.py.
"""
import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from linformer_pt.errors import UserError
from linformer_pt.sweeps.analysis import (
    Spread, baselines, final_ppl, noise_percent, reading, seed_spreads, unigram_ppl,
)  # fmt: skip
from linformer_pt.sweeps.gap import gap_curves, gap_facts, spaced
from linformer_pt.sweeps.plots import pyplot, write_plots
from linformer_pt.sweeps.runs import Run, collect_runs, describe, format_k

REPORT = "report.md"
FINISHED_COLUMNS = ("run", "attention", "n", "k", "sharing", "seed", "updates", "tokens seen", "final valid ppl",
                    "best valid ppl", "final / unigram ppl", "tokens/s", "peak memory (MB)",
                    "training time")  # fmt: skip


def number(value: Any, spec: str = ",.1f") -> str:
    """A number formatted by `spec`, or '–' when it is missing."""
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def tokens(value: Any) -> str:
    """7372800 -> '7.37M'."""
    if not isinstance(value, (int, float)):
        return "–"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return str(int(value))


def duration(seconds: Any) -> str:
    """790 -> '13m10s', 7500 -> '2h05m'."""
    if not isinstance(seconds, (int, float)):
        return "–"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    """A Markdown table; a '|' inside a cell (an error message) is escaped."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def memory(run: Run, mixed: bool) -> str:
    """Peak memory in MB, with its kind when the runs measured different kinds (process RSS vs CUDA)."""
    text = number(run.final("peak_memory_mb"), ",.0f")
    kind = run.final("peak_memory_kind")
    return f"{text} ({kind})" if mixed and kind and text != "–" else text


def finished_row(run: Run, mixed_memory: bool) -> List[str]:
    """One row of the finished-runs table (FINISHED_COLUMNS)."""
    best = run.final("best_valid") or {}
    ppl, unigram = final_ppl(run), unigram_ppl(run)
    return [
        run.name, run.attention, number(run.n, "d"), format_k(run.ks), run.sharing or "–", number(run.seed, "d"),
        number(run.final("updates"), "d"), tokens(run.final("tokens_seen")), number(ppl),
        f"{number(best.get('ppl'))} @{best['update']}" if "update" in best else number(best.get("ppl")),
        number(ppl / unigram, ".3f") if ppl is not None and unigram else "–",
        number(run.final("tokens_per_s"), ",.0f"), memory(run, mixed_memory), duration(run.final("wall_seconds")),
    ]  # fmt: skip


def finished_section(runs: Sequence[Run]) -> List[str]:
    """The table of finished runs, the kind of peak memory measured, and the unigram baseline."""
    finished = [r for r in runs if r.status == "finished"]
    lines = [f"## Finished runs ({len(finished)})", ""]
    if not finished:
        return lines + ["None yet.", ""]
    kinds = sorted({str(r.final("peak_memory_kind")) for r in finished if r.final("peak_memory_kind")})
    lines += table(FINISHED_COLUMNS, [finished_row(r, len(kinds) > 1) for r in finished]) + [""]
    lines += [f"Peak memory: {', '.join(kinds)}." if kinds else "Peak memory: not recorded.", ""]
    return lines + baseline_lines(runs)


def valid_sets_section(runs: Sequence[Run]) -> List[str]:
    """Runs validated on named sets (dataset.valid_sets): each set's final ppl, and against its unigram baseline."""
    finished = [r for r in runs if r.status == "finished" and any(k.endswith("/ppl") for k in r.final("final_valid") or {})]  # noqa: E501
    if not finished:
        return []
    names = sorted({k[: -len("/ppl")] for r in finished for k in r.final("final_valid") if k.endswith("/ppl")})
    rows = []
    for run in finished:
        final, unigram = run.final("final_valid"), (run.final("unigram_baseline") or {}).get("sets", {})
        cells = []
        for name in names:
            ppl, base = final.get(f"{name}/ppl"), unigram.get(name, {}).get("ppl")
            cells.append(f"{number(ppl)} ({number(ppl / base, '.3f')})" if ppl and base else number(ppl))
        rows.append([run.name, *cells])
    lines = ["## Validation sets", "", "Final ppl on each named validation set (in brackets: ppl / its unigram ppl).", ""]
    return lines + table(["run", *names], rows) + [""]


def baseline_lines(runs: Sequence[Run]) -> List[str]:
    """The unigram baseline of the validation set: once, or per (dataset, n) when they differ."""
    found = baselines(runs)
    if not found:
        return ["Unigram baseline of the validation set: not recorded by these runs.", ""]
    if len(set(found.values())) == 1:
        return [f"Unigram baseline ppl of the validation set: {number(next(iter(found.values())))}.", ""]
    lines = ["Unigram baseline ppl of the validation set, per dataset and n:", ""]
    return lines + [f"- {dataset}, n={n}: {number(ppl)}" for (dataset, n), ppl in found.items()] + [""]


def last_valid_ppl(run: Run) -> str:
    """The last validation ppl logged, with its update."""
    valid = run.valid()
    return f"{number(valid[-1]['ppl'])} @{valid[-1].get('update', '?')}" if valid else "–"


def unfinished_section(runs: Sequence[Run]) -> List[str]:
    """The table of unfinished and failed runs, with why and how far they got."""
    others = [r for r in runs if r.status != "finished"]
    lines = [f"## Unfinished and failed runs ({len(others)})", ""]
    if not others:
        return lines + ["None.", ""]
    rows = [[r.name, r.status, r.reason, number(r.last_update(), "d"),
             number(r.setting("optimization.max_update"), "d"), last_valid_ppl(r)] for r in others]  # fmt: skip
    columns = ("run", "status", "reason", "last update", "max update", "last valid ppl")
    return lines + table(columns, rows) + [""]


def noise_section(spreads: Sequence[Spread], noise: Optional[float]) -> List[str]:
    """The final-ppl spread of each seed group, and the noise level it implies."""
    lines = ["## Noise level (runs that differ only in common.seed)", ""]
    if not spreads:
        return lines + ["No finished runs differ only in common.seed, so the noise level is unknown: repeat a setting "
                        "with other seeds (e.g. `common.seed=1,2,3`) to measure it.", ""]  # fmt: skip
    rows = [[s.setting.label, ", ".join(str(r.seed) for r in s.setting.runs), number(s.low), number(s.high),
             number(s.high - s.low), f"{s.relative:.1f}%"] for s in spreads]  # fmt: skip
    lines += table(("setting", "seeds", "min final ppl", "max final ppl", "max - min", "relative (of min)"), rows)
    return lines + ["", f"Final-ppl differences smaller than {noise:.1f}% between runs are noise.", ""]


def gap_section(runs: Sequence[Run]) -> List[str]:
    """Per Linformer run with a standard-attention reference: both ppls at equal tokens, and the gap in %."""
    curves = gap_curves(runs)
    if not curves:
        return []
    lines = ["## Linformer vs standard attention over training (equal tokens)", "",
             "The ppl gap at shared validations (evenly spaced ones when there are many); positive: the Linformer "
             "is behind.", ""]  # fmt: skip
    for curve in curves:
        lines += [f"**{describe(curve.run)}** against {', '.join(describe(r) for r in curve.reference)}:", ""]
        rows = [[p.update, tokens(p.tokens), number(p.standard), number(p.linformer), f"{p.percent:+.1f}%"]
                for p in spaced(curve.points)]  # fmt: skip
        lines += table(("update", "tokens seen", "standard ppl", "Linformer ppl", "gap"), rows) + [""]
    return lines


def plots_section(plots: Dict[str, Path], runs: Sequence[Run]) -> List[str]:
    """A link to each plot, then what the plots leave out."""
    lines = ["## Plots", ""]
    for title, path in plots.items():
        lines += [f"### {title}", "", f"![{title}]({path.name})", ""]
    if not plots:
        lines += ["No plot: no run has a validation record yet.", ""]
    return lines + notes(runs)


def notes(runs: Sequence[Run]) -> List[str]:
    """What the plots leave out, and why."""
    lines = []
    no_tokens = [r.name for r in runs if r.valid() and not r.has_tokens()]
    if no_tokens:
        lines.append(f"- Not on the tokens-seen plot (their metrics.jsonl counts no tokens; an older log): "
                     f"{', '.join(no_tokens)}.")  # fmt: skip
    no_valid = [r.name for r in runs if not r.valid()]
    if no_valid:
        lines.append(f"- No validation record, so no curve: {', '.join(no_valid)}.")
    lines += [f"- {r.name}: {r.unreadable_lines} unreadable line(s) of metrics.jsonl skipped (cut short by a kill)."
              for r in runs if r.unreadable_lines]  # fmt: skip
    if any(r.status != "finished" and r.valid() for r in runs):
        lines.append("- Dashed curves are unfinished or failed runs.")
    return lines + [""] if lines else []


def render(runs: Sequence[Run], dirs: Sequence[Path], command: str, plots: Dict[str, Path], date: str) -> str:
    """The text of report.md."""
    spreads = seed_spreads(runs)
    noise = noise_percent(spreads)
    facts = reading(runs, noise) + gap_facts(runs, noise)
    head = ["# Sweep report", "", f"- Command: `{command}`", f"- Folders: {', '.join(f'`{d}`' for d in dirs)}",
            f"- Date: {date}", f"- Runs: {len(runs)}", ""]  # fmt: skip
    body = finished_section(runs) + valid_sets_section(runs) + unfinished_section(runs) + noise_section(spreads, noise) + gap_section(runs)
    body += plots_section(plots, runs) + ["## Reading", ""]
    body += [f"- {fact}" for fact in facts] if facts else ["Nothing to compare yet."]
    return "\n".join(head + body) + "\n"


def check_out(out: Path) -> None:
    """--out must be a folder (or not exist yet)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for report.md and the plots")


def build_report(dirs: Sequence[Path], out: Optional[Path], command: str) -> Tuple[Path, List[Path]]:
    """Collect the runs under `dirs`, write report.md and the plots into `out` (default: the first DIR).

    Every DIR is checked before anything is written. Returns (report.md, plots).
    """
    out = out or dirs[0]
    check_out(out)
    runs = collect_runs(dirs)
    pyplot()  # a missing matplotlib stops the report before it writes anything
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(runs, out)
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    report = out / REPORT
    report.write_text(render(runs, dirs, command, plots, date), encoding="utf-8")
    return report, list(plots.values())
