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
    """Write the custom-model code into `folder` and a RoBERTa-style tokenizer_config.json there."""
    from linformer_pt.hf.bundle import write_bundle

    modules = write_bundle(folder)
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "cls_token": "<s>",
        "sep_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        # lstrip as in RoBERTa: "the <mask>" is `the <mask>`, and the model predicts the word with its space.
        "mask_token": {"content": "<mask>", "lstrip": True, "rstrip": False, "normalized": False, "special": True,
                       "__type": "AddedToken"},  # fmt: skip
        "model_max_length": config["max_positions"],
        "add_prefix_space": False,
        "model_input_names": ["input_ids", "attention_mask"],
    }
    path = folder / TOKENIZER_CONFIG
    path.write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")
    return modules + [path]
