"""trainer.compile: the model under torch.compile (inductor; a C++ compiler on the CPU) gives eager's loss."""
import shutil

import pytest
import torch

from linformer_pt.modules.attention import AttentionSpec
from linformer_pt.modules.encoder import Encoder


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler")
def test_compiled_encoder_matches_eager_loss_and_gradients():
    torch.manual_seed(0)
    encoder = Encoder(2, 32, 64, 4, 16, [8, 8], AttentionSpec("linformer", "headwise"), dropout=0.0).eval()
    x = torch.randn(2, 16, 32)
    eager = encoder(x).pow(2).mean()
    eager.backward()
    eager_grads = [p.grad.clone() for p in encoder.parameters()]
    encoder.zero_grad()
    compiled = torch.compile(encoder)(x).pow(2).mean()
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    for p, g in zip(encoder.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-3, atol=1e-5)


def test_changing_masked_counts_do_not_recompile_the_model():
    """trainer.compile marks the masked-count dimensions dynamic (training/step.py), so a batch with other counts
    reuses the graph instead of compiling it again; unmarked, the second batch recompiles (the test can fail)."""
    from linformer_pt.models.linformer_roberta import LinformerRoberta, LinformerRobertaConfig
    from linformer_pt.tasks.masked_lm import masked_logits
    from linformer_pt.training.step import mark_masked_counts_dynamic
    import numpy as np

    from linformer_pt.data.masking import collate

    def batch(seed: int) -> dict:
        rng = np.random.default_rng(seed)
        samples = []
        for length in (16, 11, 14):
            tokens = rng.integers(5, 100, length)
            samples.append({"inputs": tokens, "targets": tokens, "is_masked": rng.random(length) < 0.3})
        return collate(samples, pad_id=1)

    counts = {}
    for marked in (True, False):
        torch._dynamo.reset()
        graphs = []

        def backend(gm, example_inputs):  # counts graphs; runs them as traced (no inductor: fast)
            graphs.append(gm)
            return gm.forward

        torch.manual_seed(0)
        # k=8: folding W_Q, W_O into K', V' (modules/folded_attention.py) never pays here, at any masked count; with
        # k=4 it would from 7 rows up, and a batch crossing that count would take the other branch's graph.
        cfg = LinformerRobertaConfig(layers=2, embed_dim=32, ffn_embed_dim=64, heads=4, max_positions=16, k=8,
                                     dropout=0.0, attention_dropout=0.0)  # fmt: skip
        model = LinformerRoberta(cfg, vocab_size=100, padding_idx=1).train()  # as trained: one graph, no break
        compiled = torch.compile(model, backend=backend)
        after_first = None
        for seed in range(4):
            b = batch(seed)
            if marked:
                mark_masked_counts_dynamic(b)
            with torch.no_grad():
                torch.testing.assert_close(masked_logits(compiled, b), masked_logits(model, b))
            after_first = len(graphs) if after_first is None else after_first
        counts[marked] = (after_first, len(graphs))
    assert counts[True][0] == counts[True][1], counts  # marked: no graph after the first batch's
    assert counts[False][1] > counts[False][0], counts  # unmarked: compiled again


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler")
def test_the_cheaper_dropout_mask_under_inductor_drops_at_its_rate_and_follows_the_seed():
    """Compiled training uses modules/dropout.py's mask too: its rate, scale and four 16-bit lanes per 64-bit draw must
    survive inductor's code, and the mask must be a function of the seed (resumes and reruns depend on it)."""
    from linformer_pt.modules.dropout import LEVELS, dropout

    compiled = torch.compile(lambda x: dropout(x, 0.1, True))
    x = torch.ones(64, 128, 128)  # 1M elements: the rate's standard deviation is 0.0003
    torch.manual_seed(0)
    first = compiled(x)
    drop = round(0.1 * LEVELS) / LEVELS
    assert (first == 0).double().mean().item() == pytest.approx(drop, abs=0.002)
    assert torch.allclose(first[first != 0], torch.tensor(1 / (1 - drop)))
    lanes = (first == 0).flatten().view(-1, 4).double().mean(0)  # each 16-bit lane of a draw alone
    assert torch.allclose(lanes, torch.full((4,), drop, dtype=torch.float64), atol=0.004)
    assert not torch.equal(compiled(x), first)  # the next call draws a new mask
    torch.manual_seed(0)
    assert torch.equal(compiled(x), first)  # the same seed, the same mask
