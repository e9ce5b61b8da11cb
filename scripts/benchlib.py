"""What the benchmark scripts share: one measurement per fresh subprocess, the CPU's name, table cells, result files,
and switching a change off for an A/B."""
import contextlib
import csv
import json
import platform
import subprocess
import sys
import types
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence


def run_point(script: str, point: Dict, timeout: float) -> Dict:
    """Run `script --point <json>` in a fresh process (own memory high-water mark and threads); errors become data."""
    command = [sys.executable, str(Path(script).resolve()), "--point", json.dumps(point)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:g} s"}
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        # A process killed by the OOM killer leaves no traceback, only the signal.
        return {"error": lines[-1] if lines else f"exit code {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def switched_off(module: types.ModuleType) -> Iterator[None]:
    """A change with a module switch (`ENABLED`), off for the duration: the "before" of an A/B. Before the dropout
    change, torch's F.dropout and SDPA with dropout_p; before the folding change, W_Q and W_O as maps of their own."""
    module.ENABLED = False
    try:
        yield
    finally:
        module.ENABLED = True


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what platform knows."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    names = (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    return next(names, platform.processor() or "unknown")


def fmt(value: Optional[float], spec: str) -> str:
    """A table cell: the formatted value, or a dash for a missing one."""
    return "—" if value is None else format(value, spec)


def write_results(rows: List[Dict], env: Dict, settings: Dict, out: Path, csv_keys: Sequence[str]) -> None:
    """results.json (environment, settings, rows) and results.csv (the `csv_keys` columns) under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.json", "w") as f:
        json.dump({"environment": env, "settings": settings, "results": rows}, f, indent=2)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(csv_keys), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
