"""The sweep report's PNG plots: validation ppl curves, final ppl against k, and speed and memory against n.

matplotlib is the optional `plot` extra: it is imported here only, when a report is written, with the Agg backend.
"""
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from linformer_pt.errors import UserError
from linformer_pt.sweeps.analysis import baselines, linformer_series, standard_references
from linformer_pt.sweeps.gap import gap_curves
from linformer_pt.sweeps.runs import Run, describe, format_k

DPI = 100
SMALL = (6, 4)
WIDE = (11, 4)
HOURS_FROM_S = 2 * 3600  # runs longer than this are plotted in hours, shorter ones in minutes
LEGEND_INSIDE = 6  # more entries than this would hide the curves: the legend goes right of the axes


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display); a one-line error when it is missing."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("the plots need matplotlib: pip install 'linformer-pt[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> Path:
    """Write `fig` as a PNG at `path` and free it."""
    fig.tight_layout()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    # "tight" with the legends as extra artists widens the image to hold a legend outside the axes
    fig.savefig(path, dpi=DPI, bbox_inches="tight", bbox_extra_artists=legends)
    pyplot().close(fig)
    return path


def legend(ax: Any) -> None:
    """Inside the axes when it is short, else outside on the right."""
    if len(ax.get_legend_handles_labels()[1]) <= LEGEND_INSIDE:
        ax.legend(fontsize=7)
    else:
        outside = ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
        outside.set_in_layout(False)  # tight_layout would shrink the axes to make room for it


def log2_axis(ax: Any, values: Sequence[int]) -> None:
    """A log2 x axis ticked at the values themselves (32, 64, ...), not at powers written 2^5."""
    ax.set_xscale("log", base=2)
    ticks = sorted(set(values))
    ax.set_xticks(ticks, [str(v) for v in ticks])
    ax.minorticks_off()


def curve_style(run: Run, color: str) -> Dict[str, Any]:
    """A marker on every point (a run with one validation so far still shows); unfinished runs dashed."""
    return {"color": color, "marker": "o", "markersize": 3, "label": describe(run),
            "linestyle": "-" if run.status == "finished" else "--"}  # fmt: skip


def draw_baselines(ax: Any, runs: Sequence[Run]) -> None:
    """The unigram ppl of the validation set, dashed, once per distinct value."""
    found = baselines(runs)
    for (dataset, n), ppl in found.items():
        label = "unigram baseline" if len(set(found.values())) == 1 else f"unigram baseline ({dataset}, n={n})"
        if label not in ax.get_legend_handles_labels()[1]:
            ax.axhline(ppl, color="grey", linestyle="--", linewidth=1, label=label)


