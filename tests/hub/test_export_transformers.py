"""linformer-export --format transformers: a standard-attention model as transformers' own RoBERTa/BERT folder."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from import_sources import padded_batch, perturb, transformers_folder  # noqa: E402
from linformer_pt import LinformerForMaskedLM  # noqa: E402
from linformer_pt.cli import export as export_cli  # noqa: E402
from linformer_pt.cli import import_model as import_cli  # noqa: E402
from linformer_pt.models.linformer_roberta import LinformerRobertaConfig  # noqa: E402

NATIVE = {"roberta": "RobertaForMaskedLM", "xlm-roberta": "RobertaForMaskedLM", "bert": "BertForMaskedLM"}


def native_logits(folder, batch):
    """Logits of `folder` loaded by transformers alone: no remote code, so its own class must read it."""
    model = transformers.AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=False).eval()
    with torch.no_grad():
        return type(model).__name__, model(**batch).logits


def our_batch(model, lengths):
    specials = list(model.special_ids().values())
    return padded_batch(lengths, model.embed_tokens.num_embeddings, model.padding_idx, specials)


@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta", "bert"])
def test_a_model_trained_here_loads_in_transformers_own_class(tmp_path, model_type):
    """Not a round trip: a fresh model with every weight moved (positions, biases, LayerNorms) is exported, and
    transformers' class must compute our logits from it (a swapped or offset row would show)."""
    src = transformers_folder(tmp_path / "src", model_type)
    import_cli.main([str(src), str(tmp_path / "imported")])
    imported = LinformerForMaskedLM.from_pretrained(tmp_path / "imported")
    cfg = LinformerRobertaConfig(**{**imported.cfg.__dict__, "layer_norm_eps": 1e-6})
    ours = LinformerForMaskedLM(cfg, imported.embed_tokens.num_embeddings, imported.padding_idx)
    perturb(ours, seed=3)
    ours.attach_tokenizer(tmp_path / "imported" / "tokenizer.json")
    ours.save_pretrained(tmp_path / "run")  # an export of "our" model, which linformer-export reads
    export_cli.main([str(tmp_path / "run"), str(tmp_path / "native"), "--format", "transformers"])

    files = {p.name for p in (tmp_path / "native").iterdir()}
    assert not [name for name in files if name.endswith(".py")]  # no code travels: transformers' own classes
    config = json.loads((tmp_path / "native" / "config.json").read_text())
    assert config["layer_norm_eps"] == 1e-6 and config["architectures"] == [NATIVE[model_type]]
    batch = our_batch(ours, [40, 64, 7])  # up to the longest the model takes
    with torch.no_grad():
        expected = ours.eval()(batch["input_ids"], batch["attention_mask"] == 0)
    name, got = native_logits(tmp_path / "native", batch)
    real = batch["attention_mask"].bool()
    assert name == NATIVE[model_type]
    assert expected.abs().max() > 1.0
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)
    # Its tokenizer, read by AutoTokenizer, gives our ids (special tokens included).
    text = f"the cat sat on the {ours.mask_token} and the dog"
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "native")
    assert tokenizer([text])["input_ids"][0] == ours.tokenize([text])[0][0].tolist()
    assert tokenizer.mask_token == ours.mask_token and tokenizer.pad_token_id == ours.padding_idx


def test_imported_then_exported_equals_the_source_and_bf16_is_kept(tmp_path):
    src = transformers_folder(tmp_path / "src", "roberta")
    import_cli.main([str(src), str(tmp_path / "imported")])
    export_cli.main([str(tmp_path / "imported"), str(tmp_path / "native")])  # the default format still works
    export_cli.main([str(tmp_path / "imported"), str(tmp_path / "native"), "--format", "transformers"])
    export_cli.main([str(tmp_path / "imported"), str(tmp_path / "bf16"), "--format", "transformers", "--dtype", "bf16"])
    batch = our_batch(LinformerForMaskedLM.from_pretrained(tmp_path / "imported"), [30, 12])
    _, expected = native_logits(src, batch)
    _, got = native_logits(tmp_path / "native", batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.bfloat16}


def test_a_linformer_is_refused_in_one_line_and_the_folder_is_untouched(tmp_path, capsys):
    src = transformers_folder(tmp_path / "src", "roberta")
    import_cli.main([str(src), str(tmp_path / "imported")])
    imported = LinformerForMaskedLM.from_pretrained(tmp_path / "imported")
    cfg = LinformerRobertaConfig(**{**imported.cfg.__dict__, "attention": "linformer", "k": 16})
    linformer = LinformerForMaskedLM(cfg, imported.embed_tokens.num_embeddings, imported.padding_idx)
    linformer.attach_tokenizer(tmp_path / "imported" / "tokenizer.json")
    linformer.save_pretrained(tmp_path / "linformer")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()  # what making the source printed
    with pytest.raises(SystemExit) as stop:
        export_cli.main([str(tmp_path / "linformer"), str(out), "--format", "transformers"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.startswith("linformer-export: error: model.attention=linformer") and err.count("\n") == 1, err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
