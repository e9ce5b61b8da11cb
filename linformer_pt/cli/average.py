"""`linformer-average-checkpoints RUN -n 5 --out avg.pt`: the mean of the weights of a run's last N checkpoints.

As fairseq's scripts/average_checkpoints.py: RUN's last N checkpoint_<update>.pt files (checkpoint.save_interval_updates
writes them), or checkpoint files given one by one, are averaged parameter by parameter into a new, weights-only
checkpoint that linformer-eval, linformer-export, linformer-fill-mask and checkpoint.init_from / finetune_from read.
"""
import argparse
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from linformer_pt.cli.common import one_line_errors
from linformer_pt.errors import UserError

PROG = "linformer-average-checkpoints"
# What the averaged file keeps of the newest input. Optimizer, schedule and data position are left out on purpose:
# they belong to one point of training, not to the mean, so resuming from the file is refused ("weights-only file").
KEPT_KEYS = ("cfg", "model_args", "provenance", "task_state", "update")
RESERVED_NAME = re.compile(r"checkpoint_(\d+|last|best)\.pt")  # names training writes, retention deletes or resumes from


def select_inputs(inputs: List[str], num: Optional[int], checkpoint_dir: str = "checkpoints") -> List[Path]:
    """The files to average: one run folder's last `num` numbered checkpoints, or the files given."""
    from linformer_pt.training.checkpoint import numbered_checkpoints

    if num is not None and num < 1:
        raise UserError(f"--num-checkpoints {num}: must be >= 1")
    if len(inputs) == 1 and Path(inputs[0]).expanduser().is_dir():
        folder = Path(inputs[0]).expanduser()
        if num is None:
            raise UserError(f"{folder} is a folder: give --num-checkpoints N to average its last N checkpoint_<update>.pt")
        # A run folder keeps them under checkpoints/; its checkpoints/ folder itself is accepted too.
        found_in = folder / checkpoint_dir if (folder / checkpoint_dir).is_dir() else folder
        found = numbered_checkpoints(found_in)
        if len(found) < num:
            names = ", ".join(p.name for p in found) or "none"
            raise UserError(f"{found_in} holds {len(found)} numbered checkpoint(s) ({names}), fewer than --num-checkpoints "
                            f"{num} (checkpoint.save_interval_updates and keep_last >= N write them)")  # fmt: skip
        return found[-num:]
    if num is not None:
        raise UserError("--num-checkpoints goes with one run folder; checkpoint files given one by one are all averaged")
    paths: List[Path] = []
    for given in inputs:
        path = Path(given).expanduser()
        if path.is_dir():
            raise UserError(f"{given} is a folder; give one run folder with --num-checkpoints N, or checkpoint files")
        if not path.is_file():
            raise UserError(f"{given}: no such checkpoint file")
        if any(path.resolve() == seen.resolve() for seen in paths):
            raise UserError(f"{given} is given twice; each checkpoint counts once in the mean")
        paths.append(path)
    return paths


def signature(state: Dict[str, Any], path: Path) -> Dict[str, Any]:
    """What must be equal for a mean of weights to mean anything: architecture, vocabulary, tokenizer, task, shapes."""
    from linformer_pt.training.resume import CHANGEABLE_MODEL_KEYS  # dropout etc.: not the function the weights compute

    missing = [key for key in ("cfg", "model_args") if key not in state]
    if missing:
        raise UserError(f"{path} has no {', '.join(missing)}; it was not written by linformer-train")
    cfg = state["cfg"]
    return {
        **{f"model.{k}": v for k, v in sorted(cfg.get("model", {}).items()) if k not in CHANGEABLE_MODEL_KEYS},
        "task.name": cfg.get("task", {}).get("name"),
        "model_args": state["model_args"],
        "tokenizer_sha256": state.get("provenance", {}).get("tokenizer_sha256"),
        "task_state": state.get("task_state", {}),
        # Float and integer tensors are treated differently, so that kind must agree as well as the shape.
        **{f"weight {name}": (tuple(t.shape), t.is_floating_point()) if hasattr(t, "shape") else type(t).__name__
           for name, t in state["model"].items()},  # fmt: skip
    }


def check_same(reference: Tuple[Path, Dict[str, Any]], other: Tuple[Path, Dict[str, Any]]) -> None:
    """One line naming the first field in which two checkpoints differ, with both values."""
    (ref_path, ref), (path, sig) = reference, other
    for key in list(ref) + [k for k in sig if k not in ref]:
        if ref.get(key, "absent") != sig.get(key, "absent"):
            raise UserError(f"cannot average {ref_path.name} and {path}: {key} is {short(ref.get(key, 'absent'))} in one, "
                            f"{short(sig.get(key, 'absent'))} in the other; only checkpoints of one architecture, "
                            "tokenizer and task average")  # fmt: skip


