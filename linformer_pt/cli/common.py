"""What every command-line entry point shares: one-line errors, and checking the command line before Hydra runs.

Hydra creates the run folder before the task function starts, so bad values are caught here first: the same
overrides are composed with Hydra's compose API and validated, and Hydra's own errors are reworded as one line.
"""
import contextlib
import itertools
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Set, Tuple

from omegaconf import DictConfig, OmegaConf, open_dict

from linformer_pt.errors import RunInterrupted, UserError
from linformer_pt.registry import unknown_key
from linformer_pt.sweeps.labels import override_key

# Flags after which Hydra prints something instead of running: it handles those command lines itself.
INFO_FLAGS = {
    "-h", "--help", "--hydra-help", "--version", "-i", "--info", "-sc", "--shell-completion",
    "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "--experimental-rerun",
}  # fmt: skip
VALUE_FLAGS = {"-c", "--cfg", "-p", "--package"}  # flags whose value is the next argument
MULTIRUN_FLAGS = {"-m", "--multirun"}
MAX_CHECKED_JOBS = 256  # a larger sweep has its later jobs validated as each one starts


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


def split_argv(argv: Sequence[str]) -> Tuple[List[str], Set[str]]:
    """Hydra's command line -> (overrides, flags), dropping the values of flags such as `--cfg job`."""
    overrides: List[str] = []
    flags: Set[str] = set()
    takes_value = False
    for arg in argv:
        if takes_value:
            takes_value = False
        elif arg.startswith("-"):
            flag = arg.split("=", 1)[0]
            flags.add(flag)
            takes_value = flag in VALUE_FLAGS and "=" not in arg
        else:
            overrides.append(arg)
    return overrides, flags


def compose(config_name: str, overrides: List[str], keep_hydra: bool = False) -> DictConfig:
    """Compose configs/<config_name>.yaml as the app will; Hydra's errors become one-line UserErrors.

    keep_hydra keeps the `hydra` node (launcher, group choices); its runtime values are only filled in a real run.
    """
    from hydra.errors import HydraException

    try:
        cfg = compose_or_raise(config_name, overrides)
    except HydraException as err:
        raise UserError(composition_message(err, config_name, overrides)) from None
    if not keep_hydra:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


def compose_or_raise(config_name: str, overrides: List[str]) -> DictConfig:
    """Hydra's compose with the hydra node, raising Hydra's own exceptions (no rewording: known_keys uses it too)."""
    from hydra import compose as hydra_compose, initialize_config_module

    with initialize_config_module(config_module="linformer_pt.configs", version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)


def composition_message(err: Exception, config_name: str, overrides: List[str]) -> str:
    """Hydra's multi-line composition error as one line naming the key (with the closest known key)."""
    from hydra.errors import OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if isinstance(err, OverrideParseException):
        return parse_error_message(overrides) or f"cannot read the command line: {str(err).splitlines()[0]}"
    cause = err.__cause__
    full_key = getattr(cause, "full_key", None)
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and full_key:
        return unknown_key(full_key, known_keys(config_name, overrides, full_key))
    if full_key:  # a value of the wrong type, e.g. a bool field given `maybe`
        return f"{full_key}: {str(cause).splitlines()[0]}"
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


def parse_error_message(overrides: List[str]) -> str:
    """One line naming the first override Hydra's grammar rejects, with how to quote it; '' if each parses alone."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except OverrideParseException as err:
            key, _, value = override.partition("=")
            reason = str(err).splitlines()[0].split(";")[0]  # Hydra's parser message, without its link
            if "=" in value:  # the usual cause: `=` is the grammar's own separator
                quoted = quote_items(value)
                return (f"cannot read the override {override} ({reason}): quote text holding '=', "
                        f"e.g. {key}={quoted} (typed in a shell: \"{key}={quoted}\")")  # fmt: skip
            return f"cannot read the override {override}: {reason}"
    return ""


def quote_items(value: str) -> str:
    """`a=b` -> `'a=b'`; `[a=b.txt,c.txt]` -> `['a=b.txt',c.txt]` (a list stays a list: its items are quoted)."""
    if value.startswith("[") and value.endswith("]"):
        return "[" + ",".join(f"'{item}'" if "=" in item else item for item in value[1:-1].split(",")) + "]"
    return f"'{value}'"


def known_keys(config_name: str, overrides: List[str], full_key: str) -> List[str]:
    """The keys next to `full_key` (and config group names at the top level), composed without the bad override.

    Overrides of `full_key` and of keys under it are left out: for a misspelled section (`optimizaton.max_update=5`)
    the unknown key is the section, and composing with its override again would fail the same way.
    """
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    rest = [o for o in overrides if override_key(o) != full_key and not override_key(o).startswith(full_key + ".")]
    try:
        cfg = compose_or_raise(config_name, rest)
    except Exception:  # noqa: BLE001  (another bad override: the message just lists no close key)
        return []
    node = OmegaConf.select(cfg, parent) if parent else cfg
    keys = [str(k) for k in node.keys() if k != "hydra"] if isinstance(node, DictConfig) else []
    if not parent:
        keys += [group for group in cfg.hydra.runtime.choices if not group.startswith("hydra")]
    return sorted(set(keys))


def sweep_jobs(overrides: List[str]) -> Optional[List[List[str]]]:
    """The override lists of a --multirun sweep's jobs (as Hydra's basic sweeper expands them), or None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        choices = []
        for parsed in OverridesParser.create().parse_overrides(overrides):
            if parsed.is_sweep_override():
                key = parsed.get_key_element()
                choices.append([f"{key}={value}" for value in parsed.sweep_string_iterator()])
            else:
                choices.append([parsed.input_line])
    except Exception:  # a sweep only another sweeper understands (e.g. interval()): it validates its jobs
        return None
    return [list(job) for job in itertools.islice(itertools.product(*choices), MAX_CHECKED_JOBS)]


