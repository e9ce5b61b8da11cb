"""Checkpoints on disk: full training state, written atomically, with provenance.

A checkpoint holds model, optimizer, LR schedule, update count, data position, RNG states, metrics, the
resolved config and provenance (package version, git revision, tokenizer and data hashes).
"""
import os
import pickle
import re
import shutil
import subprocess
import threading
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

import linformer_pt
from linformer_pt.errors import UserError
from linformer_pt.staged_folder import fsync_path

CHECKPOINT_LAST = "checkpoint_last.pt"
CHECKPOINT_BEST = "checkpoint_best.pt"  # lowest validation loss so far


def git_revision() -> Optional[str]:
    """The git commit of the package source, if it runs from a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(linformer_pt.__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def provenance(extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """What produced a checkpoint: package version, git revision, torch version, plus `extra` (data hashes)."""
    return {
        "linformer_pt": linformer_pt.__version__,
        "git_revision": git_revision(),
        "torch": str(torch.__version__),  # a plain str: TorchVersion would need an unsafe global to load
        **(extra or {}),
    }


def rng_states() -> Dict[str, Any]:
    states: Dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


SAFE_LEAVES = (torch.Tensor, str, int, float, bool, type(None), torch.dtype, torch.device, torch.Size)


def unsafe_value(state: Any, where: str = "state") -> Optional[str]:
    """Where `state` holds something torch.load(weights_only=True) would refuse, else None.

    Checked before every save: a checkpoint this project writes must load in any other process without
    allowlisting a class, so a stranger's checkpoint never needs to be trusted.
    """
    if isinstance(state, dict):
        for key, value in state.items():
            if not isinstance(key, (str, int)):
                return f"{where} has a key of type {type(key).__name__}"
            found = unsafe_value(value, f"{where}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(state, (list, tuple)) and type(state) in (list, tuple):
        return next((found for i, v in enumerate(state) if (found := unsafe_value(v, f"{where}[{i}]"))), None)
    if type(state) in SAFE_LEAVES or isinstance(state, torch.Tensor):
        return None
    return f"{where} is a {type(state).__module__}.{type(state).__qualname__}"


def save_checkpoint(path: Union[str, Path], state: Dict[str, Any]) -> Path:
    """torch.save through a temporary file + fsync + rename: a crash or a full disk never leaves a truncated checkpoint.

    On failure the temporary file is removed and the previous file at `path` is untouched. Only plain values are
    written (tensors, numbers, strings, lists, dicts), so the file loads with weights_only=True.
    """
    unsafe = unsafe_value(state)
    if unsafe:  # a bug in this project, not bad input: say where, and write nothing
        raise TypeError(f"refusing to write checkpoint {path}: {unsafe}, which weights_only loading rejects")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_path(path.parent)  # the rename itself survives a power loss only once the folder is synced
    except OSError as err:
        raise UserError(f"could not write checkpoint {path}: {err.strerror or err}; the previous one is intact") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


CONVERT_HINT = "linformer-convert-checkpoint --trust-pickle {path} <new.pt>"


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load a checkpoint written by save_checkpoint; a missing, truncated, foreign or unsafe file is one UserError line.

    Checkpoints are pickles, and a pickle can run any code while it loads: torch's weights_only unpickler accepts
    tensors and plain containers only, so nothing in a file from a stranger runs. A file that needs more (an
    arbitrary class or function) is refused; an older checkpoint of this project that stored a class can be
    converted once, by someone who trusts it, with linformer-convert-checkpoint --trust-pickle.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint {path}: no such file")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the verdict below is the one line to show
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))  # the pickle imports a class or function: refused
        if not found:  # an opcode the safe unpickler lacks, or bytes that are no pickle: nothing imported either
            raise UserError(f"checkpoint {path} is truncated or not a checkpoint (not a torch.save file)") from None
        raise UserError(
            f"checkpoint {path} is not a safe checkpoint: loading it could run code (it needs {found.group(1)}); "
            "nothing in it was run. "
            f"If you trust its source, convert it: {CONVERT_HINT.format(path=path)}"
        ) from None
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError... for damaged or foreign files
        reason = "not a torch.save file" if isinstance(err, KeyError) else first_line(err)
        raise UserError(f"checkpoint {path} is truncated or not a checkpoint ({reason})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"checkpoint {path} is not a linformer-pt checkpoint (no model state)")
    return state


def first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def numbered_name(update: int) -> str:
    return f"checkpoint_{update}.pt"


def numbered_checkpoints(folder: Path) -> List[Path]:
    """checkpoint_<update>.pt files in `folder`, oldest update first."""
    found = [(int(m.group(1)), p) for p in folder.glob("checkpoint_*.pt") if (m := re.fullmatch(r"checkpoint_(\d+)\.pt", p.name))]
    return [p for _, p in sorted(found)]


def cpu_copy(state: Any) -> Any:
    """A copy of `state` whose tensors live in fresh CPU memory, so training can go on while it is written."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: cpu_copy(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(cpu_copy(v) for v in state)
    return state


class CheckpointWriter:
    """Writes checkpoints under `folder`, in a background thread when asked; keeps the last `keep_last` numbered ones.

    A save waits for the previous write, so at most one copy of the state is in flight; a failed background write
    is raised by the next call (save, wait or close).
    """

    def __init__(self, folder: Path, keep_last: int = 0, background: bool = True) -> None:
        self.folder, self.keep_last, self.background = Path(folder), keep_last, background
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def save(self, state: Dict[str, Any], names: List[str]) -> Path:
        """Write `state` as names[0] and hard-link (or copy) it to the other names; returns the first path."""
        self.wait()
        paths = [self.folder / name for name in names]
        if not self.background:
            self._write(state, paths)
            return paths[0]
        state = cpu_copy(state)
        self._thread = threading.Thread(target=self._write_catching, args=(state, paths), daemon=False)
        self._thread.start()
        return paths[0]

    def _write_catching(self, state: Dict[str, Any], paths: List[Path]) -> None:
        try:
            self._write(state, paths)
        except BaseException as err:  # surfaced in the training thread by wait()
            self._error = err

    def _write(self, state: Dict[str, Any], paths: List[Path]) -> None:
        save_checkpoint(paths[0], state)
        for extra in paths[1:]:
            tmp = extra.with_name(f".{extra.name}.tmp{os.getpid()}")
            try:
                os.link(paths[0], tmp)  # the same bytes under a second name; replacing paths[0] later keeps them
            except OSError:
                shutil.copyfile(paths[0], tmp)
            os.replace(tmp, extra)
        self._prune()

    def _prune(self) -> None:
        if self.keep_last <= 0:
            return
        for old in numbered_checkpoints(self.folder)[: -self.keep_last]:
            old.unlink(missing_ok=True)

    def wait(self) -> None:
        """Block until the pending write is on disk; raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
