"""linformer-import of transformers RoBERTa, XLM-R and BERT folders: the export computes the source's logits."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from import_sources import padded_batch, transformers_folder  # noqa: E402
from linformer_pt import LinformerForMaskedLM  # noqa: E402
from linformer_pt.cli import import_model as import_cli  # noqa: E402

BIN = Path(sys.executable).parent
MASK = {"roberta": "<mask>", "xlm-roberta": "<mask>", "bert": "[MASK]"}


def source_logits(folder: Path, batch: dict) -> torch.Tensor:
    model = transformers.AutoModelForMaskedLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta", "bert"])
def test_import_gives_the_source_logits_with_padding(tmp_path, model_type):
    src = transformers_folder(tmp_path / "src", model_type)
    out = tmp_path / "out"
    import_cli.main([str(src), str(out)])
    ours = LinformerForMaskedLM.from_pretrained(out)
    assert ours.cfg.attention == "standard" and ours.cfg.max_positions == 64
    pad = ours.padding_idx
    specials = [i for i in ours.special_ids().values()]
    batch = padded_batch([40, 23, 9], ours.embed_tokens.num_embeddings, pad, specials)  # 40 < max_positions
    expected = source_logits(src, batch)
    with torch.no_grad():
        got = ours(batch["input_ids"], batch["attention_mask"] == 0)
    real = batch["attention_mask"].bool()
    assert expected.abs().max() > 1.0  # logits far from zero: a mismapped weight shows
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)
    # The transformers adapter written into OUT computes the same.
    remote = transformers.AutoModelForMaskedLM.from_pretrained(out, trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(remote(**batch).logits[real], expected[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", ["roberta", "bert"])
def test_fill_mask_uses_the_sources_mask_token(tmp_path, model_type):
    src = transformers_folder(tmp_path / "src", model_type)
    out = tmp_path / "out"
    done = subprocess.run([str(BIN / "linformer-import"), str(src), str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    mask = MASK[model_type]
    text = f"the cat sat on the {mask} and the dog"
    ours = LinformerForMaskedLM.from_pretrained(out)
    assert ours.mask_token == mask
    predictions = ours.fill_mask([text], top_k=3)[0]
    assert len(predictions) == 1 and len(predictions[0]) == 3
    # The source's own tokenizer and model pick the same token at the same position.
    tokenizer = transformers.AutoTokenizer.from_pretrained(src)
    encoded = tokenizer([text], return_tensors="pt")
    assert encoded["input_ids"][0].tolist() == ours.tokenize([text])[0][0].tolist()
    logits = source_logits(src, dict(encoded))
    position = encoded["input_ids"][0].tolist().index(tokenizer.mask_token_id)
    assert predictions[0][0]["token"] == int(logits[0, position].argmax())
    done = subprocess.run([str(BIN / "linformer-fill-mask"), str(out), text, "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f'"token": {predictions[0][0]["token"]}' in done.stdout