def check_command_line(
    prog: str,
    config_name: str,
    argv: Sequence[str],
    load: Callable[[DictConfig, bool], object],
    run_folder: Optional[Callable[[DictConfig, Path], None]] = None,
) -> None:
    """Compose and validate every job of this command line before Hydra writes anything; errors are one line.

    `load(cfg, remote)` validates one composed config; remote: a launcher runs it elsewhere (skip this
    machine's checks, such as its CUDA devices). `run_folder(cfg, folder)` checks a single (not --multirun) run
    whose folder is known in advance (hydra.run.dir without a timestamp), e.g. that no other run is using it.
    """
    overrides, flags = split_argv(argv)
    if flags & INFO_FLAGS:
        return
    multirun = bool(flags & MULTIRUN_FLAGS)
    with one_line_errors(prog):
        jobs = sweep_jobs(overrides) if multirun else [overrides]
        for job in jobs or []:
            cfg = compose(config_name, job, keep_hydra=True)
            if flags & {"-c", "--cfg"}:  # printing a config needs no valid values
                continue
            launcher = str(OmegaConf.select(cfg, "hydra.launcher._target_", default=""))
            folder = output_folder(cfg, "sweep" if multirun else "run")
            if multirun:
                check_launcher(cfg, launcher)
            with open_dict(cfg):
                del cfg["hydra"]
            load(cfg, multirun and not launcher.endswith("BasicLauncher"))
            if folder is not None and run_folder is not None and not multirun:
                run_folder(cfg, folder)


def output_folder(cfg: DictConfig, mode: str) -> Optional[Path]:
    """hydra.<mode>.dir when it names a fixed folder (None for the default timestamped one); refuses a file.

    Hydra would otherwise stop with a FileExistsError traceback after composing.
    """
    raw = OmegaConf.to_container(cfg.hydra[mode], resolve=False).get("dir")
    if raw is None or "${now:" in str(raw):  # a new folder per second: no earlier run can be in it
        return None
    if "${hydra." in str(raw):  # values such as hydra.job.override_dirname are only filled in by a real run
        return None
    try:
        folder = Path(str(OmegaConf.select(cfg, f"hydra.{mode}.dir", throw_on_resolution_failure=True)))
    except Exception:  # noqa: BLE001  (interpolates what only a real run fills in: Hydra resolves it then)
        return None
    for path in (folder, *folder.parents):  # the first existing ancestor must be a folder
        if path.exists():
            if not path.is_dir():
                raise UserError(f"hydra.{mode}.dir={raw}: {path} is a file, not a folder; give a folder")
            break
    return folder


def check_launcher(cfg: DictConfig, launcher: str) -> None:
    """A Slurm launcher needs Slurm here: submitit would stop with a RuntimeError traceback ('Could not detect srun')."""
    if not launcher.endswith("SlurmLauncher"):
        return
    from submitit.slurm.slurm import SlurmExecutor  # the launcher's own test: is srun on this machine?

    if SlurmExecutor.affinity() <= 0:
        choice = OmegaConf.select(cfg, "hydra.runtime.choices", default={}).get("hydra/launcher", "slurm")
        raise UserError(f"hydra/launcher={choice} submits jobs to Slurm, but this machine has no Slurm (no srun "
                        "command); run on a Slurm login node, or leave out hydra/launcher to run here")  # fmt: skip
