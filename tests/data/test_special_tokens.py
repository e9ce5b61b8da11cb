"""Special tokens: corpus text never yields their ids, they may sit anywhere in a vocabulary, and a user's
tokenizer.json never pads or truncates corpus lines."""
import json
import pickle
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from conftest import compose_config
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from linformer_pt.config import load_config
from linformer_pt.data.binarize import ShardWriter, load_shards, token_dtype, write_shards
from linformer_pt.data.cache import cached_dir, sha256_file
from linformer_pt.data.corpus import cached_corpus, file_source, preprocessed_corpora
from linformer_pt.data.masking import MaskingConfig, collate
from linformer_pt.data.streaming import StreamingMaskedLM
from linformer_pt.data.tokenizer import (
    BOS, EOS, MASK, PAD, SPECIAL_TOKENS, load_tokenizer, special_mask, train_tokenizer,
)  # fmt: skip
from linformer_pt.errors import UserError
from linformer_pt.tasks.masked_lm import MaskedLMTask

DOCS = [
    "The tokenizer reads <s> and </s> in a paper about tokenizers.\nA <mask> token, a <pad> token, an <unk> one.",
    "Plain prose about sequences, attention and projections, repeated to give the BPE some merges.",
] * 20
SPECIAL_TEXT = "<s> <pad> </s> <mask> <unk>"


def ids_of(tokenizer: Tokenizer) -> Dict[str, int]:
    return {name: tokenizer.token_to_id(tok) for name, tok in [("bos", BOS), ("pad", PAD), ("eos", EOS), ("mask", MASK)]}


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer(iter(DOCS), vocab_size=300).save(str(path))
    return path


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    path = tmp_path / "quoting.txt"
    path.write_text(f"{SPECIAL_TEXT}\nsee {SPECIAL_TEXT} here\n\n{SPECIAL_TEXT}\n", encoding="utf-8")
    return path


def assert_only_eos_ends_lines(tokens: np.ndarray, tokenizer: Tokenizer, lines: int) -> None:
    """The only special ids are the `</s>` closing each line, and the text decodes back to the special strings."""
    is_special = special_mask(tokenizer)
    eos = tokenizer.token_to_id(EOS)
    assert set(tokens[is_special[tokens]].tolist()) == {eos}
    assert int((tokens == eos).sum()) == lines and tokens[-1] == eos
    first_line = tokens[: int(np.argmax(tokens == eos))]
    assert tokenizer.decode(first_line.tolist()) == SPECIAL_TEXT


def test_special_token_strings_in_corpus_text_are_text_when_binarized(tokenizer_file, corpus_file, tmp_path):
    tokenizer = load_tokenizer(tokenizer_file)
    source = file_source([corpus_file], "text", "strict")
    write_shards(source.documents(), tokenizer, tokenizer.token_to_id(EOS), tmp_path)
    assert_only_eos_ends_lines(np.asarray(load_shards(tmp_path).shards[0].tokens), tokenizer, 3)
    # the in-memory corpora of a training run go through the token cache
    corpus = cached_corpus(str(tmp_path / "cache"), source, tokenizer_file, tokenizer, tokenizer.token_to_id(EOS))
    assert_only_eos_ends_lines(np.asarray(corpus.shards[0].tokens), tokenizer, 3)


def test_special_token_strings_in_corpus_text_are_text_when_streamed(tokenizer_file, corpus_file):
    tokenizer = load_tokenizer(tokenizer_file)
    # a DataLoader worker started with spawn gets an unpickled copy, which forgets encode_special_tokens
    copy = pickle.loads(pickle.dumps(tokenizer))
    dataset = StreamingMaskedLM([corpus_file], "text", copy, ids_of(tokenizer), special_mask(tokenizer), 256,
                                MaskingConfig(), seed=0)  # fmt: skip
    (sample,) = list(dataset)
    assert sample["targets"][0] == tokenizer.token_to_id(BOS)
    assert_only_eos_ends_lines(sample["targets"][1:], tokenizer, 3)


