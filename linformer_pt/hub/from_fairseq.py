"""fairseq RoBERTa and linformer_roberta checkpoints (model.pt + dict.txt + GPT-2 BPE files) -> LinformerRoberta.

The architecture is read from the tensor shapes (layers, widths, vocabulary, max positions, k and the sharing
scheme: compress_v per layer = headwise, compress_k only = kv (shared_kv_compressed=1), the encoder's compress_layer
= layerwise (shared_layer_kv_compressed=1)); only the head count is not in a shape: it comes from the checkpoint's
hyperparameters (argparse.Namespace in `args`, or omegaconf in `cfg`, read as data by safe_pickle.py) or --heads.
A Linformer imports with model.fairseq_compat=true, which reproduces fairseq's arithmetic (padding ignored in E/F).
Positions: fairseq numbers real tokens from padding_idx + 1, so its first padding_idx + 1 rows are dropped.
"""
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from linformer_pt.errors import UserError
from linformer_pt.hub.importing import write_import
from linformer_pt.hub.safe_pickle import load_foreign, plain
from linformer_pt.hub.tokenizer_files import fairseq_tokenizer, optional_file
from linformer_pt.models.linformer_roberta import LinformerRobertaConfig

PAD = 1  # fairseq's Dictionary: <s> <pad> </s> <unk> first
ENCODER = "encoder.sentence_encoder."
LAYER = {  # fairseq's name in layers.N -> ours in encoder.layers.N
    "self_attn.q_proj": "self_attn.q_proj", "self_attn.k_proj": "self_attn.k_proj",
    "self_attn.v_proj": "self_attn.v_proj", "self_attn.out_proj": "self_attn.out_proj",
    "self_attn_layer_norm": "attn_layer_norm", "fc1": "fc1", "fc2": "fc2", "final_layer_norm": "final_layer_norm",
}  # fmt: skip
IGNORED = re.compile(r"(^|\.)version$|^classification_heads\.|_float_tensor$")


