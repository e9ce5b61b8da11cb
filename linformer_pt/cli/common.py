"""What every command-line entry point shares: one-line errors and early checks of config group options."""
import contextlib
import re
import sys
from importlib import resources
from typing import Iterator, List, Sequence

from linformer_pt.errors import RunInterrupted, UserError


@contextlib.contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """Bad input (UserError) or a diverged run (FloatingPointError): one line on stderr, exit status 2."""
    try:
        yield
    except (UserError, FloatingPointError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except RunInterrupted as stop:  # a checkpoint was written; the status tells a scheduler to requeue
        print(f"{prog}: {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)


def unknown_group_option(argv: List[str], groups: Sequence[str]) -> str:
    """A one-line error for `group=option` naming an option that has no YAML file, else ''."""
    configs = resources.files("linformer_pt.configs")
    for arg in argv:
        match = re.fullmatch(r"(\w+)=([\w.-]+)", arg)
        if not match or match.group(1) not in groups:
            continue
        group, option = match.groups()
        known = sorted(p.name[:-5] for p in (configs / group).iterdir() if p.name.endswith(".yaml"))
        if option not in known:
            return f"unknown {group} '{option}'; known: {', '.join(known)}"
    return ""


def check_group_options(prog: str, groups: Sequence[str]) -> None:
    """Hydra reports a missing group option over a dozen lines; say it in one, as for every other bad value."""
    error = unknown_group_option(sys.argv[1:], groups)
    if error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)
