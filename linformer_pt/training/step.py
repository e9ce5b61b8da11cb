"""One update, queued on the device without waiting for it: micro-batches, accumulation, clipping, the step.

A GPU runs kernels in the order the host queued them while the host runs ahead; a host read of a device value
(`loss.item()`, `float(norm)`) makes the host wait until everything queued so far has run, so the GPU idles until
the next kernels are queued. Nothing here reads: losses and gradient norms are summed on the device (DeviceSums)
and read once per log record, validation or checkpoint (`collect`); a non-finite norm in fp32/bf16 is flagged
there too. fp16 reads one flag per update, as torch's GradScaler does: an overflow skips the update on the host.
"""
import contextlib
import math
import time
from typing import Any, Dict, List, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from linformer_pt.training.distributed import all_reduce_sum
from linformer_pt.training.meters import DeviceSums

AGREE_SECONDS = 5.0  # several processes compare stop/save flags about this often (grace periods are longer)


class UpdateStep:
    """A Trainer's per-update work (`trainer` gives the model, optimizer, precision, ...); its `sums` hold what the
    logs need until `collect` reads them."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.sums = DeviceSums(watch_finite=not trainer.precision.dynamic)

    def __call__(self, batches: List[Dict[str, Tensor]], update: int) -> "UpdateStats":
        """Update `update` + 1 over `batches` (update_freq micro-batches), normalised by every process's masked
        tokens. "stepped" is False after an fp16 overflow (nothing changed but the loss scale); the figures are this
        process's."""
        t = self.trainer
        t.wrapped.train()
        # Dropout masks depend on (seed, update, rank) only: int-tuple hashes are stable across runs.
        torch.manual_seed(hash((t.cfg.common.seed, update, t.dist.rank)) & 0xFFFF_FFFF_FFFF)
        t.lr_scheduler.step(update)
        counts = [host_counts(batch) for batch in batches]
        masked, tokens = sum(c[0] for c in counts), sum(c[1] for c in counts)
        normaliser = self.normaliser(masked)
        loss_sum, flops = torch.zeros((), dtype=torch.float64, device=t.device), 0.0
        for i, (batch, (_, _, padded)) in enumerate(zip(batches, counts)):
            with self.gradient_sync(i == len(batches) - 1):
                with t.precision.autocast():
                    loss, stats = t.task.loss(t.wrapped, self.to_device(batch, padded))
                t.precision.scale_loss(loss / normaliser).backward()
            loss_sum = loss_sum + as_float64(stats["loss_sum"], t.device)
            flops += train_flops(t.model, batch)
        if update < t.cfg.optimization.projections_only_updates:
            for p in t.waiting:
                p.grad = None  # the optimizer skips them: no step, no weight decay, no moment update
        t.precision.unscale_(t.model.parameters())
        gnorm = self.clip()
        stepped = self.optimizer_step(gnorm)
        if stepped:
            self.sums.add(update + 1, loss_sum, gnorm, masked, tokens, flops)
        t.optimizer.zero_grad(set_to_none=True)
        return UpdateStats(loss_sum=loss_sum, masked=masked, tokens=tokens, flops=flops, gnorm=gnorm, stepped=stepped,
                           lr=t.optimizer.param_groups[0]["lr"], loss_scale=t.precision.scale)  # fmt: skip

    def normaliser(self, masked: int) -> Union[float, Tensor]:
        """Masked tokens of all processes over the world size: DDP averages gradients over processes, so dividing
        by it makes the result a sum over all of them. With several processes the sum stays on the device."""
        world = self.trainer.dist.world_size
        if not dist.is_initialized():
            return max(masked, 1) / world
        total = torch.tensor(float(masked), dtype=torch.float64).to(self.trainer.device, non_blocking=True)
        dist.all_reduce(total)
        return (total.clamp_min(1.0) / world).float()  # float32, as a host number would be in the division

    def gradient_sync(self, last_micro_batch: bool) -> contextlib.AbstractContextManager:
        """Gradients are reduced across processes once per update, on the last micro-batch only."""
        wrapped = self.trainer.wrapped
        if self.trainer.sharded:
            wrapped.set_requires_gradient_sync(last_micro_batch)
            return contextlib.nullcontext()
        if last_micro_batch or not hasattr(wrapped, "no_sync"):
            return contextlib.nullcontext()
        return wrapped.no_sync()

    def to_device(self, batch: Dict[str, Tensor], padded: bool) -> Dict[str, Any]:
        """The device copy of a micro-batch; without padding, no padding mask (the model then skips masking work,
        and need not look at the mask on the device to find out)."""
        out: Dict[str, Any] = {k: v.to(self.trainer.device, non_blocking=True) for k, v in batch.items()}
        if not padded:
            out["padding_mask"] = None
        if self.trainer.cfg.trainer.compile:
            mark_masked_counts_dynamic(out)
        return out

    def clip(self) -> Tensor:
        """Clip to optimization.clip_norm (0: no clipping, the norm is still logged); the norm stays on the device
        (clip_grad_norm_ scales by min(1, max_norm / norm) on the device, with no `if` on the host)."""
        t = self.trainer
        max_norm = t.cfg.optimization.clip_norm or math.inf
        norm = torch.nn.utils.clip_grad_norm_(t.model.parameters(), max_norm, foreach=True)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a DTensor

    def optimizer_step(self, gnorm: Tensor) -> bool:
        """Step unless fp16 overflowed. fp32/bf16 step whatever the norm: a non-finite one stops the run at the next
        read (collect), before anything is validated, logged or saved."""
        precision = self.trainer.precision
        # fp16's one read per update: an overflow skips the update, and the update count (the schedule, dropout
        # seeds, max_update, the logs) is the host's. torch's GradScaler.step reads its found_inf flag alike.
        if precision.dynamic and not precision.update(float(gnorm)):
            return False
        self.trainer.optimizer.step()
        return True

    def collect(self) -> bool:
        """Read the sums since the last read into the trainer's window and run stats (the one device read of a
        stretch of updates); stop on a non-finite update as fp32/bf16 always did. False: nothing to read."""
        reading = self.sums.read()
        if reading is None:
            return False
        t = self.trainer
        if reading.nonfinite is not None:
            update, loss_sum, gnorm = reading.nonfinite
            good = update - reading.updates[0]  # updates of this reading before the bad one
            # The run stops where it went bad: its count and tokens are those of the last good update.
            t.update = update - 1
            t.stats.add_update(sum(reading.tokens[:good]))
            raise FloatingPointError(
                f"loss {loss_sum / max(reading.masked[good], 1):.4g}, gradient norm {gnorm:.4g} at update {update}: "
                "not finite; stopping (checkpoints already written are intact)"
            )
        sums = {"loss_sum": reading.loss_sum, "gnorm": reading.gnorm_sum, "masked": sum(reading.masked),
                "tokens": sum(reading.tokens), "flops": sum(reading.flops)}  # fmt: skip
        t.window.add(sums, updates=len(reading.updates))
        t.stats.add_update(sum(reading.tokens))
        return True


