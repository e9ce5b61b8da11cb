"""Trainer mechanics on real tiny runs: accumulation, fp16 loss scaling, divergence, bf16, checkpointing."""
import json
import math

import pytest
import torch
from conftest import build_trainer

from linformer_pt.training.checkpoint import load_checkpoint
from linformer_pt.training.precision import Precision

NO_DROPOUT = ["model.dropout=0", "model.attention_dropout=0", "optimization.clip_norm=0"]


@pytest.fixture
def base(tiny_overrides):
    return tiny_overrides + NO_DROPOUT


def record_gradients(trainer):
    grads = []
    trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: grads.append([p.grad.clone() for p in trainer.model.parameters()])
    )
    return grads


def test_accumulating_two_half_batches_equals_one_full_batch(base, tmp_path):
    half = build_trainer(base + ["dataset.batch_size=8", "optimization.update_freq=2"], tmp_path / "a")
    full = build_trainer(base + ["dataset.batch_size=16"], tmp_path / "b")
    grads_half, grads_full = record_gradients(half), record_gradients(full)
    it_half, it_full = half.train_iterator.forever(), full.train_iterator.forever()
    for _ in range(3):
        a = half.train_step(next(it_half))
        b = full.train_step(next(it_full))
        assert (a["masked"], a["tokens"]) == (b["masked"], b["tokens"])
        assert a["loss_sum"] == pytest.approx(b["loss_sum"], rel=1e-5)
        assert a["gnorm"] == pytest.approx(b["gnorm"], rel=1e-4)
    for step_a, step_b in zip(grads_half, grads_full):
        for ga, gb in zip(step_a, step_b):
            torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-7)


def test_fp16_overflow_skips_the_update_and_lowers_the_scale(base, tmp_path):
    trainer = build_trainer(base + ["trainer.precision=fp16", "trainer.fp16_init_scale=1024"], tmp_path)
    batches = trainer.train_iterator.forever()
    trainer.train_step(next(batches))
    assert trainer.update == 1
    before = [p.detach().clone() for p in trainer.model.parameters()]
    # Inject an overflow: an infinite gradient in one parameter.
    hook = trainer.model.lm_bias.register_hook(lambda g: torch.full_like(g, math.inf))
    trainer.train_step(next(batches))
    hook.remove()
    assert trainer.update == 1 and trainer.overflows == 1
    assert trainer.precision.scale == 512
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    trainer.train_step(next(batches))
    assert trainer.update == 2 and trainer.precision.scale == 512


def test_loss_scale_stops_the_run_below_its_minimum():
    precision = Precision("fp16", torch.device("cpu"), init_scale=4.0, min_scale=1.0)
    assert precision.update(math.inf) is False and precision.scale == 2.0
    assert precision.update(math.nan) is False and precision.scale == 1.0
    with pytest.raises(FloatingPointError, match="fell below trainer.fp16_min_scale=1"):
        precision.update(math.inf)


def test_loss_scale_grows_after_a_window_of_clean_updates():
    precision = Precision("fp16", torch.device("cpu"), init_scale=8.0, scale_window=3)
    assert [precision.update(1.0) for _ in range(3)] == [True] * 3 and precision.scale == 16.0


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(base, tmp_path):
    trainer = build_trainer(base + ["checkpoint.save_interval_updates=2", "optimization.max_update=10"], tmp_path)
    real_loss = trainer.task.loss

    def poisoned(model, batch):
        loss, stats = real_loss(model, batch)
        return (loss * math.nan, stats) if trainer.update == 5 else (loss, stats)

    trainer.task.loss = poisoned
    with pytest.raises(FloatingPointError, match="at update 6: not finite; stopping") as info:
        trainer.fit()
    assert "\n" not in str(info.value)
    state = load_checkpoint(tmp_path / "checkpoints" / "checkpoint_last.pt")
    assert state["update"] == 4
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_bf16_autocast_trains_on_cpu(base, tmp_path):
    trainer = build_trainer(base + ["trainer.precision=bf16", "optimization.max_update=40"], tmp_path)
    summary = trainer.fit()
    assert summary["final_valid"]["loss"] < 0.92 * summary["first_valid"]["loss"]


def test_activation_checkpointing_recomputes_layers_with_the_same_gradients(base, tmp_path):
    plain = build_trainer(base, tmp_path / "a")
    ckpt = build_trainer(base + ["model.checkpoint_activations=true"], tmp_path / "b")
    calls = {"plain": 0, "ckpt": 0}
    for name, trainer in (("plain", plain), ("ckpt", ckpt)):
        for layer in trainer.model.encoder.layers:
            layer.self_attn.register_forward_hook(lambda *a, name=name: calls.__setitem__(name, calls[name] + 1))
    grads_plain, grads_ckpt = record_gradients(plain), record_gradients(ckpt)
    plain.train_step(next(plain.train_iterator.forever()))
    ckpt.train_step(next(ckpt.train_iterator.forever()))
    layers = len(plain.model.encoder.layers)
    assert calls == {"plain": layers, "ckpt": 2 * layers}  # each Linformer layer ran again in backward
    for ga, gb in zip(grads_plain[0], grads_ckpt[0]):
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-8)


def test_logs_report_throughput_flops_and_mfu(base, tmp_path):
    trainer = build_trainer(base + ["optimization.max_update=4", "logging.log_interval=2", "trainer.peak_tflops=1"], tmp_path)
    trainer.fit()
    train = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert [r["update"] for r in train] == [2, 4]
    assert all(r["tflops"] > 0 and r["mfu"] == pytest.approx(r["tflops"]) and r["tokens_per_s"] > 0 for r in train)
    assert all(0 < r["data_share"] < 1 for r in train)
    assert (tmp_path / "checkpoints" / "checkpoint_best.pt").is_file()
