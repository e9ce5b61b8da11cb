"""Read a foreign torch.save pickle (fairseq's model.pt) without running anything it names.

torch's weights_only unpickler builds tensors and plain containers only. fairseq's checkpoints also hold its
hyperparameters as argparse.Namespace (older) or omegaconf DictConfig (newer), and meters of fairseq or numpy in
extra_state. Those classes are never imported or called: each name from a short list of data-only namespaces is
replaced by `Record`, which only stores the arguments and state it is given; any other name (os.system, eval...)
refuses the file.
"""
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from linformer_pt.errors import UserError
from linformer_pt.training.checkpoint import first_line

# Names whose pickled objects are data to us: stand-ins replace them, so their code never runs.
INERT = ("argparse.Namespace", "omegaconf.", "typing.", "fairseq.", "numpy.", "collections.", "enum.", "pathlib.")
# omegaconf's metadata names builtin types as values (object_type=dict); torch's message drops "builtins.".
BUILTIN_TYPES = ("dict", "list", "tuple", "set", "int", "float", "str", "bool", "object", "type", "NoneType")
MAX_NAMES = 200


class Record:
    """What a pickled object of a replaced class becomes: its constructor arguments and its state, nothing else."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.state = args, None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def load_foreign(path: Path) -> Any:
    """The object a torch.save file holds, with objects of data-only classes as Records; one UserError otherwise."""
    names: set = set()
    while True:
        try:
            with warnings.catch_warnings(), torch.serialization.safe_globals([(Record, n) for n in sorted(names)]):
                warnings.simplefilter("ignore")
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            found = re.search(r"GLOBAL ([\w.]+)", str(err))
            name = found.group(1) if found else None
            inert = name is not None and (name.startswith(INERT) or name in BUILTIN_TYPES)
            if not inert or name in names or f"builtins.{name}" in names or len(names) >= MAX_NAMES:
                what = f"it names {name}" if name else first_line(err)
                raise UserError(f"{path} is not a safe checkpoint: loading it could run code ({what}); nothing in it "
                                "was run. Only tensors, plain containers and hyperparameters are read") from None  # fmt: skip
            names.add(f"builtins.{name}" if name in BUILTIN_TYPES else name)
        except Exception as err:  # torch raises RuntimeError, EOFError, KeyError... for damaged or foreign files
            raise UserError(f"{path} is truncated or not a torch.save file ({first_line(err)})") from None


def plain(value: Any) -> Any:
    """Records of Namespace / DictConfig / ListConfig / value nodes -> dicts, lists and values (recursively)."""
    if isinstance(value, Record):
        state = value.state
        if isinstance(state, dict) and "_content" in state:  # omegaconf containers
            return plain(state["_content"])
        if isinstance(state, dict) and "_val" in state:  # omegaconf value nodes
            return plain(state["_val"])
        if isinstance(state, dict):  # argparse.Namespace and other plain objects
            return {key: plain(item) for key, item in state.items()}
        return None
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value
