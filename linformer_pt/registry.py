"""Name -> (class, config dataclass) registries for models, tasks, optimizers and LR schedulers.

Registering also stores the dataclass in Hydra's ConfigStore as `<group>_<name>_schema` at the top level (not
in the group, so `--help` lists only real options), so YAML presets can extend it
(`defaults: [/model_linformer_roberta_schema]`) and overrides are type-checked on composition.
"""
import difflib
import importlib
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, Iterable, Type

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from linformer_pt.errors import UserError


@dataclass(frozen=True)
class Entry:
    cls: Any
    config_class: Type


def unknown_key(full_key: str, known: Iterable[str]) -> str:
    """One line for a misspelled key: the closest known key, or the known keys when none is close."""
    known = sorted(known)
    close = difflib.get_close_matches(full_key.rsplit(".", 1)[-1], known, n=1)
    if close:
        return f"unknown key {full_key}; did you mean {close[0]}?"
    return f"unknown key {full_key}; known: {', '.join(known)}" if known else f"unknown key {full_key}"


def build_dataclass(prefix: str, cls: Type, values: Dict[str, Any]) -> Any:
    """cls(**values), where a key that cls lacks is a UserError naming it (a TypeError would be a traceback)."""
    known = [f.name for f in fields(cls)]
    for key in values:
        if key not in known:
            raise UserError(unknown_key(f"{prefix}.{key}" if prefix else key, known))
    return cls(**values)


class Registry:
    """A named family of components (e.g. models) whose members are chosen by `cfg.<group>.name`."""

    def __init__(self, group: str, members: str) -> None:
        """`members`: the package whose import registers this family (imported on the first lookup)."""
        self.group, self.members = group, members
        self._entries: Dict[str, Entry] = {}

    def _loaded(self) -> Dict[str, Entry]:
        """The entries, after importing `members`: a lookup must not depend on what the caller happened to import
        (linformer-export once found no tasks because only linformer-train imported linformer_pt.tasks)."""
        importlib.import_module(self.members)  # a dictionary lookup once imported
        return self._entries

    def register(self, name: str, config: Type) -> Callable[[Any], Any]:
        """Decorator: register `cls` under `name` with its config dataclass `config`."""

        def decorator(cls: Any) -> Any:
            if name in self._entries:
                raise ValueError(f"{self.group} '{name}' is registered twice")
            self._entries[name] = Entry(cls, config)
            ConfigStore.instance().store(name=schema_name(self.group, name), node=config)
            return cls

        return decorator

    def names(self) -> list:
        return sorted(self._loaded())

    def get(self, name: str) -> Entry:
        """The entry for `name`, or a UserError listing the known names."""
        if name not in self._loaded():
            raise UserError(self._unknown(name))
        return self._entries[name]

    def config(self, cfg: Any) -> Any:
        """Validated config dataclass for `cfg` (a DictConfig, a dict or already the dataclass)."""
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        if not isinstance(cfg, dict):
            return cfg
        name = cfg.get("name", "")
        if name not in self._loaded():
            raise UserError(f"{self.group}.name: {self._unknown(name)}")
        return build_dataclass(self.group, self._entries[name].config_class, cfg)

    def _unknown(self, name: str) -> str:
        return f"unknown {self.group} '{name}'; known: {', '.join(self.names()) or '(none)'}"


def schema_name(group: str, name: str) -> str:
    """The ConfigStore name of a registered config dataclass, e.g. model_linformer_roberta_schema."""
    return f"{group}_{name}_schema"


MODELS = Registry("model", "linformer_pt.models")
TASKS = Registry("task", "linformer_pt.tasks")
OPTIMIZERS = Registry("optim", "linformer_pt.training.optim")
LR_SCHEDULERS = Registry("lr_scheduler", "linformer_pt.training.optim")

register_model = MODELS.register
register_task = TASKS.register
register_optimizer = OPTIMIZERS.register
register_lr_scheduler = LR_SCHEDULERS.register
