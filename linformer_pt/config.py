"""Top-level training config: the sections every run has, and its validation after Hydra composition.

Polymorphic sections (model, task, optim, lr_scheduler) are chosen by `name` through the registries.
"""
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from linformer_pt.errors import UserError


def check(condition: bool, message: str) -> None:
    """Raise a UserError with `message` unless `condition` holds."""
    if not condition:
        raise UserError(message)


def check_choice(key: str, value: Any, allowed: List[str]) -> None:
    """Raise a UserError naming `key`'s bad `value` and the allowed values."""
    check(value in allowed, f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


@dataclass
class CommonConfig:
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default

    def __post_init__(self) -> None:
        check(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            f"common.device={self.device!r} is not allowed; choose auto, cpu, cuda or cuda:N",
        )
        check(self.threads >= 0, f"common.threads={self.threads} must be >= 0")


@dataclass
class DatasetConfig:
    name: str = "default"  # default (embedded corpus) | text (your files) | hf (a `datasets` dataset) | shards
    train_files: List[str] = field(default_factory=list)  # files, folders or globs: .txt .jsonl .csv .tsv .parquet
    valid_files: List[str] = field(default_factory=list)
    text_field: str = "text"  # the field holding the text in JSONL/CSV/parquet/hf records
    encoding_errors: str = "strict"  # strict: invalid UTF-8 stops with file and byte offset | replace
    hf_name: str = ""  # a hub name (online) or a local dataset folder
    hf_config: str = ""
    hf_train_split: str = "train"
    hf_valid_split: str = "validation"  # "" holds out valid_fraction of train
    path: str = ""  # name=shards: a folder made by linformer-preprocess
    valid_fraction: float = 0.02  # held out from training documents when there is no validation source
    streaming: bool = False  # name=text: tokenize on the fly through `datasets` streaming (no preprocessing pass)
    shuffle_buffer: int = 0  # streaming: shuffle training documents within a buffer of this size (0: in order)
    cache_dir: str = "data/cache"
    batch_size: int = 32
    num_workers: int = 0

    def __post_init__(self) -> None:
        check_choice("dataset.name", self.name, ["default", "text", "hf", "shards"])
        check(
            self.name != "text" or len(self.train_files) > 0,
            "dataset=text needs dataset.train_files=[path,...] (files, folders or globs)",
        )
        check(self.name != "hf" or bool(self.hf_name), "dataset=hf needs dataset.hf_name=<hub name or local folder>")
        check(self.name != "shards" or bool(self.path), "dataset=shards needs dataset.path=<linformer-preprocess folder>")
        check_choice("dataset.encoding_errors", self.encoding_errors, ["strict", "replace"])
        check(
            not self.streaming or (self.name == "text" and len(self.valid_files) > 0),
            "dataset.streaming=true needs dataset=text with dataset.valid_files (a stream has no held-out split)",
        )
        check(self.shuffle_buffer >= 0, f"dataset.shuffle_buffer={self.shuffle_buffer} must be >= 0")
        check(0.0 < self.valid_fraction < 0.5, f"dataset.valid_fraction={self.valid_fraction} must be in (0, 0.5)")
        check(self.batch_size > 0, f"dataset.batch_size={self.batch_size} must be > 0")
        check(self.num_workers >= 0, f"dataset.num_workers={self.num_workers} must be >= 0")


@dataclass
class TokenizerConfig:
    path: Optional[str] = None  # an existing tokenizer.json; None trains one on the training corpus
    vocab_size: int = 8192
    min_frequency: int = 2

    def __post_init__(self) -> None:
        check(self.vocab_size >= 300, f"tokenizer.vocab_size={self.vocab_size} must be >= 300 (256 bytes + specials)")


@dataclass
class OptimizationConfig:
    max_update: int = 300
    max_epoch: int = 0  # 0: no limit
    update_freq: int = 1  # micro-batches accumulated per update
    clip_norm: float = 1.0  # 0 disables clipping (the norm is still logged)
    validate_interval_updates: int = 100  # 0: validate only at the end
    stop_time_hours: float = 0.0  # wall-clock budget; 0: none

    def __post_init__(self) -> None:
        check(self.max_update > 0, f"optimization.max_update={self.max_update} must be > 0")
        check(self.stop_time_hours >= 0, f"optimization.stop_time_hours={self.stop_time_hours} must be >= 0")
        check(self.max_epoch >= 0, f"optimization.max_epoch={self.max_epoch} must be >= 0")
        check(self.update_freq >= 1, f"optimization.update_freq={self.update_freq} must be >= 1")
        check(self.clip_norm >= 0, f"optimization.clip_norm={self.clip_norm} must be >= 0")


@dataclass
class TrainerConfig:
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 adds dynamic loss scaling)
    fp16_init_scale: float = 128.0
    fp16_scale_window: int = 256  # clean updates before the loss scale doubles
    fp16_min_scale: float = 1e-4  # below this the run stops: it keeps overflowing
    distributed_backend: str = "ddp"  # ddp | fsdp (FSDP2: parameters, gradients and optimizer state sharded)
    compile: bool = False  # torch.compile the model (opt-in: first steps are slow)
    peak_tflops: float = 0.0  # the device's peak, for MFU in the logs; 0: known GPUs are looked up, else no MFU

    def __post_init__(self) -> None:
        check_choice("trainer.precision", self.precision, ["fp32", "bf16", "fp16"])
        check_choice("trainer.distributed_backend", self.distributed_backend, ["ddp", "fsdp"])
        check(self.fp16_init_scale > 0, f"trainer.fp16_init_scale={self.fp16_init_scale} must be > 0")
        check(self.fp16_scale_window > 0, f"trainer.fp16_scale_window={self.fp16_scale_window} must be > 0")
        check(self.peak_tflops >= 0, f"trainer.peak_tflops={self.peak_tflops} must be >= 0")


