"""linformer-import refuses bad sources in one line (exit 2), writes nothing, and never runs a pickle's code."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from import_sources import fairseq_state, gpt2_bpe_files, transformers_folder  # noqa: E402
from linformer_pt.cli import import_model as import_cli  # noqa: E402

BIN = Path(sys.executable).parent


def refused(capsys, src: Path, out: Path, *extra: str) -> str:
    """Run linformer-import; assert exit 2, one stderr line, no OUT; return that line."""
    with pytest.raises(SystemExit) as stop:
        import_cli.main([str(src), str(out), *extra])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.startswith("linformer-import: error: ") and err.count("\n") == 1, err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial")]  # no staging left
    return err


@pytest.fixture(scope="module")
def roberta(tmp_path_factory) -> Path:
    return transformers_folder(tmp_path_factory.mktemp("roberta") / "src", "roberta")


def test_unsupported_architecture(tmp_path, capsys):
    transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path / "gpt2")
    err = refused(capsys, tmp_path / "gpt2", tmp_path / "out")
    assert "'gpt2'" in err and "roberta" in err and "bert" in err


def test_truncated_safetensors(tmp_path, capsys, roberta):
    src = tmp_path / "src"
    shutil.copytree(roberta, src)
    weights = src / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert "model.safetensors is truncated" in refused(capsys, src, tmp_path / "out")


def test_tokenizer_size_must_match_the_embeddings(tmp_path, capsys, roberta):
    src = tmp_path / "src"
    shutil.copytree(roberta, src)
    tokenizer = json.loads((src / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"]["zzzextra"] = len(tokenizer["model"]["vocab"]) + len(tokenizer["added_tokens"])
    (src / "tokenizer.json").write_text(json.dumps(tokenizer))
    err = refused(capsys, src, tmp_path / "out")
    assert "tokens but the embedding matrix" in err


def test_missing_files(tmp_path, capsys, roberta):
    src = tmp_path / "src"
    shutil.copytree(roberta, src)
    (src / "model.safetensors").unlink()
    assert "no weights" in refused(capsys, src, tmp_path / "out")
    refused(capsys, tmp_path / "nowhere", tmp_path / "out")
    fairseq = tmp_path / "fairseq"
    gpt2_bpe_files(fairseq)
    torch.save({"model": fairseq_state(120, None)}, fairseq / "model.pt")
    (fairseq / "dict.txt").unlink()
    assert "dict.txt: no such file" in refused(capsys, fairseq, tmp_path / "out", "--heads", "4")


class RunsCode:
    """Unpickling this runs os.system: what a hostile model.pt or pytorch_model.bin would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_hostile_fairseq_pickle_is_refused_unrun(tmp_path, capsys):
    src = tmp_path / "src"
    gpt2_bpe_files(src)
    marker = tmp_path / "ran"
    torch.save({"args": RunsCode(marker), "model": fairseq_state(4 + 121 + 1, None)}, src / "model.pt")
    err = refused(capsys, src, tmp_path / "out")
    assert "not a safe checkpoint" in err and "system" in err
    assert not marker.exists()


def test_hostile_pytorch_model_bin_is_refused_unrun(tmp_path, roberta):
    src = tmp_path / "src"
    shutil.copytree(roberta, src)
    (src / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    torch.save({"w": RunsCode(marker)}, src / "pytorch_model.bin")
    done = subprocess.run([str(BIN / "linformer-import"), str(src), str(tmp_path / "out")], capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "pytorch_model.bin cannot be read safely" in done.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_pytorch_model_bin_is_read_when_safe(tmp_path, roberta):
    """The same weights from a plain-tensor pytorch_model.bin import like the safetensors file."""
    from safetensors.torch import load_file

    src = tmp_path / "src"
    shutil.copytree(roberta, src)
    torch.save(load_file(str(src / "model.safetensors")), src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()
    import_cli.main([str(src), str(tmp_path / "out")])
    import_cli.main([str(roberta), str(tmp_path / "reference")])
    from safetensors.torch import load_file as load

    a, b = load(str(tmp_path / "out" / "model.safetensors")), load(str(tmp_path / "reference" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
