"""The LM head gathers masked positions by host-computed indices in training (no GPU sync), as a bool mask would."""
import numpy as np
import torch

from linformer_pt.data.masking import collate
from linformer_pt.models.linformer_roberta import LinformerRoberta, LinformerRobertaConfig


def batch() -> dict:
    rng = np.random.default_rng(0)
    samples = []
    for length in (7, 12, 3):  # ragged: rows are padded, and the flat index counts padded positions too
        tokens = rng.integers(5, 100, length)
        masked = rng.random(length) < 0.4
        masked[0] = True
        samples.append({"inputs": tokens, "targets": tokens, "is_masked": masked})
    return collate(samples, pad_id=1)


def test_collate_gives_the_flat_row_major_indices_of_the_mask():
    b = batch()
    mask = b["masked_positions"]
    assert b["masked_index"].dtype == torch.long
    assert b["masked_index"].tolist() == [r * mask.shape[1] + c for r, c in mask.nonzero().tolist()]
    assert len(b["masked_index"]) == len(b["targets"])  # one target per gathered position, in the same order


def test_indices_and_the_bool_mask_give_the_same_logits_and_gradients():
    cfg = LinformerRobertaConfig(layers=2, embed_dim=32, ffn_embed_dim=64, heads=2, max_positions=16, k=4)
    model = LinformerRoberta(cfg, vocab_size=100, padding_idx=1).eval()
    b = batch()
    outputs, grads = [], []
    for positions in (b["masked_positions"], b["masked_index"]):
        model.zero_grad()
        logits = model(b["tokens"], b["padding_mask"], positions)
        torch.nn.functional.cross_entropy(logits, b["targets"]).backward()
        outputs.append(logits.detach())
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    for a, c in zip(*grads):
        torch.testing.assert_close(a, c)


def test_the_masked_lm_loss_passes_the_grid_or_indices(monkeypatch):
    from linformer_pt.tasks.masked_lm import MaskedLMTask

    seen = []
    cfg = LinformerRobertaConfig(layers=1, embed_dim=32, ffn_embed_dim=64, heads=2, max_positions=16, k=4)
    model = LinformerRoberta(cfg, vocab_size=100, padding_idx=1)
    real = model.forward
    monkeypatch.setattr(model, "forward", lambda t, p, m=None, grid=None: seen.append((m, grid)) or real(t, p, m, grid))
    b = batch()
    loss, stats = MaskedLMTask.loss(None, model, b)
    assert seen[0][0] is None and seen[0][1].rows is b["masked_grid_rows"] and stats["masked"] == len(b["targets"])
    del b["masked_grid_rows"], b["masked_grid_real"]  # a batch without the grid: indices, no device sync either
    MaskedLMTask.loss(None, model, b)
    assert seen[1][0].dtype == torch.long and seen[1][1] is None