def normalise_names(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """fairseq's own upgrades of old names: decoder. -> encoder., emb_layer_norm -> layernorm_embedding, and the
    fused in_proj of the first released checkpoints split into q/k/v."""
    out = {}
    for name, tensor in state.items():
        name = "encoder." + name[len("decoder."):] if name.startswith("decoder.") else name
        name = name.replace(".emb_layer_norm.", ".layernorm_embedding.")
        if ".self_attn.in_proj_" in name:
            base, part = name.split(".self_attn.in_proj_")
            for proj, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                out[f"{base}.self_attn.{proj}.{part}"] = chunk
            continue
        out[name] = tensor
    return out


def hyperparameters(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """The model's hyperparameters: `args` (older fairseq) or `cfg.model` (newer), as plain values; {} if neither."""
    args = plain(checkpoint.get("args"))
    if isinstance(args, dict) and args:
        return args
    cfg = plain(checkpoint.get("cfg"))
    model = cfg.get("model") if isinstance(cfg, dict) else None
    return model if isinstance(model, dict) else {}


def convert_state(state: Dict[str, torch.Tensor], path: Path) -> Dict[str, Any]:
    """fairseq names -> LinformerRoberta's, and the architecture the shapes imply: {"state", "layers", ...}."""
    used = set()

    def take(name: str) -> torch.Tensor:
        if name not in state:
            raise UserError(f"{path}: weight {name} is missing; not a fairseq RoBERTa / linformer_roberta checkpoint")
        used.add(name)
        return state[name].float()

    layers = 1 + max((int(m.group(1)) for k in state for m in [re.match(re.escape(ENCODER) + r"layers\.(\d+)\.", k)]
                      if m), default=-1)  # fmt: skip
    if layers == 0:
        raise UserError(f"{path}: no {ENCODER}layers.* weights; not a fairseq RoBERTa / linformer_roberta checkpoint")
    out = {"embed_tokens.weight": take(ENCODER + "embed_tokens.weight")}
    out["embed_positions.weight"] = take(ENCODER + "embed_positions.weight")[PAD + 1 :]
    for part in ("weight", "bias"):
        out[f"embed_layer_norm.{part}"] = take(f"{ENCODER}layernorm_embedding.{part}")
        out[f"lm_dense.{part}"] = take(f"encoder.lm_head.dense.{part}")
        out[f"lm_layer_norm.{part}"] = take(f"encoder.lm_head.layer_norm.{part}")
        for i in range(layers):
            for theirs, ours in LAYER.items():
                out[f"encoder.layers.{i}.{ours}.{part}"] = take(f"{ENCODER}layers.{i}.{theirs}.{part}")
    out["lm_bias"] = take("encoder.lm_head.bias")
    if not torch.equal(take("encoder.lm_head.weight"), out["embed_tokens.weight"]):
        raise UserError(f"{path}: its LM head is not tied to the token embeddings (an old linformer checkpoint?); "
                        "linformer-pt ties them")  # fmt: skip
    sharing, k = None, None
    shared = ENCODER + "compress_layer.weight"
    if shared in state:  # shared_layer_kv_compressed=1: one E = F for every layer; its bias is never used
        sharing, k = "layerwise", state[shared].shape[0]
        out["encoder.shared_projection.weight"] = take(shared).T.contiguous()
        used.add(ENCODER + "compress_layer.bias")
        used.update(k for k in state if re.search(r"self_attn\.compress_[kv]\.weight$", k))  # the same matrix again
    elif f"{ENCODER}layers.0.self_attn.compress_k.weight" in state:
        headwise = f"{ENCODER}layers.0.self_attn.compress_v.weight" in state
        sharing = "headwise" if headwise else "kv"
        k = state[f"{ENCODER}layers.0.self_attn.compress_k.weight"].shape[0]
        for i in range(layers):
            attn = f"{ENCODER}layers.{i}.self_attn."
            out[f"encoder.layers.{i}.self_attn.proj_e.weight"] = take(attn + "compress_k.weight").T.contiguous()
            if headwise:
                out[f"encoder.layers.{i}.self_attn.proj_f.weight"] = take(attn + "compress_v.weight").T.contiguous()
    left = [name for name in state if name not in used and not IGNORED.search(name)]
    if left:
        raise UserError(f"{path}: weights with no linformer-pt counterpart: {', '.join(sorted(left)[:5])}"
                        f"{' ...' if len(left) > 5 else ''}")  # fmt: skip
    return {"state": out, "layers": layers, "sharing": sharing, "k": k}


def rate(args: Dict[str, Any], key: str) -> float:
    """A dropout rate from the hyperparameters, RoBERTa's 0.1 when absent (it only matters when training on)."""
    value = args.get(key)
    return float(value) if isinstance(value, (int, float)) else 0.1


def import_fairseq(
    src: Path,
    out: Path,
    heads: Optional[int] = None,
    dict_txt: Optional[str] = None,
    encoder_json: Optional[str] = None,
    vocab_bpe: Optional[str] = None,
    dtype: Optional[str] = None,
) -> List[Path]:
    """Import a fairseq checkpoint (`src`: model.pt, or a folder holding it) into the export folder `out`."""
    path = src / "model.pt" if src.is_dir() else src
    folder = path.parent
    tokenizer = fairseq_tokenizer(optional_file(dict_txt, folder / "dict.txt"),
                                  optional_file(encoder_json, folder / "encoder.json"),
                                  optional_file(vocab_bpe, folder / "vocab.bpe"))  # fmt: skip
    checkpoint = load_foreign(path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise UserError(f"{path} is not a fairseq checkpoint (no \"model\" state dict)")
    args = hyperparameters(checkpoint)
    # (A pre-LN encoder shows as an unknown weight, the final layer_norm, and is refused by convert_state.)
    for key, wanted in (("activation_fn", "gelu"), ("no_scale_embedding", True)):
        if args.get(key, wanted) != wanted:
            raise UserError(f"{path}: {key}={args[key]!r} has no linformer-pt counterpart (supported: {wanted!r})")
    arch = convert_state(normalise_names(checkpoint["model"]), path)
    state = arch["state"]
    heads = heads or args.get("encoder_attention_heads")
    if not isinstance(heads, int) or heads < 1:
        raise UserError(f"{path}: the head count is in no tensor shape and not in the checkpoint's hyperparameters; "
                        "give it with --heads (12 for base models, 16 for large)")  # fmt: skip
    embed_dim = state["embed_tokens.weight"].shape[1]
    if embed_dim % heads:
        raise UserError(f"--heads {heads} does not divide the embedding width {embed_dim}")
    max_positions = state["embed_positions.weight"].shape[0]
    linformer = arch["sharing"] is not None
    cfg = LinformerRobertaConfig(
        layers=arch["layers"], embed_dim=embed_dim, ffn_embed_dim=state["encoder.layers.0.fc1.weight"].shape[0],
        heads=heads, max_positions=max_positions, attention="linformer" if linformer else "standard",
        k=arch["k"] if linformer else min(LinformerRobertaConfig.k, max_positions),
        sharing=arch["sharing"] or "headwise", fairseq_compat=linformer,
        dropout=rate(args, "dropout"), attention_dropout=rate(args, "attention_dropout"),
    )  # fmt: skip
    if linformer and arch["k"] > max_positions:
        raise UserError(f"{path}: k={arch['k']} exceeds max_positions={max_positions}")
    source = {"format": "fairseq", "arch": args.get("arch") or args.get("_name"), "path": str(path)}
    return write_import(out, cfg, state, tokenizer, source, dtype)
