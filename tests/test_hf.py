"""The transformers adapter: an export loads through Auto classes and the fill-mask pipeline with our logits."""
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the transformers adapter needs pip install 'linformer-pt[hf]'")

from hub_fixtures import train_tiny_run  # noqa: E402
from linformer_pt import LinformerForMaskedLM  # noqa: E402
from linformer_pt.cli import export as export_cli  # noqa: E402

TEXTS = ["all saw old one . the quick brown <mask> jumps over the lazy dog .", "a man <mask> ."]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, cache_dir) -> Path:
    run = train_tiny_run(tmp_path_factory.mktemp("hf") / "run", cache_dir)
    out = run.parent / "export"
    export_cli.main([str(run), str(out)])
    return out


@pytest.fixture(scope="module")
def ours(exported) -> LinformerForMaskedLM:
    return LinformerForMaskedLM.from_pretrained(exported)


def hf_inputs(exported: Path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported, trust_remote_code=True)
    return tokenizer, tokenizer(TEXTS, return_tensors="pt", padding=True)


def test_auto_tokenizer_matches_ours(exported, ours):
    tokenizer, inputs = hf_inputs(exported)
    tokens, padding_mask = ours.tokenize(TEXTS)
    assert tokenizer.mask_token == "<mask>" and tokenizer.mask_token_id == 4
    assert torch.equal(inputs["input_ids"], tokens) and torch.equal(inputs["attention_mask"] == 0, padding_mask)


def test_auto_masked_lm_logits_equal_ours(exported, ours):
    model = transformers.AutoModelForMaskedLM.from_pretrained(exported, trust_remote_code=True).eval()
    _, inputs = hf_inputs(exported)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, ours(*ours.tokenize(TEXTS)))
        base = transformers.AutoModel.from_pretrained(exported, trust_remote_code=True).eval()
        assert torch.equal(base(**inputs).last_hidden_state, ours.encode(TEXTS)[0])


def test_fill_mask_pipeline_agrees(exported, ours):
    fill = transformers.pipeline("fill-mask", model=str(exported), trust_remote_code=True)
    theirs = fill(TEXTS[0], top_k=5)
    mine = ours.fill_mask([TEXTS[0]], top_k=5)[0][0]
    assert [p["token"] for p in theirs] == [p["token"] for p in mine]
    for a, b in zip(theirs, mine):
        assert a["score"] == pytest.approx(b["score"], rel=1e-5)
    assert "fox" in [p["token_str"].strip() for p in theirs]


def test_sequence_classification_head_on_the_first_token(exported, ours):
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        exported, trust_remote_code=True, num_labels=3
    ).eval()
    _, inputs = hf_inputs(exported)
    labels = torch.tensor([0, 2])
    out = model(**inputs, labels=labels)
    assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)
    with torch.no_grad():  # the encoder under the head is the exported one
        assert torch.equal(model.features(inputs["input_ids"], inputs["attention_mask"]), ours.encode(TEXTS)[0])
    out.loss.backward()
    assert model.classifier_out.weight.grad is not None and model.embed_tokens.weight.grad is not None
