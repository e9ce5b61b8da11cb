"""The training loop: mixed precision, accumulation, clipping, LR schedule, DDP, validation, checkpoints, logs.

Every update is a pure function of (seed, update, data position): dropout is reseeded per update and batches are
rebuilt from (seed, epoch, index), which is what makes a resumed run match an uninterrupted one. An update itself
(training/step.py) never waits for the device: the loop reads its results once per log record, validation or save.
"""
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn

from linformer_pt.config import TrainConfig
from linformer_pt.data.mixture_spec import best_set
from linformer_pt.errors import RunInterrupted
from linformer_pt.training.checkpoint import (
    CHECKPOINT_BEST,
    CHECKPOINT_LAST,
    CheckpointWriter,
    numbered_name,
    provenance,
    rng_states,
)
from linformer_pt.training.distributed import DistributedInfo, all_gather_objects, all_reduce_sum, local_device, wrap_model
from linformer_pt.training.logging import MetricsLogger, peak_tflops
from linformer_pt.training.meters import Window
from linformer_pt.training.optim import build_lr_scheduler, build_optimizer, waiting_parameters
from linformer_pt.training.precision import Precision
from linformer_pt.training.progress import Progress
from linformer_pt.training.resume import load_resume_state, restore_training_state, run_folder_lock, schedule_change
from linformer_pt.training.run_stats import RunStats
from linformer_pt.training.signals import StopSignals, interrupted_message, multirun_sweep_dir
from linformer_pt.training.step import Agreement, UpdateStats, UpdateStep, as_float64


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def same_file(a: Path, b: Path) -> bool:
    """tokenizer.path may name the run folder's own copy (a resume given the tokenizer it wrote)."""
    return Path(b).exists() and Path(a).resolve() == Path(b).resolve()


