"""Top-level training config: the sections every run has, and its validation after Hydra composition.

Polymorphic sections (model, task, optim, lr_scheduler) are chosen by `name` through the registries.
"""
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from linformer_pt.errors import UserError
from linformer_pt.registry import build_dataclass, unknown_key


def check(condition: bool, message: str) -> None:
    """Raise a UserError with `message` unless `condition` holds."""
    if not condition:
        raise UserError(message)


def check_choice(key: str, value: Any, allowed: List[str]) -> None:
    """Raise a UserError naming `key`'s bad `value` and the allowed values."""
    check(value in allowed, f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def check_text(key: str, value: Any, allow_empty: bool = False) -> None:
    """A name or path: a string without surrounding whitespace (a quoting slip), non-empty unless allowed."""
    check(isinstance(value, str), f"{key}={value!r} must be a string")
    check(value == value.strip(), f"{key}={value!r} has leading or trailing whitespace")
    check(allow_empty or bool(value), f"{key} must not be empty")


def check_texts(key: str, values: Any) -> None:
    """A list of names or paths, each a non-empty string without surrounding whitespace."""
    check(isinstance(values, list), f"{key}={values!r} must be a list, e.g. {key}=[a.txt,b.txt]")
    for value in values:
        check_text(key, value)


def check_device(key: str, device: str) -> None:
    """Say in one line when a requested CUDA device does not exist here (torch would fail deep in the run)."""
    import torch

    if not device.startswith("cuda"):
        return
    check(torch.cuda.is_available(), f"{key}={device} but CUDA is not available on this machine; use auto or cpu")
    index = int(device.split(":")[1]) if ":" in device else 0
    count = torch.cuda.device_count()
    check(index < count, f"{key}={device} but this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")


@dataclass
class CommonConfig:
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default

    def __post_init__(self) -> None:
        check(0 <= self.seed < 2**32, f"common.seed={self.seed} must be in [0, 2**32)")  # numpy's seed range
        check(
            self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", str(self.device)) is not None,
            f"common.device={self.device!r} is not allowed; choose auto, cpu, cuda or cuda:N",
        )
        check(self.threads >= 0, f"common.threads={self.threads} must be >= 0")


def _path_list(value: Any) -> Any:
    """A single path given without brackets as a one-item list; numbers as strings, as List[str] would make them."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, list):
        return [str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in value]
    return value  # anything else is reported by the checks below


@dataclass
class DatasetConfig:
    name: str = "default"  # default (embedded corpus) | text (your files) | hf (a `datasets` dataset) | shards | mixture
    # Files, folders or globs (.txt .jsonl .csv .tsv .parquet ...); one path alone may be given without brackets.
    # Typed Any, not List[str]: OmegaConf would reject `dataset.train_files=books.txt` before __post_init__ runs.
    train_files: Any = field(default_factory=list)
    valid_files: Any = field(default_factory=list)
    file_glob: str = "*"  # folders give the files whose name matches it (and has a supported suffix)
    text_field: str = "text"  # the field holding the text in JSONL/CSV/parquet/hf records
    encoding_errors: str = "strict"  # strict: invalid UTF-8 stops with file and byte offset | replace
    hf_name: str = ""  # a hub name (online) or a local dataset folder
    hf_config: str = ""
    hf_train_split: str = "train"
    hf_valid_split: str = "validation"  # "" holds out valid_fraction of train
    path: str = ""  # name=shards: a folder made by linformer-preprocess
    valid_fraction: float = 0.02  # held out from training documents when there is no validation source
    streaming: bool = False  # name=text, or hf from a save_to_disk folder: tokenize on the fly (no preprocessing pass)
    shuffle_buffer: int = 0  # streaming: shuffle training documents within a buffer of this size (0: in order)
    cache_dir: str = "data/cache"
    batch_size: int = 32
    max_tokens: int = 0  # 0: fixed dataset.batch_size batches; >0: token-budget batches (data/buckets.py)
    num_workers: int = 0
    # Validate on a fixed, seeded subset of about this many tokens (seconds on a CPU); 0: the whole valid set.
    max_valid_tokens: int = 100_000
    # name=mixture: named training sources [{name, files | hf_name (+ hf_split) | path, weight}] (data/mixture_spec.py)
    sources: Any = field(default_factory=list)
    temperature: Optional[float] = None  # sources without weights: shares by size^T (1: by size, 0: uniform)
    # Named validation sets [{name, files | hf_name | path, max_valid_tokens}], each scored and logged on its own;
    # []: dataset.valid_files (one set), or for a mixture each source's held-out part (named after the source).
    valid_sets: Any = field(default_factory=list)

    def __post_init__(self) -> None:
        from linformer_pt.data.mixture_spec import SOURCE_KEYS, VALID_KEYS, check_weights, parse_specs

        self.train_files, self.valid_files = _path_list(self.train_files), _path_list(self.valid_files)
        check_choice("dataset.name", self.name, ["default", "text", "hf", "shards", "mixture"])
        sources = parse_specs(self.sources, "dataset.sources", SOURCE_KEYS)
        check(self.name != "mixture" or len(sources) > 0,
              "dataset=mixture needs dataset.sources=[{name: books, files: [...], weight: 1}, ...]")  # fmt: skip
        check(self.name == "mixture" or not sources,
              f"dataset.sources is read by dataset=mixture only (this run has dataset.name={self.name})")  # fmt: skip
        check_weights(sources, self.temperature)
        parse_specs(self.valid_sets, "dataset.valid_sets", VALID_KEYS)
        check(not (self.valid_sets and self.valid_files),
              "give dataset.valid_sets (named sets) or dataset.valid_files (one set), not both")  # fmt: skip
        check(not (self.name == "mixture" and self.max_tokens),
              "dataset.max_tokens batches one corpus by length; a mixture draws dataset.batch_size sequences per "
              "micro-batch: set dataset.max_tokens=0")  # fmt: skip
        check(not (self.name == "mixture" and self.streaming) or all(s.weight for s in sources),
              "dataset=mixture with dataset.streaming=true needs a weight for every source (a stream's size is "
              "unknown up front, so dataset.temperature cannot weigh it)")  # fmt: skip
        check(not (self.name == "mixture" and self.streaming) or all(s.files or s.hf_name for s in sources),
              "dataset=mixture with dataset.streaming=true streams files or `datasets` folders; a source with a "
              "path (token shards) is read from its shards without streaming")  # fmt: skip
        check(
            isinstance(self.file_glob, str) and bool(self.file_glob) and "/" not in self.file_glob,
            f"dataset.file_glob={self.file_glob!r} must be a file name pattern such as *.txt (no folders)",
        )
        check(
            self.name != "text" or len(self.train_files) > 0,
            "dataset=text needs dataset.train_files=[path,...] (files, folders or globs)",
        )
        check(self.name != "hf" or bool(self.hf_name), "dataset=hf needs dataset.hf_name=<hub name or local folder>")
        check(self.name != "shards" or bool(self.path), "dataset=shards needs dataset.path=<linformer-preprocess folder>")
        check_choice("dataset.encoding_errors", self.encoding_errors, ["strict", "replace"])
        check_texts("dataset.train_files", self.train_files)
        check_texts("dataset.valid_files", self.valid_files)
        check_text("dataset.text_field", self.text_field)
        check_text("dataset.hf_name", self.hf_name, allow_empty=True)
        check_text("dataset.hf_config", self.hf_config, allow_empty=True)
        check_text("dataset.hf_train_split", self.hf_train_split)
        check_text("dataset.hf_valid_split", self.hf_valid_split, allow_empty=True)  # "": hold out valid_fraction
        check_text("dataset.path", self.path, allow_empty=True)
        check_text("dataset.cache_dir", self.cache_dir)
        check(
            not self.streaming
            or (self.name in ("text", "hf", "mixture") and (len(self.valid_files) > 0 or bool(self.valid_sets)))
            or (self.name == "hf" and bool(self.hf_valid_split)),
            "dataset.streaming=true needs dataset=text or mixture with dataset.valid_files or valid_sets, or "
            "dataset=hf with dataset.hf_valid_split or dataset.valid_files (a stream has no held-out split)",
        )
        check(self.shuffle_buffer >= 0, f"dataset.shuffle_buffer={self.shuffle_buffer} must be >= 0")
        check(0.0 < self.valid_fraction < 0.5, f"dataset.valid_fraction={self.valid_fraction} must be in (0, 0.5)")
        check(self.batch_size > 0, f"dataset.batch_size={self.batch_size} must be > 0")
        check(self.max_tokens >= 0, f"dataset.max_tokens={self.max_tokens} must be >= 0 (0: fixed batch_size batches)")
        check(not (self.streaming and self.max_tokens),  # a stream has no item lengths to sort up front
              f"dataset.max_tokens={self.max_tokens} needs dataset.streaming=false; set dataset.max_tokens=0 to stream")
        check(self.num_workers >= 0, f"dataset.num_workers={self.num_workers} must be >= 0")
        check(self.max_valid_tokens >= 0, f"dataset.max_valid_tokens={self.max_valid_tokens} must be >= 0 (0: all)")


@dataclass
class TokenizerConfig:
    path: Optional[str] = None  # an existing tokenizer.json; None trains one on the training corpus
    vocab_size: int = 8192
    min_frequency: int = 2
    max_train_bytes: int = 0  # train on the first this many bytes of training text; 0: all of it

    def __post_init__(self) -> None:
        check(self.max_train_bytes >= 0, f"tokenizer.max_train_bytes={self.max_train_bytes} must be >= 0 (0: all)")
        check(self.vocab_size >= 300, f"tokenizer.vocab_size={self.vocab_size} must be >= 300 (256 bytes + specials)")
        check(self.min_frequency >= 0, f"tokenizer.min_frequency={self.min_frequency} must be >= 0")
        if self.path is not None:
            check_text("tokenizer.path", self.path)
            check(Path(self.path).expanduser().is_file(), f"tokenizer.path: no such file: {self.path}")


@dataclass
class OptimizationConfig:
    max_update: int = 300
    max_epoch: int = 0  # 0: no limit
    update_freq: int = 1  # micro-batches accumulated per update
    clip_norm: float = 1.0  # 0 disables clipping (the norm is still logged)
    validate_interval_updates: int = 100  # 0: validate only at the end
    stop_time_hours: float = 0.0  # wall-clock budget; 0: none
    validate_at_start: bool = True  # a fresh run validates before its first update (a resumed one never does)
    # The first N updates train the sequence projections (E/F, conv taps) only: an imported encoder swapped to
    # Linformer keeps its weights while its new E/F adapt to them.
    projections_only_updates: int = 0

    def __post_init__(self) -> None:
        check(self.max_update > 0, f"optimization.max_update={self.max_update} must be > 0")
        check(self.stop_time_hours >= 0, f"optimization.stop_time_hours={self.stop_time_hours} must be >= 0")
        check(self.max_epoch >= 0, f"optimization.max_epoch={self.max_epoch} must be >= 0")
        check(self.update_freq >= 1, f"optimization.update_freq={self.update_freq} must be >= 1")
        check(self.clip_norm >= 0, f"optimization.clip_norm={self.clip_norm} must be >= 0")
        check(self.projections_only_updates >= 0,
              f"optimization.projections_only_updates={self.projections_only_updates} must be >= 0")  # fmt: skip
        check(
            self.validate_interval_updates >= 0,
            f"optimization.validate_interval_updates={self.validate_interval_updates} must be >= 0",
        )


@dataclass
class TrainerConfig:
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 adds dynamic loss scaling)
    fp16_init_scale: float = 128.0
    fp16_scale_window: int = 256  # clean updates before the loss scale doubles
    fp16_min_scale: float = 1e-4  # below this the run stops: it keeps overflowing
    distributed_backend: str = "ddp"  # ddp | fsdp (FSDP2: parameters, gradients and optimizer state sharded)
    compile: bool = False  # torch.compile the model (opt-in: first steps are slow)
    peak_tflops: float = 0.0  # the device's peak, for MFU in the logs; 0: known GPUs are looked up, else no MFU
    # Several processes: a collective (or rank 0's first data preparation) waiting longer than this for another
    # process fails the run with one line instead of hanging; torchrun --max-restarts then resumes it.
    distributed_timeout_minutes: float = 30.0

    def __post_init__(self) -> None:
        check_choice("trainer.precision", self.precision, ["fp32", "bf16", "fp16"])
        check_choice("trainer.distributed_backend", self.distributed_backend, ["ddp", "fsdp"])
        check(self.fp16_init_scale > 0, f"trainer.fp16_init_scale={self.fp16_init_scale} must be > 0")
        check(self.fp16_scale_window > 0, f"trainer.fp16_scale_window={self.fp16_scale_window} must be > 0")
        check(
            0 < self.fp16_min_scale <= self.fp16_init_scale,
            f"trainer.fp16_min_scale={self.fp16_min_scale} must be in (0, trainer.fp16_init_scale={self.fp16_init_scale}]",
        )
        check(self.peak_tflops >= 0, f"trainer.peak_tflops={self.peak_tflops} must be >= 0")
        check(self.distributed_timeout_minutes > 0,
              f"trainer.distributed_timeout_minutes={self.distributed_timeout_minutes} must be > 0")  # fmt: skip


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
    reset_meters: bool = False  # forget the best validation, tokens seen, training time and rates: a new count
    patience: int = 0  # stop after this many validations in a row without a new best; 0: never stop early
    best_valid_set: str = ""  # which of dataset.valid_sets checkpoint_best and patience follow; "": the first
    init_from: Optional[str] = None  # start from these weights only (resized if model.max_positions differs)
    # sentence_prediction: a pretraining run folder, checkpoint or export; its encoder (LM head dropped) and tokenizer
    finetune_from: Optional[str] = None

    def __post_init__(self) -> None:
        check_text("checkpoint.save_dir", self.save_dir)
        check_text("checkpoint.best_valid_set", self.best_valid_set, allow_empty=True)  # checked against the sets later
        for key in ("restore_file", "init_from", "finetune_from"):  # restore_file is looked up at resume time; "" means none
            if getattr(self, key) is not None:
                check_text(f"checkpoint.{key}", getattr(self, key), allow_empty=True)
        if self.init_from:  # a checkpoint file, or an export folder (linformer-export / linformer-import writes one)
            init_from = Path(self.init_from).expanduser()
            check(init_from.is_file() or (init_from / "config.json").is_file(),
                  f"checkpoint.init_from: no such file: {self.init_from} (give a checkpoint .pt or an export folder)")
        if self.finetune_from:
            check(
                Path(self.finetune_from).expanduser().exists(),
                f"checkpoint.finetune_from: no such run folder, checkpoint or export: {self.finetune_from}",
            )
            check(not self.init_from, "checkpoint.finetune_from and checkpoint.init_from exclude each other; give one")
        check(self.save_interval_updates >= 0, f"checkpoint.save_interval_updates={self.save_interval_updates} must be >= 0")
        check(self.save_interval_minutes >= 0, f"checkpoint.save_interval_minutes={self.save_interval_minutes} must be >= 0")
        check(self.keep_last >= 0, f"checkpoint.keep_last={self.keep_last} must be >= 0")
        check(self.patience >= 0, f"checkpoint.patience={self.patience} must be >= 0 (0: no early stopping)")
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
    run_name: str = ""  # the run's label in summary.json and sweep reports; "": the overrides that made it

    def __post_init__(self) -> None:
        check(self.log_interval > 0, f"logging.log_interval={self.log_interval} must be > 0")
        check_text("logging.wandb_project", self.wandb_project)
        check_text("logging.run_name", self.run_name, allow_empty=True)


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
    chunk_bytes: int = 1 << 22  # text encoded at a time: peak memory grows with this, not with the corpus
    workers: int = 1  # processes encoding chunks in parallel (the output is the same for any number)

    def __post_init__(self) -> None:
        check(self.shard_tokens > 0, f"shard_tokens={self.shard_tokens} must be > 0")
        check(self.chunk_bytes > 0, f"chunk_bytes={self.chunk_bytes} must be > 0")
        check(self.workers >= 1, f"workers={self.workers} must be >= 1")
        check_text("output", self.output, allow_empty=True)


ConfigStore.instance().store(name="preprocess_schema", node=PreprocessConfig)


def load_preprocess_config(cfg: DictConfig) -> PreprocessConfig:
    """A validated PreprocessConfig from a composed DictConfig."""
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    check_known_keys(plain, PreprocessConfig)
    return PreprocessConfig(
        build_dataclass("dataset", DatasetConfig, plain["dataset"]),
        build_dataclass("tokenizer", TokenizerConfig, plain["tokenizer"]), plain["output"], plain["shard_tokens"],
        plain["chunk_bytes"], plain["workers"],
    )  # fmt: skip


def check_known_keys(plain: dict, cls: type) -> None:
    """A top-level key the schema lacks (`+modell=...`) is a misspelling, not something to ignore."""
    known = [f.name for f in fields(cls)]
    for key in plain:
        if key not in known:
            raise UserError(unknown_key(key, known))


def load_config(cfg: DictConfig, check_devices: bool = True) -> TrainConfig:
    """Turn a composed DictConfig into a validated TrainConfig of dataclasses (UserError on bad values).

    check_devices=False skips asking torch whether common.device exists here (jobs sent to another machine).
    """
    from linformer_pt.registry import LR_SCHEDULERS, MODELS, OPTIMIZERS, TASKS

    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    check_known_keys(plain, TrainConfig)
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
        out[key] = build_dataclass(key, cls, plain.get(key, {}))
    if check_devices:
        check_device("common.device", out["common"].device)
    for key, registry in [("task", TASKS), ("model", MODELS), ("optim", OPTIMIZERS), ("lr_scheduler", LR_SCHEDULERS)]:
        out[key] = registry.config(plain[key])
    return TrainConfig(**out)
