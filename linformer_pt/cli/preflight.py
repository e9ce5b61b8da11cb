"""linformer-train's checks before Hydra creates or rewrites a run folder: input paths, and the run folder itself.

Hydra writes <run dir>/.hydra/ (and the run its train.log and summary.json) before a task could look at its
inputs, so a missing file would leave a `failed` folder behind, and a rerun refused later would already have
rewritten the folder of the run it collides with. Everything here reads and never writes.
"""
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from linformer_pt.config import TrainConfig, load_config
from linformer_pt.data.sources import check_sources, expand_paths
from linformer_pt.errors import UserError
from linformer_pt.training.checkpoint import CHECKPOINT_LAST
from linformer_pt.training.summary import plain_config, read_summary

DATA_ENV = "LINFORMER_DATA"
STOP_LIMITS = ("max_update", "max_epoch", "stop_time_hours")  # what decides whether a finished run trains again
MAX_LISTED = 3  # changed values named in one line
# How a run is watched or where it runs, not what it computes: a finished run rerun with other values of these is
# still the same run (nothing to train, nothing to refuse).
RUNTIME_KEYS = ("logging.", "common.threads", "common.device", "dataset.num_workers", "checkpoint.async_save")


def check_input_paths(cfg: DictConfig, config: TrainConfig) -> None:
    """Every file the run reads exists, is not empty, and every glob matches: else a UserError naming key and path.

    `cfg` is the composed (unresolved) config, to tell paths that come from ${oc.env:LINFORMER_DATA,...}.
    """
    data = config.dataset
    if data.name == "text":
        for split in ("train", "valid"):
            key = f"dataset.{split}_files"
            patterns = list(getattr(data, f"{split}_files"))
            if split == "valid" and not patterns:
                continue  # valid_fraction of the training documents is held out
            try:
                check_data_files(patterns, key, config)
            except UserError as err:
                raw = OmegaConf.to_container(cfg.dataset, resolve=False).get(f"{split}_files")
                raise UserError(f"{err}{data_env_hint(raw)}") from None
    ck = config.checkpoint
    for key, path in (("tokenizer.path", config.tokenizer.path), ("checkpoint.init_from", ck.init_from),
                      ("checkpoint.restore_file", ck.restore_file), ("checkpoint.finetune_from", ck.finetune_from)):  # fmt: skip
        if path:
            check_file(key, Path(path).expanduser(), folder_allowed=key in ("checkpoint.finetune_from",
                                                                            "checkpoint.init_from"))  # fmt: skip


def check_data_files(patterns: List[str], key: str, config: TrainConfig) -> None:
    """The data files as the task will resolve them: masked_lm through data/sources.py (files, folders, globs)."""
    data = config.dataset
    if config.task.name == "masked_lm":
        paths = expand_paths(patterns, key, data.file_glob)  # the corpus's own resolution and messages
        check_sources(paths, key, data.text_field, data.encoding_errors)
        return
    if not patterns:
        raise UserError(f"{key} is empty; give one or more files")
    for pattern in patterns:  # sentence_prediction: files, or `datasets` save_to_disk folders ("folder:split")
        path, head = Path(pattern).expanduser(), Path(pattern.rsplit(":", 1)[0]).expanduser()
        if path.is_dir() or (not path.exists() and head.is_dir()):
            continue  # a saved dataset: the task checks the folder
        check_file(key, path)


def check_file(key: str, path: Path, folder_allowed: bool = False) -> None:
    """`path` exists (a folder only where allowed) and, being a file, holds more than whitespace."""
    if folder_allowed and path.is_dir():
        return
    if not path.is_file():
        raise UserError(f"{key}: no such file: {path}")
    if is_blank(path):
        raise UserError(f"{key}: {path} is empty")


def is_blank(path: Path, chunk: int = 1 << 16) -> bool:
    """No byte but whitespace (read until the first other byte: at once for any real file)."""
    with open(path, "rb") as file:
        while True:
            block = file.read(chunk)
            if not block:
                return True
            if block.strip():
                return False


def data_env_hint(raw: Any) -> str:
    """For a path from ${oc.env:LINFORMER_DATA,default}: how that folder was chosen and how to choose another."""
    match = re.search(r"\$\{oc\.env:" + DATA_ENV + r",([^}]*)\}", str(raw))
    if not match:
        return ""
    if DATA_ENV in os.environ:
        where = f"{DATA_ENV} is {os.environ[DATA_ENV]}"
    else:
        where = f"{DATA_ENV} is not set, so {match.group(1).strip()} is read relative to the current folder {os.getcwd()}"
    return f" ({where}; set {DATA_ENV} to the folder holding the data sets)"


def rerun_of_finished(cfg: DictConfig, folder: Path) -> Optional[Dict[str, Any]]:
    """The summary of a finished run in `folder` that this command would only repeat (train nothing), else None.

    UserError when another run is using the folder, or when the command changes values of that finished run:
    training nothing, it could not apply them, and rewriting the folder's files would misreport the run.
    """
    summary = read_summary(folder)
    if not summary or summary.get("status") != "finished" or not isinstance(summary.get("config"), dict):
        return None
    config = load_config(cfg, check_devices=False)
    if not trains_nothing(summary, config, folder):
        return None  # e.g. optimization.max_update raised: the run continues from its last checkpoint
    changed = changed_values(saved_config(folder, summary), plain_config(config))
    if changed:
        raise UserError(
            f"{folder} already holds a finished run (update {summary.get('updates')}) with {', '.join(changed)}; "
            f"nothing trained or written: give another hydra.run.dir for a new run, or raise optimization.max_update "
            f"above {summary.get('updates')} to continue this one"
        )
    return summary


def trains_nothing(summary: Dict[str, Any], config: TrainConfig, folder: Path) -> bool:
    """Would the Trainer resume this finished run and stop at once? (The limits it stopped at still hold.)"""
    ck = config.checkpoint
    if not ck.auto_resume or ck.restore_file or not (folder / ck.save_dir / CHECKPOINT_LAST).is_file():
        return False  # a fresh start, or another checkpoint: the Trainer decides
    saved = summary["config"].get("optimization", {})
    opt = config.optimization
    if int(summary.get("updates", 0)) >= opt.max_update:
        return True
    return all(saved.get(limit) == getattr(opt, limit) for limit in STOP_LIMITS)


def saved_config(folder: Path, summary: Dict[str, Any]) -> Dict[str, Any]:
    """The config the run was started with: .hydra/config.yaml as composed (a fine-tuning summary holds the
    pretrained model's architecture instead of the composed model section), else the summary's."""
    try:
        return plain_config(load_config(OmegaConf.load(folder / ".hydra" / "config.yaml"), check_devices=False))
    except Exception:  # noqa: BLE001  (missing, or from another version of the schema)
        return summary["config"]


def changed_values(saved: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """['model.dropout=0.1 (given: 0.3)', ...] for the leaves that differ (at most MAX_LISTED, then a count)."""
    old_leaves, new_leaves = leaves(saved), leaves(new)
    keys = [key for key in sorted(set(old_leaves) | set(new_leaves))
            if old_leaves.get(key) != new_leaves.get(key) and not key.startswith(RUNTIME_KEYS)]  # fmt: skip
    shown = [f"{key}={old_leaves.get(key)} (given: {new_leaves.get(key)})" for key in keys[:MAX_LISTED]]
    return shown + ([f"{len(keys) - MAX_LISTED} more changed"] if len(keys) > MAX_LISTED else [])


def leaves(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """{'model.dropout': 0.1, ...}: nested dicts flattened to dotted keys."""
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
