"""linformer-average-checkpoints: the elementwise mean of real checkpoints, usable by every loader, never resumable."""
import json
import shutil
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from hub_fixtures import train_tiny_run
from linformer_pt.cli import average as average_cli, eval as eval_cli, export as export_cli, fill_mask as fill_mask_cli
from linformer_pt.errors import UserError
from linformer_pt.models.loading import load_model
from linformer_pt.training.checkpoint import load_checkpoint, numbered_checkpoints, save_checkpoint
from linformer_pt.training.resume import load_resume_state

PROMPT = "the quick brown <mask> jumps over the lazy dog ."


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache_dir) -> Path:
    """A tiny run that keeps checkpoint_10.pt, checkpoint_20.pt and checkpoint_30.pt."""
    extra = ["checkpoint.save_interval_updates=10", "checkpoint.keep_last=3"]
    return train_tiny_run(tmp_path_factory.mktemp("average") / "run", cache_dir, extra=extra, updates=30)


def main_ok(args: List[str]) -> None:
    average_cli.main([*args, "--no-progress"])


def refused(args: List[str], capsys) -> str:
    """The one stderr line of a refused command (status 2)."""
    with pytest.raises(SystemExit) as stop:
        main_ok(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and err.startswith("linformer-average-checkpoints: error: "), err
    return err


def float_weights(state: Dict) -> Dict[str, torch.Tensor]:
    return {k: v for k, v in state["model"].items() if v.is_floating_point()}


def test_last_n_is_the_elementwise_mean(run, tmp_path):
    inputs = numbered_checkpoints(run / "checkpoints")
    assert [p.name for p in inputs] == ["checkpoint_10.pt", "checkpoint_20.pt", "checkpoint_30.pt"]
    out = tmp_path / "avg.pt"
    main_ok([str(run), "-n", "3", "--out", str(out)])
    states = [load_checkpoint(p) for p in inputs]
    averaged = load_checkpoint(out)
    assert set(averaged["model"]) == set(states[-1]["model"])
    moved = 0
    for name, weight in float_weights(averaged).items():
        expected = (sum(s["model"][name].double() for s in states) / 3).to(states[-1]["model"][name].dtype)
        assert weight.dtype == states[-1]["model"][name].dtype
        assert torch.equal(weight, expected), name
        moved += not torch.equal(weight, states[-1]["model"][name])
    assert moved > 0  # the weights changed during training: a copy of the newest one would fail above
    assert averaged["update"] == 30 and averaged["cfg"] == states[-1]["cfg"]
    assert [e["update"] for e in averaged["provenance"]["averaged_from"]] == [10, 20, 30]
    assert averaged["provenance"]["tokenizer_sha256"] == states[-1]["provenance"]["tokenizer_sha256"]


def test_last_two_of_the_checkpoints_folder(run, tmp_path):
    out = tmp_path / "avg2.pt"
    main_ok([str(run / "checkpoints"), "--num-checkpoints", "2", "--out", str(out)])
    a, b = (load_checkpoint(run / "checkpoints" / f"checkpoint_{u}.pt") for u in (20, 30))
    name = next(iter(float_weights(a)))
    expected = ((a["model"][name].double() + b["model"][name].double()) / 2).float()
    assert torch.equal(load_checkpoint(out)["model"][name], expected)


def test_output_loads_everywhere_but_never_resumes(run, tmp_path, capsys):
    out = tmp_path / "elsewhere" / "avg.pt"  # no tokenizer.json there: the run's is copied beside it
    main_ok([str(run), "-n", "2", "--out", str(out)])
    capsys.readouterr()
    assert (out.parent / "tokenizer.json").read_bytes() == (run / "tokenizer.json").read_bytes()
    averaged = load_checkpoint(out)
    for key in ("optimizer", "lr_scheduler", "train_iterator", "rng"):
        assert key not in averaged
    with pytest.raises(UserError, match="weights-only file"):
        load_resume_state(out, None, {}, 1)  # what checkpoint.restore_file / auto-resume call first
    model = load_model(out)  # what checkpoint.init_from loads weights with
    name = next(iter(float_weights(averaged)))
    assert torch.equal(model.state_dict()[name], averaged["model"][name])
    fill_mask_cli.main([str(out), PROMPT, "--json"])
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert line["text"] == PROMPT and len(line["masks"]) == 1
    eval_cli.main([str(out), "--no-progress"])  # the run's own validation set, from the checkpoint's config
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["masked"] > 0 and result["loss"] > 0
    export_cli.main([str(out), str(tmp_path / "export")])
    assert (tmp_path / "export" / "model.safetensors").is_file()


def variant(run: Path, folder: Path, update: int, edit=None) -> Path:
    """A copy of the run's newest numbered checkpoint saved as checkpoint `update`, changed by `edit(state)`."""
    state = load_checkpoint(numbered_checkpoints(run / "checkpoints")[-1])
    state["update"] = update
    if edit is not None:
        edit(state)
    folder.mkdir(exist_ok=True)
    if not (folder / "tokenizer.json").exists():
        shutil.copy(run / "tokenizer.json", folder / "tokenizer.json")
    return save_checkpoint(folder / f"variant_{update}.pt", state)


def test_integer_buffers_come_from_the_newest_and_dtypes_stay(run, tmp_path):
    name = next(n for n, t in load_checkpoint(run / "checkpoints" / "checkpoint_30.pt")["model"].items() if t.dim() == 2)

    def edit(offset: float):
        def apply(state):
            state["model"][name] = (state["model"][name] + offset).to(torch.bfloat16)
            state["model"]["counter"] = torch.tensor([int(offset * 10)], dtype=torch.int64)
            state["model"]["scale64"] = torch.full((3,), offset, dtype=torch.float64)
        return apply

    files = [variant(run, tmp_path, u, edit(o)) for u, o in ((300, 0.3), (100, 0.1), (200, 0.2))]  # newest first
    out = tmp_path / "avg.pt"
    main_ok([*map(str, files), "--out", str(out)])
    averaged = load_checkpoint(out)["model"]
    inputs = [load_checkpoint(f)["model"] for f in files]
    assert averaged["counter"].dtype == torch.int64 and averaged["counter"].tolist() == [3]  # the newest's, not 2
    assert averaged[name].dtype == torch.bfloat16
    assert torch.equal(averaged[name], (sum(s[name].double() for s in inputs) / 3).to(torch.bfloat16))
    assert averaged["scale64"].dtype == torch.float64
    torch.testing.assert_close(averaged["scale64"], torch.full((3,), 0.2, dtype=torch.float64), rtol=0, atol=1e-15)
    assert load_checkpoint(out)["update"] == 300


def test_refusals_are_one_line_and_write_nothing(run, tmp_path, capsys):
    out = tmp_path / "avg.pt"
    assert "holds 3 numbered checkpoint(s)" in refused([str(run), "-n", "4", "--out", str(out)], capsys)
    assert "--num-checkpoints" in refused([str(run), "--out", str(out)], capsys)
    assert "must be >= 1" in refused([str(run), "-n", "0", "--out", str(out)], capsys)
    one = run / "checkpoints" / "checkpoint_10.pt"
    assert "given twice" in refused([str(one), str(one), "--out", str(out)], capsys)
    assert "goes with one run folder" in refused([str(one), "-n", "1", "--out", str(out)], capsys)
    assert "no such checkpoint file" in refused([str(tmp_path / "nope.pt"), "--out", str(out)], capsys)
    assert "name training uses" in refused([str(run), "-n", "2", "--out", str(tmp_path / "checkpoint_40.pt")], capsys)
    assert "name training uses" in refused([str(run), "-n", "2", "--out", str(tmp_path / "checkpoint_last.pt")], capsys)
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(b"not a checkpoint")
    assert f"checkpoint {foreign} is" in refused([str(one), str(foreign), "--out", str(out)], capsys)  # load_checkpoint's
    assert not out.exists()
    existing = tmp_path / "taken.pt"
    existing.write_bytes(b"keep me")
    assert "already exists" in refused([str(run), "-n", "2", "--out", str(existing)], capsys)
    assert existing.read_bytes() == b"keep me"


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda s: s["cfg"]["model"].update(k=4), "model.k"),
        (lambda s: s["provenance"].update(tokenizer_sha256="0" * 64), "tokenizer_sha256"),
        (lambda s: s["model_args"].update(vocab_size=s["model_args"]["vocab_size"] + 1), "model_args"),
        (lambda s: s["model"].pop(next(iter(s["model"]))), "weight "),
    ],
)
def test_different_models_are_refused(run, tmp_path, capsys, edit, field):
    good = variant(run, tmp_path, 100)
    bad = variant(run, tmp_path, 200, edit)
    err = refused([str(good), str(bad), "--out", str(tmp_path / "avg.pt")], capsys)
    assert f"{field}" in err and "cannot average" in err
    assert not (tmp_path / "avg.pt").exists()