def short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def average(paths: List[Path], progress: bool = True) -> Tuple[Dict[str, Any], Path]:
    """(the averaged checkpoint, the newest input): float tensors are the mean, summed in float64 and cast back to
    the newest input's dtype; integer tensors and everything else are the newest input's (highest update; the
    last given on a tie). Files are read one at a time: memory holds the sums and at most two checkpoints."""
    import torch
    from tqdm import tqdm

    from linformer_pt.training.checkpoint import load_checkpoint

    sums: Dict[str, torch.Tensor] = {}
    reference: Optional[Tuple[Path, Dict[str, Any]]] = None
    newest: Optional[Dict[str, Any]] = None
    newest_path = paths[-1]
    updates: List[Any] = []
    for path in tqdm(paths, desc="average", unit="ckpt", file=sys.stderr, disable=not progress):
        state = load_checkpoint(path)
        sig = signature(state, path)
        if reference is None:
            reference = (path, sig)
        check_same(reference, (path, sig))
        for name, tensor in state["model"].items():
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                if name in sums:
                    sums[name].add_(tensor.detach().to(torch.float64))
                else:  # a copy even when the tensor is float64 already, so the sum never aliases a loaded weight
                    sums[name] = tensor.detach().to(torch.float64, copy=True)
        updates.append(state.get("update"))
        if newest is None or (state.get("update") or 0) >= (newest.get("update") or 0):
            newest, newest_path = state, path
    assert newest is not None
    # Integer buffers (and any non-tensor entry) are the newest input's: a mean of counters or ids means nothing.
    model = {name: (sums[name] / len(paths)).to(tensor.dtype) if name in sums else tensor
             for name, tensor in newest["model"].items()}  # fmt: skip
    out = {key: newest[key] for key in KEPT_KEYS if key in newest}
    out["model"] = model
    out["provenance"] = {**newest.get("provenance", {}),
                         "averaged_from": [{"file": str(p), "update": u} for p, u in zip(paths, updates)]}  # fmt: skip
    return out, newest_path


def check_out(out: Path) -> None:
    """Never replace a file, and never take a name that training writes, prunes or resumes from."""
    if out.exists():
        raise UserError(f"--out {out} already exists; choose a new file name (existing files are never replaced)")
    if RESERVED_NAME.fullmatch(out.name):
        raise UserError(f"--out {out.name} is a name training uses for its own checkpoints; choose another, "
                        "e.g. checkpoint_avg5.pt")  # fmt: skip
    if out.suffix != ".pt":
        raise UserError(f"--out {out}: give a .pt file name")


def tokenizer_to_copy(out: Path, newest_path: Path, newest: Dict[str, Any]) -> Tuple[Optional[Tuple[Path, Path]], str]:
    """((the run's tokenizer.json, where to copy it) or None, a warning) so that the loaders find the tokenizer from
    `out` (they look beside a checkpoint, then in the folder above). Checked before anything is written: another
    tokenizer where the copy would go is refused; a run without its tokenizer.json is only a warning (init_from
    needs none; eval, export and fill-mask do)."""
    from linformer_pt.data.tokenizer import TOKENIZER_FILE
    from linformer_pt.hub.export_folder import find_tokenizer

    try:
        source = find_tokenizer(newest_path, newest)
    except UserError as err:
        return None, f"{PROG}: warning: {err}; linformer-eval, -export and -fill-mask need it beside {out}"
    try:
        find_tokenizer(out, newest)
        return None, ""  # e.g. --out inside the run folder
    except UserError:
        pass
    target = out.parent / TOKENIZER_FILE
    if target.exists():
        raise UserError(f"{target} is another tokenizer than the checkpoints' one; write --out into another folder")
    return (source, target), ""


def copy_new_file(source: Path, target: Path) -> None:
    """Copy under a temporary name, then link into place: a partial copy is never seen, an existing file never replaced."""
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        shutil.copyfile(source, tmp)
        os.link(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="one run folder (with -n N), or checkpoint .pt files")
    parser.add_argument("-n", "--num-checkpoints", type=int, help="average the run folder's last N checkpoint_<update>.pt")
    parser.add_argument("--out", required=True, type=Path, help="the checkpoint to write (a new .pt file)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    with one_line_errors(PROG):
        out = args.out.expanduser()
        check_out(out)
        paths = select_inputs(args.inputs, args.num_checkpoints)
        state, newest_path = average(paths, progress=not args.no_progress)
        tokenizer, warning = tokenizer_to_copy(out, newest_path, state)
        check_out(out)  # again: averaging large files takes a while
        from linformer_pt.training.checkpoint import save_checkpoint

        save_checkpoint(out, state)
        if tokenizer is not None:
            copy_new_file(*tokenizer)
    if warning:
        print(warning, file=sys.stderr)
    updates = ", ".join(str(entry["update"]) for entry in state["provenance"]["averaged_from"])
    print(f"averaged {len(paths)} checkpoints (updates {updates}) into {out}")
    if tokenizer is not None:
        print(f"tokenizer: {tokenizer[1]}")


if __name__ == "__main__":
    main()
