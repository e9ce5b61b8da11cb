"""An imported encoder is an ordinary starting point for linformer-train: checkpoint.init_from=<import folder>.

The run takes the folder's model and tokenizer, with the user's model.* overrides on top (the Linformer swap),
starts from the imported weights (its first validation is the source model's, not a random model's) and trains,
for a RoBERTa-layout and a BERT-layout source (whose special tokens are [CLS] [SEP] [PAD] [MASK] at other ids).
"""
import json
import math

import pytest

pytest.importorskip("transformers")

from conftest import compose_config  # noqa: E402
from import_sources import CORPUS, transformers_folder  # noqa: E402
from linformer_pt.cli import import_model as import_cli  # noqa: E402
from linformer_pt.cli.train import run  # noqa: E402


@pytest.fixture(scope="module", params=["roberta", "bert"])
def imported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"import_{request.param}")
    import_cli.main([str(transformers_folder(root / "src", request.param)), str(root / "out")])
    (root / "train.txt").write_text("\n".join(CORPUS[:60]) + "\n")
    (root / "valid.txt").write_text("\n".join(CORPUS[60:]) + "\n")
    return root


def uptrain(root, name, extra):
    overrides = ["experiment=smoke", "dataset=text", f"dataset.train_files=[{root / 'train.txt'}]",
                 f"dataset.valid_files=[{root / 'valid.txt'}]", f"dataset.cache_dir={root / 'cache'}",
                 "logging.progress_bar=false", "logging.tensorboard=false", "optimization.max_update=3",
                 "task.tokens_per_sample=32", f"checkpoint.init_from={root / 'out'}", *extra]  # fmt: skip
    return run(compose_config(overrides), root / name, overrides=overrides)


def test_a_standard_attention_uptrain_starts_from_the_source_model(imported, capsys):
    result = uptrain(imported, "same", [])
    source = json.loads((imported / "out" / "config.json").read_text())["linformer"]
    saved = json.loads((imported / "same" / "summary.json").read_text())["config"]["model"]
    assert {k: saved[k] for k in ("layers", "embed_dim", "heads", "attention", "layer_norm_eps")} == \
        {k: source[k] for k in ("layers", "embed_dim", "heads", "attention", "layer_norm_eps")}  # fmt: skip
    assert "model from checkpoint.init_from=" in capsys.readouterr().out
    assert result["updates"] == 3 and math.isfinite(result["final_valid"]["loss"])


def test_the_linformer_swap_keeps_the_imported_weights(imported):
    """At a learning rate of 1e-9 the run's weights stay the imported ones, with E/F added for the swap."""
    import torch

    from linformer_pt import LinformerForMaskedLM
    from linformer_pt.training.checkpoint import load_checkpoint

    result = uptrain(imported, "swapped", ["model.attention=linformer", "model.k=8", "model.max_positions=64",
                                           "optim.lr=1e-9"])  # fmt: skip
    saved = json.loads((imported / "swapped" / "summary.json").read_text())["config"]["model"]
    assert saved["attention"] == "linformer" and saved["k"] == 8
    source = LinformerForMaskedLM.from_pretrained(imported / "out").state_dict()
    trained = load_checkpoint(result["checkpoint"])["model"]
    added = sorted(set(trained) - set(source))
    assert added and all(name.endswith(("proj_e.weight", "proj_f.weight")) for name in added)
    for name, tensor in source.items():
        torch.testing.assert_close(trained[name], tensor, atol=1e-6, rtol=0, msg=name)


def test_projections_only_updates_hold_the_imported_weights_while_e_and_f_learn(imported):
    """optimization.projections_only_updates=3: after 3 updates only E/F moved (at a real learning rate)."""
    import torch

    from linformer_pt import LinformerForMaskedLM
    from linformer_pt.training.checkpoint import load_checkpoint

    swap = ["model.attention=linformer", "model.k=8", "model.projection_init=average", "optim.lr=1e-2",
            "lr_scheduler.warmup_updates=0", "optim.projection_lr_scale=3", "model.dropout=0"]  # fmt: skip
    held = uptrain(imported, "held", [*swap, "optimization.projections_only_updates=3"])
    source = LinformerForMaskedLM.from_pretrained(imported / "out").state_dict()
    trained = load_checkpoint(held["checkpoint"])["model"]
    assert all(torch.equal(trained[name], tensor) for name, tensor in source.items())
    projections = [name for name in trained if name not in source]
    start = uptrain(imported, "start", [*swap, "optimization.max_update=1", "optim.lr=1e-12"])
    first = load_checkpoint(start["checkpoint"])["model"]
    assert all(not torch.allclose(trained[name], first[name]) for name in projections)
    # Without the hold every weight moves.
    free = load_checkpoint(uptrain(imported, "free", swap)["checkpoint"])["model"]
    assert not torch.equal(free["encoder.layers.0.fc1.weight"], source["encoder.layers.0.fc1.weight"])
