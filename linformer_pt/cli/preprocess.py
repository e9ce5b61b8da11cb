"""`linformer-preprocess` and `linformer-train-tokenizer`: corpora -> tokenizer -> memory-mapped token shards.

Both compose configs/preprocess.yaml (the same dataset and tokenizer options as training). The shard folder
holds the tokenizer and a manifest (tokenizer hash, source files with sizes and hashes, counts, config); a rerun
with the same inputs reuses it, a changed input rebuilds it, and an interrupted run is never used.
"""
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Dict

import hydra
from omegaconf import DictConfig
from tqdm import tqdm

from linformer_pt.cli.common import check_command_line, check_group_options, one_line_errors
from linformer_pt.cli.console import tee_console
from linformer_pt.config import PreprocessConfig, load_preprocess_config
from linformer_pt.data.binarize import write_shards
from linformer_pt.data.cache import build_folder, cached_dir, check_replaceable, key_of, sha256_file
from linformer_pt.data.corpus import resolve_sources
from linformer_pt.errors import UserError
from linformer_pt.data.tokenizer import (
    TEXT_ENCODING, TOKENIZER_FILE, cached_tokenizer, first_bytes, load_tokenizer, special_ids, train_tokenizer,
)  # fmt: skip

GROUPS = ("dataset",)


def preprocess(cfg: PreprocessConfig) -> Path:
    """Build (or reuse) the shard folder for cfg and return its path."""
    if cfg.output:  # before any work: a folder of the user's own files is refused, never replaced
        check_replaceable(Path(cfg.output).expanduser(), "output=")
    sources = resolve_sources(cfg.dataset)
    tok = cfg.tokenizer
    tokenizer_path = (
        Path(tok.path).expanduser()
        if tok.path
        else cached_tokenizer(cfg.dataset.cache_dir, sources["train"], tok.vocab_size, tok.min_frequency,
                              tok.max_train_bytes)
    )
    tokenizer = load_tokenizer(tokenizer_path)
    spec = {
        "tokenizer_sha256": sha256_file(tokenizer_path),
        "encoding": TEXT_ENCODING,  # shards of an older encoding are rebuilt, not reused
        "sources": {split: source.spec for split, source in sources.items()},
        "shard_tokens": cfg.shard_tokens,
    }

    def build(folder: Path) -> Dict:
        shutil.copy(tokenizer_path, folder / TOKENIZER_FILE)
        stats = {}
        for split, source in sources.items():
            (folder / split).mkdir()
            with tqdm(total=source.num_bytes, unit="B", unit_scale=True, desc=f"tokenize {split}") as bar:
                stats[split] = write_shards(
                    source.documents(), tokenizer, special_ids(tokenizer)["eos"], folder / split, cfg.shard_tokens, bar,
                    cfg.chunk_bytes, cfg.workers,
                )
        return {**spec, "splits": list(sources), "stats": stats, "vocab_size": tokenizer.get_vocab_size(),
                "config": asdict(cfg)}  # fmt: skip

    if cfg.output:
        return build_folder(Path(cfg.output).expanduser(), spec, build)
    return cached_dir(cfg.dataset.cache_dir, "preprocessed", spec, build)


@hydra.main(version_base="1.3", config_path="pkg://linformer_pt.configs", config_name="preprocess")
def preprocess_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    log = Path(HydraConfig.get().runtime.output_dir) / "preprocess.log"
    with tee_console(log), one_line_errors("linformer-preprocess"):
        folder = preprocess(load_preprocess_config(cfg))
        print(f"token shards: {folder}\ntrain with: linformer-train dataset=shards dataset.path={folder}")


def train_tokenizer_file(cfg: PreprocessConfig, default_dir: Path) -> Path:
    """Train a byte-level BPE on the training source and save it as tokenizer.json (never over a tokenizer path)."""
    if cfg.tokenizer.path:
        raise UserError("tokenizer.path names an existing tokenizer; to train a new one, give output=<file> instead")
    source = resolve_sources(cfg.dataset)["train"]
    output = Path(cfg.output).expanduser() if cfg.output else default_dir / TOKENIZER_FILE
    tok = cfg.tokenizer
    tokenizer = train_tokenizer(first_bytes(source.documents(), tok.max_train_bytes), tok.vocab_size, tok.min_frequency)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{key_of(source.spec)}.tmp")
    tokenizer.save(str(tmp))
    tmp.replace(output)  # whole file or nothing: an existing tokenizer is only replaced by a complete one
    return output


@hydra.main(version_base="1.3", config_path="pkg://linformer_pt.configs", config_name="preprocess")
def train_tokenizer_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with tee_console(run_dir / "train_tokenizer.log"), one_line_errors("linformer-train-tokenizer"):
        path = train_tokenizer_file(load_preprocess_config(cfg), run_dir)
        vocab = load_tokenizer(path).get_vocab_size()
        print(f"tokenizer ({vocab} tokens): {path}\nuse it with: tokenizer.path={path}")


def validate(cfg: DictConfig, remote: bool) -> None:
    """Both commands check their whole config before Hydra creates the run folder."""
    load_preprocess_config(cfg)


def main() -> None:
    check_group_options("linformer-preprocess", GROUPS)
    check_command_line("linformer-preprocess", "preprocess", sys.argv[1:], validate)
    preprocess_main()


def main_tokenizer() -> None:
    check_group_options("linformer-train-tokenizer", GROUPS)
    check_command_line("linformer-train-tokenizer", "preprocess", sys.argv[1:], validate)
    train_tokenizer_main()
