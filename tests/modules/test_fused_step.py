"""The training-step speed-ups: fused Q/K/V and E/F products, and the CPU's cheaper dropout mask.

Each is checked against the plain computation it replaces (outputs and gradients), and the state dict keeps its
names and shapes (checkpoints and the hub converters depend on them).
"""
import itertools

import pytest
import torch
import torch.nn.functional as F

from linformer_pt.modules import attention as attention_module
from linformer_pt.modules import dropout as dropout_module
from linformer_pt.modules.attention import SHARING_SCHEMES, AttentionSpec, LinformerSelfAttention, StandardSelfAttention
from linformer_pt.modules.dropout import attention, dropout, keep_mask
from linformer_pt.modules.projections import PROJECTIONS, build_projection, project_pair

D, H, N, K = 16, 4, 12, 5


def separate_qkv(self, x, queries=None):
    return self.q_proj(x if queries is None else queries), self.k_proj(x), self.v_proj(x)


def separate_pair(e, f, x, keep):
    ones = x.new_ones(x.shape[0], x.shape[1], 1)
    return e(x, keep), f(x, keep), e(ones, keep), f(ones, keep)


def build(kind: str, sharing: str = "headwise", projection: str = "linear"):
    torch.manual_seed(0)
    if kind == "standard":
        return StandardSelfAttention(D, H, 0.0).double(), None
    attn = LinformerSelfAttention(D, H, N, K, AttentionSpec("linformer", sharing, projection)).double()
    shared = build_projection(projection, N, K).double() if sharing == "layerwise" else None
    return attn, shared


def outputs_and_grads(attn, shared, x, padding_mask):
    attn.zero_grad()
    x = x.clone().requires_grad_()
    out = attn(x, padding_mask, shared)
    out.pow(2).sum().backward()
    grads = {name: p.grad.clone() for name, p in attn.named_parameters() if p.grad is not None}
    return out.detach(), x.grad, grads


CASES = [("standard", "headwise", "linear")] + [("linformer", s, p) for s, p in itertools.product(SHARING_SCHEMES, PROJECTIONS)]


@pytest.mark.parametrize("kind,sharing,projection", CASES)
def test_fused_products_equal_the_separate_ones_with_gradients(kind, sharing, projection, monkeypatch):
    attn, shared = build(kind, sharing, projection)
    x = torch.randn(3, N, D, dtype=torch.float64)
    padding_mask = torch.zeros(3, N, dtype=torch.bool)
    padding_mask[1, 8:] = True
    fused = outputs_and_grads(attn, shared, x, padding_mask)
    monkeypatch.setattr(attention_module._MultiHeadBase, "qkv", separate_qkv)
    monkeypatch.setattr(attention_module, "project_pair", separate_pair)
    separate = outputs_and_grads(attn, shared, x, padding_mask)
    torch.testing.assert_close(fused[0], separate[0])
    torch.testing.assert_close(fused[1], separate[1])
    assert fused[2].keys() == separate[2].keys()
    for name in fused[2]:
        torch.testing.assert_close(fused[2][name], separate[2][name], msg=name)


