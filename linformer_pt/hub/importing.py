"""Pretrained encoders from elsewhere as linformer-pt export folders (linformer-import).

One module per source format (from_transformers.py: RoBERTa/XLM-R/CamemBERT/BERT folders; from_fairseq.py: RoBERTa
and linformer_roberta checkpoints); each maps the source's weights onto LinformerRoberta exactly, then `write_import`
writes the same folder linformer-export does. Nothing is unpickled that could run code (safe_pickle.py).
"""
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from tokenizers import Tokenizer

from linformer_pt.errors import UserError
from linformer_pt.models.linformer_roberta import LinformerRobertaConfig


def write_import(
    out: Path,
    cfg: LinformerRobertaConfig,
    state: Dict[str, torch.Tensor],
    tokenizer: Tokenizer,
    source: Dict[str, Any],
    dtype: Optional[str] = None,
) -> List[Path]:
    """Build the model from `cfg` and `state` (all its weights, strictly), then write OUT as linformer-export does."""
    from linformer_pt.data.tokenizer import TOKENIZER_FILE, special_ids
    from linformer_pt.hub.export_folder import LinformerForMaskedLM

    vocab = state["embed_tokens.weight"].shape[0]
    if tokenizer.get_vocab_size() != vocab:
        raise UserError(f"{source['path']}: the tokenizer has {tokenizer.get_vocab_size()} tokens but the embedding "
                        f"matrix {vocab} rows; they must be the same vocabulary")  # fmt: skip
    pad = special_ids(tokenizer)["pad"]
    model = LinformerForMaskedLM(cfg, vocab, pad)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # a bug in a mapping, or a source with a layout we do not know
        details = "; ".join(line.strip() for line in str(err).splitlines()[1:] if line.strip())
        raise UserError(f"{source['path']}: its weights do not fit the model built from its config: {details}") from None
    model.extra = {"imported_from": source}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / TOKENIZER_FILE
        tokenizer.save(str(path))
        model.attach_tokenizer(path)
        return model.eval().save_pretrained(out, dtype=dtype)


def import_model(src: Path, out: Path, **options: Any) -> List[Path]:
    """Import SRC (a transformers folder, or a fairseq model.pt / folder holding one) into the export folder OUT."""
    src = Path(src).expanduser()
    if not src.exists():
        raise UserError(f"{src}: no such file or folder")
    if src.is_file() or (src / "model.pt").is_file():
        from linformer_pt.hub.from_fairseq import import_fairseq

        return import_fairseq(src, Path(out).expanduser(), **options)
    if (src / "config.json").is_file():
        from linformer_pt.hub.from_transformers import import_transformers

        return import_transformers(src, Path(out).expanduser(), dtype=options.get("dtype"))
    raise UserError(f"{src} is neither a transformers model folder (config.json + weights + tokenizer) nor a fairseq "
                    "checkpoint (model.pt + dict.txt)")  # fmt: skip
