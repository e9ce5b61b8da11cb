"""Metric sinks: JSONL, and wandb offline with a run id kept for resumed runs; a missing wandb is one line."""
import json
import sys

import pytest
from conftest import compose_config

from linformer_pt.config import load_config
from linformer_pt.errors import UserError
from linformer_pt.training.logging import MetricsLogger


def test_wandb_offline_logs_and_keeps_its_run_id(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config(compose_config(["logger=wandb", "logging.tensorboard=false"]))
    first = MetricsLogger(tmp_path, cfg)
    first.log({"split": "train", "update": 1, "loss": 3.0})
    first.close()
    run_id = (tmp_path / "wandb_run_id").read_text()
    assert [p for p in (tmp_path / "wandb").iterdir() if p.name.endswith(run_id)]
    again = MetricsLogger(tmp_path, cfg)  # a resumed run in the same folder continues the same wandb run
    again.log({"split": "train", "update": 2, "loss": 2.5})
    again.close()
    assert (tmp_path / "wandb_run_id").read_text() == run_id
    assert [json.loads(line)["update"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_wandb_requested_but_not_installed_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail as if it were absent
    cfg = load_config(compose_config(["logger=wandb"]))
    with pytest.raises(UserError, match=r"logging.wandb=true needs wandb: pip install 'linformer-pt\[wandb\]'"):
        MetricsLogger(tmp_path, cfg)


def test_only_the_main_process_writes(tmp_path):
    cfg = load_config(compose_config(["logging.tensorboard=false"]))
    logger = MetricsLogger(tmp_path / "run", cfg, enabled=False)
    logger.log({"split": "train", "update": 1, "loss": 1.0})
    logger.close()
    assert not (tmp_path / "run").exists()
