"""The correctness step of scripts/gpu_check.py: encoder outputs on the device vs a float64 CPU reference, pad
invariance, and fp16 overflow handling through the real Trainer."""
import argparse
import copy
import math
from pathlib import Path
from typing import Any, Dict, List

# Relative L2 error ||out - ref|| / ||ref|| of the encoder output against a float64 CPU reference. fp32: only
# summation order differs (TF32 matmuls, off by default in torch, would need ~1e-3); bf16 autocast keeps 8 bits of
# mantissa (one rounding ~4e-3) but the fp32 residual stream and LayerNorms keep a 2-layer model near 1e-3.
TOLERANCE = {"fp32": 1e-4, "bf16": 1e-2}
# A padded row vs the same row alone, both on the device: only kernel choices for the two shapes differ. fp32 is the
# sharp test (ignoring the padding mask, as fairseq does, costs ~5e-3); bf16 catches gross errors only.
PAD_TOLERANCE = {"fp32": 1e-5, "bf16": 5e-3}
FOLDED_K = 8  # with 4 heads of 16: H k = 32 < d + k = 72, so the folded attention pays at n = 64 and 512

def device_of(dry_run: bool) -> str:
    return "cpu" if dry_run else "cuda"


def step_correctness(rec: Any, args: argparse.Namespace) -> str:
    """Encoder outputs on the device vs a float64 CPU reference, pad invariance, and fp16 overflow handling."""
    import torch

    from linformer_pt.modules.attention import SHARING_SCHEMES

    device = device_of(args.dry_run)
    n, k = (64, 16) if args.dry_run else (512, 128)
    rec.set("settings", {"device": device, "n": n, "k": k, "layers": 2, "embed_dim": 64, "heads": 4,
                         "tolerance_rel_l2": TOLERANCE, "pad_tolerance_rel_l2": PAD_TOLERANCE, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32})  # fmt: skip
    if args.dry_run:
        rec.skip("cuda", "dry run: the device under test is the CPU")
    checks: List[Dict[str, Any]] = []
    for attention, sharing in [("linformer", s) for s in SHARING_SCHEMES] + [("standard", "-")]:
        checks += model_checks(device, n, k, attention, sharing)
        rec.set("checks", checks)
    # At k = 8 folding W_Q and W_O into the projected keys and values pays (modules/folded_attention.py), so that
    # path runs on the device too; at the k above every layer takes the unfolded one.
    folded = model_checks(device, n, FOLDED_K, "linformer", "headwise")
    for check in folded:
        check["attention"] = f"linformer k={FOLDED_K} (folded)"
    checks += folded
    rec.set("checks", checks)
    overflow = fp16_overflow(args, device)
    rec.set("fp16_overflow", overflow)
    if args.dry_run:
        rec.skip("device_syncs", "CUDA only (torch.cuda.set_sync_debug_mode)")
        syncs = {"ok": True}
    else:
        syncs = device_syncs(args, device)
        rec.set("device_syncs", syncs)
    return "ok" if all(c["ok"] for c in checks) and overflow["ok"] and syncs["ok"] else "failed"


def model_checks(device: str, n: int, k: int, attention: str, sharing: str, **model_args: Any) -> List[Dict[str, Any]]:
    """A 2-layer model on `device` in fp32 and bf16 autocast: its encoder output vs float64 on the CPU, and the
    outputs at real positions of a padded row vs the same row alone."""
    import torch

    from linformer_pt.models.linformer_roberta import LinformerRoberta, LinformerRobertaConfig

    torch.manual_seed(0)
    cfg = LinformerRobertaConfig(layers=2, embed_dim=64, ffn_embed_dim=128, heads=4, max_positions=n, k=k,
                                 attention=attention, sharing=sharing if sharing != "-" else "headwise",
                                 dropout=0.0, attention_dropout=0.0, **model_args)  # fmt: skip
    checks: List[Dict[str, Any]] = []
    model = LinformerRoberta(cfg, vocab_size=300, padding_idx=1).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):  # BERT's init zeroes them: nonzero ones exercise the projected bias (E m) b
                param.normal_(0.0, 0.2)
    tokens = torch.randint(4, 300, (2, n))
    short = n - n // 3
    padding = torch.zeros(2, n, dtype=torch.bool)
    padding[1, short:] = True
    tokens[padding] = 1
    reference = copy.deepcopy(model).double()
    with torch.no_grad():
        ref = reference.extract_features(tokens, padding)
        on_device = model.to(device)
        for dtype in ("fp32", "bf16"):
            with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16"):  # as the Trainer runs
                out = on_device.extract_features(tokens.to(device), padding.to(device)).double().cpu()
                alone = on_device.extract_features(tokens[1:, :short].to(device)).double().cpu()
            real = ~padding
            error = rel_l2(out[real], ref[real])
            pad_error = rel_l2(out[1, :short], alone[0])
            common = {"attention": attention, "sharing": sharing, "dtype": dtype, "tolerance": TOLERANCE[dtype]}
            checks.append({"check": "vs_float64_cpu", **common, "rel_error": error, "ok": error <= TOLERANCE[dtype]})
            checks.append({"check": "pad_invariance", **common, "rel_error": pad_error,
                           "tolerance": PAD_TOLERANCE[dtype], "ok": pad_error <= PAD_TOLERANCE[dtype]})  # fmt: skip
    return checks


