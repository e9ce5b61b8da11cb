"""`linformer-convert-checkpoint --trust-pickle OLD.pt NEW.pt`: rewrite an older checkpoint as a safe one.

Checkpoints load with torch's weights_only unpickler, which runs no code. Checkpoints written by linformer-pt 0.1
before that change stored one class (torch's TorchVersion, a str subclass, in the provenance), so they are refused.
This command reads such a file with the same safe unpickler, allowing that one class and nothing else (a file that
names any other class or function is refused, and nothing in it runs), and writes NEW.pt with plain values only;
OLD.pt is left as it is. --trust-pickle says that the file is one of your own older checkpoints.
"""
import argparse
import pickle
import re
import sys
import warnings
from pathlib import Path
from typing import Any, List, Optional

from linformer_pt.cli.common import one_line_errors
from linformer_pt.errors import UserError
from linformer_pt.training.checkpoint import first_line

PROG = "linformer-convert-checkpoint"


def to_plain(value: Any) -> Any:
    """Tensors, numbers, strings, lists and dicts as they are; numpy values and str subclasses as their plain kind."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor) or value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, dict):
        return {to_plain(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(v) for v in value) if type(value) in (list, tuple) else [to_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy()) if value.dtype != object else [to_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    for kind in (bool, int, float, str):  # e.g. TorchVersion, a str subclass
        if isinstance(value, kind):
            return kind(value)
    raise UserError(f"cannot convert a {type(value).__module__}.{type(value).__qualname__}: not a linformer-pt value")


def convert(source: Path, target: Path) -> Path:
    """Load `source` trusting its pickle, write its plain form to `target` (atomically); returns target."""
    import torch

    from linformer_pt.training.checkpoint import load_checkpoint, save_checkpoint, unsafe_value

    if not source.is_file():
        raise UserError(f"{source}: no such file")
    if target.exists():
        raise UserError(f"{target} already exists; choose a new file name (the source is never overwritten)")
    from torch.torch_version import TorchVersion

    try:  # the safe unpickler, with the one class older checkpoints of this project hold
        with warnings.catch_warnings(), torch.serialization.safe_globals([TorchVersion]):
            warnings.simplefilter("ignore")
            state = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"it names {found.group(1)}" if found else "not a torch.save file"
        raise UserError(f"{source} is not an older linformer-pt checkpoint ({what}); nothing in it was run") from None
    except Exception as err:
        raise UserError(f"{source} is truncated or not a checkpoint ({first_line(err)})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{source} is not a linformer-pt checkpoint (no model state)")
    plain = to_plain(state)
    problem = unsafe_value(plain)
    if problem:
        raise UserError(f"cannot convert {source}: {problem}")
    save_checkpoint(target, plain)
    load_checkpoint(target)  # proof that the new file loads safely
    return target


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("source", help="an older linformer-pt checkpoint to convert")
    parser.add_argument("target", help="the new checkpoint file (must not exist)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="required: says the file is one of your own older checkpoints")  # fmt: skip
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    with one_line_errors(PROG):
        if not args.trust_pickle:
            raise UserError(f"{args.source} is converted only on request: pass --trust-pickle to say it is one of your "
                            "own older checkpoints (only the classes they hold are read; nothing runs)")  # fmt: skip
        target = convert(Path(args.source).expanduser(), Path(args.target).expanduser())
        print(f"wrote {target}: loads with weights_only=True", flush=True)


if __name__ == "__main__":
    main()
