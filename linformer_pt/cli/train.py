"""`linformer-train`: the Hydra app that composes configs/train.yaml and runs one training job.

Bad input (a UserError) or a diverged run is one line on stderr with exit status 2; outputs already on disk stay.
With several processes, one that went away or stopped answering is one line on the others, with exit status 1.
The command line is validated before Hydra creates the run folder, so a bad value leaves nothing behind.
"""
import dataclasses
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch import nn

import linformer_pt.models  # noqa: F401  (registers models)
import linformer_pt.tasks  # noqa: F401  (registers tasks)
import linformer_pt.training  # noqa: F401  (registers optimizers and schedules)
from linformer_pt.config import TrainConfig, load_config
from linformer_pt.cli.common import check_command_line, check_group_options, one_line_errors
from linformer_pt.cli.console import tee_console
from linformer_pt.cli.preflight import check_input_paths, rerun_of_finished
from linformer_pt.errors import RunInterrupted, UserError
from linformer_pt.models.loading import load_weights
from linformer_pt.cli.init_source import from_export_folder, load_init_source
from linformer_pt.registry import MODELS, TASKS
from linformer_pt.training.checkpoint import CHECKPOINT_LAST
from linformer_pt.training.distributed import DistributedInfo, barrier, init_distributed, shutdown, world_from_env
from linformer_pt.training.elastic import (
    PeerLost,
    check_one_tokenizer,
    check_shared_folder,
    peer_failure,
    peer_failures_in_one_line,
    resume_line,
)
from linformer_pt.training.resume import check_run_folder_free, find_checkpoint, run_folder_lock
from linformer_pt.training.summary import failure_summary, finished_summary, run_summary, write_summary
from linformer_pt.training.trainer import Trainer, resolve_device

TORCH_DEFAULT_THREADS = torch.get_num_threads()  # what common.threads=0 means, also for a multirun's later jobs


