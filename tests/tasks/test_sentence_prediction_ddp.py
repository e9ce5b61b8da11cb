"""Fine-tuning validation on two real gloo processes scores every example once: the same metrics as one process.

13 validation examples in batches of 5: rank 0 reads examples 0-4 and 10-12, rank 1 examples 5-9 and then nothing,
so the ranks hold different counts and run different numbers of batches. A sampler that padded the shorter share
(or repeated examples) would count 14 or more examples, and a gather that kept one rank's outputs only 5 or 8.
"""
import traceback
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import compose_config, leave_without_teardown
from hub_fixtures import train_tiny_run
from test_sentence_prediction import finetune_overrides, write_reviews

from linformer_pt.cli.train import build_model
from linformer_pt.config import load_config
from linformer_pt.registry import TASKS
from linformer_pt.training.distributed import DistributedInfo
from linformer_pt.training.trainer import Trainer

VALID_EXAMPLES, BATCH = 13, 5
BACKENDS = ("ddp", "fsdp")


def build(overrides: List[str], output_dir: Path, weights: Path, info: DistributedInfo) -> Trainer:
    """A fine-tuning Trainer with the weights saved by the single-process run, as linformer-train builds it."""
    cfg = load_config(compose_config(overrides))
    task = TASKS.get(cfg.task.name).cls.setup(cfg)
    cfg, model = build_model(cfg, task)
    model.load_state_dict(torch.load(weights))  # before the Trainer wraps it (FSDP shards the parameters)
    return Trainer(cfg, task, model, output_dir, info)


def record_scored(task: Any) -> List[Tuple[int, Tuple[float, ...]]]:
    """The (label, logits) of each example task.valid_metrics scores, filled as the trainer calls it."""
    scored: List[Tuple[int, Tuple[float, ...]]] = []
    score = task.valid_metrics

    def valid_metrics(outputs: List[Tuple[np.ndarray, np.ndarray]]) -> Dict[str, float]:
        scored.extend((int(g), tuple(row.tolist())) for logits, gold in outputs for row, g in zip(logits, gold))
        return score(outputs)

    task.valid_metrics = valid_metrics
    return scored


def validate_on_rank(rank: int, init_file: str, overrides: List[str], folder: str, results, errors) -> None:
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
        torch.set_num_threads(1)
        for backend in BACKENDS:
            trainer = build([*overrides, f"trainer.distributed_backend={backend}"], Path(folder) / f"{backend}{rank}",
                            Path(folder) / "weights.pt", DistributedInfo(rank, 2, rank))  # fmt: skip
            scored = record_scored(trainer.task)
            trainer.valid_iterator.restart()
            share = sum(len(batch["targets"]) for batch in trainer.valid_iterator.epoch_iter())
            results.put((backend, rank, share, trainer.validate(), sorted(scored)))
        dist.destroy_process_group()
    except Exception:  # report to the parent: a child's traceback is otherwise lost
        errors.put(f"rank {rank}: {traceback.format_exc()}")
        raise
    leave_without_teardown()


@pytest.fixture(scope="module")
def overrides(tmp_path_factory, cache_dir) -> List[str]:
    """A fine-tuning config on a 2-update pretraining run: its tokenizer and architecture are all that is needed."""
    folder = tmp_path_factory.mktemp("ddp_valid")
    pretrained = train_tiny_run(folder / "pretrain", cache_dir, updates=2)
    reviews = {"train": write_reviews(folder / "train.tsv", 40, 1), "valid": write_reviews(folder / "dev.tsv",
                                                                                          VALID_EXAMPLES, 2)}  # fmt: skip
    base = [o for o in finetune_overrides(pretrained, reviews) if not o.startswith("dataset.batch_size=")]
    return [*base, f"dataset.batch_size={BATCH}", "common.threads=1"]


def test_two_processes_score_each_validation_example_once(overrides, tmp_path):
    cfg = load_config(compose_config(overrides))
    task = TASKS.get(cfg.task.name).cls.setup(cfg)
    cfg, model = build_model(cfg, task)
    task.init_model(model)  # the pretrained encoder, so the predictions are not all one class
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    scored = record_scored(task)
    one = Trainer(cfg, task, model, tmp_path / "one").validate()
    assert one["masked"] == len(scored) == VALID_EXAMPLES and 0 < one["accuracy"] < 1

    ctx = mp.get_context("spawn")
    results, errors = ctx.SimpleQueue(), ctx.SimpleQueue()
    mp.start_processes(validate_on_rank, args=(str(tmp_path / "init"), overrides, str(tmp_path), results, errors),
                       nprocs=2, join=True, start_method="spawn")  # fmt: skip
    assert errors.empty(), errors.get()
    here = sorted(scored)
    got: Dict[Any, Any] = {}
    while not results.empty():
        backend, rank, share, metrics, scored_there = results.get()
        got[backend, rank] = (share, metrics, scored_there)
    for backend in BACKENDS:
        assert [got[backend, rank][0] for rank in (0, 1)] == [8, 5], backend  # the shares differ
        for rank in (0, 1):  # every rank computes the metrics of the whole set
            _, metrics, scored_there = got[backend, rank]
            # Each example once, with the logits one process gives it (to the last bits: other thread counts).
            assert [label for label, _ in scored_there] == [label for label, _ in here], (backend, rank)
            np.testing.assert_allclose([row for _, row in scored_there], [row for _, row in here], rtol=1e-5, atol=1e-6)
            assert metrics["masked"] == VALID_EXAMPLES, (backend, rank)
            assert {k: metrics[k] for k in ("accuracy", "f1", "mcc")} == {k: one[k] for k in ("accuracy", "f1", "mcc")}
            assert metrics["loss"] == pytest.approx(one["loss"], rel=1e-6)  # summed in another order
