"""Shared fixtures: composed configs and one data cache (corpus, tokenizer, tokens) for the whole session."""
import os
from pathlib import Path
from typing import Dict, List

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hydra import compose, initialize_config_module  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import linformer_pt.models  # noqa: E402,F401
import linformer_pt.tasks  # noqa: E402,F401
import linformer_pt.training  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data_cache")


def compose_config(overrides: List[str]) -> DictConfig:
    """Compose configs/train.yaml the way linformer-train does, with `overrides`."""
    with initialize_config_module(config_module="linformer_pt.configs", version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.fixture(scope="session")
def corpus_files(cache_dir) -> dict:
    """The embedded corpus's train/valid text files (built once per session)."""
    from linformer_pt.data.default_corpus import build_default_corpus

    return build_default_corpus(str(cache_dir))


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory, corpus_files) -> Dict[str, Path]:
    """A slice of the embedded corpus: about 6 updates of 16 x 64 tokens per epoch, so a 20-update run crosses
    epoch boundaries (the resume tests)."""
    folder = tmp_path_factory.mktemp("small_corpus")
    text = Path(corpus_files["train"]).read_text(encoding="utf-8")
    (folder / "train.txt").write_text(text[:12_000], encoding="utf-8")
    (folder / "valid.txt").write_text(text[-6_000:], encoding="utf-8")
    return {"train": folder / "train.txt", "valid": folder / "valid.txt"}


@pytest.fixture
def small_run(small_corpus, cache_dir) -> List[str]:
    """A quiet seconds-long run on small_corpus that logs every update (what the resume tests compare)."""
    return [
        "experiment=smoke", "dataset=text", f"dataset.train_files=[{small_corpus['train']}]",
        f"dataset.valid_files=[{small_corpus['valid']}]", f"dataset.cache_dir={cache_dir}", "tokenizer.vocab_size=500",
        "logging.progress_bar=false", "logging.tensorboard=false", "logging.log_interval=1", "common.threads=1",
    ]  # fmt: skip


@pytest.fixture
def tiny_overrides(cache_dir) -> List[str]:
    """Overrides for a seconds-long run on the embedded corpus, quiet and cached."""
    return [
        "experiment=smoke",
        f"dataset.cache_dir={cache_dir}",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
    ]



def build_trainer(overrides: List[str], output_dir: Path):
    """A Trainer for the composed config, built as linformer-train builds it (single process)."""
    import torch

    from linformer_pt.cli.train import build_model
    from linformer_pt.config import load_config
    from linformer_pt.registry import TASKS
    from linformer_pt.training.trainer import Trainer

    cfg = load_config(compose_config(overrides))
    torch.manual_seed(cfg.common.seed)
    task = TASKS.get(cfg.task.name).cls.setup(cfg)
    cfg, model = build_model(cfg, task)
    return Trainer(cfg, task, model, output_dir)


def leave_without_teardown() -> None:
    """End a spawned gloo worker whose checks all passed without the interpreter's teardown.

    With this torch build, a gloo process sometimes aborts in C++ teardown at interpreter exit ("terminate called
    without an active exception", SIGABRT or SIGSEGV with no Python frame; about 1 exit in 5 on the 2-core CI
    machine), after destroy_process_group and all the test's checks. os._exit skips that teardown; anything the
    worker reports went through its queue (a pipe, written synchronously) before this point.
    """
    os._exit(0)