def run(cfg: DictConfig, output_dir: Path, run_name: str = "", overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """Validate `cfg`, train (unless this folder holds the same run, finished), write summary.json, return the result.

    `run_name` (default: logging.run_name, else the folder's name) and `overrides` label the run in sweep reports.
    """
    config = load_config(cfg)
    torch.set_num_threads(config.common.threads or TORCH_DEFAULT_THREADS)  # not what an earlier job in this process set
    timeout = timedelta(minutes=config.trainer.distributed_timeout_minutes)
    name = config.logging.run_name or run_name or output_dir.name
    try:
        dist = init_distributed(resolve_device(config.common.device), config.trainer.distributed_timeout_minutes)
        check_shared_folder(output_dir, dist.rank, dist.world_size, timeout)
        config, notes = from_export_folder(config, overrides)  # a run from an imported model takes its model
        if dist.is_main and notes and find_checkpoint(config, output_dir) is None:
            print("; ".join(notes), flush=True)
        done = finished_summary(output_dir, config)
        result = (already_finished(done, output_dir, dist.is_main) if done is not None
                  else train_and_summarise(config, output_dir, dist, name, overrides))  # fmt: skip
        # No process tears its group down while a peer still has work queued on it (gloo aborted the process
        # that did: a non-main rank finishes first, while rank 0 still saves).
        barrier()
        return result
    except (RuntimeError, TimeoutError) as err:  # before or after training: no update to name
        lost = peer_lost(err, config, output_dir, None)
        if lost is None:
            raise
        raise lost from None
    finally:
        shutdown()


def peer_lost(err: BaseException, config: TrainConfig, output_dir: Path, update: Optional[int]) -> Optional[PeerLost]:
    """`err` as a one-line PeerLost when a collective failed because another process hung or went away, else None."""
    last = output_dir / config.checkpoint.save_dir / CHECKPOINT_LAST
    timeout = timedelta(minutes=config.trainer.distributed_timeout_minutes)
    line = peer_failure(err, world_from_env().rank, timeout, update, last if last.is_file() else None)
    return None if line is None else PeerLost(line)


def already_finished(summary: Dict[str, Any], output_dir: Path, say_it: bool) -> Dict[str, Any]:
    """A rerun of a finished run (a sweep started again) trains nothing and returns the saved result."""
    if say_it:
        print(f"{output_dir} already holds this run, finished at update {summary['updates']} "
              f"({valid_line({}, summary['final_valid'])}); nothing to train", flush=True)  # fmt: skip
    checkpoint = output_dir / summary["config"]["checkpoint"]["save_dir"] / "checkpoint_last.pt"
    return {"first_valid": summary["final_valid"], "final_valid": summary["final_valid"], "updates": summary["updates"],
            "checkpoint": str(checkpoint), "metrics": str(output_dir / "metrics.jsonl"), "finished_before": True}  # fmt: skip


def train_and_summarise(
    config: TrainConfig, output_dir: Path, dist: DistributedInfo, name: str, overrides: Sequence[str]
) -> Dict[str, Any]:
    """train(), then summary.json on the main process: finished, interrupted (resumable) or failed (with the error)."""
    built: Dict[str, Any] = {}
    record = (lambda summary: write_summary(output_dir, summary)) if dist.is_main else (lambda summary: None)

    def record_on_the_way_out(summary: Dict[str, Any]) -> None:
        # A full disk must not replace the interrupt or the error under way: a scheduler requeues on the
        # interrupt's exit status, and the user needs the first error.
        try:
            record(summary)
        except UserError as err:
            print(f"warning: {err}", file=sys.stderr, flush=True)

    try:
        result = train(config, output_dir, dist, built)
    except RunInterrupted:
        record_on_the_way_out(run_summary(built["trainer"], "interrupted", name, overrides, unigram=None))
        raise
    except (UserError, FloatingPointError, RuntimeError, TimeoutError) as err:
        ours = isinstance(err, (UserError, FloatingPointError))
        trainer = built.get("trainer")
        lost = None if ours else peer_lost(err, config, output_dir, trainer.update if trainer is not None else None)
        if not ours and lost is None:
            raise  # a bug: keep its traceback
        message = str(lost or err)
        if trainer is not None:
            failed = {**run_summary(trainer, "failed", name, overrides, unigram=None), "error": message}
        else:
            failed = failure_summary(config, message, name, overrides)
        record_on_the_way_out(failed)
        if lost is not None:
            raise lost from None
        raise
    if dist.is_main:
        unigram = built["task"].unigram_baseline() if hasattr(built["task"], "unigram_baseline") else None
        record(run_summary(built["trainer"], "finished", name, overrides, unigram))
        if unigram:
            sets = "".join(f", {name} {value['ppl']:.1f}" for name, value in unigram.get("sets", {}).items())
            print(f"unigram baseline of the validation targets: ppl {unigram['ppl']:.1f}{sets}", flush=True)
    return result


def train(
    config: TrainConfig, output_dir: Path, dist: DistributedInfo, built: Optional[Dict[str, Any]] = None
) -> Dict[str, Any]:
    """Set up the task (rank 0 first, so caches are built once), build the model and fit it.

    `built` receives the task and trainer as they are made, so a caller can summarise a run that stopped.
    """
    built = {} if built is None else built
    torch.manual_seed(config.common.seed)  # model initialisation: the same on every process
    if not dist.is_main:
        barrier()  # let rank 0 build the corpus, tokenizer and token caches first
    task = built["task"] = TASKS.get(config.task.name).cls.setup(config)
    if dist.is_main:
        barrier()
    # Caches local to each machine must have made the same tokenizer: token ids mean words.
    check_one_tokenizer(getattr(task, "tokenizer_path", None), dist.rank, dist.world_size)
    config, model = build_model(config, task)
    say = print if dist.is_main else (lambda *args, **kwargs: None)
    resume_from = find_checkpoint(config, output_dir)
    resuming = resume_line(resume_from)  # "elastic restart N: ..." after a restart by torchrun
    if resuming:
        say(resuming, flush=True)
    if resume_from is None and hasattr(task, "init_model"):  # (a checkpoint to resume from: the Trainer loads it)
        say(task.init_model(model), flush=True)
    elif resume_from is None and config.checkpoint.init_from:
        checkpoint = load_init_source(config.checkpoint.init_from)  # a checkpoint, or an export folder
        check_same_tokenizer(checkpoint, task.provenance()["tokenizer_sha256"], config.checkpoint.init_from)
        load_weights(model, checkpoint)
        say(f"initialised from {config.checkpoint.init_from}", flush=True)
    say(f"output folder: {output_dir}", flush=True)
    params = sum(p.numel() for p in model.parameters())
    say(f"model: {config.model.name}, {params / 1e6:.2f}M parameters; vocabulary {task.vocab_size}", flush=True)
    say(device_line(config.common.device, config.trainer.precision, dist.world_size), flush=True)
    if dist.enabled:
        say(f"distributed: {dist.world_size} processes", flush=True)
    trainer = built["trainer"] = Trainer(config, task, model, output_dir, dist, resume_from)
    if resume_from is not None:
        say(f"resumed at update {trainer.update} (epoch {trainer.train_iterator.epoch})", flush=True)
    summary = trainer.fit()
    if summary.get("finished_before"):
        say(f"this run already finished at update {summary['updates']} (raise optimization.max_update to continue)")
    say(
        f"done: {summary['updates']} updates; {valid_line(summary['first_valid'], summary['final_valid'])}\n"
        f"checkpoint: {summary['checkpoint']}\nmetrics: {summary['metrics']}\noutput folder: {output_dir}",
        flush=True,
    )
    return summary


def build_model(config: TrainConfig, task: Any) -> Tuple[TrainConfig, nn.Module]:
    """The model for `task`, and the config with the model section it was built from.

    A fine-tuning task takes the architecture from its pretrained model and builds its own head on the encoder.
    """
    if hasattr(task, "model_config"):
        config = dataclasses.replace(config, model=task.model_config(config.model))
    task.check_model(config.model)
    if hasattr(task, "build_model"):
        return config, task.build_model(config.model)
    return config, MODELS.get(config.model.name).cls.build(config.model, task)


def valid_line(first: Dict[str, float], final: Dict[str, float]) -> str:
    """'valid loss 9.067 -> 6.757 (ppl 8669.0 -> 860.0)': each metric from the first to the final validation.

    Without a first validation (optimization.validate_at_start=false) only the final values are given.
    """
    if not final:
        return "valid loss n/a"

    def change(key: str) -> str:
        digits = 1 if key.endswith("ppl") else 3
        return f"{first[key]:.{digits}f} -> {final[key]:.{digits}f}" if key in (first or {}) else f"{final[key]:.{digits}f}"

    hidden = ("loss", "masked", "/loss", "/masked")  # named sets ("books/ppl") give their headline figure
    others = ", ".join(f"{key} {change(key)}" for key in final if not key.endswith(hidden))
    return f"valid loss {change('loss')}" + (f" ({others})" if others else "")


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
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    is_main = world_from_env().is_main
    # The folder's lock before its train.log: a run refused because another one uses the folder appends nothing.
    # (Trainer.fit takes the same lock again; within one process that is a no-op.)
    with peer_failures_in_one_line("linformer-train"), one_line_errors("linformer-train"), \
            run_folder_lock(output_dir, is_main):
        with tee_console(output_dir / "train.log", enabled=is_main), one_line_errors("linformer-train"):
            summary = run(cfg, output_dir, hydra_cfg.job.override_dirname, list(hydra_cfg.overrides.task))
    return summary["final_valid"]["loss"]  # the value a Hydra sweeper would minimise


CONFIG_GROUPS = ("model", "task", "dataset", "optim", "lr_scheduler", "logger", "experiment", "attention")


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
    """load_config a composed job and check the files it reads; jobs a launcher sends to other machines skip the
    checks of this one (its CUDA devices, its files)."""
    config = load_config(cfg, check_devices=not remote)
    if not remote:
        check_input_paths(cfg, config)


def check_run_folder(cfg: DictConfig, folder: Path) -> None:
    """Before Hydra writes into a named run folder: refuse one another run is using, and stop a rerun that would
    train nothing (a finished run, unchanged) without rewriting its files."""
    if world_from_env().is_main:  # under torchrun, rank 0 may already hold the lock when the others look
        check_run_folder_free(folder)
    done = rerun_of_finished(cfg, folder)
    if done is not None:
        already_finished(done, folder, world_from_env().is_main)
        sys.exit(0)


def main() -> None:
    check_group_options("linformer-train", CONFIG_GROUPS)
    sys.argv += torchrun_overrides(sys.argv[1:])
    check_command_line("linformer-train", "train", sys.argv[1:], validate, check_run_folder)
    hydra_main()


if __name__ == "__main__":
    main()
