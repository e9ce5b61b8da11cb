"""linformer-fill-mask and LinformerForMaskedLM.fill_mask/encode; RoBERTa's lstrip <mask> in prompts only."""
import json
from pathlib import Path

import pytest
import torch

from hub_fixtures import train_tiny_run
from linformer_pt import LinformerForMaskedLM
from linformer_pt.cli import export as export_cli, fill_mask as fill_mask_cli
from linformer_pt.data.tokenizer import load_tokenizer, train_tokenizer
from linformer_pt.errors import UserError
from linformer_pt.hub.export_folder import prompt_tokenizer

# The training phrase in a context like the training documents' (a few words, then the phrase).
PROMPT = "all saw old one . the quick brown <mask> jumps over the lazy <mask> . all saw old one ."


@pytest.fixture(scope="module")
def exported(tmp_path_factory, cache_dir) -> Path:
    run = train_tiny_run(tmp_path_factory.mktemp("fill") / "run", cache_dir)
    out = run.parent / "export"
    export_cli.main([str(run), str(out)])
    return out


def test_predicts_the_trained_phrase(exported):
    model = LinformerForMaskedLM.from_pretrained(exported)
    (fox, dog), = model.fill_mask([PROMPT], top_k=10)
    assert "fox" in [p["token_str"].strip() for p in fox]
    assert "dog" in [p["token_str"].strip() for p in dog]
    assert all(0.0 <= p["score"] <= 1.0 for p in fox) and fox[0]["score"] >= fox[-1]["score"]


def test_texts_in_a_batch_get_their_own_masks(exported):
    model = LinformerForMaskedLM.from_pretrained(exported)
    single = model.fill_mask(["a man <mask> ."], top_k=3)[0]
    both = model.fill_mask([PROMPT, "a man <mask> ."], top_k=3)
    assert [len(masks) for masks in both] == [2, 1]
    assert [p["token"] for p in both[1][0]] == [p["token"] for p in single[0]]  # padding changes nothing
    with pytest.raises(UserError, match="no <mask>"):
        model.fill_mask(["nothing to fill"])


def test_encode_returns_features_and_padding(exported):
    model = LinformerForMaskedLM.from_pretrained(exported)
    features, padding_mask = model.encode(["a man saw one red car .", "a man"])
    assert features.shape[:2] == padding_mask.shape and features.shape[2] == model.cfg.embed_dim
    assert padding_mask[1].any() and not padding_mask[0].any()
    alone, _ = model.encode(["a man"])
    torch.testing.assert_close(features[1, : alone.shape[1]], alone[0], rtol=1e-5, atol=1e-5)


def test_cli_prints_top_k_for_texts_and_file(exported, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text(f"{PROMPT}\n\na man <mask> .\n")
    fill_mask_cli.main([str(exported), "the <mask> .", "--file", str(texts), "--top-k", "4", "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["text"] for line in lines] == ["the <mask> .", PROMPT, "a man <mask> ."]
    assert [len(line["masks"]) for line in lines] == [1, 2, 1] and len(lines[1]["masks"][0]) == 4
    fill_mask_cli.main([str(exported), PROMPT, "--top-k", "10"])
    table = capsys.readouterr().out
    assert "<mask> 1:" in table and "fox" in table.splitlines()[1]


def test_cli_without_mask_is_one_line(exported, capsys):
    with pytest.raises(SystemExit) as stop:
        fill_mask_cli.main([str(exported), "no mask here"])
    assert stop.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_file_lines_without_mask_are_skipped_with_a_warning(exported, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("a man <mask> .\nno mask on line two\n\nthe <mask> .\n<MASK> is not it either\n")
    fill_mask_cli.main([str(exported), "--file", str(texts), "--json"])
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [(line["text"], line["line"]) for line in lines] == [("a man <mask> .", 1), ("the <mask> .", 4)]
    warnings = captured.err.splitlines()
    assert len(warnings) == 2 and all(w.startswith("linformer-fill-mask: warning: ") for w in warnings)
    assert "line 2 has no <mask>" in warnings[0] and "line 5 has no <mask>" in warnings[1]


def test_file_with_no_fillable_line_fails(exported, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("nothing here\nnor here\n")
    with pytest.raises(SystemExit) as stop:
        fill_mask_cli.main([str(exported), "--file", str(texts)])
    err = capsys.readouterr().err.splitlines()
    assert stop.value.code == 2 and len(err) == 3 and "none of its 2 non-blank line(s) has a <mask>" in err[-1]
    fill_mask_cli.main([str(exported), "a man <mask> .", "--file", str(texts), "--json"])  # a text to fill: status 0
    assert [json.loads(x)["text"] for x in capsys.readouterr().out.splitlines()] == ["a man <mask> ."]


def test_mask_takes_the_space_before_it_in_prompts_only(tmp_path):
    tokenizer = train_tokenizer(["the cat sat on the mat ."] * 50, vocab_size=300, min_frequency=1)
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    added = {t["content"]: t for t in json.loads(path.read_text())["added_tokens"]}
    assert added["<mask>"]["lstrip"] and not added["<s>"]["lstrip"]  # trained tokenizers carry it themselves
    prompt = prompt_tokenizer(path).encode("the <mask> sat")
    assert prompt.tokens == ["<s>", "the", " <mask>", "\u0120sat", "</s>"] and prompt.ids[2] == 4  # as RoBERTa
    corpus = load_tokenizer(path).encode("the <mask> sat", add_special_tokens=False)
    assert 4 not in corpus.ids  # corpus text: "<mask>" stays characters