def test_fused_qkv_in_fp32_matches_within_tolerance():
    torch.manual_seed(0)
    attn = StandardSelfAttention(D, H, 0.0)
    x = torch.randn(2, N, D)
    q, k, v = attn.qkv(x)
    for fused, linear in zip((q, k, v), (attn.q_proj, attn.k_proj, attn.v_proj)):
        torch.testing.assert_close(fused, linear(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sharing", SHARING_SCHEMES)
def test_state_dict_keeps_separate_q_k_v_names_and_shapes(sharing):
    attn, _ = build("linformer", sharing)
    state = attn.state_dict()
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert state[f"{name}.weight"].shape == (D, D) and state[f"{name}.bias"].shape == (D,)
    assert not any("qkv" in key for key in state)


def test_project_pair_equals_e_and_f_apart_and_reuses_e_when_shared():
    torch.manual_seed(0)
    e, f = build_projection("linear", N, K).double(), build_projection("linear", N, K).double()
    x = torch.randn(2, 9, D, dtype=torch.float64)  # shorter than max_positions: the first 9 rows of E and F
    keep = torch.ones(2, 9, dtype=torch.bool)
    keep[0, 6:] = False
    ones = torch.ones(2, 9, 1, dtype=torch.float64)
    for mask in (keep, None):  # the projected ones: E's column sums without padding, its product with keep with it
        ex, fx, e1, f1 = project_pair(e, f, x, mask)
        torch.testing.assert_close(ex, e(x, mask))
        torch.testing.assert_close(fx, f(x, mask))
        torch.testing.assert_close(e1.expand(2, K, 1), e(ones, mask))
        torch.testing.assert_close(f1.expand(2, K, 1), f(ones, mask))
    same_e, same_f, same_e1, same_f1 = project_pair(e, e, x, keep)
    assert same_e is same_f and same_e1 is same_f1


def test_keep_mask_rate_scale_and_reproducibility():
    torch.manual_seed(1)
    keep, scale = keep_mask((400, 500), 0.1)
    assert keep.dtype == torch.bool and keep.shape == (400, 500)
    drop = round(0.1 * 65536) / 65536
    assert scale == pytest.approx(1 / (1 - drop))
    # 200k Bernoulli(0.9) draws: the rate's standard deviation is 0.00067; 5 of them is a generous bound.
    assert keep.double().mean().item() == pytest.approx(1 - drop, abs=0.0034)
    torch.manual_seed(1)
    assert torch.equal(keep_mask((400, 500), 0.1)[0], keep)
    odd, _ = keep_mask((3, 7), 0.5)  # an element count that is not a multiple of four
    assert odd.shape == (3, 7)


def test_dropout_keeps_the_expectation_and_its_gradient_is_the_scaled_mask():
    torch.manual_seed(0)
    x = torch.full((300, 400), 2.0, requires_grad=True)
    y = dropout(x, 0.25, True)
    kept = y != 0
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 2.0 / (1 - round(0.25 * 65536) / 65536)))
    assert y.mean().item() == pytest.approx(2.0, rel=0.01)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() * (y.max() / 2.0))
    assert dropout(x, 0.25, False) is x


def test_dropout_off_or_out_of_range_falls_back_to_torch(monkeypatch):
    x = torch.randn(50, 60)
    torch.manual_seed(3)
    reference = F.dropout(x, 0.2, True)
    monkeypatch.setattr(dropout_module, "ENABLED", False)
    torch.manual_seed(3)
    torch.testing.assert_close(dropout(x, 0.2, True), reference)
    monkeypatch.setattr(dropout_module, "ENABLED", True)
    assert torch.equal(dropout(x, 1.0, True), torch.zeros_like(x))  # p = 1: torch's own, all dropped
    torch.testing.assert_close(dropout(x, 0.0, True), x)


def test_attention_with_dropout_is_softmax_attention_under_its_mask(monkeypatch):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, H, n, 8, dtype=torch.float64) for n in (N, K, K))
    attn_mask = torch.ones(2, 1, 1, K, dtype=torch.bool)
    attn_mask[1, ..., 3:] = False
    # With every element kept and a scale of 1, the spelled-out path must equal SDPA without dropout.
    monkeypatch.setattr(dropout_module, "keep_mask", lambda shape, p: (torch.ones(shape, dtype=torch.bool), 1.0))
    out = attention(q, k, v, attn_mask, 0.1, True)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask))
    # Eval: SDPA itself, no dropout.
    torch.testing.assert_close(attention(q, k, v, attn_mask, 0.1, False), out)


def test_attention_with_every_key_masked_stays_finite_in_training():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, H, n, 8, requires_grad=True) for n in (N, K, K))
    attn_mask = torch.ones(2, 1, 1, K, dtype=torch.bool)
    attn_mask[1] = False  # an all-padding sample
    out = attention(q, k, v, attn_mask, 0.1, True)
    out.sum().backward()
    assert torch.isfinite(out).all() and all(torch.isfinite(t.grad).all() for t in (q, k, v))
