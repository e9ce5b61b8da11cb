"""A real tiny pretraining run on the embedded corpus: the loss falls and the checkpoint reproduces the model."""
import json
import math

import pytest
import torch
from conftest import compose_config

from linformer_pt.cli.train import run
from linformer_pt.config import load_config
from linformer_pt.errors import UserError
from linformer_pt.models.loading import load_model
from linformer_pt.tasks.masked_lm import MaskedLMTask
from linformer_pt.training.checkpoint import load_checkpoint


def test_tiny_run_learns_and_its_checkpoint_reloads(tiny_overrides, tmp_path):
    cfg = compose_config(tiny_overrides + ["optimization.max_update=100", "optimization.validate_interval_updates=50"])
    summary = run(cfg, tmp_path)

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    valid = [r for r in records if r["split"] == "valid"]
    assert [r["update"] for r in valid] == [0, 50, 100]
    assert len(train) == 10 and train[-1]["update"] == 100
    assert train[-1]["loss"] < 0.9 * train[0]["loss"]
    assert valid[-1]["loss"] < 0.9 * valid[0]["loss"]
    assert all(math.isfinite(r["gnorm"]) and r["tokens_per_s"] > 0 for r in train)

    state = load_checkpoint(summary["checkpoint"])
    assert state["update"] == 100
    assert state["cfg"]["model"]["k"] == 16
    assert len(state["provenance"]["tokenizer_sha256"]) == 64
    assert {"optimizer", "lr_scheduler", "train_iterator", "rng"} <= set(state)

    # The reloaded model reproduces the validation loss recorded at the end of training.
    model = load_model(summary["checkpoint"])
    task = MaskedLMTask(load_config(cfg))
    loss_sum, masked = 0.0, 0
    with torch.no_grad():
        for batch in task.batch_iterator("valid").epoch_iter():
            _, stats = task.loss(model, batch)
            loss_sum, masked = loss_sum + stats["loss_sum"], masked + stats["masked"]
    assert masked == summary["final_valid"]["masked"]
    assert abs(loss_sum / masked - summary["final_valid"]["loss"]) < 1e-5


@pytest.mark.slow
def test_init_from_a_checkpoint_at_a_longer_max_positions(tiny_overrides, tmp_path):
    first = run(compose_config(tiny_overrides + ["optimization.max_update=30"]), tmp_path / "first")
    longer = tiny_overrides + [
        f"checkpoint.init_from={first['checkpoint']}",
        "model.max_positions=128",
        "task.tokens_per_sample=128",
        "optimization.max_update=2",
    ]
    second = run(compose_config(longer), tmp_path / "second")
    fresh = run(compose_config(longer[:-4] + longer[-3:]), tmp_path / "fresh")
    # Trained weights (resized from 64 to 128 positions) start far better than a fresh model.
    assert second["first_valid"]["loss"] < fresh["first_valid"]["loss"] - 0.3
    assert load_checkpoint(second["checkpoint"])["model"]["embed_positions.weight"].shape[0] == 128
    assert (tmp_path / "first" / "tokenizer.json").is_file()  # the run folder carries its tokenizer
    other_tokenizer = tiny_overrides + [f"checkpoint.init_from={first['checkpoint']}", "tokenizer.vocab_size=1500"]
    with pytest.raises(UserError, match="was trained with another tokenizer"):
        run(compose_config(other_tokenizer), tmp_path / "third")


def test_init_from_weights_that_do_not_fit_is_one_line(tiny_overrides, tmp_path):
    first = run(compose_config(tiny_overrides + ["optimization.max_update=1"]), tmp_path / "first")
    bad = tiny_overrides + [f"checkpoint.init_from={first['checkpoint']}", "model.layers=3"]
    with pytest.raises(UserError, match="checkpoint weights do not fit the model: Unexpected key|Missing key"):
        run(compose_config(bad), tmp_path / "second")


def test_streaming_training_reads_raw_files_without_a_token_cache(tiny_overrides, corpus_files, tmp_path):
    overrides = tiny_overrides + [
        "dataset=text", f"dataset.train_files=[{corpus_files['train']}]", f"dataset.valid_files=[{corpus_files['valid']}]",
        "dataset.streaming=true", "task.sample_break_mode=none", "optimization.max_update=12",
        "optimization.validate_interval_updates=0",
    ]  # fmt: skip
    summary = run(compose_config(overrides), tmp_path)
    assert summary["final_valid"]["loss"] < summary["first_valid"]["loss"]
    position = load_checkpoint(summary["checkpoint"])["train_iterator"][0]  # one position per process
    assert (position["epoch"], position["batches"]) == (1, 12)
    # Every break mode streams: complete_doc packs whole sentences of one document per sample.
    complete_doc = [o for o in overrides if not o.startswith("task.sample_break_mode")]
    summary = run(compose_config(complete_doc + ["task.sample_break_mode=complete_doc", "optimization.max_update=2"]),
                  tmp_path / "complete_doc")  # fmt: skip
    assert summary["updates"] == 2 and summary["final_valid"]["masked"] > 0