@dataclass
class CheckpointConfig:
    save_dir: str = "checkpoints"  # relative to the run's output folder
    save_interval_updates: int = 0  # also write checkpoint_<update>.pt every N updates; 0: off
    save_interval_minutes: float = 30.0  # write checkpoint_last.pt at least this often; 0: off
    keep_last: int = 2  # numbered checkpoints kept (older ones removed); 0: keep all
    keep_best: bool = True  # write checkpoint_best.pt at the lowest validation loss
    async_save: bool = True  # write in a background thread (training waits only for the copy to CPU memory)
    auto_resume: bool = True  # continue from <save_dir>/checkpoint_last.pt of the run folder when it exists
    restore_file: Optional[str] = None  # resume from this checkpoint (full state)
    reset_optimizer: bool = False  # resume with a fresh optimizer state
    reset_lr_scheduler: bool = False  # resume with the schedule's configured base learning rates
    reset_dataloader: bool = False  # resume at the start of the data (allows another global batch)
    reset_meters: bool = False  # forget the best validation loss
    init_from: Optional[str] = None  # start from these weights only (resized if model.max_positions differs)

    def __post_init__(self) -> None:
        check(bool(self.save_dir), "checkpoint.save_dir must not be empty")
        check(self.save_interval_updates >= 0, f"checkpoint.save_interval_updates={self.save_interval_updates} must be >= 0")
        check(self.save_interval_minutes >= 0, f"checkpoint.save_interval_minutes={self.save_interval_minutes} must be >= 0")
        check(self.keep_last >= 0, f"checkpoint.keep_last={self.keep_last} must be >= 0")
        check(
            not (self.restore_file and self.init_from),
            "checkpoint.restore_file (resume a run) and checkpoint.init_from (weights only) exclude each other",
        )


@dataclass
class LoggingConfig:
    log_interval: int = 10  # updates between JSONL train records
    progress_bar: bool = True
    tensorboard: bool = True  # scalars under <output>/tensorboard
    wandb: bool = False  # needs `pip install wandb`; WANDB_MODE=offline works without a network
    wandb_project: str = "linformer-pt"


@dataclass
class TrainConfig:
    common: CommonConfig = field(default_factory=CommonConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    task: Any = MISSING
    model: Any = MISSING
    optim: Any = MISSING
    lr_scheduler: Any = MISSING
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


ConfigStore.instance().store(name="train_schema", node=TrainConfig)


@dataclass
class PreprocessConfig:
    """linformer-preprocess and linformer-train-tokenizer (configs/preprocess.yaml)."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    output: str = ""  # shard folder (default: <cache_dir>/preprocessed-<hash>) | tokenizer.json path
    shard_tokens: int = 1 << 27  # tokens per shard file

    def __post_init__(self) -> None:
        check(self.shard_tokens > 0, f"shard_tokens={self.shard_tokens} must be > 0")


ConfigStore.instance().store(name="preprocess_schema", node=PreprocessConfig)


def load_preprocess_config(cfg: DictConfig) -> PreprocessConfig:
    """A validated PreprocessConfig from a composed DictConfig."""
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    try:
        return PreprocessConfig(
            DatasetConfig(**plain["dataset"]), TokenizerConfig(**plain["tokenizer"]), plain["output"],
            plain["shard_tokens"],
        )  # fmt: skip
    except TypeError as err:
        raise UserError(str(err)) from None


def load_config(cfg: DictConfig) -> TrainConfig:
    """Turn a composed DictConfig into a validated TrainConfig of dataclasses (UserError on bad values)."""
    from linformer_pt.registry import LR_SCHEDULERS, MODELS, OPTIMIZERS, TASKS

    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    sections = {
        "common": CommonConfig,
        "dataset": DatasetConfig,
        "tokenizer": TokenizerConfig,
        "optimization": OptimizationConfig,
        "trainer": TrainerConfig,
        "checkpoint": CheckpointConfig,
        "logging": LoggingConfig,
    }
    out = {}
    for key, cls in sections.items():
        try:
            out[key] = cls(**plain.get(key, {}))
        except TypeError as err:
            raise UserError(f"{key}: {err}") from None
    for key, registry in [("task", TASKS), ("model", MODELS), ("optim", OPTIMIZERS), ("lr_scheduler", LR_SCHEDULERS)]:
        out[key] = registry.config(plain[key])
    return TrainConfig(**out)
