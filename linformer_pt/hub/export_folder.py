"""Trained models as folders: model.safetensors (weights only), config.json and tokenizer.json.

LinformerForMaskedLM.save_pretrained writes that layout and from_pretrained reads it back without unpickling
anything; the folder also carries what transformers' custom-model mechanism needs (linformer_pt/hub/transformers_code/).
"""
import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from tokenizers import Tokenizer

from linformer_pt.data.cache import sha256_file
from linformer_pt.data.tokenizer import (
    MASK_TOKEN, TOKENIZER_FILE, load_tokenizer, special_ids, special_token_set, special_tokens,
)  # fmt: skip
from linformer_pt.errors import UserError
from linformer_pt.models.linformer_roberta import LinformerRoberta, LinformerRobertaConfig
from linformer_pt.models.resize import resize_for
from linformer_pt.registry import MODELS
from linformer_pt.staged_folder import staged_folder
from linformer_pt.training.checkpoint import CHECKPOINT_BEST, CHECKPOINT_LAST, load_checkpoint

FORMAT = "linformer-pt"
FORMAT_VERSION = 1  # bump when config.json or the weight names change meaning
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"
HF_MODULE = "modeling_linformer.py"  # written beside the weights (transformers_code/bundle.py) for trust_remote_code
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
PathLike = Union[str, Path]


def resolve_checkpoint(path: PathLike, last: bool = False) -> Path:
    """A run folder -> its checkpoints/checkpoint_best.pt (checkpoint_last.pt with last=True); a file stays itself."""
    path = Path(path).expanduser()
    if path.is_dir():
        name = CHECKPOINT_LAST if last else CHECKPOINT_BEST
        found = path / "checkpoints" / name
        if not found.is_file():
            hint = "" if last else " (a run that never validated has only checkpoint_last.pt: add --last)"
            raise UserError(f"{path} has no checkpoints/{name}{hint}")
        return found
    if not path.is_file():
        raise UserError(f"{path}: no such run folder or checkpoint file")
    return path


def find_tokenizer(checkpoint_path: Path, checkpoint: Dict[str, Any]) -> Path:
    """The run's tokenizer.json (beside the checkpoint or in the run folder above it), checked against its hash."""
    for folder in (checkpoint_path.parent, checkpoint_path.parent.parent):
        candidate = folder / TOKENIZER_FILE
        if candidate.is_file():
            break
    else:
        raise UserError(f"no {TOKENIZER_FILE} beside {checkpoint_path} or in its run folder; the run writes one there")
    saved = checkpoint.get("provenance", {}).get("tokenizer_sha256")
    if saved and saved != sha256_file(candidate):
        raise UserError(f"{candidate} is not the tokenizer {checkpoint_path} was trained with (sha256 differs)")
    return candidate


def prompt_tokenizer(path: PathLike) -> Tokenizer:
    """A tokenizer for prompts: its mask token ("<mask>", BERT's "[MASK]") is the special token, unlike corpus text."""
    tokenizer = load_tokenizer(path)
    if special_token_set(tokenizer) == "roberta":
        # Tokenizers trained before <mask> became lstrip get it here; it changes nothing for corpus text.
        # (BERT's [MASK] needs no lstrip: its pre-tokenizer drops spaces anyway.)
        tokenizer.add_special_tokens([MASK_TOKEN])
    tokenizer.encode_special_tokens = False
    return tokenizer


def check_format(folder: Path) -> Dict[str, Any]:
    """config.json of an export folder, refusing other formats and versions in one line."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{folder} is not an exported model, or its export was interrupted: no {CONFIG_FILE} "
                        "(make one with linformer-export)")  # fmt: skip
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UserError(f"{path} is not a linformer-pt model config (no \"format\": \"{FORMAT}\")")
    if config.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path} has format_version {config.get('format_version')!r}; this linformer-pt reads version "
            f"{FORMAT_VERSION} (export the checkpoint again with this version)"
        )
    return config


def unique_tensors(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """(tensors to save, {alias: saved name}): safetensors refuses two names on one storage, so ties are saved once.

    LinformerRoberta ties by construction (the LM head reads embed_tokens.weight; layerwise sharing is one module
    owned by the encoder), so its state dict has no aliases; a subclass that registers one gets it restored here.
    """
    tensors: Dict[str, torch.Tensor] = {}
    tied: Dict[str, str] = {}
    seen: Dict[Tuple, str] = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())
        if key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.detach().contiguous()
    # Views that overlap without being the same tensor cannot be tied back: save each as its own copy.
    storages: Dict[int, int] = {}
    for name, tensor in tensors.items():
        storages[tensor.untyped_storage().data_ptr()] = storages.get(tensor.untyped_storage().data_ptr(), 0) + 1
    for name, tensor in list(tensors.items()):
        if storages[tensor.untyped_storage().data_ptr()] > 1:
            tensors[name] = tensor.clone()
    return tensors, tied


def read_weights(path: Path, tied: Dict[str, str]) -> Dict[str, torch.Tensor]:
    """The tensors of a safetensors file (never a pickle), with tied names pointing at their saved tensor."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path} is truncated or not a safetensors file ({str(err).splitlines()[0]})") from None
    for alias, source in tied.items():
        if source in state:
            state[alias] = state[source]
    return state


