"""Hydra composition of every config group option, and clear errors for invalid values."""
from pathlib import Path

import pytest
from conftest import compose_config
from hydra.errors import ConfigCompositionException

from linformer_pt.config import TrainConfig, load_config
from linformer_pt.errors import UserError
from linformer_pt.models.linformer_roberta import LinformerRobertaConfig
from linformer_pt.registry import MODELS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def group_options(group: str) -> list:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group", ["model", "task", "dataset", "optim", "lr_scheduler", "logger", "experiment", "attention"]
)
def test_every_group_option_composes_and_validates(group):
    options = group_options(group)
    assert options, f"configs/{group} is empty"
    for option in options:
        overrides = [f"{group}={option}"]
        required = {"text": "dataset.train_files=[corpus.txt]", "hf": "dataset.hf_name=wikitext", "shards": "dataset.path=x",
                    "mixture": "dataset.sources=[{name: a, files: [a.txt]}]"}  # fmt: skip
        if group == "dataset" and option in required:
            overrides.append(required[option])
        if group == "experiment" and option.endswith("_paper"):  # the paper's scale reads a preprocessed corpus
            overrides.append("dataset.path=x")
        cfg = load_config(compose_config(overrides))
        assert isinstance(cfg, TrainConfig)


def test_overrides_reach_the_typed_config():
    cfg = load_config(compose_config(["model.k=32", "model.sharing=kv", "optimization.max_update=20"]))
    assert isinstance(cfg.model, LinformerRobertaConfig)
    assert (cfg.model.k, cfg.model.sharing, cfg.optimization.max_update) == (32, "kv", 20)
    assert cfg.model.layer_ks() == [32] * cfg.model.layers


def test_presets_have_their_documented_sizes():
    base = load_config(compose_config(["model=linformer_base"])).model
    assert (base.layers, base.embed_dim, base.heads, base.ffn_embed_dim, base.max_positions, base.k) == (
        12, 768, 12, 3072, 512, 128,
    )
    assert load_config(compose_config(["model=roberta_base"])).model.attention == "standard"


def test_per_layer_k_and_compressed_alias():
    cfg = load_config(compose_config(["model.k=[64,32,32,16]"])).model
    assert cfg.layer_ks() == [64, 32, 32, 16]
    cfg = load_config(compose_config(["model.compressed=4"])).model
    assert cfg.layer_ks() == [cfg.max_positions // 4] * cfg.layers


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.sharing=diagonal", "model.sharing='diagonal' is not allowed; choose one of: none, headwise, kv, layerwise"),
        ("model.k=0", r"model.k=0 must be an integer in \[1, max_positions=256\]"),
        ("model.k=257", r"model.k=257 must be an integer in \[1, max_positions=256\]"),
        ("model.k=[8,8]", "model.k has 2 values but model.layers=4"),
        ("model.attention=sparse", "model.attention='sparse' is not allowed"),
        ("model.projection=gaussian", "model.projection='gaussian' is not allowed; choose one of: linear, mean_pool"),
        ("model.name=gpt", "unknown model 'gpt'; known: linformer_roberta"),
        ("optimization.max_update=0", "optimization.max_update=0 must be > 0"),
        ("task.sample_break_mode=sentence", "task.sample_break_mode='sentence' is not allowed"),
        ("dataset=text", "dataset=text needs dataset.train_files"),
        ("dataset=hf", "dataset=hf needs dataset.hf_name"),
        ("dataset=shards", "dataset=shards needs dataset.path"),
        ("dataset.encoding_errors=ignore", "dataset.encoding_errors='ignore' is not allowed; choose one of: strict, replace"),
        ("task.mask_multiple_length=0", "task.mask_multiple_length=0 must be >= 1"),
    ],
)
def test_invalid_values_fail_with_one_clear_line(override, message):
    with pytest.raises(UserError, match=message) as info:
        load_config(compose_config([override]))
    assert "\n" not in str(info.value)


def test_layerwise_needs_one_k():
    with pytest.raises(UserError, match="layerwise shares one projection"):
        load_config(compose_config(["model.sharing=layerwise", "model.k=[64,32,32,16]"]))


def test_unknown_keys_and_types_are_rejected_on_composition():
    with pytest.raises(ConfigCompositionException):
        compose_config(["model.heads=many"])
    with pytest.raises(ConfigCompositionException):
        compose_config(["model.no_such_key=1"])


def test_registry_lists_known_names():
    with pytest.raises(UserError, match="known: linformer_roberta"):
        MODELS.get("bert")


def test_logger_group_switches_wandb_on():
    assert load_config(compose_config(["logger=wandb"])).logging.wandb is True
    assert load_config(compose_config([])).logging.wandb is False
