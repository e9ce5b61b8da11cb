"""A standard-attention masked LM as a transformers-native folder: RobertaForMaskedLM or BertForMaskedLM.

The inverse of from_transformers.py. Such a folder loads with transformers' own classes (AutoModelForMaskedLM,
no trust_remote_code), so a model trained or uptrained here with model.attention=standard goes back to any tool
that reads RoBERTa or BERT. The tokenizer's special tokens pick the layout: RoBERTa's <s> <pad> </s> set numbers
positions from pad_token_id + 1 (rows 0..pad are never read for real tokens and are written as zeros), BERT's
[CLS] [PAD] [SEP] set from 0. A Linformer has no such layout (transformers has no E/F): it is refused in one line,
as is anything else transformers' classes would compute differently.
"""
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from linformer_pt.errors import UserError
from linformer_pt.hub.from_transformers import LAYER, LM_HEADS
from linformer_pt.staged_folder import staged_folder

PathLike = Union[str, Path]


def refuse_unmappable(model: Any) -> None:
    """One line for a model that transformers' RoBERTa/BERT classes would not compute the same way."""
    cfg = model.cfg
    if cfg.attention != "standard":
        raise UserError(f"model.attention={cfg.attention}: transformers' own classes have no Linformer projections; "
                        "export it without --format transformers (it loads with trust_remote_code=True)")  # fmt: skip
    if cfg.normalize_before:
        raise UserError("model.normalize_before=true (pre-LN) has no RoBERTa/BERT layout (both are post-LN); "
                        "export it without --format transformers")  # fmt: skip


def family_of(special_tokens: Dict[str, str]) -> str:
    """roberta for the <s> <pad> </s> tokenizers, bert for [CLS] [PAD] [SEP]."""
    return "bert" if special_tokens.get("bos") == "[CLS]" else "roberta"


def native_state(model: Any, family: str, pad_id: int) -> Dict[str, torch.Tensor]:
    """Our weights under transformers' names and layouts (positions offset for RoBERTa, one zero token type)."""
    ours = {name: t.detach().float().cpu() for name, t in model.state_dict().items()}
    prefix = "roberta." if family == "roberta" else "bert."
    positions = ours["embed_positions.weight"]
    offset = pad_id + 1 if family == "roberta" else 0
    rows = torch.cat([positions.new_zeros(offset, positions.shape[1]), positions])
    state = {
        prefix + "embeddings.word_embeddings.weight": ours["embed_tokens.weight"],
        prefix + "embeddings.position_embeddings.weight": rows,
        # transformers adds type 0's row at every position: zeros, since our position rows already hold it
        prefix + "embeddings.token_type_embeddings.weight": positions.new_zeros(1, positions.shape[1]),
    }
    dense, norm, bias, decoder = LM_HEADS[family]
    for part in ("weight", "bias"):
        state[f"{prefix}embeddings.LayerNorm.{part}"] = ours[f"embed_layer_norm.{part}"]
        for layer in range(model.cfg.layers):
            for theirs, mine in LAYER.items():
                state[f"{prefix}encoder.layer.{layer}.{theirs}.{part}"] = ours[f"encoder.layers.{layer}.{mine}.{part}"]
        state[f"{dense}.{part}"] = ours[f"lm_dense.{part}"]
        state[f"{norm}.{part}"] = ours[f"lm_layer_norm.{part}"]
    state[bias] = ours["lm_bias"]
    state[decoder] = ours["embed_tokens.weight"]  # tied, as in both of transformers' classes
    return state


def native_config(model: Any, family: str, special_ids: Dict[str, Optional[int]]) -> Any:
    from transformers import BertConfig, RobertaConfig

    cfg = model.cfg
    offset = special_ids["pad"] + 1 if family == "roberta" else 0
    common = dict(
        vocab_size=model.embed_tokens.num_embeddings, hidden_size=cfg.embed_dim, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, intermediate_size=cfg.ffn_embed_dim, hidden_act="gelu",
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attention_dropout,
        max_position_embeddings=cfg.max_positions + offset, type_vocab_size=1, layer_norm_eps=cfg.layer_norm_eps,
        pad_token_id=special_ids["pad"], tie_word_embeddings=True,
    )  # fmt: skip
    if family == "roberta":
        return RobertaConfig(**common, bos_token_id=special_ids["bos"], eos_token_id=special_ids["eos"],
                             architectures=["RobertaForMaskedLM"])  # fmt: skip
    return BertConfig(**common, architectures=["BertForMaskedLM"])


def export_native(model: Any, folder: PathLike, dtype: Optional[str] = None) -> List[Path]:
    """Write `model` (a LinformerForMaskedLM with standard attention) as a transformers-native masked-LM folder."""
    refuse_unmappable(model)
    try:
        from transformers import AutoModelForMaskedLM
        from transformers.utils import logging as transformers_logging
    except ImportError:
        raise UserError("--format transformers needs transformers: pip install 'linformer-pt[hf]'") from None
    from linformer_pt.data.tokenizer import special_tokens as tokenizer_specials
    from linformer_pt.hub.export_folder import DTYPES
    from linformer_pt.hub.transformers_code import write_tokenizer_config

    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file; give a folder to export into")
    special_ids, special_tokens = model.special_ids(), tokenizer_specials(model.tokenizer)
    family = family_of(special_tokens)
    config = native_config(model, family, special_ids)
    native = AutoModelForMaskedLM.from_config(config)
    missing, unexpected = native.load_state_dict(native_state(model, family, special_ids["pad"]), strict=False)
    missing = [name for name in missing if not name.endswith("decoder.bias")]  # tied to the head's bias
    if missing or unexpected:  # a transformers version with another layout: refuse rather than write half a model
        raise UserError(f"this transformers' {type(native).__name__} has another layout "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")  # fmt: skip
    if dtype is not None:
        native = native.to(DTYPES[dtype])
    transformers_logging.disable_progress_bar()  # one small file: linformer-export prints the paths written
    try:
        with staged_folder(folder, "config.json") as stage:
            native.save_pretrained(str(stage))
            shutil.copyfile(model.tokenizer_path, stage / "tokenizer.json")
            write_tokenizer_config(stage, {"special_tokens": special_tokens, "max_positions": model.cfg.max_positions})
            names = sorted(p.name for p in stage.iterdir())
    except OSError as err:  # a full disk or a read-only folder: `folder` is as it was
        raise UserError(f"could not export into {folder}: {err.strerror or err}") from None
    return [folder / name for name in names]