def test_a_token_cache_of_the_old_encoding_is_not_reused(tokenizer_file, corpus_file, tmp_path):
    tokenizer = load_tokenizer(tokenizer_file)
    source = file_source([corpus_file], "text", "strict")
    eos, mask = tokenizer.token_to_id(EOS), tokenizer.token_to_id(MASK)

    def old_build(folder: Path) -> Dict:  # what earlier code cached: special ids made from the text
        writer = ShardWriter(folder, token_dtype(tokenizer.get_vocab_size()), 1 << 20)
        writer.add([[mask, mask]], eos)
        writer.flush()
        return {}

    cached_dir(str(tmp_path), "tokens", {"tokenizer": sha256_file(tokenizer_file), "source": source.spec}, old_build)
    corpus = cached_corpus(str(tmp_path), source, tokenizer_file, tokenizer, eos)
    assert_only_eos_ends_lines(np.asarray(corpus.shards[0].tokens), tokenizer, 3)


def test_a_preprocessed_folder_of_the_old_encoding_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"spec": {}, "tokenizer_sha256": "x", "splits": []}))
    with pytest.raises(UserError, match="older linformer-preprocess.*re-run linformer-preprocess") as info:
        preprocessed_corpora(str(tmp_path), None)
    assert "\n" not in str(info.value)


def test_a_tokenizer_file_with_padding_and_truncation_encodes_whole_lines(tmp_path):
    tokenizer = train_tokenizer(iter(DOCS), vocab_size=300)
    long_line = " ".join(["projections"] * 12)
    expected = tokenizer.encode(long_line, add_special_tokens=False).ids
    assert len(expected) > 8
    tokenizer.enable_truncation(max_length=4)
    tokenizer.enable_padding(length=64, pad_id=tokenizer.token_to_id(PAD), pad_token=PAD)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    stats = write_shards(iter([long_line]), loaded, loaded.token_to_id(EOS), tmp_path)
    assert stats["tokens"] == len(expected) + 1
    assert load_shards(tmp_path).shards[0].tokens.tolist() == expected + [loaded.token_to_id(EOS)]


def specials_last(documents: List[str]) -> Tokenizer:
    """A byte-level BPE trained without specials, then given them: their ids are the vocabulary's last five."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)  # fmt: skip
    tokenizer.train_from_iterator(documents, trainer)
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    return tokenizer


def task_with_tokenizer(tmp_path: Path, tokenizer: Tokenizer, *overrides: str) -> MaskedLMTask:
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "train.txt").write_text("\n\n".join(DOCS), encoding="utf-8")
    (tmp_path / "valid.txt").write_text(DOCS[1], encoding="utf-8")
    cfg = load_config(compose_config([
        "dataset=text", f"dataset.train_files=[{tmp_path / 'train.txt'}]", f"dataset.valid_files=[{tmp_path / 'valid.txt'}]",
        f"dataset.cache_dir={tmp_path / 'cache'}", f"tokenizer.path={tmp_path / 'tokenizer.json'}",
        "task.tokens_per_sample=32", *overrides,
    ]))  # fmt: skip
    return MaskedLMTask(cfg)


def test_special_tokens_at_the_end_of_the_vocabulary_mask_ordinary_tokens(tmp_path):
    tokenizer = specials_last(DOCS)
    vocab = tokenizer.get_vocab_size()
    assert sorted(tokenizer.token_to_id(t) for t in SPECIAL_TOKENS) == list(range(vocab - 5, vocab))
    # every masked position gets a random token, so each draw is checked
    task = task_with_tokenizer(tmp_path, tokenizer, "task.mask_prob=0.5", "task.leave_unmasked_prob=0",
                               "task.random_token_prob=1")  # fmt: skip
    dataset = task.dataset("train")
    samples = [dataset[i] for i in range(len(dataset))]
    batch = collate(samples, task.pad_id)
    assert batch["targets"].numel() > 0.3 * (~batch["padding_mask"]).sum()  # masks happen
    is_special = special_mask(tokenizer)
    assert not is_special[batch["targets"].numpy()].any()  # only ordinary tokens are masked
    replacements = batch["tokens"][batch["masked_positions"]].numpy()
    assert not is_special[replacements].any() and len(set(replacements.tolist())) > 50  # drawn from the rest


def test_a_tokenizer_with_only_special_tokens_is_refused(tmp_path):
    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(SPECIAL_TOKENS)}, unk_token="<unk>"))
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    with pytest.raises(UserError, match="all 5 ids are special tokens") as info:
        task_with_tokenizer(tmp_path, tokenizer)
    assert "\n" not in str(info.value)
