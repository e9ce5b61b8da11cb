"""Name -> (class, config dataclass) registries for models, tasks, optimizers and LR schedulers.

Registering also stores the dataclass in Hydra's ConfigStore as `<group>/<name>_schema`, so YAML presets
can extend it (`defaults: [linformer_roberta_schema]`) and overrides are type-checked on composition.
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, Type

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from linformer_pt.errors import UserError


@dataclass(frozen=True)
class Entry:
    cls: Any
    config_class: Type


class Registry:
    """A named family of components (e.g. models) whose members are chosen by `cfg.<group>.name`."""

    def __init__(self, group: str) -> None:
        self.group = group
        self._entries: Dict[str, Entry] = {}

    def register(self, name: str, config: Type) -> Callable[[Any], Any]:
        """Decorator: register `cls` under `name` with its config dataclass `config`."""

        def decorator(cls: Any) -> Any:
            if name in self._entries:
                raise ValueError(f"{self.group} '{name}' is registered twice")
            self._entries[name] = Entry(cls, config)
            ConfigStore.instance().store(group=self.group, name=f"{name}_schema", node=config)
            return cls

        return decorator

    def names(self) -> list:
        return sorted(self._entries)

    def get(self, name: str) -> Entry:
        """The entry for `name`, or a UserError listing the known names."""
        if name not in self._entries:
            known = ", ".join(self.names()) or "(none)"
            raise UserError(f"unknown {self.group} '{name}'; known: {known}")
        return self._entries[name]

    def config(self, cfg: Any) -> Any:
        """Validated config dataclass for `cfg` (a DictConfig, a dict or already the dataclass)."""
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        if not isinstance(cfg, dict):
            return cfg
        entry = self.get(cfg.get("name", ""))
        try:
            return entry.config_class(**cfg)
        except TypeError as err:  # an unknown field
            raise UserError(f"{self.group}: {err}") from None


MODELS = Registry("model")
TASKS = Registry("task")
OPTIMIZERS = Registry("optim")
LR_SCHEDULERS = Registry("lr_scheduler")

register_model = MODELS.register
register_task = TASKS.register
register_optimizer = OPTIMIZERS.register
register_lr_scheduler = LR_SCHEDULERS.register
