"""transformers RoBERTa-family (roberta, xlm-roberta, camembert) and BERT masked LMs -> LinformerRoberta, exactly.

The layouts differ from ours in three ways, each mapped without approximation for what linformer-pt computes
(right padding, one segment):
- positions: RoBERTa numbers real tokens from pad_token_id + 1 (its first pad_token_id + 1 rows are never used for
  them), BERT from 0: our row i is their row offset + i, so max_positions = max_position_embeddings - offset;
- token types: transformers adds token_type_embeddings[0] at every position when no types are given; it is folded
  into our position rows (BERT's type-1 row, for a second segment, has no counterpart and is dropped);
- LayerNorm epsilon: model.layer_norm_eps (BERT's 1e-12).
Attention is standard softmax attention (model.attention=standard); uptraining may switch it to Linformer.
"""
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from linformer_pt.errors import UserError
from linformer_pt.training.checkpoint import first_line
from linformer_pt.hub.importing import write_import
from linformer_pt.hub.tokenizer_files import transformers_tokenizer
from linformer_pt.models.linformer_roberta import LinformerRobertaConfig

ROBERTA_FAMILY = ("roberta", "xlm-roberta", "camembert")
SUPPORTED = ROBERTA_FAMILY + ("bert",)
LAYER = {  # transformers' name in encoder.layer.N -> ours in encoder.layers.N
    "attention.self.query": "self_attn.q_proj",
    "attention.self.key": "self_attn.k_proj",
    "attention.self.value": "self_attn.v_proj",
    "attention.output.dense": "self_attn.out_proj",
    "attention.output.LayerNorm": "attn_layer_norm",
    "intermediate.dense": "fc1",
    "output.dense": "fc2",
    "output.LayerNorm": "final_layer_norm",
}
LM_HEADS = {  # model_type family -> (dense, LayerNorm, bias, decoder weight) names in the state dict
    "roberta": ("lm_head.dense", "lm_head.layer_norm", "lm_head.bias", "lm_head.decoder.weight"),
    "bert": ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", "cls.predictions.bias",
             "cls.predictions.decoder.weight"),
}  # fmt: skip
IGNORED = ("pooler.", "position_ids", "lm_head.decoder.bias", "cls.predictions.decoder.bias",
           "cls.seq_relationship.")  # fmt: skip


def read_config(folder: Path) -> Any:
    """config.json through transformers' own config classes; only the architectures we map exactly pass."""
    import json

    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as err:
        raise UserError(f"{folder / 'config.json'} is not a transformers config ({err})") from None
    if model_type not in SUPPORTED:
        raise UserError(f"{folder} holds a {model_type!r} model; linformer-import reads these transformers "
                        f"model types: {', '.join(SUPPORTED)}")  # fmt: skip
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise UserError(f"{folder / 'config.json'}: transformers cannot read it ({first_line(err)})") from None
    checks = {
        "hidden_act": (getattr(config, "hidden_act", "gelu"), "gelu"),
        "position_embedding_type": (getattr(config, "position_embedding_type", "absolute") or "absolute", "absolute"),
        "is_decoder": (bool(getattr(config, "is_decoder", False)), False),
    }
    for key, (value, wanted) in checks.items():
        if value != wanted:
            raise UserError(f"{folder / 'config.json'}: {key}={value!r} has no linformer-pt counterpart "
                            f"(supported: {wanted!r})")  # fmt: skip
    return config


