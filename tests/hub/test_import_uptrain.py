"""Uptraining an import: checkpoint.init_from=OUT keeps every imported weight, adds E/F for Linformer attention, and
copies the learned positions for a longer max_positions so that short inputs compute what the source computes."""
import dataclasses

import pytest
import torch

transformers = pytest.importorskip("transformers")

from import_sources import padded_batch, transformers_folder  # noqa: E402
from linformer_pt import LinformerForMaskedLM  # noqa: E402
from linformer_pt.cli import import_model as import_cli  # noqa: E402
from linformer_pt.config import CheckpointConfig  # noqa: E402
from linformer_pt.cli.init_source import load_init_source  # noqa: E402
from linformer_pt.models.linformer_roberta import LinformerRoberta  # noqa: E402
from linformer_pt.models.loading import load_weights  # noqa: E402


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("uptrain")
    src = transformers_folder(root / "src", "roberta")
    import_cli.main([str(src), str(root / "out")])
    return src, root / "out"


def build(out, **changes) -> LinformerRoberta:
    source = LinformerForMaskedLM.from_pretrained(out)
    cfg = dataclasses.replace(source.cfg, **changes)
    model = LinformerRoberta(cfg, source.embed_tokens.num_embeddings, source.padding_idx)
    load_weights(model, load_init_source(out))
    return model.eval()


def test_init_from_accepts_an_export_folder(imported, tmp_path):
    CheckpointConfig(init_from=str(imported[1]))
    with pytest.raises(ValueError, match="init_from"):
        CheckpointConfig(init_from=str(tmp_path))  # a folder without config.json


def test_linformer_attention_keeps_every_imported_weight_and_adds_projections(imported):
    source = LinformerForMaskedLM.from_pretrained(imported[1]).state_dict()
    model = build(imported[1], attention="linformer", k=16)
    state = model.state_dict()
    added = sorted(set(state) - set(source))
    assert added and all(name.endswith(("proj_e.weight", "proj_f.weight")) for name in added)
    assert all(torch.equal(state[name], tensor) for name, tensor in source.items())


def test_longer_max_positions_equals_the_source_on_short_inputs(imported):
    src, out = imported
    model = build(out, max_positions=150)
    assert model.embed_positions.weight.shape[0] == 150
    rows = model.embed_positions.weight
    torch.testing.assert_close(rows[64:128], rows[:64], atol=0, rtol=0)  # the learned rows, copied on
    pad = model.padding_idx
    batch = padded_batch([64, 30, 5], model.embed_tokens.num_embeddings, pad, [0, 1, 2, 3, model.embed_tokens.num_embeddings - 1])
    reference = transformers.AutoModelForMaskedLM.from_pretrained(src).eval()
    with torch.no_grad():
        expected = reference(**batch).logits
        got = model(batch["input_ids"], batch["attention_mask"] == 0)
        long = model(torch.randint(4, 100, (1, 150)))  # and the longer input runs
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)
    assert long.shape == (1, 150, model.embed_tokens.num_embeddings)
