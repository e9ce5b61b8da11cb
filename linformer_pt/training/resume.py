"""Resuming a run: find its checkpoint, check that it fits this run, and restore the whole training state.

A resumed run is the same run: model, optimizer, LR schedule, loss scale, update count, data position (a seek,
never a replay), best validation loss, the partial log window and the training time so far all come back, and
the metrics log is cut back to what the checkpoint had seen. Deliberate changes go through the reset flags.
"""
import dataclasses
import fcntl
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set

import contextlib
import torch

from linformer_pt.config import TrainConfig
from linformer_pt.errors import UserError
from linformer_pt.training.checkpoint import CHECKPOINT_LAST, load_checkpoint

# Model fields a resume may change: regularisation and memory settings, not the function the weights compute.
CHANGEABLE_MODEL_KEYS = {"dropout", "attention_dropout", "activation_dropout", "checkpoint_activations",
                         "freeze_projections", "projection_init"}  # fmt: skip
RUN_LOCK = ".run.lock"


def find_checkpoint(cfg: TrainConfig, output_dir: Path) -> Optional[Path]:
    """The checkpoint this run continues from: the run folder's last one, else checkpoint.restore_file, else None.

    restore_file is where a run *starts*: once the run has saved its own checkpoint_last.pt, a rerun of the same
    command (a requeue, a resume after a stop) continues from that one (fairseq's continue_once), never again
    from the starting point, which would throw away every update since.
    """
    ck = cfg.checkpoint
    last = Path(output_dir) / ck.save_dir / CHECKPOINT_LAST
    if ck.restore_file:
        path = Path(ck.restore_file).expanduser()
        if not path.is_file():
            raise UserError(f"checkpoint.restore_file={ck.restore_file}: no such file")
        if not last.is_file() or last.resolve() == path.resolve():
            return path
        if not ck.auto_resume:
            raise UserError(f"{output_dir} already holds a run started from {ck.restore_file} ({last.name}); rerun "
                            "with checkpoint.auto_resume=true to continue it, or choose another hydra.run.dir")  # fmt: skip
        print(f"{last} continues this run; checkpoint.restore_file={ck.restore_file} was its starting point",
              flush=True)  # fmt: skip
        return last
    if not last.is_file():
        return None
    if not ck.auto_resume:
        raise UserError(
            f"{output_dir} already holds a run ({last.name}); rerun with checkpoint.auto_resume=true to continue it, "
            "or choose another hydra.run.dir"
        )
    return last


def _field_defaults(section: Any) -> Dict[str, Any]:
    """A config section's default values: what a checkpoint written before a field existed ran with."""
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            for f in dataclasses.fields(section)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}  # fmt: skip


def _differences(saved: Dict[str, Any], current: Dict[str, Any], section: str, ignore=(), defaults=None) -> List[str]:
    """Keys whose values differ; a key the checkpoint lacks (an older version's) counts as its default."""
    saved = {**(defaults or {}), **saved}
    keys = sorted((set(saved) | set(current)) - set(ignore))
    return [f"{section}.{key}={saved.get(key)!r} in the checkpoint, {current.get(key)!r} now"
            for key in keys if saved.get(key) != current.get(key)]  # fmt: skip


def global_batch(cfg: Dict[str, Any], world_size: int) -> int:
    return cfg["dataset"]["batch_size"] * world_size * cfg["optimization"]["update_freq"]


