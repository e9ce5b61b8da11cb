"""`linformer-train`: the Hydra app that composes configs/train.yaml and runs one training job.

Bad input (a UserError) is printed as one line on stderr with exit status 2; outputs already on disk stay.
"""
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import linformer_pt.models  # noqa: F401  (registers models)
import linformer_pt.tasks  # noqa: F401  (registers tasks)
import linformer_pt.training  # noqa: F401  (registers optimizers and schedules)
from linformer_pt.config import load_config
from linformer_pt.errors import UserError
from linformer_pt.registry import MODELS, TASKS
from linformer_pt.training.trainer import Trainer


def run(cfg: DictConfig, output_dir: Path) -> Dict[str, Any]:
    """Validate `cfg`, build task and model, train, and return the summary (losses, checkpoint path)."""
    config = load_config(cfg)
    if config.common.threads:
        torch.set_num_threads(config.common.threads)
    torch.manual_seed(config.common.seed)  # model initialisation
    task = TASKS.get(config.task.name).cls.setup(config)
    task.check_model(config.model)
    model = MODELS.get(config.model.name).cls.build(config.model, task)
    print(f"output folder: {output_dir}", flush=True)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {config.model.name}, {params / 1e6:.2f}M parameters; vocabulary {task.vocab_size}", flush=True)
    summary = Trainer(config, task, model, output_dir).fit()
    first, final = summary["first_valid"], summary["final_valid"]
    print(
        f"done: {summary['updates']} updates; valid loss {first['loss']:.3f} -> {final['loss']:.3f} "
        f"(ppl {first['ppl']:.1f} -> {final['ppl']:.1f})\n"
        f"checkpoint: {summary['checkpoint']}\nmetrics: {summary['metrics']}\noutput folder: {output_dir}",
        flush=True,
    )
    return summary


@hydra.main(version_base="1.3", config_path="pkg://linformer_pt.configs", config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    try:
        summary = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except UserError as err:
        print(f"linformer-train: error: {err}", file=sys.stderr)
        sys.exit(2)
    return summary["final_valid"]["loss"]  # the value a Hydra sweeper would minimise


CONFIG_GROUPS = ("model", "task", "dataset", "optim", "lr_scheduler", "experiment")


def unknown_group_option(argv: List[str]) -> str:
    """A one-line error for `group=option` naming an option that has no YAML file, else ''."""
    configs = resources.files("linformer_pt.configs")
    for arg in argv:
        match = re.fullmatch(r"(\w+)=([\w.-]+)", arg)
        if not match or match.group(1) not in CONFIG_GROUPS:
            continue
        group, option = match.groups()
        known = sorted(p.name[:-5] for p in (configs / group).iterdir() if p.name.endswith(".yaml"))
        if option not in known:
            return f"unknown {group} '{option}'; known: {', '.join(known)}"
    return ""


def main() -> None:
    # Hydra reports a missing group option over a dozen lines; say it in one, as for every other bad value.
    error = unknown_group_option(sys.argv[1:])
    if error:
        print(f"linformer-train: error: {error}", file=sys.stderr)
        sys.exit(2)
    hydra_main()


if __name__ == "__main__":
    main()
