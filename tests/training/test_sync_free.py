"""The sync-free update: between two log records the host never waits for the device.

A GPU runs what the host queued; a host read of a device value (`loss.item()`, `float(norm)`) drains that queue
first, so every read inside an update leaves the GPU idle while the host catches up. On a CPU nothing is queued,
so these tests count the calls that would be such a read on a GPU instead of timing them, on real tiny runs.
"""
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from conftest import build_trainer

from linformer_pt.training.trainer import Trainer

# The Tensor methods that hand a device value to the host: on a GPU each one waits for every queued kernel.
READS = ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy")
LOG, VALIDATE, LAST = 4, 8, 12  # log every 4 updates, validate every 8, stop after 12


class ReadCounter:
    """Counts READS per update: from the start of one update to the start of the next, logging, validation and
    saving included, data loading excluded.

    Reads of tensors that live in host memory on a GPU too are no sync and are not counted: the micro-batches as the
    data loader hands them over (the device copies are made from them), and a non-fused torch optimizer's step
    counters (torch keeps them on the host so that reading them costs no sync).
    """

    def __init__(self, trainer: Trainer) -> None:
        self.trainer, self.active, self.update = trainer, False, 0
        self.counts: Counter = Counter()
        self.sites: Dict[int, List[str]] = defaultdict(list)
        self.loaded: List[torch.Tensor] = []  # the tensors of the micro-batches handed over last

    def host_tensor(self, tensor: torch.Tensor) -> bool:
        return any(tensor is t for t in self.loaded) or any(
            tensor is state.get("step") for state in self.trainer.optimizer.state.values()
        )

    def wrap(self, name: str):
        real = getattr(torch.Tensor, name)
        counter = self

        def counted(tensor, *args, **kwargs):
            if counter.active and not counter.host_tensor(tensor):
                counter.active = False  # the bookkeeping below must not count itself
                try:
                    counter.counts[counter.update] += 1
                    counter.sites[counter.update].append(f"{name} at {caller()}")
                finally:
                    counter.active = True
            return real(tensor, *args, **kwargs)

        return counted

    def install(self, monkeypatch) -> None:
        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, self.wrap(name))
        real_step, trainer = Trainer.train_step, self.trainer

        def step(self_, batches):
            # Every read until the next update starts (logging, validation, saving included) counts for this one.
            self.update, self.active = trainer.update + 1, True
            return real_step(self_, batches)

        monkeypatch.setattr(Trainer, "train_step", step)
        batches = trainer.train_iterator.forever
        trainer.train_iterator.forever = lambda: paused(batches(), self)


def paused(generator, counter: ReadCounter):
    """Yield from `generator` with the counter off while it computes the next item."""
    while True:
        was, counter.active = counter.active, False
        try:
            item = next(generator)
        finally:
            counter.active = was
        counter.loaded = [tensor for batch in item for tensor in batch.values()]
        yield item


def caller() -> str:
    """file:line of the first frame outside this test and torch's own Tensor methods."""
    import traceback

    for frame in reversed(traceback.extract_stack()):
        if "test_sync_free" not in frame.filename and "/torch/_tensor" not in frame.filename:
            return f"{Path(frame.filename).name}:{frame.lineno}"
    return "?"


def base(small_run: List[str]) -> List[str]:
    return [o for o in small_run if not o.startswith("logging.log_interval")] + [
        f"optimization.max_update={LAST}", f"optimization.validate_interval_updates={VALIDATE}",
        "optimization.update_freq=2", "dataset.batch_size=8", "checkpoint.save_interval_updates=0",
        "checkpoint.save_interval_minutes=0",
    ]  # fmt: skip


def train_records(run_dir: Path) -> List[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "train"]


@pytest.mark.parametrize("precision,allowed", [("fp32", 0), ("bf16", 0), ("fp16", 1)])
def test_no_update_between_log_records_waits_for_the_device(small_run, tmp_path, monkeypatch, precision, allowed):
    # fp16 reads one flag per update: whether the gradients overflowed decides, on the host, whether the update
    # counts (the step, the schedule, the dropout seed and the stop at max_update all follow that count).
    trainer = build_trainer(base(small_run) + [f"logging.log_interval={LOG}", f"trainer.precision={precision}"],
                            tmp_path)  # fmt: skip
    counter = ReadCounter(trainer)
    counter.install(monkeypatch)
    trainer.fit()
    monkeypatch.undo()
    quiet = [u for u in range(1, LAST + 1) if u % LOG and u % VALIDATE and u != LAST]
    per_update = {u: counter.counts[u] for u in quiet}
    print(f"{precision}: reads per update {dict(sorted(counter.counts.items()))}")
    assert all(n <= allowed for n in per_update.values()), {u: counter.sites[u] for u in quiet}
    # The reads moved to the log records, where the host needs the numbers anyway.
    assert all(counter.counts[u] > 0 for u in (LOG, 2 * LOG, LAST))
    assert [r["update"] for r in train_records(tmp_path)] == [4, 8, 12]