def check_compatible(state: Dict[str, Any], cfg: TrainConfig, provenance: Dict[str, Any], world_size: int,
                     path: Path) -> None:  # fmt: skip
    """Refuse, with one line naming the field and both values, a checkpoint that does not fit this run."""
    saved, now = state["cfg"], dataclasses.asdict(cfg)
    ck = cfg.checkpoint

    def refuse(problems: List[str], hint: str) -> None:
        if problems:
            raise UserError(f"cannot resume from {path}: {problems[0]}; {hint}")

    refuse(_differences(saved["model"], now["model"], "model", CHANGEABLE_MODEL_KEYS),
           "a resume cannot change the model (start a new run with checkpoint.init_from for its weights)")  # fmt: skip
    saved_tok, tok = state.get("provenance", {}).get("tokenizer_sha256"), provenance.get("tokenizer_sha256")
    refuse([f"the tokenizer differs (sha256 {str(saved_tok)[:12]} in the checkpoint, {str(tok)[:12]} now)"]
           if saved_tok != tok else [], "give tokenizer.path=<the tokenizer.json in the checkpoint's run folder>")  # fmt: skip
    if not ck.reset_dataloader:
        hint = "set checkpoint.reset_dataloader=true to start this data from its beginning"
        saved_data, data = state.get("provenance", {}).get("data"), provenance.get("data")
        refuse(["the training data differ from the checkpoint's"] if saved_data != data else [], hint)
        refuse(_differences(saved["task"], now["task"], "task", defaults=_field_defaults(cfg.task)), hint)
        refuse(_differences(saved["common"], now["common"], "common", {"device", "threads"}), hint)
        streaming = now["dataset"]["streaming"]
        # Paths may move (another node, another mount): the content check above compares the files themselves.
        free = {"batch_size", "num_workers", "cache_dir", "train_files", "valid_files", "path"}
        refuse(_differences(saved["dataset"], now["dataset"], "dataset", free | (set() if streaming else {"streaming"}),
                            _field_defaults(cfg.dataset)), hint)  # fmt: skip
        before, after = global_batch(saved, state.get("world_size", 1)), global_batch(now, world_size)
        refuse([f"the global batch (dataset.batch_size x processes x optimization.update_freq) is {before} in the "
                f"checkpoint, {after} now"] if before != after else [], hint)  # fmt: skip
        if streaming and state.get("world_size", 1) != world_size:
            refuse([f"a streamed run saved on {state.get('world_size', 1)} processes resumes on {world_size}"], hint)
    if not ck.reset_optimizer:
        refuse(_differences(saved["optim"], now["optim"], "optim"), "set checkpoint.reset_optimizer=true to change it")
    if not ck.reset_lr_scheduler:
        saved_total = saved["lr_scheduler"].get("total_num_update") or saved["optimization"]["max_update"]
        total = now["lr_scheduler"].get("total_num_update") or now["optimization"]["max_update"]
        # total_num_update=0 means max_update: pinning the old length is no change of schedule
        same_length = {"total_num_update"} if saved_total == total else set()
        refuse(_differences(saved["lr_scheduler"], now["lr_scheduler"], "lr_scheduler", same_length),
               "set checkpoint.reset_lr_scheduler=true to change it")  # fmt: skip


def schedule_change(state: Dict[str, Any], cfg: TrainConfig) -> Optional[str]:
    """A note when a resume decays the learning rate over another number of updates than the checkpoint did."""
    saved = state["cfg"]
    saved_total = saved["lr_scheduler"].get("total_num_update") or saved["optimization"]["max_update"]
    total = cfg.lr_scheduler.total_num_update or cfg.optimization.max_update
    if saved_total == total or cfg.checkpoint.reset_lr_scheduler:
        return None
    return (f"note: the learning-rate schedule now runs over {total} updates, not {saved_total} as in the checkpoint "
            f"(optimization.max_update changed), so the lr at update {state['update']} changes; to keep the old "
            f"schedule add lr_scheduler.total_num_update={saved_total}")  # fmt: skip


def load_resume_state(path: Path, cfg: TrainConfig, provenance: Dict[str, Any], world_size: int) -> Dict[str, Any]:
    """Read and check the checkpoint a run resumes from (every process reads it)."""
    state = load_checkpoint(path)
    missing = [key for key in ("optimizer", "lr_scheduler", "update", "train_iterator", "cfg") if key not in state]
    if missing:
        raise UserError(f"cannot resume from {path}: it is a weights-only file (no {', '.join(missing)}); "
                        "use checkpoint.init_from to start from its weights")  # fmt: skip
    check_compatible(state, cfg, provenance, world_size, path)
    return state