class UpdateStats(dict):
    """One update's figures. The loss sum and gradient norm are device tensors, read (a device sync) only when looked
    up: the training loop never does, a test or a script that wants the number gets a float."""

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        return float(value) if isinstance(value, Tensor) else value


# The dimensions that count masked positions, which change from batch to batch.
MASKED_COUNT_DIMS = {"masked_index": 0, "masked_grid_rows": 1, "masked_grid_real": 0, "targets": 0}


def mark_masked_counts_dynamic(batch: Dict[str, Any]) -> None:
    """Tell torch.compile up front that the masked counts vary: otherwise it compiles the graph for the first
    batch's counts and again, as dynamic, at the second batch (a second compile of tens of seconds)."""
    for key, dim in MASKED_COUNT_DIMS.items():
        if isinstance(batch.get(key), Tensor) and batch[key].dim() > dim:
            torch._dynamo.maybe_mark_dynamic(batch[key], dim)


def host_counts(batch: Dict[str, Tensor]) -> Tuple[int, int, bool]:
    """Masked positions, padding-free tokens, and whether there is padding, in a micro-batch as the data loader made
    it: in host memory (on a GPU too), so counting costs no device sync."""
    mask = batch["padding_mask"]
    padding = (mask if mask.device.type == "cpu" else mask.cpu()).numpy()  # .cpu(): a loader that gave device tensors
    pads = int(np.count_nonzero(padding))
    return batch["targets"].numel(), padding.size - pads, pads > 0


def as_float64(value: Any, device: torch.device) -> Tensor:
    """A task's loss sum (a tensor, or a number from a task that read it already) as a float64 device scalar."""
    if isinstance(value, Tensor):
        return value.detach().to(torch.float64)
    return torch.full((), float(value), dtype=torch.float64, device=device)  # a fill: no copy to the device


def train_flops(model: Any, batch: Dict[str, Tensor]) -> float:
    """Forward + backward (~3x forward) FLOPs of one batch, for TFLOP/s and MFU in the logs (shapes only)."""
    if not hasattr(model, "forward_flops"):
        return 0.0
    b, n = batch["tokens"].shape
    return 3.0 * b * model.forward_flops(n, batch["targets"].numel() / b)


class Agreement:
    """When the processes compare their stop and save flags (signal, time budget, save interval).

    One process decides alone at every update: its flags are host values. Several compare them in a collective
    whose result the host reads, a GPU sync, so only at log records (the host reads there anyway) and otherwise
    about every AGREE_SECONDS of training: a signal still stops every process at the same update, well within its
    grace period. Every process computes the same schedule from the same reduced numbers.
    """

    def __init__(self, update: int, log_interval: int, world_size: int, device: torch.device) -> None:
        self.log_interval, self.world_size, self.device = log_interval, world_size, device
        self.next, self.since_update, self.since_time = update + 1, update, time.perf_counter()

    def agree(self, update: int, flags: List[bool]) -> List[bool]:
        """Each flag true on any process is true on all (False on all between two comparisons)."""
        if self.world_size == 1:
            return flags
        if update % self.log_interval and update < self.next:
            return [False] * len(flags)
        *totals, seconds = all_reduce_sum([float(f) for f in flags] + [time.perf_counter() - self.since_time],
                                          self.device)  # fmt: skip
        per_update = seconds / self.world_size / max(update - self.since_update, 1)
        self.next = update + max(1, int(AGREE_SECONDS / max(per_update, 1e-9)))
        self.since_update, self.since_time = update, time.perf_counter()
        return [total > 0 for total in totals]
