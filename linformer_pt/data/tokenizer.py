"""Byte-level BPE tokenizer with RoBERTa's special tokens, trained with `tokenizers` or loaded from a file.

Ids 0..4 are `<s> <pad> </s> <unk> <mask>` (RoBERTa's order); the post-processor adds `<s> ... </s>`.
"""
from pathlib import Path
from typing import Any, Dict, Iterable, Union

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from linformer_pt.data.cache import cached_dir
from linformer_pt.errors import UserError

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
BOS, PAD, EOS, UNK, MASK = SPECIAL_TOKENS
TOKENIZER_FILE = "tokenizer.json"


def train_tokenizer(documents: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE on documents; every byte is in the alphabet, so nothing is ever <unk>."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer)
    tokenizer.post_processor = processors.RobertaProcessing(
        (EOS, tokenizer.token_to_id(EOS)), (BOS, tokenizer.token_to_id(BOS))
    )
    return tokenizer


def load_tokenizer(path: Union[str, Path]) -> Tokenizer:
    """Load a tokenizer.json and check that it has RoBERTa's special tokens."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise UserError(f"tokenizer.path: no such file: {path}")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception on malformed JSON
        raise UserError(f"tokenizer.path: {path} is not a tokenizers JSON file ({err})") from None
    missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
    if missing:
        raise UserError(f"tokenizer.path: {path} lacks the special tokens {missing}; needed: {SPECIAL_TOKENS}")
    return tokenizer


def cached_tokenizer(cache_dir: str, source: Any, vocab_size: int, min_frequency: int) -> Path:
    """Path of a tokenizer.json trained on a corpus.Source, cached by its content and the settings."""
    spec = {"kind": "byte_level_bpe", "source": source.spec, "vocab_size": vocab_size, "min_frequency": min_frequency}

    def build(folder: Path) -> Dict:
        tokenizer = train_tokenizer(source.documents(), vocab_size, min_frequency)
        tokenizer.save(str(folder / TOKENIZER_FILE))
        return {"vocab_size": tokenizer.get_vocab_size()}

    return cached_dir(cache_dir, "tokenizer", spec, build) / TOKENIZER_FILE


def word_begins(tokenizer: Tokenizer) -> np.ndarray:
    """A bool per vocabulary id: does the token start a word (byte-level BPE marks a leading space as 'Ġ')?"""
    return np.array([tokenizer.id_to_token(i).startswith("\u0120") for i in range(tokenizer.get_vocab_size())])
