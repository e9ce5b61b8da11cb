"""Tokenizers rebuilt from a transformers folder's older files give transformers' own ids.

Folders without tokenizer.json carry vocab.json + merges.txt (RoBERTa) or vocab.txt (BERT); linformer-import
rebuilds a tokenizers.Tokenizer from them, which must tokenise as transformers' own classes do from the same files,
special tokens and hostile text included.
"""
import json

import pytest

transformers = pytest.importorskip("transformers")

from import_sources import CORPUS, byte_level_bpe, wordpiece  # noqa: E402
from linformer_pt.errors import UserError  # noqa: E402
from linformer_pt.hub.tokenizer_files import transformers_tokenizer  # noqa: E402

TEXTS = [
    CORPUS[0],
    "  The CAT sat, on the MAT!  ",  # case, punctuation, leading and trailing spaces
    "naïve café — déjà vu: 42 × 7",  # accents and symbols outside the training corpus
    "zebra xylophone quokka",  # words the vocabulary never saw
    "the </s> and <s> are text here, as are [CLS] and [SEP]",  # our own special strings inside the text
]


def test_vocab_json_and_merges_give_robertas_ids(tmp_path):
    source = byte_level_bpe()
    source.model.save(str(tmp_path))  # vocab.json + merges.txt, as an old RoBERTa folder has them
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    vocab["<mask>"] = len(vocab)  # RoBERTa's vocab.json lists <mask> too
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    ours = transformers_tokenizer(tmp_path)
    # From the same two files, with <mask> taking the space before it, as roberta-base's own tokenizer has it.
    mask = transformers.AddedToken("<mask>", lstrip=True, rstrip=False)
    theirs = transformers.RobertaTokenizer.from_pretrained(tmp_path, mask_token=mask)
    for text in TEXTS + ["the cat sat on the <mask> today"]:
        assert ours.encode(text).ids == theirs(text)["input_ids"], text
    assert ours.token_to_id("<mask>") == theirs.mask_token_id and ours.token_to_id("<pad>") == theirs.pad_token_id


@pytest.mark.parametrize("lowercase", [True, False])
def test_vocab_txt_gives_berts_ids(tmp_path, lowercase):
    source = wordpiece()
    source.model.save(str(tmp_path))  # vocab.txt
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lowercase}))
    ours = transformers_tokenizer(tmp_path)
    theirs = transformers.BertTokenizer.from_pretrained(tmp_path)  # vocab.txt and do_lower_case, as ours reads them
    for text in TEXTS + ["the cat sat on the [MASK] today"]:
        assert ours.encode(text).ids == theirs(text)["input_ids"], text
    # Lower-casing is read from tokenizer_config.json: a cased vocabulary keeps "The" apart from "the".
    upper = ours.encode("The CAT").ids
    assert (upper == ours.encode("the cat").ids) == lowercase


def test_a_folder_without_any_tokenizer_file_is_one_line(tmp_path):
    with pytest.raises(UserError, match="has no tokenizer: give tokenizer.json"):
        transformers_tokenizer(tmp_path)
    (tmp_path / "vocab.txt").write_text("hello\nworld\n")  # no special tokens at all
    with pytest.raises(UserError, match="neither RoBERTa's .* nor BERT's"):
        transformers_tokenizer(tmp_path)