def test_dropout_may_differ(run, tmp_path):
    """Dropout does not change the function the weights compute: such checkpoints average."""
    a = variant(run, tmp_path, 100)
    b = variant(run, tmp_path, 200, lambda s: s["cfg"]["model"].update(dropout=0.3))
    main_ok([str(a), str(b), "--out", str(tmp_path / "avg.pt")])
    assert load_checkpoint(tmp_path / "avg.pt")["cfg"]["model"]["dropout"] == 0.3  # the newest's config


def test_another_tokenizer_beside_out_is_refused(run, tmp_path, capsys):
    (tmp_path / "tokenizer.json").write_text("{}")
    err = refused([str(run), "-n", "2", "--out", str(tmp_path / "avg.pt")], capsys)
    assert "another tokenizer" in err and not (tmp_path / "avg.pt").exists()
    assert (tmp_path / "tokenizer.json").read_text() == "{}"


def test_checkpoints_without_their_tokenizer_still_average_with_a_warning(run, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    files = [shutil.copy(run / "checkpoints" / f"checkpoint_{u}.pt", bare / f"c{u}.pt") for u in (20, 30)]
    out = tmp_path / "out" / "avg.pt"
    main_ok([*map(str, files), "--out", str(out)])
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("linformer-average-checkpoints: warning: no tokenizer.json")
    assert out.is_file() and not (out.parent / "tokenizer.json").exists()
    assert load_model(out) is not None  # init_from needs no tokenizer file
