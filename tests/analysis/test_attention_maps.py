"""The attention recomputed from each layer's captured input equals the attention module's own output."""
import itertools

import pytest
import torch

from linformer_pt.analysis.attention_maps import full_probs, recompute_output, reduce_layers
from linformer_pt.modules.attention import SHARING_SCHEMES
from linformer_pt.modules.projections import PROJECTIONS
from tiny_models import padded, random_tokens, tiny_model

LINFORMER_KINDS = [dict(sharing=s, projection=p) for s, p in itertools.product(SHARING_SCHEMES, PROJECTIONS)]
KINDS = [dict(attention="standard")] + LINFORMER_KINDS + [dict(sharing="headwise", fairseq_compat=True)]


def batch():
    return padded([random_tokens(32, seed=1), random_tokens(19, seed=2), random_tokens(7, seed=3)])


@pytest.mark.parametrize("cfg", KINDS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_recomputed_attention_equals_the_module_output(cfg):
    model = tiny_model(**cfg)
    if cfg.get("projection") == "conv":  # taps away from their mean-pooling initial value
        for name, p in model.named_parameters():
            if "proj_" in name or "shared_projection" in name:
                p.data.uniform_(0.5, 1.5)

    captured = reduce_layers(model, *batch(), lambda _, *layer_input: layer_input)
    assert len(captured) == model.cfg.layers
    for attn, x, mask, shared in captured:
        with torch.no_grad():
            expected = attn(x, mask, shared)
            torch.testing.assert_close(recompute_output(attn, x, mask, shared), expected, atol=1e-5, rtol=1e-5)
        assert expected.abs().max() > 0.1


def test_full_probs_are_row_stochastic_over_real_keys_only():
    model = tiny_model(attention="standard")
    tokens, padding_mask = batch()
    probs = reduce_layers(model, tokens, padding_mask, lambda _, attn, x, mask, __: full_probs(attn, x, mask))
    for p in probs:
        assert p.shape == (3, 4, 32, 32)
        torch.testing.assert_close(p.sum(-1), torch.ones(3, 4, 32))
        assert p.masked_select(padding_mask[:, None, None, :]).abs().max() == 0
