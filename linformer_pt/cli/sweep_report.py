"""`linformer-sweep-report DIR [DIR ...] [--out OUT]`: report.md and PNG plots comparing the runs of sweeps.

DIRs are sweep folders (searched recursively for run folders) or run folders; OUT defaults to the first DIR.
"""
import argparse
import shlex
import sys
from pathlib import Path
from typing import List, Optional

from linformer_pt.cli.common import one_line_errors
from linformer_pt.sweeps.report import build_report

PROG = "linformer-sweep-report"


def main(argv: Optional[List[str]] = None) -> None:
    """Parse the command line, write the report, and say where it went."""
    args_list = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("dirs", type=Path, nargs="+", metavar="DIR", help="sweep folders or run folders")
    parser.add_argument("--out", type=Path, help="folder for report.md and the plots (default: the first DIR)")
    args = parser.parse_args(args_list)
    with one_line_errors(PROG):
        report, plots = build_report(args.dirs, args.out, shlex.join([PROG, *args_list]))
    print(f"report: {report}")
    for plot in plots:
        print(f"plot: {plot}")


if __name__ == "__main__":
    main()
