"""Streamed validation on two real gloo processes, each with two DataLoader workers configured, scores the same
samples with the same masks as one process: the same masked count and loss (confirms the fix of issue 26 item 9)."""
import traceback
from pathlib import Path
from typing import List

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import compose_config, leave_without_teardown

from linformer_pt.cli.train import build_model
from linformer_pt.config import load_config
from linformer_pt.registry import TASKS
from linformer_pt.training.distributed import DistributedInfo
from linformer_pt.training.trainer import Trainer


def build(overrides: List[str], output_dir: Path, weights: Path, info: DistributedInfo = None) -> Trainer:
    cfg = load_config(compose_config(overrides))
    task = TASKS.get(cfg.task.name).cls.setup(cfg)
    cfg, model = build_model(cfg, task)
    if weights.is_file():
        model.load_state_dict(torch.load(weights))
    return Trainer(cfg, task, model, output_dir, info) if info else Trainer(cfg, task, model, output_dir)


def validate_on_rank(rank: int, init_file: str, overrides: List[str], folder: str, results, errors) -> None:
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
        torch.set_num_threads(1)
        trainer = build(overrides, Path(folder) / f"rank{rank}", Path(folder) / "weights.pt",
                        DistributedInfo(rank, 2, rank))  # fmt: skip
        results.put((rank, trainer.validate()))
        dist.destroy_process_group()
    except Exception:  # report to the parent: a child's traceback is otherwise lost
        errors.put(f"rank {rank}: {traceback.format_exc()}")
        raise
    leave_without_teardown()


@pytest.mark.parametrize("budget", [3000, 0])
def test_two_processes_with_workers_validate_the_stream_as_one(tiny_overrides, corpus_files, tmp_path, budget):
    overrides = tiny_overrides + [
        "dataset=text", "dataset.streaming=true", f"dataset.train_files=[{corpus_files['train']}]",
        f"dataset.valid_files=[{corpus_files['valid']}]", f"dataset.max_valid_tokens={budget}", "common.threads=1",
    ]  # fmt: skip
    one_trainer = build(overrides, tmp_path / "one", tmp_path / "weights.pt")
    torch.save(one_trainer.model.state_dict(), tmp_path / "weights.pt")
    one = one_trainer.validate()
    if budget:
        assert budget * 0.1 < one["masked"] < (budget + 100) * 0.2  # about 15% of the budget's tokens

    ctx = mp.get_context("spawn")
    results, errors = ctx.SimpleQueue(), ctx.SimpleQueue()
    two_overrides = overrides + ["dataset.num_workers=2"]
    mp.start_processes(validate_on_rank, args=(str(tmp_path / "init"), two_overrides, str(tmp_path), results, errors),
                       nprocs=2, join=True, start_method="spawn")  # fmt: skip
    assert errors.empty(), errors.get()
    while not results.empty():
        rank, metrics = results.get()
        assert metrics["masked"] == one["masked"], rank
        assert metrics["loss"] == pytest.approx(one["loss"], rel=1e-6), rank  # summed in another order
