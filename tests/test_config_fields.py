"""Every field of every config dataclass has a bad value that is refused in one line naming its key.

The table below must cover each field (found with dataclasses.fields), so a new field needs a validated range,
choice or type, and an entry here, before this test passes again.
"""
import dataclasses

import pytest
import torch
from conftest import compose_config

from linformer_pt.cli.common import compose
from linformer_pt.config import (
    CheckpointConfig, CommonConfig, DatasetConfig, LoggingConfig, OptimizationConfig, PreprocessConfig,
    TokenizerConfig, TrainerConfig, load_config, load_preprocess_config,
)  # fmt: skip
from linformer_pt.errors import UserError
from linformer_pt.registry import LR_SCHEDULERS, MODELS, OPTIMIZERS, TASKS

SECTIONS = {
    "common": CommonConfig, "dataset": DatasetConfig, "tokenizer": TokenizerConfig,
    "optimization": OptimizationConfig, "trainer": TrainerConfig, "checkpoint": CheckpointConfig,
    "logging": LoggingConfig,
}  # fmt: skip
REGISTRIES = {"task": TASKS, "model": MODELS, "optim": OPTIMIZERS, "lr_scheduler": LR_SCHEDULERS}

# key -> overrides that make it invalid (booleans: a value that is not a bool, refused when composing).
BAD = {
    "common.seed": ["common.seed=-1"],
    "common.device": ["common.device=gpu"],
    "common.threads": ["common.threads=-1"],
    "dataset.name": ["dataset.name=web"],
    "dataset.train_files": ["dataset.train_files=['']"],
    "dataset.valid_files": ["dataset.valid_files=['']"],
    "dataset.file_glob": ["dataset.file_glob=books/*.txt"],
    "dataset.text_field": ["dataset.text_field=''"],
    "dataset.encoding_errors": ["dataset.encoding_errors=ignore"],
    "dataset.hf_name": ["dataset=hf"],
    "dataset.hf_config": ["dataset.hf_config=' wikitext-2'"],
    "dataset.hf_train_split": ["dataset.hf_train_split=''"],
    "dataset.hf_valid_split": ["dataset.hf_valid_split='validation '"],
    "dataset.path": ["dataset=shards"],
    "dataset.valid_fraction": ["dataset.valid_fraction=0.5"],
    "dataset.streaming": ["dataset.streaming=often"],
    "dataset.shuffle_buffer": ["dataset.shuffle_buffer=-1"],
    "dataset.cache_dir": ["dataset.cache_dir=''"],
    "dataset.batch_size": ["dataset.batch_size=0"],
    "dataset.max_tokens": ["dataset.max_tokens=-1"],
    "dataset.num_workers": ["dataset.num_workers=-1"],
    "dataset.max_valid_tokens": ["dataset.max_valid_tokens=-1"],
    "dataset.sources": ["dataset=mixture"],
    "dataset.temperature": ["dataset.temperature=-1"],
    "dataset.valid_sets": ["dataset.valid_sets=[{name: ' x', files: [a.txt]}]"],
    "tokenizer.path": ["tokenizer.path=/no/such/tokenizer.json"],
    "tokenizer.vocab_size": ["tokenizer.vocab_size=299"],
    "tokenizer.min_frequency": ["tokenizer.min_frequency=-3"],
    "tokenizer.max_train_bytes": ["tokenizer.max_train_bytes=-1"],
    "optimization.max_update": ["optimization.max_update=0"],
    "optimization.max_epoch": ["optimization.max_epoch=-1"],
    "optimization.update_freq": ["optimization.update_freq=0"],
    "optimization.clip_norm": ["optimization.clip_norm=-1"],
    "optimization.projections_only_updates": ["optimization.projections_only_updates=-1"],
    "optimization.validate_interval_updates": ["optimization.validate_interval_updates=-1"],
    "optimization.stop_time_hours": ["optimization.stop_time_hours=-1"],
    "optimization.validate_at_start": ["optimization.validate_at_start=maybe"],
    "trainer.precision": ["trainer.precision=fp8"],
    "trainer.fp16_init_scale": ["trainer.fp16_init_scale=0"],
    "trainer.fp16_scale_window": ["trainer.fp16_scale_window=0"],
    "trainer.fp16_min_scale": ["trainer.fp16_min_scale=0"],
    "trainer.distributed_backend": ["trainer.distributed_backend=deepspeed"],
    "trainer.compile": ["trainer.compile=sometimes"],
    "trainer.peak_tflops": ["trainer.peak_tflops=-1"],
    "trainer.distributed_timeout_minutes": ["trainer.distributed_timeout_minutes=0"],
    "checkpoint.save_dir": ["checkpoint.save_dir=''"],
    "checkpoint.save_interval_updates": ["checkpoint.save_interval_updates=-1"],
    "checkpoint.save_interval_minutes": ["checkpoint.save_interval_minutes=-1"],
    "checkpoint.keep_last": ["checkpoint.keep_last=-1"],
    "checkpoint.keep_best": ["checkpoint.keep_best=maybe"],
    "checkpoint.async_save": ["checkpoint.async_save=maybe"],
    "checkpoint.auto_resume": ["checkpoint.auto_resume=maybe"],
    "checkpoint.restore_file": ["checkpoint.restore_file=' checkpoint_last.pt'"],
    "checkpoint.reset_optimizer": ["checkpoint.reset_optimizer=maybe"],
    "checkpoint.reset_lr_scheduler": ["checkpoint.reset_lr_scheduler=maybe"],
    "checkpoint.reset_dataloader": ["checkpoint.reset_dataloader=maybe"],
    "checkpoint.reset_meters": ["checkpoint.reset_meters=maybe"],
    "checkpoint.patience": ["checkpoint.patience=-1"],
    "checkpoint.best_valid_set": ["checkpoint.best_valid_set=' books'"],
    "checkpoint.init_from": ["checkpoint.init_from=/no/such/checkpoint.pt"],
    "checkpoint.finetune_from": ["checkpoint.finetune_from=/no/such/run"],
    "logging.log_interval": ["logging.log_interval=0"],
    "logging.progress_bar": ["logging.progress_bar=maybe"],
    "logging.tensorboard": ["logging.tensorboard=maybe"],
    "logging.wandb": ["logging.wandb=maybe"],
    "logging.wandb_project": ["logging.wandb_project=''"],
    "logging.run_name": ["logging.run_name=' k64'"],
    "task.name": ["task.name=causal_lm"],
    "task.tokens_per_sample": ["task.tokens_per_sample=1"],
    "task.sample_break_mode": ["task.sample_break_mode=sentence"],
    "task.mask_prob": ["task.mask_prob=0"],
    "task.leave_unmasked_prob": ["task.leave_unmasked_prob=-0.1"],
    "task.random_token_prob": ["task.random_token_prob=0.95"],
    "task.mask_whole_words": ["task.mask_whole_words=maybe"],
    "task.mask_multiple_length": ["task.mask_multiple_length=0"],
    "task.num_classes": ["task=sentence_prediction", "task.num_classes=1"],
    "task.regression": ["task=sentence_prediction", "task.regression=maybe"],
    "task.text_column": ["task=sentence_prediction", "task.text_column=''"],
    "task.pair_column": ["task=sentence_prediction", "task.pair_column=' hypothesis'"],
    "task.label_column": ["task=sentence_prediction", "task.label_column=''"],
    "task.labels": ["task=sentence_prediction", "task.labels=[neg,neg]"],
    "task.truncation": ["task=sentence_prediction", "task.truncation=middle"],
    "task.best_metric": ["task=sentence_prediction", "task.best_metric=pearson"],
    "task.pooler_dropout": ["task=sentence_prediction", "task.pooler_dropout=1.0"],
    "model.name": ["model.name=gpt"],
    "model.layers": ["model.layers=0"],
    "model.layer_norm_eps": ["model.layer_norm_eps=0"],
    "model.embed_dim": ["model.embed_dim=0"],
    "model.ffn_embed_dim": ["model.ffn_embed_dim=0"],
    "model.heads": ["model.heads=0"],
    "model.max_positions": ["model.max_positions=0"],
    "model.attention": ["model.attention=sparse"],
    "model.k": ["model.k=abc"],
    "model.compressed": ["model.compressed=-1"],
    "model.sharing": ["model.sharing=layer_wise"],
    "model.projection": ["model.projection=gaussian"],
    "model.projection_init": ["model.projection_init=uniform"],
    "model.freeze_projections": ["model.freeze_projections=maybe"],
    "model.fairseq_compat": ["model.fairseq_compat=maybe"],
    "model.dropout": ["model.dropout=1.0"],
    "model.attention_dropout": ["model.attention_dropout=-0.1"],
    "model.activation_dropout": ["model.activation_dropout=1.5"],
    "model.normalize_before": ["model.normalize_before=maybe"],
    "model.checkpoint_activations": ["model.checkpoint_activations=maybe"],
    "optim.name": ["optim.name=sgd"],
    "optim.lr": ["optim.lr=0"],
    "optim.betas": ["optim.betas=[0.9]"],
    "optim.eps": ["optim.eps=0"],
    "optim.weight_decay": ["optim.weight_decay=-0.1"],
    "optim.decay_embeddings": ["optim.decay_embeddings=maybe"],
    "optim.fused": ["optim.fused=maybe"],
    "optim.projection_lr_scale": ["optim.projection_lr_scale=0"],
    "lr_scheduler.name": ["lr_scheduler.name=step"],
    "lr_scheduler.warmup_updates": ["lr_scheduler.warmup_updates=-1"],
    "lr_scheduler.total_num_update": ["lr_scheduler.total_num_update=-1"],
    "lr_scheduler.end_learning_rate": ["lr_scheduler.end_learning_rate=-1"],
    "lr_scheduler.power": ["lr_scheduler.power=0"],
}
BAD_PREPROCESS = {
    "output": ["output=' data/books'"],
    "shard_tokens": ["shard_tokens=0"],
    "chunk_bytes": ["chunk_bytes=0"],
    "workers": ["workers=0"],
}  # dataset and tokenizer: the same dataclasses as training's, covered above


