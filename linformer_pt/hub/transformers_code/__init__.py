"""The transformers adapter: an export folder also loads through AutoModelForMaskedLM and AutoTokenizer.

Importing this package needs no transformers: write_hf_files writes modeling_linformer.py and the model code it
needs (bundle.py: self-contained, torch and transformers only) and tokenizer_config.json into the export;
transformers imports that code when a user loads with trust_remote_code=True.
"""
import json
from pathlib import Path
from typing import Any, Dict, List

TOKENIZER_CONFIG = "tokenizer_config.json"


def write_hf_files(folder: Path, config: Dict[str, Any]) -> List[Path]:
    """Write the custom-model code into `folder` and a tokenizer_config.json naming the tokenizer's special tokens."""
    from linformer_pt.hub.transformers_code.bundle import write_bundle

    return write_bundle(folder) + [write_tokenizer_config(folder, config)]


def write_tokenizer_config(folder: Path, config: Dict[str, Any]) -> Path:
    """tokenizer_config.json: AutoTokenizer reads tokenizer.json with these special tokens and maximum length."""
    # The tokenizer's own strings: RoBERTa's <s> <pad> </s> <unk> <mask>, or BERT's [CLS] [PAD] [SEP] [UNK] [MASK].
    tokens = {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>", "mask": "<mask>",
              **config.get("special_tokens", {})}  # fmt: skip
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokens["bos"],
        "eos_token": tokens["eos"],
        "cls_token": tokens["bos"],
        "sep_token": tokens["eos"],
        "unk_token": tokens["unk"],
        "pad_token": tokens["pad"],
        # lstrip as in RoBERTa: "the <mask>" is `the <mask>`, and the model predicts the word with its space.
        # (BERT's [MASK] gets it too: its pre-tokenizer drops that space anyway.)
        "mask_token": {"content": tokens["mask"], "lstrip": True, "rstrip": False, "normalized": False,
                       "special": True, "__type": "AddedToken"},  # fmt: skip
        "model_max_length": config["max_positions"],
        "add_prefix_space": False,
        "model_input_names": ["input_ids", "attention_mask"],
    }
    path = folder / TOKENIZER_CONFIG
    path.write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")
    return path