def read_state(folder: Path) -> Dict[str, torch.Tensor]:
    """The weights: model.safetensors (or its shards), else pytorch_model.bin read with weights_only=True."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    files = [folder / "model.safetensors"]
    if index.is_file():
        from linformer_pt.hub.tokenizer_files import read_json

        files = sorted({folder / name for name in read_json(index).get("weight_map", {}).values()})
    if all(f.is_file() for f in files):
        state: Dict[str, torch.Tensor] = {}
        for path in files:
            try:
                state.update(load_file(str(path)))
            except (SafetensorError, OSError, ValueError) as err:
                raise UserError(f"{path} is truncated or not a safetensors file ({first_line(err)})") from None
        return state
    binary = folder / "pytorch_model.bin"
    if not binary.is_file():
        raise UserError(f"{folder} has no weights: model.safetensors (or pytorch_model.bin) is missing")
    try:
        state = torch.load(binary, map_location="cpu", weights_only=True)
    except Exception as err:  # an unsafe pickle, or a damaged file: nothing in it was run either way
        raise UserError(f"{binary} cannot be read safely ({first_line(err)}); nothing in it was run. "
                        "Save the model as model.safetensors") from None  # fmt: skip
    if not isinstance(state, dict):
        raise UserError(f"{binary} holds no state dict")
    return state


def convert_state(state: Dict[str, torch.Tensor], config: Any, family: str, folder: Path) -> Dict[str, torch.Tensor]:
    """transformers names and layouts -> LinformerRoberta's; every tensor is used or deliberately ignored."""
    state = {k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"): v
             for k, v in state.items()}  # old BERT checkpoints  # fmt: skip
    anchor = next((k for k in state if k.endswith("embeddings.word_embeddings.weight")), None)
    if anchor is None:
        raise UserError(f"{folder}: no embeddings.word_embeddings.weight among its weights; not a {family} model")
    prefix = anchor[: -len("embeddings.word_embeddings.weight")]
    used = set()

    def take(name: str) -> torch.Tensor:
        if name not in state:
            raise UserError(f"{folder}: weight {name} is missing (an encoder without its masked-LM head cannot "
                            "be imported exactly; save it as *ForMaskedLM)")  # fmt: skip
        used.add(name)
        return state[name].float()

    out = {"embed_tokens.weight": take(prefix + "embeddings.word_embeddings.weight")}
    offset = config.pad_token_id + 1 if family == "roberta" else 0
    positions = take(prefix + "embeddings.position_embeddings.weight")[offset:]
    types = prefix + "embeddings.token_type_embeddings.weight"
    if types in state:  # added at every position for type 0: the same as adding it to each position row
        positions = positions + take(types)[0]
    out["embed_positions.weight"] = positions
    for part in ("weight", "bias"):
        out[f"embed_layer_norm.{part}"] = take(f"{prefix}embeddings.LayerNorm.{part}")
        for layer in range(config.num_hidden_layers):
            for theirs, ours in LAYER.items():
                out[f"encoder.layers.{layer}.{ours}.{part}"] = take(f"{prefix}encoder.layer.{layer}.{theirs}.{part}")
    dense, norm, bias, decoder = LM_HEADS[family]
    for part in ("weight", "bias"):
        out[f"lm_dense.{part}"] = take(f"{dense}.{part}")
        out[f"lm_layer_norm.{part}"] = take(f"{norm}.{part}")
    out["lm_bias"] = take(bias) if bias in state else take(bias.replace(".bias", ".decoder.bias"))
    if decoder in state and not torch.equal(take(decoder), out["embed_tokens.weight"]):
        raise UserError(f"{folder}: its LM decoder is not tied to the token embeddings; linformer-pt ties them")
    left = [k for k in state if k not in used and not any(part in k for part in IGNORED)]
    if left:
        raise UserError(f"{folder}: weights with no linformer-pt counterpart: {', '.join(sorted(left)[:5])}"
                        f"{' ...' if len(left) > 5 else ''}")  # fmt: skip
    return out


def import_transformers(folder: Path, out: Path, dtype: Optional[str] = None) -> List[Path]:
    """Import a transformers masked-LM folder into the export folder `out`; returns the paths written."""
    config = read_config(folder)
    family = "roberta" if config.model_type in ROBERTA_FAMILY else "bert"
    tokenizer = transformers_tokenizer(folder)
    state = convert_state(read_state(folder), config, family, folder)
    from linformer_pt.data.tokenizer import special_ids

    if special_ids(tokenizer)["pad"] != config.pad_token_id:
        raise UserError(f"{folder}: the tokenizer's pad id {special_ids(tokenizer)['pad']} is not config.json's "
                        f"pad_token_id={config.pad_token_id}")  # fmt: skip
    max_positions = state["embed_positions.weight"].shape[0]
    cfg = LinformerRobertaConfig(
        layers=config.num_hidden_layers, embed_dim=config.hidden_size, ffn_embed_dim=config.intermediate_size,
        heads=config.num_attention_heads, max_positions=max_positions, attention="standard",
        k=min(LinformerRobertaConfig.k, max_positions), dropout=config.hidden_dropout_prob,
        attention_dropout=config.attention_probs_dropout_prob, layer_norm_eps=config.layer_norm_eps,
    )  # fmt: skip
    source = {"format": "transformers", "model_type": config.model_type, "path": str(folder)}
    return write_import(out, cfg, state, tokenizer, source, dtype)
