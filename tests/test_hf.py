"""The transformers adapter: an export loads through Auto classes and the fill-mask pipeline with our logits."""
import os
import subprocess
import sys
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
    assert model.classification_head.out_proj.weight.grad is not None and model.embed_tokens.weight.grad is not None


# Run in a fresh interpreter where `import linformer_pt` fails, as on a machine without linformer-pt.
WITHOUT_LINFORMER_PT = """
import sys
from importlib.abc import MetaPathFinder

class NoLinformerPt(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "linformer_pt":
            raise ImportError("linformer_pt is not installed here")

sys.meta_path.insert(0, NoLinformerPt())
import torch
import transformers

folder, inputs_file, out_file, threads = sys.argv[1:]
torch.set_num_threads(int(threads))
inputs = torch.load(inputs_file)
model = transformers.AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(**inputs).logits
fill = transformers.pipeline("fill-mask", model=folder, trust_remote_code=True)
tokens = [p["token"] for p in fill(inputs["text"], top_k=5)]
assert not [m for m in sys.modules if m.split(".")[0] == "linformer_pt"]
torch.save({"logits": logits, "tokens": tokens}, out_file)
"""


@pytest.mark.slow
def test_export_loads_without_linformer_pt(exported, ours, tmp_path):
    """The export's code imports only torch and transformers: no linformer-pt needed where it is loaded."""
    tokens, padding_mask = ours.tokenize(TEXTS)
    inputs = {"input_ids": tokens, "attention_mask": (~padding_mask).long(), "text": TEXTS[0]}
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    args = [exported, tmp_path / "inputs.pt", tmp_path / "out.pt", str(torch.get_num_threads())]
    subprocess.run([sys.executable, "-c", WITHOUT_LINFORMER_PT, *map(str, args)], env=env, cwd=tmp_path, check=True)
    theirs = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        assert torch.equal(theirs["logits"], ours(tokens, padding_mask))
    assert theirs["tokens"] == [p["token"] for p in ours.fill_mask([TEXTS[0]], top_k=5)[0][0]]


def test_trainer_fine_tunes_an_export(exported, tmp_path):
    """transformers' Trainer (it needs accelerate, in the [hf] extra) trains an export's encoder and new head."""
    pytest.importorskip("accelerate", reason="transformers' Trainer needs pip install 'linformer-pt[hf]'")
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported, trust_remote_code=True)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(exported, trust_remote_code=True, num_labels=2)
    texts = ["a man saw one red car .", "the quick brown fox jumps over the lazy dog ."] * 4
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    dataset = [{"input_ids": batch["input_ids"][i], "attention_mask": batch["attention_mask"][i], "labels": i % 2}
               for i in range(len(texts))]  # fmt: skip
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "trainer"), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3,
        use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True, seed=0,
    )  # fmt: skip
    result = transformers.Trainer(model=model, args=args, train_dataset=dataset).train()
    assert result.global_step == 3 and torch.isfinite(torch.tensor(result.training_loss))
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    assert any("classification_head" in name for name in changed)
    assert any("classification_head" not in name for name in changed)  # gradients reach the encoder too