def refuse_fine_tuned(source: Path, task: str) -> None:
    """A fine-tuned model has a task head instead of the LM head: say so in one line rather than misload it."""
    if task != "masked_lm":
        raise UserError(f"{source} is a fine-tuned task={task} model, not a masked LM: predict with linformer-predict; "
                        "to fine-tune again, start from its pretraining run")  # fmt: skip


def write_export(
    folder: PathLike,
    model: LinformerRoberta,
    tokenizer_path: Path,
    config: Dict[str, Any],
    dtype: Optional[Union[str, torch.dtype]],
    architecture: str,
) -> List[Path]:
    """The export layout of any LinformerRoberta (masked LM or fine-tuned): model.safetensors in `dtype` (default:
    the model's), config.json (`config` plus the architecture, format and transformers' keys), tokenizer.json and
    the code transformers imports, whose `architecture` class loads it; returns the paths written.

    The files are written beside `folder` and moved in when all are complete (staged_folder): an export killed or
    out of disk at any moment never leaves new weights under an old config.json.
    """
    from safetensors.torch import save_file

    from linformer_pt.hub.transformers_code import write_hf_files

    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file; give a folder to export into")
    target = to_dtype(dtype) if dtype is not None else model.embed_tokens.weight.dtype
    state = {name: t.detach().to("cpu", target) for name, t in model.state_dict().items()}
    tensors, tied = unique_tensors(state)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "linformer": dict(model.cfg.__dict__),
        "vocab_size": model.embed_tokens.num_embeddings,
        "max_positions": model.cfg.max_positions,
        "dtype": DTYPE_NAMES[target],
        "tied": tied,
        **config,
    }
    config.setdefault("special_tokens", special_tokens(load_tokenizer(tokenizer_path)))  # for tokenizer_config.json
    config_text = json.dumps({**config, **hf_config_fields(config, architecture)}, indent=2) + "\n"
    try:
        with staged_folder(folder, CONFIG_FILE) as stage:
            metadata = {"format": "pt", "linformer_pt_format": str(FORMAT_VERSION)}
            save_file(tensors, str(stage / WEIGHTS_FILE), metadata=metadata)
            (stage / CONFIG_FILE).write_text(config_text, encoding="utf-8")
            shutil.copyfile(tokenizer_path, stage / TOKENIZER_FILE)  # the source may be folder's own: still there
            names = [WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE] + [p.name for p in write_hf_files(stage, config)]
    except OSError as err:  # a full disk or a read-only folder: `folder` is as it was
        raise UserError(f"could not export into {folder}: {err.strerror or err}") from None
    return [folder / name for name in names]