def rel_l2(a: Any, b: Any) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def smoke_overrides(args: argparse.Namespace, device: str) -> List[str]:
    return ["experiment=smoke", f"dataset.cache_dir={args.cache_dir}", "logging.progress_bar=false",
            "logging.tensorboard=false", f"common.device={device}"]  # fmt: skip


def build_trainer(overrides: List[str], output_dir: Path) -> Any:
    """A Trainer for linformer-train's composed config, built as the CLI builds it (one process)."""
    import torch
    from hydra import compose, initialize_config_module

    import linformer_pt.models  # noqa: F401  (registers models)
    import linformer_pt.tasks  # noqa: F401  (registers tasks)
    import linformer_pt.training  # noqa: F401  (registers optimizers and schedules)
    from linformer_pt.config import load_config
    from linformer_pt.registry import MODELS, TASKS
    from linformer_pt.training.trainer import Trainer

    with initialize_config_module(config_module="linformer_pt.configs", version_base="1.3"):
        cfg = load_config(compose("train", overrides=overrides))
    torch.manual_seed(cfg.common.seed)
    task = TASKS.get(cfg.task.name).cls.setup(cfg)
    model = MODELS.get(cfg.model.name).cls.build(cfg.model, task)
    return Trainer(cfg, task, model, output_dir)


def fp16_overflow(args: argparse.Namespace, device: str) -> Dict[str, Any]:
    """An infinite gradient under fp16: the Trainer must skip the update and halve the loss scale."""
    import torch

    overrides = smoke_overrides(args, device) + ["trainer.precision=fp16", "trainer.fp16_init_scale=1024"]
    trainer = build_trainer(overrides, args.out / "work" / "fp16")
    batches = trainer.train_iterator.forever()
    trainer.train_step(next(batches))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    hook = trainer.model.lm_bias.register_hook(lambda g: torch.full_like(g, math.inf))
    trainer.train_step(next(batches))
    hook.remove()
    unchanged = all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    after = {"update": trainer.update, "overflows": trainer.overflows, "scale": trainer.precision.scale}
    trainer.train_step(next(batches))
    ok = after == {"update": 1, "overflows": 1, "scale": 512.0} and unchanged and trainer.update == 2
    return {"after_overflow": after, "weights_unchanged": unchanged, "update_after_next_step": trainer.update, "ok": ok}


def device_syncs(args: argparse.Namespace, device: str, updates: int = 6) -> Dict[str, Any]:
    """Host-device syncs per bf16 update between log records, as CUDA reports them (set_sync_debug_mode "warn").

    The sync-free step's claim measured where it matters: tests/training/test_sync_free.py counts the Python-level
    reads on the CPU; this also sees kernel-level ones (data-dependent output sizes, blocking copies). OK means none.
    """
    import warnings

    import torch

    overrides = smoke_overrides(args, device) + ["trainer.precision=bf16", "logging.log_interval=1000"]
    trainer = build_trainer(overrides, args.out / "work" / "syncs")
    batches = trainer.train_iterator.forever()
    for _ in range(2):  # warm-up: first-step allocations and lazy initialisations
        trainer.train_step(next(batches))
    counts: List[int] = []
    messages: Dict[str, int] = {}
    for _ in range(updates):
        group = next(batches)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                trainer.train_step(group)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(len(caught))
        for warning in caught:
            key = str(warning.message).splitlines()[0][:160]
            messages[key] = messages.get(key, 0) + 1
    return {"syncs_per_update": counts, "messages": messages, "ok": sum(counts) == 0}

