"""Byte-level BPE tokenizer with RoBERTa's special tokens, trained with `tokenizers` or loaded from a file.

Trained ones have ids 0..4 = `<s> <pad> </s> <unk> <mask>` (RoBERTa's order); the post-processor adds `<s> ... </s>`.
Imported models bring their own tokenizer.json: RoBERTa's five tokens anywhere, or BERT's `[CLS] [PAD] [SEP] [UNK]
[MASK]`; `special_tokens()` says which strings play the five roles, so no code assumes ids or strings.
Corpus text is always encoded as text: a literal "<mask>" in a document is the characters, never the special id.
"""
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Optional, Union

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from linformer_pt.data.cache import cached_dir
from linformer_pt.errors import UserError

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
BOS, PAD, EOS, UNK, MASK = SPECIAL_TOKENS
ROLES = ("bos", "pad", "eos", "unk", "mask")
# The conventions a tokenizer.json may follow, tried in this order: RoBERTa's (ours, XLM-R, CamemBERT) and BERT's
# (where [CLS] opens a text as <s> does and [SEP] ends it as </s> does).
SPECIAL_TOKEN_SETS = {"roberta": SPECIAL_TOKENS, "bert": ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"]}
TOKENIZER_FILE = "tokenizer.json"
# RoBERTa's <mask> swallows the space before it, so "the <mask>" is `the <mask>`, not `the Ġ <mask>`: the model
# then predicts a word with its leading space ("Ġcat"). Only prompts see this: corpus text keeps specials as text.
MASK_TOKEN = AddedToken(MASK, lstrip=True, special=True)
# How text_only encodes corpus text, in the spec of every token cache: tokens written by earlier code (which
# turned "<mask>" in text into the special id) must be rebuilt, not reused. Change it when the encoding changes.
TEXT_ENCODING = "specials-as-text/no-padding/no-truncation"


def train_tokenizer(documents: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE on documents; every byte is in the alphabet, so nothing is ever <unk>."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS[:-1] + [MASK_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Training reads special-token strings in documents as plain text (the specials are added after it).
    tokenizer.train_from_iterator(documents, trainer)
    tokenizer.post_processor = processors.RobertaProcessing(
        (EOS, tokenizer.token_to_id(EOS)), (BOS, tokenizer.token_to_id(BOS))
    )
    return text_only(tokenizer)


def text_only(tokenizer: Tokenizer) -> Tokenizer:
    """Make `tokenizer` encode corpus lines as text, one whole line each; returns the same object.

    Special-token strings in the text stay text (else a document quoting "<mask>" would put mask ids among the
    targets), and padding or truncation saved in a user's tokenizer.json would silently pad or cut lines.
    `encode_special_tokens` is neither saved in tokenizer.json nor kept by pickling (a DataLoader worker's copy
    under spawn), so code that encodes corpus text calls this right before encoding.
    """
    tokenizer.encode_special_tokens = True
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def load_tokenizer(path: Union[str, Path]) -> Tokenizer:
    """Load a tokenizer.json, check that it has RoBERTa's special tokens, and make it encode text as text."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise UserError(f"tokenizer.path: no such file: {path}")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception on malformed JSON
        raise UserError(f"tokenizer.path: {path} is not a tokenizers JSON file ({err})") from None
    if special_token_set(tokenizer) is None:
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        raise UserError(f"tokenizer.path: {path} lacks the special tokens {missing}; needed: {SPECIAL_TOKENS} "
                        f"(or BERT's {SPECIAL_TOKEN_SETS['bert']})")  # fmt: skip
    return text_only(tokenizer)


def special_token_set(tokenizer: Tokenizer) -> Optional[str]:
    """`roberta` or `bert`: the first convention whose five tokens `tokenizer` all has; None if none fits."""
    for name, tokens in SPECIAL_TOKEN_SETS.items():
        if all(tokenizer.token_to_id(t) is not None for t in tokens):
            return name
    return None


def special_tokens(tokenizer: Tokenizer) -> Dict[str, str]:
    """{bos, pad, eos, unk, mask: token string} of `tokenizer` (RoBERTa's strings when it follows no convention)."""
    return dict(zip(ROLES, SPECIAL_TOKEN_SETS[special_token_set(tokenizer) or "roberta"]))


def special_ids(tokenizer: Tokenizer) -> Dict[str, Optional[int]]:
    """{bos, pad, eos, unk, mask: id} of `tokenizer`, wherever its convention puts them."""
    return {role: tokenizer.token_to_id(token) for role, token in special_tokens(tokenizer).items()}


def special_mask(tokenizer: Tokenizer) -> np.ndarray:
    """A bool per vocabulary id: is it a special token (RoBERTa's five, or any token the file marks special)?

    Masking never picks these nor draws them as random replacements. Their ids may be anywhere (RoBERTa's own
    tokenizer has `<mask>` last), so they are a set, not a prefix of the vocabulary.
    """
    is_special = np.zeros(tokenizer.get_vocab_size(), dtype=bool)
    ids = list(special_ids(tokenizer).values())
    ids += [i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special]
    is_special[[i for i in ids if i is not None and i < len(is_special)]] = True
    return is_special


def first_bytes(documents: Iterable[str], max_bytes: int) -> Iterator[str]:
    """The documents up to the one that brings their UTF-8 size to max_bytes (0: all): a sample to train on.

    Training streams its input (it keeps word counts, never the text), so this bounds time, not memory.
    """
    seen = 0
    for doc in documents:
        yield doc
        seen += len(doc.encode("utf-8"))
        if 0 < max_bytes <= seen:
            return


def cached_tokenizer(cache_dir: str, source: Any, vocab_size: int, min_frequency: int, max_train_bytes: int = 0) -> Path:
    """Path of a tokenizer.json trained on a corpus.Source, cached by its content and the settings."""
    spec = {"kind": "byte_level_bpe", "source": source.spec, "vocab_size": vocab_size, "min_frequency": min_frequency}
    if max_train_bytes:  # only when set, so tokenizers trained on all the text keep their cache keys
        spec["max_train_bytes"] = max_train_bytes

    def build(folder: Path) -> Dict:
        tokenizer = train_tokenizer(first_bytes(source.documents(), max_train_bytes), vocab_size, min_frequency)
        tokenizer.save(str(folder / TOKENIZER_FILE))
        return {"vocab_size": tokenizer.get_vocab_size()}

    return cached_dir(cache_dir, "tokenizer", spec, build) / TOKENIZER_FILE


def word_begins(tokenizer: Tokenizer) -> np.ndarray:
    """A bool per vocabulary id: does the token start a word? Byte-level BPE marks a leading space as 'Ġ',
    SentencePiece (XLM-R's Unigram) as '▁'; WordPiece (BERT) marks the other pieces instead, with '##'."""
    tokens = [tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())]
    if isinstance(tokenizer.model, models.WordPiece):
        prefix = tokenizer.model.continuing_subword_prefix
        return np.array([not token.startswith(prefix) for token in tokens])
    marker = "\u2581" if isinstance(tokenizer.model, models.Unigram) else "\u0120"
    return np.array([token.startswith(marker) for token in tokens])
