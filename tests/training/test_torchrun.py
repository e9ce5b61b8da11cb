"""Real torch.distributed: two gloo processes under torchrun (DDP or FSDP, with accumulation) equal one process."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from linformer_pt.training.checkpoint import load_checkpoint


def train_records(run_dir: Path) -> list:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"train"' in line]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ddp", "fsdp"])
def test_two_processes_match_one_process_at_double_batch(backend, cache_dir, tmp_path):
    common = [
        "experiment=smoke", f"dataset.cache_dir={cache_dir}", "logging.tensorboard=false",
        "logging.progress_bar=false", "model.dropout=0", "model.attention_dropout=0", "optimization.max_update=4",
        "logging.log_interval=1", "optimization.validate_interval_updates=0", "common.threads=1",
    ]  # fmt: skip
    module = ["-m", "linformer_pt.cli.train"]
    one = subprocess.run(
        [sys.executable, *module, *common, "dataset.batch_size=16", f"hydra.run.dir={tmp_path / 'one'}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    two = subprocess.run(
        [*torchrun, *module, *common, f"trainer.distributed_backend={backend}",
         "optimization.update_freq=2", "dataset.batch_size=4", "trainer.peak_tflops=1", f"hydra.run.dir={tmp_path / 'two'}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr
    assert "distributed: 2 processes" in two.stdout

    single, double = train_records(tmp_path / "one"), train_records(tmp_path / "two")
    assert [r["update"] for r in double] == [1, 2, 3, 4]
    for a, b in zip(single, double):
        assert abs(a["loss"] - b["loss"]) < 1e-5 * a["loss"]  # the same samples, sharded over the two ranks
        assert abs(a["gnorm"] - b["gnorm"]) < 1e-4 * a["gnorm"]  # gradients summed over ranks, normalised once
        assert b["mfu"] == pytest.approx(b["tflops"] / 2)  # FLOPs of both processes over the peak of both
    params_one = load_checkpoint(tmp_path / "one" / "checkpoints" / "checkpoint_last.pt")["model"]
    params_two = load_checkpoint(tmp_path / "two" / "checkpoints" / "checkpoint_last.pt")["model"]
    for name, value in params_one.items():
        torch.testing.assert_close(params_two[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert not (tmp_path / "two" / "checkpoints" / ".tmp").exists()