def train_fields() -> dict:
    """key -> dataclass field, for every section and every registered task/model/optim/schedule config."""
    found = {f"{key}.{f.name}": f for key, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    for group, registry in REGISTRIES.items():
        for name in registry.names():
            found.update({f"{group}.{f.name}": f for f in dataclasses.fields(registry.get(name).config_class)})
    return found


def test_the_table_covers_every_field():
    assert sorted(set(train_fields()) - set(BAD)) == []
    assert sorted(set(BAD) - set(train_fields())) == []  # no stale rows
    preprocess = {f.name for f in dataclasses.fields(PreprocessConfig)} - {"dataset", "tokenizer"}
    assert preprocess == set(BAD_PREPROCESS)


def assert_names_key(err: UserError, key: str) -> None:
    assert key in str(err) and "\n" not in str(err), str(err)


@pytest.mark.parametrize("key", sorted(BAD))
def test_bad_value_of_every_field_is_one_line_naming_it(key):
    field = train_fields()[key]
    with pytest.raises(UserError) as info:
        if field.type is bool:  # OmegaConf refuses a non-bool while composing; the CLI says so in one line
            compose("train", BAD[key])
        else:
            load_config(compose_config(BAD[key]))
    assert_names_key(info.value, key)


@pytest.mark.parametrize("key", sorted(BAD_PREPROCESS))
def test_bad_preprocess_value_is_one_line_naming_it(key):
    with pytest.raises(UserError) as info:
        load_preprocess_config(compose("preprocess", BAD_PREPROCESS[key]))
    assert_names_key(info.value, key)


def test_a_cuda_device_this_machine_lacks_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="common.device=cuda but CUDA is not available"):
        load_config(compose_config(["common.device=cuda"]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match=r"common.device=cuda:7 but this machine has 2 CUDA device\(s\)"):
        load_config(compose_config(["common.device=cuda:7"]))
    assert load_config(compose_config(["common.device=cuda:1"])).common.device == "cuda:1"
    # a job a launcher sends to another machine is not judged by this one's devices
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert load_config(compose_config(["common.device=cuda"]), check_devices=False).common.device == "cuda"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optimization.max_updates=5"], "unknown key optimization.max_updates; did you mean max_update?"),
        (["+optimization.max_updates=5"], "unknown key optimization.max_updates; did you mean max_update?"),
        (["model.kk=32"], "unknown key model.kk; did you mean k?"),
        (["modell=linformer_tiny"], "unknown key modell; did you mean model?"),
        (["+modell=linformer_tiny"], "unknown key modell; did you mean model?"),
    ],
)
def test_misspelled_keys_suggest_the_closest_one(overrides, message):
    with pytest.raises(UserError) as info:
        load_config(compose("train", overrides))
    assert str(info.value) == message