def restore_training_state(trainer: Any, state: Dict[str, Any]) -> None:
    """Everything but the model weights (loaded before the model is wrapped), honouring the reset flags."""
    ck = trainer.cfg.checkpoint
    if not ck.reset_optimizer:
        if trainer.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(trainer.model, trainer.optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))  # fmt: skip
        else:
            trainer.optimizer.load_state_dict(state["optimizer"])
    if state["cfg"]["trainer"]["precision"] == trainer.cfg.trainer.precision:
        trainer.precision.load_state_dict(state["precision"])  # the fp16 loss scale
    if not (ck.reset_lr_scheduler or ck.reset_optimizer):
        # The schedule's state is the base lrs; a reset optimizer takes them from the new config, as a reset
        # schedule does (a loaded one would put the old lr back).
        trainer.lr_scheduler.load_state_dict(state["lr_scheduler"])
    trainer.update = state["update"]
    if not ck.reset_dataloader:
        positions = state["train_iterator"]
        # One position per saved process; an epoch position is the same on every process, so any one fits M.
        mine = positions[trainer.dist.rank] if len(positions) == trainer.dist.world_size else positions[0]
        trainer.train_iterator.load_state_dict(mine)
    if not ck.reset_meters:
        # The meters are all reset together: tokens without their time (or a best without its checkpoint) would
        # report figures of two different runs (tokens/s of 4.9e12, a best_valid that checkpoint_best.pt is not).
        trainer.best_valid_score = state.get("best_valid_score", state.get("best_valid_loss"))  # older checkpoints
        trainer.last_valid = state["last_valid"]
        trainer.train_seconds, trainer.overflows = state.get("train_seconds", 0.0), state.get("overflows", 0)
        trainer.window.load_state_dict(state.get("log_window", {}))
        trainer.stats.load_state_dict(state.get("run_stats", {}))
        trainer.bad_validations = state.get("bad_validations", 0)
    if own_checkpoint(trainer.resumed_from, trainer.output_dir / ck.save_dir):
        trainer.metrics_lines = state.get("metrics_lines", 0)  # the lines of this folder's metrics.jsonl it saw
    # else: another folder's lines (checkpoint.restore_file): this folder's log starts empty
    trainer.validation_pending = state.get("validation_pending", False)
    torch.set_rng_state(state["rng"]["torch"])


def own_checkpoint(path: Optional[Path], save_dir: Path) -> bool:
    """Whether `path` is one of this run folder's checkpoints (not a restore_file from elsewhere)."""
    return path is not None and Path(path).resolve().parent == Path(save_dir).resolve()


# Folders whose run lock this process holds. A POSIX lock belongs to the process, and closing any descriptor of
# the lock file drops it: a nested run_folder_lock (linformer-train's, then Trainer.fit's) must not open it again.
_HELD_FOLDERS: Set[Path] = set()


@contextlib.contextmanager
def run_folder_lock(output_dir: Path, enabled: bool) -> Iterator[None]:
    """Hold an exclusive lock on the run folder: a second run started in it stops with one line.

    Re-entrant within a process: an inner lock of a folder this process already holds does nothing.
    """
    key = Path(output_dir).resolve()
    if not enabled or key in _HELD_FOLDERS:
        yield
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(output_dir / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            # A POSIX lock belongs to this process: DataLoader workers forked from it do not inherit it, so a
            # run killed with -9 frees its folder at once even while its workers are still winding down.
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(folder_in_use_message(output_dir, os.pread(fd, 32, 0))) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _HELD_FOLDERS.add(key)
        try:
            yield
        finally:
            _HELD_FOLDERS.discard(key)
    finally:
        os.close(fd)  # closing releases the lock


def folder_in_use_message(output_dir: Path, owner: bytes) -> str:
    pid = owner.decode(errors="replace").strip() or "?"
    return f"another run (pid {pid}) is using output folder {output_dir}; choose another hydra.run.dir or wait for it to finish"


def check_run_folder_free(output_dir: Path) -> None:
    """UserError if another process holds `output_dir`'s run lock; creates, writes and keeps nothing.

    For a check before anything is written into the folder (linformer-train, before Hydra). The probe takes the
    lock and gives it back at once; it must not run in a process that holds this lock (closing drops it).
    """
    try:
        fd = os.open(Path(output_dir) / RUN_LOCK, os.O_RDWR)  # O_RDWR: lockf's exclusive lock needs write access
    except OSError:  # no lock file: no run has held this folder (or it cannot be opened: the run itself will say)
        return
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(folder_in_use_message(output_dir, os.pread(fd, 32, 0))) from None
        fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
