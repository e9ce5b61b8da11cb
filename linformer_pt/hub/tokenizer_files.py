"""The tokenizer of an imported model as one tokenizers.Tokenizer (saved as its export's tokenizer.json).

transformers folders usually carry tokenizer.json (used as it is); older ones only vocab.json + merges.txt (RoBERTa's
byte-level BPE) or vocab.txt (BERT's WordPiece). fairseq's RoBERTa splits it in three: GPT-2's BPE (encoder.json,
vocab.bpe) gives token -> GPT-2 id, and dict.txt lists the GPT-2 ids the model knows, in the model's id order.
"""
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from linformer_pt.data.tokenizer import MASK_TOKEN, special_token_set
from linformer_pt.errors import UserError

FAIRSEQ_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # fairseq's Dictionary puts these first, then dict.txt


def read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is not readable JSON ({err})") from None


def read_merges(path: Path) -> List[Tuple[str, str]]:
    """GPT-2's merges file (vocab.bpe / merges.txt): a `#version` line, then `a b` per line."""
    merges = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#version"):
            merges.append((parts[0], parts[1]))
    return merges


def byte_level_bpe(vocab: Dict[str, int], merges: List[Tuple[str, str]]) -> Tokenizer:
    """RoBERTa's tokenizer: byte-level BPE, <s> ... </s> around each text, <mask> taking the space before it.

    tokenizers refuses a merge whose parts or result are not in the vocabulary: such merges (a GPT-2 token the model
    never learned) are dropped, so that word is cut into pieces the model knows, where fairseq would give <unk>.
    """
    kept = [(a, b) for a, b in merges if a in vocab and b in vocab and a + b in vocab]
    tokenizer = Tokenizer(models.BPE(vocab, kept, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in FAIRSEQ_SPECIALS] + [MASK_TOKEN])
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", vocab["</s>"]), ("<s>", vocab["<s>"]))
    return tokenizer


def wordpiece(vocab_file: Path, lowercase: bool) -> Tokenizer:
    """BERT's tokenizer from vocab.txt: WordPiece, BERT's normaliser and pre-tokenizer, [CLS] ... [SEP]."""
    tokens = vocab_file.read_text(encoding="utf-8").splitlines()
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]")
                                  if t in vocab])  # fmt: skip
    if "[CLS]" in vocab and "[SEP]" in vocab:
        tokenizer.post_processor = processors.BertProcessing(("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"]))
    return tokenizer


def transformers_tokenizer(folder: Path) -> Tokenizer:
    """The tokenizer saved in a transformers folder: tokenizer.json, else vocab.json + merges.txt, else vocab.txt."""
    lowercase = bool((read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file()
                      else {}).get("do_lower_case", False))  # fmt: skip
    if (folder / "tokenizer.json").is_file():
        try:
            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as err:  # tokenizers raises a bare Exception on malformed files
            raise UserError(f"{folder / 'tokenizer.json'} is not a tokenizers JSON file ({err})") from None
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        vocab = read_json(folder / "vocab.json")
        tokenizer = byte_level_bpe(vocab, read_merges(folder / "merges.txt"))
    elif (folder / "vocab.txt").is_file():
        tokenizer = wordpiece(folder / "vocab.txt", lowercase)
    else:
        raise UserError(f"{folder} has no tokenizer: give tokenizer.json (save the model's fast tokenizer there), "
                        "vocab.json + merges.txt, or vocab.txt")  # fmt: skip
    return checked(tokenizer, folder)


def fairseq_tokenizer(dict_txt: Path, encoder_json: Path, vocab_bpe: Path) -> Tokenizer:
    """fairseq RoBERTa's tokenizer: GPT-2 BPE tokens renumbered by dict.txt, then <mask> last (as fairseq adds it)."""
    for path, what in ((dict_txt, "fairseq's dictionary"), (encoder_json, "GPT-2's BPE vocabulary"),
                       (vocab_bpe, "GPT-2's BPE merges")):  # fmt: skip
        if not path.is_file():
            raise UserError(f"{path}: no such file ({what}; give it with --{path.name.replace('.', '-')})")
    encoder = read_json(encoder_json)
    if not isinstance(encoder, dict):
        raise UserError(f"{encoder_json} is not GPT-2's encoder.json (a token -> id object)")
    decoder = {i: token for token, i in encoder.items()}
    vocab = {token: i for i, token in enumerate(FAIRSEQ_SPECIALS)}
    for number, line in enumerate(dict_txt.read_text(encoding="utf-8").splitlines(), 1):
        symbol = line.rsplit(" ", 1)[0] if " " in line else line
        symbol = symbol[: -len(" #fairseq:overwrite")] if symbol.endswith(" #fairseq:overwrite") else symbol
        if not symbol:
            raise UserError(f"{dict_txt} line {number} is empty; fairseq's dict.txt has `symbol count` per line")
        token = decoder.get(int(symbol), symbol) if symbol.isdigit() else symbol
        if token in vocab:  # two entries for one token: the ids after it would not be fairseq's
            raise UserError(f"{dict_txt} line {number}: {symbol!r} repeats an earlier entry")
        vocab[token] = len(vocab)
    vocab["<mask>"] = len(vocab)
    return byte_level_bpe(vocab, read_merges(vocab_bpe))


def checked(tokenizer: Tokenizer, source: Path) -> Tokenizer:
    """`tokenizer` if it has RoBERTa's or BERT's five special tokens, else one line naming what it lacks."""
    if special_token_set(tokenizer) is None:
        raise UserError(f"{source}: its tokenizer has neither RoBERTa's <s> <pad> </s> <unk> <mask> nor BERT's "
                        "[CLS] [PAD] [SEP] [UNK] [MASK]; linformer-pt needs one of these sets")  # fmt: skip
    return tokenizer


def optional_file(given: Optional[str], default: Path) -> Path:
    return Path(given).expanduser() if given else default