def ppl_curves(runs: Sequence[Run], x_key: str, path: Path) -> Optional[Path]:
    """Validation ppl (log y) against tokens seen or training wall-clock, one curve per run."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=SMALL)
    scale, unit = 1.0, ""
    if x_key == "wall":
        longest = max((r.get("wall", 0) for run in runs for r in run.valid()), default=0)
        scale, unit = (3600.0, "hours") if longest > HOURS_FROM_S else (60.0, "minutes")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = False
    for index, run in enumerate(runs):
        points = [(r[x_key] / scale, r["ppl"]) for r in run.valid() if x_key in r]
        if points:
            ax.plot(*zip(*points), **curve_style(run, colors[index % len(colors)]))
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    draw_baselines(ax, runs)
    xlabel = "tokens seen" if x_key == "tokens" else f"training time ({unit})"
    ax.set(yscale="log", xlabel=xlabel, ylabel="validation ppl", title=f"validation ppl vs {xlabel}")
    ax.grid(alpha=0.3, which="both")
    legend(ax)
    return save(fig, path)


def k_plot(runs: Sequence[Run], path: Path) -> Optional[Path]:
    """Final ppl against k (log2) per sharing scheme, standard attention as a line per n; None without Linformer."""
    series = linformer_series(runs)
    if not series:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=SMALL)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, group) in enumerate(series.items()):
        xs = [s.first.ks[0] for s in group]
        ax.plot(xs, [s.ppl for s in group], marker="o", markersize=4, label=name, color=colors[index % len(colors)])
    # A line per group of standard runs that some plotted Linformer run differs from in attention alone (same data
    # and budget): a standard run of another budget is no reference for these k.
    plotted = {s.first.path for group in series.values() for s in group}
    references = [(label, standard) for label, standard, linformer in standard_references(runs)
                  if any(s.first.path in plotted for s in linformer)]  # fmt: skip
    for index, (label, standard) in enumerate(references, start=len(series)):
        name = f"standard attention, n={standard[0].first.n}" + (f", {label}" if label else "")
        ax.axhline(statistics.fmean(s.ppl for s in standard), linestyle="--", linewidth=1,
                   color=colors[index % len(colors)], label=name)  # fmt: skip
    log2_axis(ax, [s.first.ks[0] for group in series.values() for s in group])
    ax.set(xlabel="k (projected length)", ylabel="final validation ppl", title="final ppl vs k (mean over seeds)")
    ax.grid(alpha=0.3)
    legend(ax)
    return save(fig, path)


def gap_plot(runs: Sequence[Run], path: Path) -> Optional[Path]:
    """The Linformer-vs-standard ppl gap (%) against tokens seen, one curve per Linformer run; None without two
    shared validations that count tokens."""
    curves = [c for c in gap_curves(runs) if len(c.points) > 1 and all(p.tokens is not None for p in c.points)]
    if not curves:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=SMALL)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, curve in enumerate(curves):
        ax.plot([p.tokens for p in curve.points], [p.percent for p in curve.points], marker="o", markersize=3,
                color=colors[index % len(colors)], label=describe(curve.run),
                linestyle="-" if curve.finished else "--")  # fmt: skip
    ax.axhline(0.0, color="grey", linewidth=1, label="standard attention")
    ax.set(xlabel="tokens seen", ylabel="ppl gap (% of standard attention's)",
           title="Linformer vs standard attention at equal tokens")  # fmt: skip
    ax.grid(alpha=0.3)
    legend(ax)
    return save(fig, path)


def run_kind(run: Run) -> str:
    """The series of the speed and memory plot: standard attention, or Linformer with its k and sharing."""
    if run.attention != "linformer":
        return run.attention
    return f"linformer k={format_k(run.ks)} sharing={run.sharing}"


def speed_memory_plot(runs: Sequence[Run], path: Path) -> Optional[Path]:
    """Tokens/s and peak memory against n per attention kind (means over seeds); None unless some kind has two n."""
    finished = [r for r in runs if r.status == "finished"]
    if not kind_points(finished, "tokens_per_s") and not kind_points(finished, "peak_memory_mb"):
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=WIDE)
    memory_kinds = sorted({str(r.final("peak_memory_kind")) for r in finished if r.final("peak_memory_kind")})
    panels = (("tokens_per_s", "tokens / s"), ("peak_memory_mb", f"peak memory (MB; {', '.join(memory_kinds)})"))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = sorted({run_kind(r) for r in finished})  # one color per kind in both panels
    for ax, (key, ylabel) in zip(axes, panels):
        for name, points in kind_points(finished, key).items():
            color = colors[names.index(name) % len(colors)]
            ax.plot(*zip(*points), marker="o", markersize=4, label=name, color=color)
        log2_axis(ax, [r.n for r in finished if isinstance(r.n, int)])
        ax.set(xlabel="n (tokens per sample)", ylabel=ylabel, title=f"{ylabel.split(' (')[0]} vs n")
        ax.grid(alpha=0.3)
    legend(axes[1])
    return save(fig, path)


def kind_points(runs: Sequence[Run], key: str) -> Dict[str, List[Tuple[int, float]]]:
    """(n, mean of summary[key]) per kind_name, sorted by n; kinds measured at a single n are no curve and left out."""
    values: Dict[str, Dict[int, List[float]]] = {}
    for run in runs:
        if isinstance(run.final(key), (int, float)) and isinstance(run.n, int):
            values.setdefault(run_kind(run), {}).setdefault(run.n, []).append(float(run.final(key)))
    return {name: sorted((n, statistics.fmean(v)) for n, v in by_n.items())
            for name, by_n in values.items() if len(by_n) > 1}  # fmt: skip


def write_plots(runs: Sequence[Run], out: Path) -> Dict[str, Path]:
    """Every plot the runs allow, written into `out`: {title: path}."""
    made = {
        "Validation ppl vs tokens seen": ppl_curves(runs, "tokens", out / "ppl_vs_tokens.png"),
        "Validation ppl vs training time": ppl_curves(runs, "wall", out / "ppl_vs_time.png"),
        "Final ppl vs k": k_plot(runs, out / "ppl_vs_k.png"),
        "Linformer vs standard attention at equal tokens": gap_plot(runs, out / "gap_vs_tokens.png"),
        "Speed and memory vs n": speed_memory_plot(runs, out / "speed_memory_vs_n.png"),
    }
    return {title: path for title, path in made.items() if path is not None}