class LinformerForMaskedLM(LinformerRoberta):
    """A trained LinformerRoberta with its tokenizer: load, save, fill masks and extract features."""

    tokenizer: Optional[Tokenizer] = None
    tokenizer_path: Optional[Path] = None
    extra: Dict[str, Any] = {}  # task settings and provenance of the run, kept in config.json
    run_cfg: Optional[Dict[str, Any]] = None  # a checkpoint's whole training config (not exported: it holds paths)

    @classmethod
    def from_checkpoint(
        cls,
        path: PathLike,
        last: bool = False,
        max_positions: Optional[int] = None,
        loaded: Optional[Dict[str, Any]] = None,
    ) -> "LinformerForMaskedLM":
        """The model of a training checkpoint (or a run folder's best one) with the run's tokenizer, in eval mode;
        `loaded` is that checkpoint when the caller has read it already (a large one is read once)."""
        checkpoint_path = resolve_checkpoint(path, last)
        checkpoint = load_checkpoint(checkpoint_path) if loaded is None else loaded
        refuse_fine_tuned(checkpoint_path, checkpoint.get("cfg", {}).get("task", {}).get("name", "masked_lm"))
        tokenizer_path = find_tokenizer(checkpoint_path, checkpoint)
        model_cfg = MODELS.config(checkpoint["cfg"]["model"])
        extra = {
            "task": checkpoint["cfg"].get("task", {}),
            "seed": checkpoint["cfg"].get("common", {}).get("seed", 1),
            "provenance": checkpoint.get("provenance", {}),
            "source": str(checkpoint_path.name),
            "updates": checkpoint.get("update"),
        }
        args = checkpoint["model_args"]
        model = cls._assemble(model_cfg, args["vocab_size"], args["pad_id"], checkpoint["model"], tokenizer_path,
                              extra, max_positions)  # fmt: skip
        model.run_cfg = checkpoint["cfg"]
        return model

    @classmethod
    def from_pretrained(
        cls,
        folder: PathLike,
        device: Union[str, torch.device] = "cpu",
        dtype: Optional[Union[str, torch.dtype]] = None,
        max_positions: Optional[int] = None,
    ) -> "LinformerForMaskedLM":
        """Load an exported folder on `device` in `dtype` (default: the saved one); max_positions resizes it."""
        folder = Path(folder).expanduser()
        config = check_format(folder)
        refuse_fine_tuned(folder, config.get("task", {}).get("name", "masked_lm"))
        tokenizer_path = folder / TOKENIZER_FILE
        if not tokenizer_path.is_file():
            raise UserError(f"{folder} has no {TOKENIZER_FILE}; an export needs the tokenizer its ids come from")
        try:
            model_cfg = LinformerRobertaConfig(**config["linformer"])
            vocab_size, pad_id = int(config["vocab_size"]), int(config["special_ids"]["pad"])
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{folder / CONFIG_FILE} is incomplete or malformed ({err})") from None
        state = read_weights(folder / WEIGHTS_FILE, config.get("tied", {}))
        model = cls._assemble(model_cfg, vocab_size, pad_id, state, tokenizer_path, config.get("extra", {}),
                              max_positions)  # fmt: skip
        target = to_dtype(dtype) if dtype is not None else state[next(iter(state))].dtype
        return model.to(device=torch.device(device), dtype=target)

    @classmethod
    def _assemble(
        cls,
        model_cfg: LinformerRobertaConfig,
        vocab_size: int,
        pad_id: int,
        state: Dict[str, torch.Tensor],
        tokenizer_path: Path,
        extra: Dict[str, Any],
        max_positions: Optional[int],
    ) -> "LinformerForMaskedLM":
        if max_positions is not None:
            model_cfg = LinformerRobertaConfig(**{**model_cfg.__dict__, "max_positions": max_positions})
        model = cls(model_cfg, vocab_size, pad_id)
        # Resize (models/resize.py) in the weights' dtype, then load: load_state_dict copies into fp32 parameters.
        state = resize_for(state, model.state_dict(), model_cfg.projection)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            details = "; ".join(line.strip() for line in str(err).splitlines()[1:] if line.strip())
            raise UserError(f"the weights do not fit the model config: {details}") from None
        model.extra = extra
        return model.attach_tokenizer(tokenizer_path).eval()

    def attach_tokenizer(self, path: PathLike) -> "LinformerForMaskedLM":
        """Use the tokenizer.json at `path` (e.g. for a model built from a config); returns the model."""
        tokenizer = prompt_tokenizer(path)
        if tokenizer.get_vocab_size() != self.embed_tokens.num_embeddings:
            raise UserError(f"{path} has {tokenizer.get_vocab_size()} tokens, the model {self.embed_tokens.num_embeddings}")
        self.tokenizer, self.tokenizer_path = tokenizer, Path(path)
        return self

    def special_ids(self) -> Dict[str, int]:
        """Ids of <s>, <pad>, </s>, <unk> and <mask> in this model's tokenizer."""
        return special_ids(self.tokenizer)

    @property
    def mask_token(self) -> str:
        """The string that marks a masked position in prompts: "<mask>", or "[MASK]" for BERT's tokenizer."""
        return special_tokens(self.tokenizer)["mask"]

    def save_pretrained(self, folder: PathLike, dtype: Optional[Union[str, torch.dtype]] = None) -> List[Path]:
        """Write model.safetensors, config.json, tokenizer.json (+ transformers' files); returns the paths."""
        if self.tokenizer_path is None:
            raise UserError("this model has no tokenizer; load it with from_checkpoint or from_pretrained")
        config = {"special_ids": self.special_ids(), "parameters": self.num_parameters(), "extra": self.extra}
        return write_export(folder, self, self.tokenizer_path, config, dtype, "LinformerHFForMaskedLM")

    def num_parameters(self) -> int:
        """Parameters counted once each (the LM head reuses the token embeddings)."""
        return sum(p.numel() for p in self.parameters())

    def tokenize(self, texts: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(tokens, padding_mask) for a batch of texts with <s> ... </s>; "<mask>" in a text is the mask token."""
        if isinstance(texts, str):
            texts = [texts]
        encodings = self.tokenizer.encode_batch(list(texts))
        n = max(len(e.ids) for e in encodings)
        pad = self.padding_idx
        tokens = torch.tensor([e.ids + [pad] * (n - len(e.ids)) for e in encodings], dtype=torch.long)
        padding_mask = torch.tensor([[False] * len(e.ids) + [True] * (n - len(e.ids)) for e in encodings])
        device = self.embed_tokens.weight.device
        return tokens.to(device), padding_mask.to(device)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Encoder output (B, n, d) for a batch of texts, and the padding mask (True at padding) to pool it with."""
        tokens, padding_mask = self.tokenize(texts)
        return self.extract_features(tokens, padding_mask), padding_mask

    @torch.no_grad()
    def fill_mask(self, texts: Sequence[str], top_k: int = 5) -> List[List[List[Dict[str, Any]]]]:
        """For each text, for each mask token (<mask>) in it, the top_k predictions: {token, token_str, score} (probabilities)."""
        if isinstance(texts, str):
            texts = [texts]
        tokens, padding_mask = self.tokenize(texts)
        mask = self.mask_token
        masked = tokens == self.tokenizer.token_to_id(mask)
        counts = masked.sum(dim=1).tolist()
        for text, count in zip(texts, counts):
            if count == 0:
                raise UserError(f"no {mask} in {text!r}; write {mask} where a token should be predicted")
        probs = self(tokens, padding_mask, masked).float().softmax(dim=-1)
        scores, ids = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        rows = [
            [{"token": i, "token_str": self.tokenizer.decode([i]), "score": s} for i, s in zip(row_ids, row_scores)]
            for row_ids, row_scores in zip(ids.tolist(), scores.tolist())
        ]
        out, start = [], 0
        for count in counts:  # masked rows come in text order, then position order
            out.append(rows[start : start + count])
            start += count
        return out


def load_any(source: PathLike, last: bool = False) -> LinformerForMaskedLM:
    """An export folder (config.json) via from_pretrained, else a run folder or checkpoint via from_checkpoint."""
    path = Path(source).expanduser()
    if (path / CONFIG_FILE).is_file():
        return LinformerForMaskedLM.from_pretrained(path)
    return LinformerForMaskedLM.from_checkpoint(path, last=last)


def to_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    """`bf16`, `fp16`, `fp32` (or a torch dtype) -> the torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES:
            raise UserError(f"dtype {dtype} is not supported; choose one of {', '.join(DTYPES)}")
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def hf_config_fields(config: Dict[str, Any], architecture: str) -> Dict[str, Any]:
    """The config.json keys transformers reads: its custom-model classes (auto_map) and the special ids."""
    module = HF_MODULE[:-3]
    ids = config["special_ids"]
    return {
        "model_type": "linformer_pt",
        "architectures": [architecture],
        "auto_map": {
            "AutoConfig": f"{module}.LinformerHFConfig",
            "AutoModel": f"{module}.LinformerHFModel",
            "AutoModelForMaskedLM": f"{module}.LinformerHFForMaskedLM",
            "AutoModelForSequenceClassification": f"{module}.LinformerHFForSequenceClassification",
        },
        "bos_token_id": ids["bos"],
        "pad_token_id": ids["pad"],
        "eos_token_id": ids["eos"],
    }
