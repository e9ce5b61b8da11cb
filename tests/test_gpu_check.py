"""scripts/gpu_check.py: its --dry-run (what CI runs on the CPU) records every step, and its checks can fail."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from linformer_pt.cli.train import device_line
from linformer_pt.modules.folded_attention import folding_pays

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_records_every_step_with_its_numbers(cache_dir, tmp_path):
    out = tmp_path / "check"
    command = [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--cache-dir", str(cache_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    steps = report["steps"]
    assert list(steps) == ["correctness", "training", "torchrun", "bench_attention", "checkpoint"]
    assert {name: r["status"] for name, r in steps.items()} == dict.fromkeys(steps, "ok")
    assert all(r["seconds"] > 0 and r["budget_s"] > 0 for r in steps.values())

    correctness = steps["correctness"]["results"]
    checks = correctness["checks"]
    assert {(c["attention"], c["sharing"]) for c in checks} >= {("linformer", s) for s in ("none", "headwise", "kv", "layerwise")}
    assert any(c["attention"].endswith("(folded)") for c in checks)  # the folded attention path is checked too
    n = correctness["settings"]["n"]
    assert folding_pays(n, 8, 64, 4) and folding_pays(n - n // 3, 8, 64, 4)  # and does fold there, padded or not
    assert {(c["check"], c["dtype"]) for c in checks} == {(c, d) for c in ("vs_float64_cpu", "pad_invariance") for d in ("fp32", "bf16")}
    assert all(c["ok"] and 0 <= c["rel_error"] <= c["tolerance"] for c in checks)
    assert correctness["fp16_overflow"]["ok"] and correctness["fp16_overflow"]["after_overflow"]["scale"] == 512
    assert "device_syncs" in steps["correctness"]["skipped"]  # CUDA only, skipped with its reason

    training = steps["training"]
    for name in ("train_linformer_base", "train_roberta_base"):
        run = training["results"][name]
        assert run["status"] == "ok" and run["updates"] == 4 and run["tokens_per_s"] > 0 and run["tflops"] > 0
        assert run["device_line"] == "device: CPU, precision bf16"
        assert run["peak_memory_mib"] is None and run["mfu"] is None  # CUDA-only, and skipped with a reason:
    assert {"peak_memory_mib", "mfu", "compile"} <= set(training["skipped"])

    torchrun = steps["torchrun"]["results"]
    assert torchrun["torchrun_ddp"]["status"] == "ok" and torchrun["torchrun_ddp"]["updates"] == 2
    pg = torchrun["process_group"]
    assert pg["backend"] == "gloo" and pg["all_reduce"] == 1.0 and pg["ddp"]["finite"] and pg["fsdp"]["finite"]
    assert "nccl" in steps["torchrun"]["skipped"]

    bench = steps["bench_attention"]["results"]
    assert {(t["scope"], t["n"], t["k"]) for t in bench["table3"]} == {("attention", 1024, 128), ("layer", 1024, 128)}
    assert all(t["paper_speedup"] > 1 and t["speedup_vs_naive"] > 0 and t["speedup_vs_sdpa"] > 0 for t in bench["table3"])

    saves = steps["checkpoint"]["results"]["saves"]
    assert [s["async_save"] for s in saves] == [True, False, True, False]
    assert all(0 <= s["stall_s"] <= s["written_s"] and s["size_mib"] > 0 for s in saves)

    markdown = (out / "gpu_check.md").read_text()
    assert "| step | status | seconds | budget s | note |" in markdown and "| checkpoint | ok |" in markdown
    assert "paper speed-up" in markdown and "device: CPU, precision bf16" in markdown


def test_pad_invariance_check_catches_a_model_that_ignores_padding():
    checks = load_gpu_check().model_checks("cpu", 64, 16, "linformer", "headwise", fairseq_compat=True)
    by_check = {(c["check"], c["dtype"]): c for c in checks}
    assert not by_check["pad_invariance", "fp32"]["ok"] and by_check["pad_invariance", "fp32"]["rel_error"] > 1e-3
    assert by_check["vs_float64_cpu", "fp32"]["ok"]  # the reference ignores padding too: only invariance fails


def test_table3_puts_our_ratios_beside_the_papers():
    rows = [{"scope": "layer", "n": 512, "variant": v, "time_ms": t, "memory_mib": m}
            for v, t, m in (("naive", 6.0, 40.0), ("sdpa", 3.0, 20.0), ("linformer-k128", 2.0, 10.0))]  # fmt: skip
    (row,) = load_gpu_check().table3(rows)
    assert row["k"] == 128 and row["paper_speedup"] == 1.5 and row["paper_memory_saving"] == 1.7
    assert (row["speedup_vs_naive"], row["speedup_vs_sdpa"]) == (3.0, 1.5)
    assert (row["memory_saving_vs_naive"], row["memory_saving_vs_sdpa"]) == (4.0, 2.0)


@pytest.mark.parametrize(
    "requested, cuda, expected",
    [("cpu", False, "device: CPU, precision fp32"), ("auto", False, "no CUDA device: training on the CPU (precision fp32)")],
)
def test_device_line_says_what_the_run_trains_on(requested, cuda, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert device_line(requested, "fp32") == expected


def test_device_line_names_the_gpus_and_their_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert device_line("cuda", "bf16", world_size=8) == "device: 8 x NVIDIA H100 80GB HBM3, precision bf16"
    assert device_line("auto", "bf16") == "device: NVIDIA H100 80GB HBM3, precision bf16"