class Trainer:
    """Fits `model` on `task` as configured by `cfg`, writing logs and checkpoints under `output_dir` (rank 0)."""

    def __init__(
        self,
        cfg: TrainConfig,
        task: Any,
        model: nn.Module,
        output_dir: Path,
        dist: DistributedInfo = DistributedInfo(),
        resume_from: Optional[Path] = None,
    ) -> None:
        self.cfg, self.task, self.output_dir, self.dist = cfg, task, Path(output_dir), dist
        self.device = local_device(resolve_device(cfg.common.device), dist)
        self.provenance = provenance(task.provenance())  # hashes and git revision: once, not at every save
        state = None if resume_from is None else load_resume_state(resume_from, cfg, self.provenance, dist.world_size)
        note = schedule_change(state, cfg) if state is not None else None
        if note and dist.is_main:
            print(note, flush=True)
        if state is not None:
            model.load_state_dict(state["model"])  # before wrapping: DDP broadcasts it, FSDP shards it
        self.model = model.to(self.device)
        self.sharded = dist.enabled and cfg.trainer.distributed_backend == "fsdp"
        self.wrapped = wrap_model(self.model, dist, cfg.trainer.distributed_backend)
        if cfg.trainer.compile:
            self.wrapped = torch.compile(self.wrapped)
        t = cfg.trainer
        self.precision = Precision(t.precision, self.device, t.fp16_init_scale, t.fp16_scale_window, t.fp16_min_scale)
        self.optimizer = build_optimizer(cfg.optim, self.model)
        self.waiting = waiting_parameters(self.model, cfg.optimization.projections_only_updates)
        self.lr_scheduler = build_lr_scheduler(cfg.lr_scheduler, self.optimizer, cfg.optimization.max_update)
        self.train_iterator = task.batch_iterator("train", dist.rank, dist.world_size)
        # Named validation sets (dataset.valid_sets), or one unnamed set ("") for tasks with a single one.
        if hasattr(task, "valid_iterators"):
            self.valid_iterators = task.valid_iterators(dist.rank, dist.world_size)
        else:
            self.valid_iterators = {"": task.batch_iterator("valid", dist.rank, dist.world_size)}
        self.best_valid_set = best_set(list(self.valid_iterators), cfg.checkpoint.best_valid_set)
        self.update = 0
        self.overflows = 0
        self.best_valid_score = math.inf  # the task's best_score (lower is better): the validation loss by default
        self.last_valid: Dict[str, float] = {}
        self.validation_pending = False  # a signal stopped the run where a validation was due: the resume does it
        self.bad_validations = 0  # validations in a row without a new best (checkpoint.patience stops the run)
        self.train_seconds = 0.0  # training time of earlier sessions of this run (stop_time_hours counts it)
        self.start_time = time.perf_counter()
        self.window = Window()
        self.progress: Optional[Progress] = None
        self.stats = RunStats(self.device)
        self.metrics_lines = 0  # lines of metrics.jsonl that belong to the state (a resume cuts the rest)
        self.peak_tflops = t.peak_tflops or peak_tflops(self.device)
        ck = cfg.checkpoint
        self.writer = CheckpointWriter(self.output_dir / ck.save_dir, ck.keep_last, ck.async_save)
        self.resumed_from = resume_from
        self.step = UpdateStep(self)
        if state is not None:
            restore_training_state(self, state)

    # ---- one update -------------------------------------------------------------------------------------
    def train_step(self, batches: List[Dict[str, Tensor]]) -> UpdateStats:
        """One update over `batches` (update_freq micro-batches), queued on the device and not read back (step.py)."""
        stats = self.step(batches, self.update)
        if stats["stepped"]:
            self.update += 1
        else:
            self.overflows += 1  # fp16 overflow: this update is skipped and the loss scale lowered
        return stats

    def _collect(self) -> None:
        """Read what the updates since the last read left on the device; waiting for it is training time."""
        started = time.perf_counter()
        if self.step.collect():
            self.window.add({"seconds": time.perf_counter() - started}, updates=0)

    def _to_device(self, batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    @property
    def valid_iterator(self) -> Any:
        """The iterator of the set checkpoint_best follows (the only one, for most runs)."""
        return self.valid_iterators[self.best_valid_set]

    def validate(self) -> Dict[str, float]:
        """Each validation set scored on its own; the figures of checkpoint.best_valid_set, then "<set>/<key>"."""
        results = {name: self.validate_set(iterator) for name, iterator in self.valid_iterators.items()}
        named = {f"{name}/{key}": value for name, result in results.items() if name for key, value in result.items()}
        self.last_valid = {**results[self.best_valid_set], **named}
        return self.last_valid

    @torch.no_grad()
    def validate_set(self, iterator: Any) -> Dict[str, float]:
        """Loss over one whole validation set (sharded over processes), with the same masks every time."""
        self.wrapped.eval()
        iterator.restart()
        loss_sum, masked = torch.zeros((), dtype=torch.float64, device=self.device), 0.0  # summed on the device
        outputs = []  # what a task scores beyond the loss (e.g. logits and labels for accuracy)
        batches = iterator.epoch_iter()
        while True:
            batch = next(batches, None)
            if self.sharded:
                # FSDP gathers weights collectively in every forward: all processes run the same number of them,
                # those whose share ran out on an empty batch.
                if all_reduce_sum([batch is not None], self.device)[0] == 0:
                    break
                batch = batch if batch is not None else self._empty_batch()
            elif batch is None:
                break
            with self.precision.autocast():
                _, stats = self.task.loss(self.model, self._to_device(batch))
            loss_sum = loss_sum + as_float64(stats["loss_sum"], self.device)
            masked += stats["masked"]
            if "outputs" in stats:
                outputs.append(stats["outputs"])
        loss_sum, masked = all_reduce_sum([float(loss_sum), masked], self.device)  # one read per validation
        loss = loss_sum / max(masked, 1)
        if hasattr(self.task, "valid_metrics"):
            gathered = [output for part in all_gather_objects(outputs) for output in part]
            return {"loss": loss, **self.task.valid_metrics(gathered), "masked": int(masked)}
        return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "masked": int(masked)}

    def _empty_batch(self) -> Dict[str, Tensor]:
        """One padding-free token and no masked position: a forward that contributes nothing to the loss."""
        tokens = torch.full((1, 1), self.task.pad_id, dtype=torch.long)
        none = torch.zeros_like(tokens, dtype=torch.bool)
        empty = torch.empty(0, dtype=torch.long)
        return {"tokens": tokens, "padding_mask": none, "masked_positions": none, "targets": empty}

    # ---- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """The full training state; a collective call (FSDP gathers shards, every process gives its data position)."""
        self._collect()  # the window and run stats it holds are complete, and finite
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            model_state = get_model_state_dict(self.model, options=options)
            # Before the first step there is nothing to gather, and get_optimizer_state_dict would initialise the
            # state with a zero-lr step, which shifts Adam's bias correction for the whole run.
            optimizer_state = (
                get_optimizer_state_dict(self.model, self.optimizer, options=options)
                if self.optimizer.state
                else self.optimizer.state_dict()
            )
        else:
            model_state, optimizer_state = self.model.state_dict(), self.optimizer.state_dict()
        self.stats.note_memory()
        return {
            "model": model_state,
            "optimizer": optimizer_state,
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "precision": self.precision.state_dict(),
            "update": self.update,
            "world_size": self.dist.world_size,
            "train_iterator": all_gather_objects(self.train_iterator.state_dict()),  # one position per process
            "best_valid_score": self.best_valid_score,
            "last_valid": self.last_valid,
            "validation_pending": self.validation_pending,
            "bad_validations": self.bad_validations,
            "train_seconds": self.training_seconds(),
            "overflows": self.overflows,
            "log_window": self.window.state_dict(),
            "run_stats": self.stats.state_dict(),
            "metrics_lines": self.metrics_lines,
            "rng": rng_states(),
            "cfg": asdict(self.cfg),
            "model_args": {"vocab_size": self.task.vocab_size, "pad_id": self.task.pad_id},
            "provenance": self.provenance,
            "task_state": self.task.state_dict() if hasattr(self.task, "state_dict") else {},  # e.g. a label map
        }

    def save(self, name: str = CHECKPOINT_LAST, numbered: bool = False) -> Path:
        """Write a checkpoint (in the background unless checkpoint.async_save=false); every process takes part."""
        state = self.state_dict()
        names = [name] + ([numbered_name(self.update)] if numbered else [])
        path = self.output_dir / self.cfg.checkpoint.save_dir / name
        if self.dist.is_main:
            self.writer.save(state, names)
        return path

    # ---- the loop ---------------------------------------------------------------------------------------
    def fit(self) -> Dict[str, Any]:
        """Train until max_update, max_epoch, the time budget or a stop signal; validate and save on the way."""
        with run_folder_lock(self.output_dir, self.dist.is_main), StopSignals() as signals:
            # Lines past the checkpoint (all of them for a start that saved none) are logged again, once.
            logger = MetricsLogger(self.output_dir, self.cfg, enabled=self.dist.is_main, keep_lines=self.metrics_lines,
                                   purge_step=self.update if self.resumed_from else None)  # fmt: skip
            try:
                return self._fit(logger, signals)
            finally:
                self.writer.wait()  # the last checkpoint is on disk before the process may exit
                logger.close()

    def _fit(self, logger: MetricsLogger, signals: StopSignals) -> Dict[str, Any]:
        opt = self.cfg.optimization
        copy = self.output_dir / "tokenizer.json"
        if self.dist.is_main and hasattr(self.task, "tokenizer_path") and not same_file(self.task.tokenizer_path, copy):
            # The run folder is self-contained: its checkpoints' token ids are read with this tokenizer.
            shutil.copy(self.task.tokenizer_path, copy)
        self.progress = Progress(opt.max_update, self.update, self.dist.is_main, self.cfg.logging.progress_bar,
                                 language_model=not hasattr(self.task, "valid_metrics"))  # fmt: skip
        try:
            return self._train(logger, signals)
        finally:
            self.progress.close()

    def _train(self, logger: MetricsLogger, signals: StopSignals) -> Dict[str, Any]:
        opt = self.cfg.optimization
        finished = self._limit_reached(time_over=False)
        if finished and self.window.updates:
            self._log_train(logger)  # a signal at the last update saved its window: log it where it would have been
        # A resumed run validates first when its checkpoint holds no result to start from, or holds a pending one.
        pending, self.validation_pending = self.validation_pending, False  # not pending in the checkpoints it writes
        if pending or (opt.validate_at_start and (self.resumed_from is None or not self.last_valid)):
            self._validate_and_log(logger)
        first_valid = dict(self.last_valid)  # {} when no validation has run yet
        if finished or self._out_of_patience():  # a finished run, rerun: nothing left to do
            path = self.save() if pending else self.output_dir / self.cfg.checkpoint.save_dir / CHECKPOINT_LAST
            return {"first_valid": first_valid, "final_valid": first_valid, "updates": self.update,
                    "checkpoint": str(path), "metrics": str(logger.path), "finished_before": True}  # fmt: skip
        batches = self.train_iterator.forever()
        agreement = Agreement(self.update, self.cfg.logging.log_interval, self.dist.world_size, self.device)
        last_save = time.perf_counter()
        stop = validated = False
        while not stop:
            before, started = self.update, time.perf_counter()
            micro_batches = next(batches)
            data_time = time.perf_counter() - started  # the share of time spent waiting for data is logged
            self.train_step(micro_batches)
            if self.update == before:
                continue  # an fp16 overflow: nothing was learned, nothing to log
            self.window.add({"data_time": data_time, "seconds": time.perf_counter() - started}, updates=0)
            self.progress.step()
            # One decision for all processes: each has its own clock and may have caught a signal alone.
            signalled, time_over, save_due = agreement.agree(self.update, [
                signals.requested, self.training_seconds() >= opt.stop_time_hours * 3600 > 0,
                time.perf_counter() - last_save >= self.cfg.checkpoint.save_interval_minutes * 60 > 0,
            ])  # fmt: skip
            stop = signalled or self._limit_reached(time_over)
            # A stop on a signal logs nothing extra: the window's sums go into the checkpoint, and the resumed
            # run logs the same records as a run that never stopped.
            if self.update % self.cfg.logging.log_interval == 0 or (stop and not signalled):
                self._log_train(logger)
            due = bool(opt.validate_interval_updates) and self.update % opt.validate_interval_updates == 0
            validated = due and not stop
            if validated:
                self._validate_and_log(logger)
                stop = self._out_of_patience()
            # A signal saves first (its grace period is short) and leaves a due or final validation to the resume.
            self.validation_pending = signalled and (due or self._limit_reached(time_over))
            every = self.cfg.checkpoint.save_interval_updates
            numbered = bool(every) and self.update % every == 0
            if numbered or save_due or signalled:
                self.save(numbered=numbered)
                last_save = time.perf_counter()
            if signalled:
                self.writer.wait()
                signals.hand_over()  # under submitit: its handler requeues the job now
                sweep_dir = multirun_sweep_dir()  # a --multirun job is resumed by rerunning its sweep
                message = interrupted_message(signals.describe(), self.update, self.output_dir, sweep_dir)
                raise RunInterrupted(message, signals.exit_code)
        final_valid = self.last_valid if validated else self._validate_and_log(logger)  # early stop: just validated
        checkpoint = self.save()
        return {"first_valid": first_valid, "final_valid": final_valid, "updates": self.update,
                "checkpoint": str(checkpoint), "metrics": str(logger.path)}  # fmt: skip

    def _limit_reached(self, time_over: bool) -> bool:
        opt = self.cfg.optimization
        epochs_done = opt.max_epoch > 0 and self.train_iterator.epoch > opt.max_epoch
        return self.update >= opt.max_update or epochs_done or time_over

    def _out_of_patience(self) -> bool:
        """checkpoint.patience validations in a row without a new best: fairseq's early stopping."""
        patience = self.cfg.checkpoint.patience
        if patience and self.bad_validations >= patience and self.dist.is_main:
            print(f"early stop at update {self.update}: {self.bad_validations} validations without improving on "
                  f"the best (checkpoint.patience={patience})", flush=True)  # fmt: skip
        return bool(patience) and self.bad_validations >= patience

    def training_seconds(self) -> float:
        """Training time of this run over all its sessions (a resumed run keeps its time budget)."""
        return self.train_seconds + time.perf_counter() - self.start_time

    def _validate_and_log(self, logger: MetricsLogger) -> Dict[str, float]:
        """Validate, log, then keep the weights as checkpoint_best.pt if they are the best so far."""
        self._collect()  # a non-finite update stops the run before its weights are validated
        started = time.perf_counter()
        result = self.validate()
        score = self.task.best_score(result) if hasattr(self.task, "best_score") else result["loss"]
        self.stats.add_validation(result, self.update, time.perf_counter() - started, score)
        self._log(logger, "valid", result)
        self.progress.valid(self.update, self.train_iterator.epoch, result)
        improved = score < self.best_valid_score
        self.bad_validations = 0 if improved else self.bad_validations + 1
        if improved:
            self.best_valid_score = score
            if self.cfg.checkpoint.keep_best:
                self.save(CHECKPOINT_BEST)
        return result

    def _log_train(self, logger: MetricsLogger) -> None:
        self._collect()
        # FLOPs are summed over processes: MFU divides by the peak of all of them.
        summary = {**self.window.summary(self.peak_tflops * self.dist.world_size), "lr": self.optimizer.param_groups[0]["lr"]}
        if self.precision.dynamic:
            summary.update(loss_scale=self.precision.scale, overflows=self.overflows)
        if hasattr(self.train_iterator, "log_fields"):  # a mixture: how many times each source has been read
            summary.update(self.train_iterator.log_fields())
        self.progress.train(self.update, self.train_iterator.epoch, summary)
        self._log(logger, "train", summary)
        self.window = Window()

    def _log(self, logger: MetricsLogger, split: str, values: Dict[str, float]) -> None:
        wall = self.training_seconds()
        logger.log({"split": split, "update": self.update, "epoch": self.train_iterator.epoch, "wall": wall,
                    "tokens": self.stats.tokens_seen, **values})  # fmt: skip
        self.metrics_lines += 1
