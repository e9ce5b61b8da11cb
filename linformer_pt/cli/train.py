"""`linformer-train`: the Hydra app that composes configs/train.yaml and runs one training job.

Bad input (a UserError) or a diverged run is one line on stderr with exit status 2; outputs already on disk stay.
The command line is validated before Hydra creates the run folder, so a bad value leaves nothing behind.
"""
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import linformer_pt.models  # noqa: F401  (registers models)
import linformer_pt.tasks  # noqa: F401  (registers tasks)
import linformer_pt.training  # noqa: F401  (registers optimizers and schedules)
from linformer_pt.config import TrainConfig, load_config
from linformer_pt.cli.common import check_command_line, check_group_options, one_line_errors
from linformer_pt.cli.console import tee_console
from linformer_pt.errors import UserError
from linformer_pt.models.loading import load_weights
from linformer_pt.training.checkpoint import load_checkpoint
from linformer_pt.registry import MODELS, TASKS
from linformer_pt.training.distributed import DistributedInfo, barrier, init_distributed, shutdown, world_from_env
from linformer_pt.training.resume import find_checkpoint
from linformer_pt.training.trainer import Trainer, resolve_device


def run(cfg: DictConfig, output_dir: Path) -> Dict[str, Any]:
    """Validate `cfg`, build task and model, train, and return the summary (losses, checkpoint path)."""
    config = load_config(cfg)
    if config.common.threads:
        torch.set_num_threads(config.common.threads)
    dist = init_distributed(resolve_device(config.common.device))
    try:
        return train(config, output_dir, dist)
    finally:
        shutdown()


def train(config: TrainConfig, output_dir: Path, dist: DistributedInfo) -> Dict[str, Any]:
    """Set up the task (rank 0 first, so caches are built once), build the model and fit it."""
    torch.manual_seed(config.common.seed)  # model initialisation: the same on every process
    if not dist.is_main:
        barrier()  # let rank 0 build the corpus, tokenizer and token caches first
    task = TASKS.get(config.task.name).cls.setup(config)
    if dist.is_main:
        barrier()
    task.check_model(config.model)
    say = print if dist.is_main else (lambda *args, **kwargs: None)
    model = MODELS.get(config.model.name).cls.build(config.model, task)
    resume_from = find_checkpoint(config, output_dir)
    if resume_from is not None:
        say(f"resuming from {resume_from}", flush=True)
    elif config.checkpoint.init_from:
        checkpoint = load_checkpoint(config.checkpoint.init_from)
        check_same_tokenizer(checkpoint, task.provenance()["tokenizer_sha256"], config.checkpoint.init_from)
        load_weights(model, checkpoint)
        say(f"initialised from {config.checkpoint.init_from}", flush=True)
    say(f"output folder: {output_dir}", flush=True)
    params = sum(p.numel() for p in model.parameters())
    say(f"model: {config.model.name}, {params / 1e6:.2f}M parameters; vocabulary {task.vocab_size}", flush=True)
    say(device_line(config.common.device, config.trainer.precision, dist.world_size), flush=True)
    if dist.enabled:
        say(f"distributed: {dist.world_size} processes", flush=True)
    trainer = Trainer(config, task, model, output_dir, dist, resume_from)
    if resume_from is not None:
        position = trainer.train_iterator.state_dict()
        say(f"resumed at update {trainer.update} (epoch {position['epoch']})", flush=True)
    summary = trainer.fit()
    if summary.get("finished_before"):
        say(f"this run already finished at update {summary['updates']} (raise optimization.max_update to continue)")
    first, final = summary["first_valid"], summary["final_valid"]
    # No first validation (optimization.validate_at_start=false): only the final result.
    loss = f"{first['loss']:.3f} -> {final['loss']:.3f}" if first else f"{final['loss']:.3f}" if final else "n/a"
    ppl = f"{first['ppl']:.1f} -> {final['ppl']:.1f}" if first else f"{final['ppl']:.1f}" if final else "n/a"
    say(
        f"done: {summary['updates']} updates; valid loss {loss} (ppl {ppl})\n"
        f"checkpoint: {summary['checkpoint']}\nmetrics: {summary['metrics']}\noutput folder: {output_dir}",
        flush=True,
    )
    return summary


def device_line(requested: str, precision: str, world_size: int = 1) -> str:
    """One line saying what the run trains on: GPU name and count with the precision, or the CPU (and why)."""
    device = resolve_device(requested)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        count = f"{world_size} x " if world_size > 1 else ""  # one GPU per process
        return f"device: {count}{name}, precision {precision}"
    if requested == "auto":
        return f"no CUDA device: training on the CPU (precision {precision})"
    return f"device: CPU, precision {precision}"


def check_same_tokenizer(checkpoint: Dict[str, Any], tokenizer_sha256: str, path: str) -> None:
    """Token ids only mean something with the tokenizer that made them: refuse another one."""
    saved = checkpoint.get("provenance", {}).get("tokenizer_sha256")
    if saved and saved != tokenizer_sha256:
        raise UserError(
            f"checkpoint.init_from={path} was trained with another tokenizer (sha256 {saved[:12]}, this run's: "
            f"{tokenizer_sha256[:12]}); give tokenizer.path=<the tokenizer.json in that run's output folder>"
        )


@hydra.main(version_base="1.3", config_path="pkg://linformer_pt.configs", config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    with tee_console(output_dir / "train.log", enabled=world_from_env().is_main), one_line_errors("linformer-train"):
        summary = run(cfg, output_dir)
    return summary["final_valid"]["loss"]  # the value a Hydra sweeper would minimise


CONFIG_GROUPS = ("model", "task", "dataset", "optim", "lr_scheduler", "logger", "experiment")


def torchrun_overrides(argv: List[str]) -> List[str]:
    """Under torchrun all processes must share one output folder, and only rank 0 writes Hydra's files there."""
    info = world_from_env()
    if not info.enabled:
        return []
    extra = []
    if not any(arg.startswith("hydra.run.dir=") for arg in argv):
        run_id = os.environ.get("TORCHELASTIC_RUN_ID", "run")
        extra.append(f"hydra.run.dir=outputs/torchrun/{run_id}")
    if not info.is_main:
        extra.append("hydra.output_subdir=null")
    return extra


def validate(cfg: DictConfig, remote: bool) -> None:
    """load_config a composed job; jobs a launcher sends to other machines skip the check of this one's devices."""
    load_config(cfg, check_devices=not remote)


def main() -> None:
    check_group_options("linformer-train", CONFIG_GROUPS)
    sys.argv += torchrun_overrides(sys.argv[1:])
    check_command_line("linformer-train", "train", sys.argv[1:], validate)
    hydra_main()


if __name__ == "__main__":
    main()