def test_records_every_n_updates_average_the_records_of_every_update(small_run, tmp_path):
    """What a record reads once per window is what reading every update gave: same losses, norms, tokens, lr."""
    every = build_trainer(base(small_run) + ["logging.log_interval=1"], tmp_path / "every")
    every.fit()
    window = build_trainer(base(small_run) + [f"logging.log_interval={LOG}"], tmp_path / "window")
    window.fit()
    masked = masked_per_update(base(small_run), tmp_path / "masked")
    each, grouped = train_records(tmp_path / "every"), train_records(tmp_path / "window")
    assert [r["update"] for r in each] == list(range(1, LAST + 1))
    for record in grouped:
        updates = range(record["update"] - LOG + 1, record["update"] + 1)
        part = [each[u - 1] for u in updates]
        same = each[record["update"] - 1]
        assert (record["tokens"], record["lr"], record["epoch"]) == (same["tokens"], same["lr"], same["epoch"])
        assert record["gnorm"] == pytest.approx(sum(r["gnorm"] for r in part) / LOG, rel=1e-12)
        loss_sum = sum(r["loss"] * masked[u] for r, u in zip(part, updates))
        assert record["loss"] == pytest.approx(loss_sum / sum(masked[u] for u in updates), rel=1e-12)
    valid = [[r for r in map(json.loads, (tmp_path / d / "metrics.jsonl").read_text().splitlines())
              if r["split"] == "valid"] for d in ("every", "window")]  # fmt: skip
    assert [(r["update"], r["loss"]) for r in valid[0]] == [(r["update"], r["loss"]) for r in valid[1]]
    for a, b in zip(every.model.state_dict().values(), window.model.state_dict().values()):
        assert torch.equal(a, b)  # the very same training, bit for bit


def masked_per_update(overrides: List[str], output_dir: Path) -> Dict[int, int]:
    """Masked tokens of each update, from the same deterministic batches a run reads."""
    batches = build_trainer(overrides, output_dir).train_iterator.forever()
    return {u: sum(b["targets"].numel() for b in next(batches)) for u in range(1, LAST + 1)}


def test_a_non_finite_update_between_records_stops_the_run_at_the_next_record(small_run, tmp_path):
    """fp32: the finiteness flag stays on the device until the next record reads it; the error names the update."""
    trainer = build_trainer(base(small_run) + [f"logging.log_interval={LOG}"], tmp_path)
    real_loss = trainer.task.loss

    def poisoned(model, batch):
        loss, stats = real_loss(model, batch)
        return (loss * float("nan"), stats) if trainer.update == 5 else (loss, stats)

    trainer.task.loss = poisoned
    with pytest.raises(FloatingPointError, match=r"gradient norm nan at update 6: not finite; stopping") as info:
        trainer.fit()
    assert "\n" not in str(info.value)
    assert [r["update"] for r in train_records(tmp_path)] == [4]  # the window holding update 6 is not logged


def test_processes_compare_stop_flags_at_log_records_and_every_few_seconds(monkeypatch):
    """Several processes compare their stop/save flags (a collective the host reads: a GPU sync) at log records and
    about every AGREE_SECONDS of training, not at every update; one process acts on its own flags at once."""
    from linformer_pt.training import step

    clock, compared = [0.0], []
    monkeypatch.setattr(step.time, "perf_counter", lambda: clock[0])

    def two_processes(values, device):  # both processes sent the same values
        compared.append(update)
        return [2 * v for v in values]

    monkeypatch.setattr(step, "all_reduce_sum", two_processes)
    agree = step.Agreement(0, log_interval=50, world_size=2, device=torch.device("cpu"))
    seen = {}
    for update in range(1, 61):
        clock[0] += 0.5  # half a second per update: a comparison every AGREE_SECONDS / 0.5 = 10 updates
        seen[update] = agree.agree(update, [update >= 15])  # a signal caught after update 15 (the flag stays set)
    assert compared == [1, 11, 21, 31, 41, 50, 60]  # 50: a log record
    assert [u for u, (flag,) in seen.items() if flag] == [21, 31, 41, 50, 60]
    alone = step.Agreement(0, log_interval=50, world_size=1, device=torch.device("cpu"))
    assert alone.agree(3, [True, False]) == [True, False] and compared[-1] == 60  # no collective
