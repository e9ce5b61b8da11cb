"""linformer-export and LinformerForMaskedLM.from_pretrained/save_pretrained: exact round trips, ties, errors, eval."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hub_fixtures import train_tiny_run
from linformer_pt import LinformerForMaskedLM
from linformer_pt.cli import eval as eval_cli, export as export_cli
from linformer_pt.errors import UserError
from linformer_pt.hub.export_folder import read_weights, unique_tensors
from linformer_pt.models.linformer_roberta import LinformerRobertaConfig
from linformer_pt.models.loading import load_model

TEXTS = ["all saw old one . the quick brown fox jumps", "a man saw one red car ."]  # unequal lengths: padding


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache_dir) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("export") / "run", cache_dir)


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "fp32"
    export_cli.main([str(run), str(out)])
    return out


def reference_logits(run: Path, model: LinformerForMaskedLM, max_positions=None) -> torch.Tensor:
    tokens, padding_mask = model.tokenize(TEXTS)
    reference = load_model(run / "checkpoints" / "checkpoint_best.pt", max_positions)
    with torch.no_grad():
        return reference(tokens, padding_mask)


def logits(model: LinformerForMaskedLM) -> torch.Tensor:
    with torch.no_grad():
        return model(*model.tokenize(TEXTS))


def test_export_writes_the_layout_and_fp32_logits_are_exact(run, exported):
    names = {p.name for p in exported.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "modeling_linformer.py"} <= names
    config = json.loads((exported / "config.json").read_text())
    assert config["format_version"] == 1 and config["max_positions"] == 32 and config["special_ids"]["mask"] == 4
    model = LinformerForMaskedLM.from_pretrained(exported)
    assert config["parameters"] == model.num_parameters()
    assert torch.equal(logits(model), reference_logits(run, model))


def test_loading_never_unpickles(exported, monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling during from_pretrained")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    LinformerForMaskedLM.from_pretrained(exported)


def test_bf16_export_is_close(run, tmp_path):
    export_cli.main([str(run), str(tmp_path / "bf16"), "--dtype", "bf16"])
    assert all(t.dtype == torch.bfloat16 for t in load_file(str(tmp_path / "bf16" / "model.safetensors")).values())
    model = LinformerForMaskedLM.from_pretrained(tmp_path / "bf16")  # computes in bf16
    assert model.embed_tokens.weight.dtype == torch.bfloat16
    reference = reference_logits(run, model)
    # bf16 keeps 8 bits of mantissa: logits of this tiny model (|logit| < 20) stay within 0.25.
    assert (logits(model).float() - reference).abs().max() < 0.25
    upcast = LinformerForMaskedLM.from_pretrained(tmp_path / "bf16", dtype="fp32")  # bf16 weights, fp32 compute
    assert (logits(upcast) - reference).abs().max() < 0.1


def test_larger_max_positions_uses_the_resize(run, exported):
    model = LinformerForMaskedLM.from_pretrained(exported, max_positions=64)
    assert model.cfg.max_positions == 64
    assert torch.equal(logits(model), reference_logits(run, model, max_positions=64))


@pytest.mark.parametrize("projection", ["linear", "mean_pool", "max_pool", "conv", "identity"])
@pytest.mark.parametrize("sharing", ["none", "headwise", "kv", "layerwise"])
def test_every_sharing_and_projection_round_trips(exported, tmp_path, sharing, projection):
    torch.manual_seed(0)
    cfg = LinformerRobertaConfig(layers=2, embed_dim=16, ffn_embed_dim=32, heads=2, max_positions=32, k=8,
                                 sharing=sharing, projection=projection)  # fmt: skip
    vocab = json.loads((exported / "config.json").read_text())["vocab_size"]
    model = LinformerForMaskedLM(cfg, vocab_size=vocab, padding_idx=1).eval()
    model.attach_tokenizer(exported / "tokenizer.json")
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert set(saved) == set(model.state_dict())  # each parameter once; the LM head has no copy of the embeddings
    if sharing == "layerwise" and projection in ("linear", "conv"):
        assert [k for k in saved if "projection" in k or "proj_" in k] == ["encoder.shared_projection.weight"]
    loaded = LinformerForMaskedLM.from_pretrained(tmp_path)
    assert torch.equal(logits(loaded), logits(model))
    assert loaded.lm_head(torch.zeros(16)).shape == (vocab,)
    loaded.embed_tokens.weight.data[5] += 1.0  # still tied: the head reads the (changed) embeddings
    assert not torch.equal(loaded.lm_head(torch.ones(16)), model.lm_head(torch.ones(16)))


def test_aliased_tensors_are_saved_once_and_retied(tmp_path):
    weight = torch.randn(4, 3)
    tensors, tied = unique_tensors({"embed.weight": weight, "head.weight": weight, "other": torch.ones(2)})
    assert set(tensors) == {"embed.weight", "other"} and tied == {"head.weight": "embed.weight"}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    state = read_weights(tmp_path / "w.safetensors", tied)
    assert state["head.weight"] is state["embed.weight"] and torch.equal(state["head.weight"], weight)


def copy_export(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for path in src.iterdir():
        (dst / path.name).write_bytes(path.read_bytes())
    return dst


def test_bad_exports_are_one_line_errors(exported, tmp_path):
    truncated = copy_export(exported, tmp_path / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or not a safetensors"):
        LinformerForMaskedLM.from_pretrained(truncated)

    foreign = copy_export(exported, tmp_path / "foreign")
    save_file({"bert.embeddings.weight": torch.zeros(3, 3)}, str(foreign / "model.safetensors"))
    with pytest.raises(UserError, match="do not fit"):
        LinformerForMaskedLM.from_pretrained(foreign)

    version = copy_export(exported, tmp_path / "version")
    config = json.loads((version / "config.json").read_text())
    (version / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(UserError, match="format_version 99"):
        LinformerForMaskedLM.from_pretrained(version)

    other = copy_export(exported, tmp_path / "other")
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UserError, match="not a linformer-pt model config"):
        LinformerForMaskedLM.from_pretrained(other)

    no_tokenizer = copy_export(exported, tmp_path / "no_tokenizer")
    (no_tokenizer / "tokenizer.json").unlink()
    with pytest.raises(UserError, match="no tokenizer.json"):
        LinformerForMaskedLM.from_pretrained(no_tokenizer)


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(SystemExit) as stop:
        export_cli.main([str(tmp_path / "empty_run"), str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint_best.pt" in err and "--last" in err


def test_last_exports_checkpoint_last(run, tmp_path, capsys):
    export_cli.main([str(run), str(tmp_path / "last"), "--last"])
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "parameters: " in out
    assert json.loads((tmp_path / "last" / "config.json").read_text())["extra"]["source"] == "checkpoint_last.pt"


def test_eval_reproduces_validation_and_is_deterministic(run, exported, cache_dir, capsys):
    final = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"valid"' in line][-1]
    eval_cli.main([str(run), "--no-progress"])
    on_run = json.loads(capsys.readouterr().out)
    assert on_run["loss"] == pytest.approx(final["loss"], rel=1e-6) and on_run["masked"] == final["masked"]
    valid = run.parent / "run-valid.txt"
    for _ in range(2):  # the same masks every time
        eval_cli.main([str(exported), f"eval_files=[{valid}]", f"dataset.cache_dir={cache_dir}", "--no-progress"])
        again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert again["loss"] == pytest.approx(on_run["loss"], rel=1e-6) and again["masked"] == on_run["masked"]


def test_eval_of_an_export_needs_a_corpus(exported, capsys):
    with pytest.raises(SystemExit):
        eval_cli.main([str(exported)])
    assert "eval_files" in capsys.readouterr().err


def test_package_import_stays_light():
    code = "import sys, linformer_pt; assert 'torch' not in sys.modules; linformer_pt.LinformerForMaskedLM"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_reexporting_an_export_into_itself_in_another_dtype_replaces_it_whole(exported, tmp_path):
    folder = copy_export(exported, tmp_path / "again")
    (folder / "README.md").write_text("my notes")
    export_cli.main([str(folder), str(folder), "--dtype", "bf16"])
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for t in load_file(str(folder / "model.safetensors")).values())
    assert (folder / "tokenizer.json").read_bytes() == (exported / "tokenizer.json").read_bytes()
    assert (folder / "README.md").read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # no staging folder left
    LinformerForMaskedLM.from_pretrained(folder)


def test_a_full_disk_is_one_line_and_leaves_the_old_export_byte_for_byte(run, exported, tmp_path, monkeypatch,
                                                                        capsys):  # fmt: skip
    import safetensors.torch

    folder = copy_export(exported, tmp_path / "old")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\0" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(SystemExit) as stop:
        export_cli.main([str(run), str(folder), "--dtype", "fp16"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert f"could not export into {folder}: No space left on device" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_an_interrupted_export_is_called_so_on_loading(exported, tmp_path):
    folder = copy_export(exported, tmp_path / "torn")
    (folder / "config.json").unlink()  # what an export killed between its renames leaves
    with pytest.raises(UserError, match="its export was interrupted: no config.json"):
        LinformerForMaskedLM.from_pretrained(folder)


def test_exporting_onto_a_file_is_refused(run, tmp_path, capsys):
    (tmp_path / "model.bin").write_bytes(b"keep me")
    with pytest.raises(SystemExit) as stop:
        export_cli.main([str(run), str(tmp_path / "model.bin")])
    assert stop.value.code == 2 and "is a file; give a folder" in capsys.readouterr().err
    assert (tmp_path / "model.bin").read_bytes() == b"keep me"


def test_export_reads_the_checkpoint_once(run, tmp_path, monkeypatch):
    import linformer_pt.hub.fine_tuned as fine_tuned
    import linformer_pt.hub.export_folder as hub

    reads = []
    real = hub.load_checkpoint

    def counted(path, *args, **kwargs):
        reads.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(hub, "load_checkpoint", counted)
    monkeypatch.setattr(fine_tuned, "load_checkpoint", counted)
    export_cli.main([str(run), str(tmp_path / "once")])
    assert reads == [run / "checkpoints" / "checkpoint_best.pt"]


def export_state(folder: Path) -> str:
    """What a reader finds: "interrupted" (no config.json; loading says so) or the dtype of a whole export."""
    if not (folder / "config.json").exists():
        with pytest.raises(UserError, match="its export was interrupted"):
            LinformerForMaskedLM.from_pretrained(folder)
        return "interrupted"
    dtype = json.loads((folder / "config.json").read_text())["dtype"]
    # Never new weights under an old config: the tensors have the config's dtype, and the folder loads.
    assert {str(t.dtype) for t in load_file(str(folder / "model.safetensors")).values()} == {f"torch.{dtype}"}
    LinformerForMaskedLM.from_pretrained(folder)
    return dtype


@pytest.mark.parametrize("delay", [0.0, 0.003, 0.02])
def test_kill_9_during_a_reexport_leaves_the_old_export_the_new_one_or_an_interrupted_one(run, exported, tmp_path,
                                                                                      delay):  # fmt: skip
    folder = copy_export(exported, tmp_path / "out")
    (folder / "notes.txt").write_text("mine")
    command = [sys.executable, "-m", "linformer_pt.cli.export", str(run), str(folder), "--dtype", "bf16"]
    export = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # Kill it once it is writing (its staging folder exists), at `delay` seconds into the writing and moving.
    while not list(tmp_path.glob(".out.partial-*")) and export.poll() is None and time.monotonic() < deadline:
        time.sleep(0.0005)
    time.sleep(delay)
    export.kill()
    export.wait()
    assert export_state(folder) in ("float32", "bfloat16", "interrupted")
    assert (folder / "notes.txt").read_text() == "mine"
    # The next export mends the folder and clears the killed process's staging folder.
    export_cli.main([str(run), str(folder), "--dtype", "fp16"])
    assert export_state(folder) == "float16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
