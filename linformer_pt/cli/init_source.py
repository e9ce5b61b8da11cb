"""checkpoint.init_from=<export folder>: a run that starts from an imported or exported model takes its model.

A folder written by linformer-import or linformer-export is a starting point: the run's model section becomes the
folder's (architecture, attention, positions...), with the user's own `model.*` overrides on top (e.g.
`model.attention=linformer model.k=64 model.max_positions=1024` to swap in Linformer attention and extend the
positions), and its tokenizer.json is the run's tokenizer unless `tokenizer.path` is given. A checkpoint file
given as init_from keeps the older contract: the composed model must fit its weights.
"""
import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

from linformer_pt.config import TrainConfig
from linformer_pt.errors import UserError
from linformer_pt.sweeps.labels import override_key


def from_export_folder(config: TrainConfig, overrides: Sequence[str]) -> "tuple[TrainConfig, List[str]]":
    """The config of a run whose checkpoint.init_from is an export folder, and lines saying what was taken."""
    from linformer_pt.hub.export_folder import CONFIG_FILE, TOKENIZER_FILE, check_format
    from linformer_pt.registry import build_dataclass

    folder = Path(config.checkpoint.init_from or "").expanduser()
    if not config.checkpoint.init_from or not (folder / CONFIG_FILE).is_file():
        return config, []
    source: Dict[str, Any] = dict(check_format(folder).get("linformer") or {})
    given = {override_key(o).split(".", 1)[1] for o in overrides if override_key(o).startswith("model.")}
    if any(override_key(o) == "attention" for o in overrides):  # the attention group (k64, standard) sets these
        given |= {"attention", "k"}
    mine = dataclasses.asdict(config.model)
    merged = {**mine, **{key: value for key, value in source.items() if key in mine and key not in given}}
    model = build_dataclass("model", type(config.model), merged)
    notes = [f"model from checkpoint.init_from={folder}" + (f", with {', '.join(sorted(given))} as given" if given else "")]
    tokenizer = config.tokenizer
    if not tokenizer.path and (folder / TOKENIZER_FILE).is_file():
        tokenizer = dataclasses.replace(tokenizer, path=str(folder / TOKENIZER_FILE))
        notes.append(f"tokenizer from {folder / TOKENIZER_FILE}")
    return dataclasses.replace(config, model=model, tokenizer=tokenizer), notes


def load_init_source(path: Union[str, Path]) -> Dict[str, Any]:
    """checkpoint.init_from: a training checkpoint, or an export folder (linformer-export, linformer-import) read as
    one: {"model": weights, "cfg": {"model": its model config}, "provenance": {"tokenizer_sha256": ...}, ...},
    which models/loading.py's load_weights copies into the new model (resized, E/F added for a standard source)."""
    from linformer_pt.data.cache import sha256_file
    from linformer_pt.hub.export_folder import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, check_format, read_weights
    from linformer_pt.training.checkpoint import load_checkpoint

    folder = Path(path).expanduser()
    if not folder.is_dir():
        return load_checkpoint(folder)
    config = check_format(folder)
    if config.get("task", {}).get("name", "masked_lm") != "masked_lm":
        raise UserError(f"checkpoint.init_from={folder} is a fine-tuned model; start from a masked-LM export")
    if not isinstance(config.get("linformer"), dict):
        raise UserError(f"{folder / CONFIG_FILE} has no \"linformer\" model config")
    tokenizer = folder / TOKENIZER_FILE
    provenance = {"tokenizer_sha256": sha256_file(tokenizer)} if tokenizer.is_file() else {}
    state = read_weights(folder / WEIGHTS_FILE, config.get("tied", {}))
    model_args = {"vocab_size": config.get("vocab_size"), "pad_id": config.get("special_ids", {}).get("pad")}
    return {"model": state, "cfg": {"model": config["linformer"]}, "provenance": provenance, "model_args": model_args}
