"""Labelled examples: every format reads the same rows, one-line errors, label maps, truncation and RoBERTa layouts."""
import csv
import json
from pathlib import Path
from typing import List

import numpy as np
import pytest
from conftest import SHARED_DATA

from linformer_pt.data.labelled import (
    TRUNCATIONS, _kept_lengths, encode_labels, encode_pairs, label_names, read_labelled,
)  # fmt: skip
from linformer_pt.data.tokenizer import BOS, EOS, SPECIAL_TOKENS, special_mask, text_only, train_tokenizer
from linformer_pt.errors import UserError

# Quotes (balanced and not), commas and a special-token string: literal text in every format.
ROWS = [
    ('a "quoted" word, and a comma', "the second side", "1"),
    ("it 's \"unbalanced and fine", "another side", "0"),
    ("plain text with <mask> in it", "last one", "1"),
]
DOCS = ["the film was great and the acting was fine, a quoted word and a comma", "slow dull film <mask> text"] * 30


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(iter(DOCS), vocab_size=300)


@pytest.fixture(scope="module")
def special_ids(tokenizer):
    return {"bos": tokenizer.token_to_id(BOS), "eos": tokenizer.token_to_id(EOS)}


def write_tsv(path: Path, lines: List[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def write_all_formats(folder: Path) -> List[str]:
    """The ROWS as TSV, CSV, JSONL, parquet, a saved Dataset and a split of a saved DatasetDict."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    datasets.disable_progress_bars()
    tsv = write_tsv(folder / "rows.tsv", ["sentence\tsecond\tlabel"] + [f"{a} \t{b}\t{y}" for a, b, y in ROWS])
    with open(folder / "rows.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("sentence", "second", "label"), *ROWS])
    records = [{"sentence": a, "second": b, "label": int(y)} for a, b, y in ROWS]
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    columns = {key: [r[key] for r in records] for key in ("sentence", "second", "label")}
    pq.write_table(pa.table(columns), folder / "rows.parquet")
    dataset = datasets.Dataset.from_dict(columns)
    dataset.save_to_disk(str(folder / "saved"))
    datasets.DatasetDict({"train": dataset, "validation": dataset}).save_to_disk(str(folder / "saved_dict"))
    return [tsv, str(folder / "rows.csv"), str(folder / "rows.jsonl"), str(folder / "rows.parquet"),
            str(folder / "saved"), f"{folder / 'saved_dict'}:validation"]  # fmt: skip


def read(paths: List[str], pair: str = "", require: bool = True):
    return read_labelled(paths, "sentence", pair, "label", "task.train", require)


def test_every_format_reads_the_same_rows(tmp_path):
    for path in write_all_formats(tmp_path):
        examples = read([path], pair="second")
        assert examples.texts == [a for a, _, _ in ROWS], path
        assert examples.pairs == [b for _, b, _ in ROWS], path
        assert examples.labels == [y for _, _, y in ROWS], path
        assert examples.source == path
    single = read([str(tmp_path / "rows.tsv")])
    assert single.pairs is None


def test_several_files_are_concatenated_in_order(tmp_path):
    first = write_tsv(tmp_path / "a.tsv", ["sentence\tlabel", "one\t0", "two\t1"])
    second = write_tsv(tmp_path / "b.tsv", ["label\tsentence", "1\tthree"])
    examples = read([first, second])
    assert examples.texts == ["one", "two", "three"] and examples.labels == ["0", "1", "1"]


def test_tsv_quotes_are_literal(tmp_path):
    path = write_tsv(tmp_path / "q.tsv", ["sentence\tlabel", '"hello" she said\t1', 'an "open quote\t0', "next\t1"])
    assert read([path]).texts == ['"hello" she said', 'an "open quote', "next"]


def test_sst2_dev():
    dev = SHARED_DATA / "sst2" / "dev.tsv"
    if not dev.is_file():
        pytest.skip(f"{dev} is absent")
    examples = read([str(dev)])
    assert len(examples.texts) == 872 and set(examples.labels) == {"0", "1"}
    assert examples.labels.count("1") == 444
    assert examples.texts[0] == "it 's a charming and often affecting journey ."  # GLUE's trailing space stripped


def test_unlabelled_files_give_no_labels_unless_required(tmp_path):
    path = write_tsv(tmp_path / "test.tsv", ["sentence", "to predict"])
    assert read([path], require=False).labels is None
    with pytest.raises(UserError, match=r"test.tsv has no column 'label' \(the label column\); its columns are sentence"):
        read([path])
    labelled = write_tsv(tmp_path / "dev.tsv", ["sentence\tlabel", "x\t1"])
    with pytest.raises(UserError, match="test.tsv has no column 'label'.*for all files or for none"):
        read([labelled, path], require=False)


@pytest.mark.parametrize(
    "name, content, pattern",
    [
        ("missing.tsv", None, r"task.train: no such file: .*missing.tsv"),
        ("rows.xlsx", "x", r"rows.xlsx has an unsupported suffix '.xlsx'; use one of .tsv, .csv, .jsonl, .json, .parquet"),
        ("empty.tsv", "", r"empty.tsv is empty"),
        ("empty.jsonl", "\n\n", r"empty.jsonl is empty"),
        ("header.tsv", "sentence\tlabel\n", r"header.tsv has no rows"),
        ("cols.tsv", "text\tlabel\nx\t1\n", r"cols.tsv has no column 'sentence' \(the text column\); its columns are text, label"),
        ("cell.tsv", "sentence\tlabel\nfine\t1\n  \t0\n", r"cell.tsv: line 3 has an empty 'sentence' cell"),
        ("label.tsv", "sentence\tlabel\nfine\t\n", r"label.tsv: line 2 has an empty 'label' cell"),
        ("fields.tsv", "sentence\tlabel\nfine\t1\nbad\t1\textra\n", r"fields.tsv: line 3 has 3 tab-separated fields, the header has 2"),
        ("fields.csv", "sentence,label\nfine,1\n\nbad, comma,1\n", r"fields.csv: line 4 has 3 comma-separated fields, the header has 2"),
        ("field.jsonl", '{"sentence": "a", "label": 1}\n{"label": 0}\n', r"field.jsonl: line 2 has no field 'sentence'; it has label"),
        ("bad.jsonl", '{"sentence": "a", "label": 1}\nnot json\n', r"bad.jsonl: line 2 is not JSON"),
    ],
)  # fmt: skip
def test_one_line_errors(tmp_path, name, content, pattern):
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=pattern) as err:
        read([str(path)])
    assert "\n" not in str(err.value)


def test_folder_errors(tmp_path):
    write_all_formats(tmp_path)
    with pytest.raises(UserError, match=r"saved_dict is a DatasetDict with splits train, validation; name one as"):
        read([str(tmp_path / "saved_dict")])
    with pytest.raises(UserError, match=r"not a `datasets` save_to_disk folder"):
        read([str(tmp_path)])
    with pytest.raises(UserError, match=r"task.train is empty"):
        read([])


def test_label_names_and_round_trip():
    raw = ["pos", "neg", "neutral", "neg"]
    names = label_names(raw, 3, [])
    assert names == ["neg", "neutral", "pos"]
    indices = encode_labels(raw, names, "task.train")
    assert indices.dtype == np.int64 and indices.tolist() == [2, 0, 1, 0]
    assert [names[i] for i in indices] == raw
    assert label_names(["1", "1"], 3, []) == ["0", "1", "2"]  # digit labels are their own index
    assert label_names(["10", "2", "1", "2"], 3, []) == ["1", "2", "10"]  # numeric, not string, order
    assert label_names(["5", "1", "3", "2", "4"], 5, []) == ["1", "2", "3", "4", "5"]  # stars are not indices
    assert label_names(["-1", "1"], 2, []) == ["-1", "1"]
    assert label_names(["a", "b"], 2, ["b", "a"]) == ["b", "a"]


def test_label_name_errors():
    with pytest.raises(UserError, match=r"the labels have 3 distinct values \(a, b, c\) but num_classes=2"):
        label_names(["a", "b", "c"], 2, [])
    with pytest.raises(UserError, match=r"the label 2 is outside 0..1 \(num_classes=2\)"):
        label_names(["0", "2", "0"], 2, [])  # indices from 0, one past the classes
    with pytest.raises(UserError, match=r"must be 3 distinct names \(num_classes=3\)"):
        label_names(["a"], 3, ["a", "b"])


def test_encode_labels_errors_and_regression():
    with pytest.raises(UserError, match=r"task.valid: example 3 has the label 'maybe', which is not a known label \(neg, pos\)"):
        encode_labels(["pos", "neg", "maybe"], ["neg", "pos"], "task.valid")
    targets = encode_labels(["0.5", "3", "-1e-2"], None, "task.train")
    assert targets.dtype == np.float32 and targets.tolist() == pytest.approx([0.5, 3.0, -0.01])
    for bad in ("high", "nan"):
        with pytest.raises(UserError, match=rf"task.train: example 2 has the label '{bad}', not a finite number"):
            encode_labels(["1", bad], None, "task.train")


def full_ids(tokenizer, text: str) -> List[int]:
    return text_only(tokenizer).encode(text, add_special_tokens=False).ids


def test_truncation_keeps_the_right_tokens(tokenizer, special_ids):
    long_text = " ".join(DOCS[:4])
    short_text = "great film"
    full = full_ids(tokenizer, long_text)
    assert len(full) > 40 and len(full_ids(tokenizer, short_text)) < 18
    bos, eos = special_ids["bos"], special_ids["eos"]
    expected = {"head": full[:18], "tail": full[-18:], "head_tail": full[:5] + full[-13:]}  # ceil(18/4) = 5
    for truncation in TRUNCATIONS:
        ids, truncated = encode_pairs(tokenizer, [long_text, short_text], None, 20, truncation, special_ids)
        assert ids[0].dtype == np.int64 and ids[0].tolist() == [bos, *expected[truncation], eos], truncation
        assert ids[1].tolist() == [bos, *full_ids(tokenizer, short_text), eos]
        assert truncated == 1
    ids, truncated = encode_pairs(tokenizer, [long_text], None, len(full) + 2, "head", special_ids)
    assert ids[0].tolist() == [bos, *full, eos] and truncated == 0


def test_head_tail_keeps_128_plus_382_of_512(tokenizer, special_ids):
    text = " ".join(DOCS * 4)
    full = full_ids(tokenizer, text)
    assert len(full) > 600
    ids, _ = encode_pairs(tokenizer, [text], None, 512, "head_tail", special_ids)
    assert ids[0][1:-1].tolist() == full[:128] + full[-382:]


def test_pairs_put_two_eos_between_and_trim_the_longer_side(tokenizer, special_ids):
    a, b = "great film", " ".join(DOCS[:4])
    ids_a, ids_b = full_ids(tokenizer, a), full_ids(tokenizer, b)
    bos, eos = special_ids["bos"], special_ids["eos"]
    ids, truncated = encode_pairs(tokenizer, [a], [b], 4 + len(ids_a) + 10, "tail", special_ids)
    assert ids[0].tolist() == [bos, *ids_a, eos, eos, *ids_b[-10:], eos] and truncated == 1
    ids, truncated = encode_pairs(tokenizer, [a], [b], 4 + len(ids_a) + len(ids_b), "tail", special_ids)
    assert ids[0].tolist() == [bos, *ids_a, eos, eos, *ids_b, eos] and truncated == 0


def test_kept_lengths_match_dropping_one_token_at_a_time():
    def reference(a: int, b: int, budget: int):
        while a + b > budget:  # the longer side loses a token; the second side on a tie
            a, b = (a - 1, b) if a > b else (a, b - 1)
        return a, b

    for a in range(0, 12):
        for b in range(0, 12):
            for budget in range(2, 25):
                assert _kept_lengths(a, b, budget) == reference(a, b, budget), (a, b, budget)


def test_special_token_strings_are_text(tokenizer, special_ids):
    text = "plain text with <mask> in it and " + " ".join(SPECIAL_TOKENS)
    ids, _ = encode_pairs(tokenizer, [text], [text], 512, "head", special_ids)
    is_special = special_mask(tokenizer)
    inner = ids[0][1:-1]
    assert set(inner[is_special[inner]].tolist()) == {special_ids["eos"]}  # only the two </s> between the sides
    assert int(is_special[inner].sum()) == 2


def test_bad_truncation_and_budget(tokenizer, special_ids):
    with pytest.raises(UserError, match=r"truncation='middle' is not one of head, tail, head_tail"):
        encode_pairs(tokenizer, ["x"], None, 10, "middle", special_ids)
    with pytest.raises(UserError, match=r"max_tokens=5 leaves no room for text beside the 4 special tokens"):
        encode_pairs(tokenizer, ["x"], ["y"], 5, "head", special_ids)
