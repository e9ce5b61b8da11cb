"""The report of scripts/gpu_check.py: the paper's Table 3 beside our ratios, and the markdown summary."""
import json
from typing import Any, Dict, List, Optional

# The Linformer paper (Wang et al. 2020), Table 3: inference-time speed-up and memory saving of Linformer over the
# standard Transformer, by sequence length n, for k = 128 and 256 (the table also has k = 512..2048). Recalled from
# the paper, not copied from it: entries marked approximate may be off by a row or a rounding; check Table 3 before
# quoting them. (time speed-up, memory saving, approximate)
PAPER_TABLE3 = {
    (512, 128): (1.5, 1.7, True), (512, 256): (1.3, 1.5, True),
    (1024, 128): (1.7, 3.0, True), (1024, 256): (1.6, 2.9, True),
    (2048, 128): (2.6, 6.1, True), (2048, 256): (2.4, 5.6, True),
    (4096, 128): (3.4, 14.0, True), (4096, 256): (3.2, 13.0, True),
    (8192, 128): (5.5, 28.0, True), (8192, 256): (5.0, 26.0, True),
    (16384, 128): (8.6, 56.0, True), (16384, 256): (7.8, 48.0, True),
    (32768, 128): (13.0, 56.0, True), (32768, 256): (12.0, 48.0, True),
    (65536, 128): (20.0, 60.0, False), (65536, 256): (18.0, 52.0, True),
}  # fmt: skip


def table3(rows: List[Dict]) -> List[Dict]:
    """Per (scope, n, k): the paper's ratios and ours (naive / Linformer, SDPA / Linformer; time and memory)."""
    by_key = {(r["scope"], r["n"], r["variant"]): r for r in rows}
    out = []
    for (scope, n, variant), row in sorted(by_key.items()):
        if not variant.startswith("linformer-k"):
            continue
        k = int(variant.removeprefix("linformer-k"))
        naive, sdpa = by_key.get((scope, n, "naive"), {}), by_key.get((scope, n, "sdpa"), {})
        paper = PAPER_TABLE3.get((n, k))
        out.append({
            "scope": scope, "n": n, "k": k,
            "paper_speedup": paper[0] if paper else None, "paper_memory_saving": paper[1] if paper else None,
            "paper_approximate": paper[2] if paper else None,
            "speedup_vs_naive": div(naive.get("time_ms"), row["time_ms"]),
            "speedup_vs_sdpa": div(sdpa.get("time_ms"), row["time_ms"]),
            "memory_saving_vs_naive": div(naive.get("memory_mib"), row["memory_mib"]),
            "memory_saving_vs_sdpa": div(sdpa.get("memory_mib"), row["memory_mib"]),
        })  # fmt: skip
    return out


def div(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


# ---- the report ---------------------------------------------------------------------------------------------------
def cell(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "—"
    return format(value, spec) if isinstance(value, float) else str(value)


def render_markdown(report: Dict[str, Any]) -> str:
    """The summary table of all steps, then one table per step's numbers."""
    env, steps = report["environment"], report["steps"]
    lines = ["# GPU check" + (" (dry run: CPU, toy sizes)" if env["dry_run"] else ""), "",
             ", ".join(f"{k} {v}" for k, v in env.items()) + f"; {report['total_s']} s of {report['budget_s']} s", "",
             "| step | status | seconds | budget s | note |", "|---|---|---:|---:|---|"]  # fmt: skip
    for name, r in steps.items():
        note = (r.get("error") or "").replace("\n", " ").replace("|", "/")[:120]
        skipped = "; ".join(f"{k}: {v}" for k, v in r.get("skipped", {}).items())
        note = "; ".join(x for x in (note, f"skipped {skipped}" if skipped else "") if x)
        lines.append(f"| {name} | {r['status']} | {cell(r.get('seconds'))} | {cell(r.get('budget_s'))} | {note} |")
    res = steps.get("correctness", {}).get("results", {})
    if res.get("checks"):
        lines += ["", "## Correctness (relative L2 error)", "", "| check | attention | sharing | dtype | error | tolerance | ok |",
                  "|---|---|---|---|---:|---:|---|"]  # fmt: skip
        lines += [f"| {c['check']} | {c['attention']} | {c['sharing']} | {c['dtype']} | {c['rel_error']:.2e} | "
                  f"{c['tolerance']:g} | {c['ok']} |" for c in res["checks"]]  # fmt: skip
    if res.get("fp16_overflow"):
        lines += ["", f"fp16 injected overflow: {res['fp16_overflow']}"]
    if res.get("device_syncs"):
        lines += ["", f"host-device syncs per bf16 update between log records (goal 0): {res['device_syncs']}"]
    runs = {**steps.get("training", {}).get("results", {}), **steps.get("torchrun", {}).get("results", {})}
    runs = {k: v for k, v in runs.items() if isinstance(v, dict) and "status" in v and k != "process_group"}
    if runs:
        lines += ["", "## Training (bf16, fused AdamW)", "", "| run | status | updates | tokens/s | TFLOP/s | MFU | "
                  "peak MiB | wall s | device line |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        for name, r in runs.items():
            lines.append(f"| {name} | {r['status']} | {cell(r.get('updates'))} | {cell(r.get('tokens_per_s'), ',.0f')} | "
                         f"{cell(r.get('tflops'))} | {cell(r.get('mfu'), '.1%')} | {cell(r.get('peak_memory_mib'), ',.0f')} | "
                         f"{cell(r.get('wall_s'))} | {r.get('device_line') or r.get('error', '')} |")  # fmt: skip
    pg = steps.get("torchrun", {}).get("results", {}).get("process_group")
    if pg:
        lines += ["", f"process group: {json.dumps(pg)}"]
    table = steps.get("bench_attention", {}).get("results", {}).get("table3")
    if table:
        lines += ["", "## Attention vs the paper's Table 3 (paper: inference; ours: fwd+bwd; * approximate)", "",
                  "| scope | n | k | paper speed-up | ours vs naive | ours vs SDPA | paper memory saving | ours vs naive | "
                  "ours vs SDPA |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for t in table:
            star = "*" if t["paper_approximate"] else ""
            lines.append(f"| {t['scope']} | {t['n']} | {t['k']} | {cell(t['paper_speedup'])}{star} | "
                         f"{cell(t['speedup_vs_naive'])} | {cell(t['speedup_vs_sdpa'])} | {cell(t['paper_memory_saving'])}"
                         f"{star} | {cell(t['memory_saving_vs_naive'])} | {cell(t['memory_saving_vs_sdpa'])} |")  # fmt: skip
    saves = steps.get("checkpoint", {}).get("results", {}).get("saves")
    if saves:
        lines += ["", "## Checkpoint save (training stalls for `stall s`)", "", "| async_save | stall s | written s | MiB |",
                  "|---|---:|---:|---:|"]  # fmt: skip
        lines += [f"| {s['async_save']} | {s['stall_s']} | {s['written_s']} | {s['size_mib']} |" for s in saves]
    return "\n".join(lines) + "\n"
