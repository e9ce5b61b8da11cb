"""Folding W_Q and W_O into the projected keys and values (modules/folded_attention.py): the same function as the
unfolded path (values and gradients), in every sharing scheme and projection, with padding, query rows, fairseq
arithmetic, low precision and torch.compile; dropout unbiased; the dispatch follows the FLOP count."""
import copy
import itertools

import pytest
import torch

from linformer_pt.modules import folded_attention as folding
from linformer_pt.modules.attention import SHARING_SCHEMES, AttentionSpec, LinformerSelfAttention
from linformer_pt.modules.projections import PROJECTIONS, build_projection

# 4 heads of 8 and k = 4: H k = 16 < d + k, so folding pays at every n here (and at n >= 7 query rows).
D, H, N, K = 32, 4, 24, 4
KINDS = [kind for kind in itertools.product(SHARING_SCHEMES, PROJECTIONS) if kind[1] != "identity"]


def make_attention(sharing: str, projection: str = "linear", dtype=torch.float64, **spec) -> tuple:
    torch.manual_seed(0)
    attn = LinformerSelfAttention(D, H, N, K, AttentionSpec("linformer", sharing, projection, **spec)).to(dtype)
    shared = build_projection(projection, N, K).to(dtype) if sharing == "layerwise" else None
    with torch.no_grad():  # nonzero biases, so the bias terms of the folding are exercised
        for linear in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
            linear.bias.uniform_(-0.5, 0.5)
    return attn, shared


@pytest.fixture
def calls(monkeypatch):
    """Counts the folded path's calls, so a test fails if the dispatch never takes it."""
    counter = {"folded": 0}
    inner = folding.folded_attention

    def counted(*args, **kwargs):
        counter["folded"] += 1
        return inner(*args, **kwargs)

    monkeypatch.setattr("linformer_pt.modules.attention.folded_attention", counted)
    return counter


def both_paths(monkeypatch, run) -> tuple:
    """run() with folding, then without (the module switch the benchmarks use)."""
    folded = run()
    monkeypatch.setattr(folding, "ENABLED", False)
    unfolded = run()
    monkeypatch.setattr(folding, "ENABLED", True)
    return folded, unfolded


def outputs_and_grads(attn, shared, x, mask=None, queries=None) -> list:
    attn.zero_grad(set_to_none=True)
    inputs = [t for t in (x, queries) if t is not None]
    for t in inputs:
        t.grad = None
    out = attn(x, mask, shared, queries=queries)
    out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out))
    grads = [p.grad for p in attn.parameters() if p.grad is not None] + [t.grad for t in inputs]
    return [out.detach()] + [g.clone() for g in grads]


@pytest.mark.parametrize("sharing, projection", KINDS)
def test_folded_equals_unfolded_in_values_and_gradients(monkeypatch, calls, sharing, projection):
    attn, shared = make_attention(sharing, projection)
    x = torch.randn(3, N, D, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(3, N, dtype=torch.bool)
    mask[1, 17:] = True  # one padded sample
    mask[2, 9:] = True
    folded, unfolded = both_paths(monkeypatch, lambda: outputs_and_grads(attn, shared, x, mask))
    assert calls["folded"] == 1
    assert len(folded) == len(unfolded)
    for a, b in zip(folded, unfolded):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("sharing", ["headwise", "none"])
def test_query_rows_fold_only_when_there_are_enough_of_them(monkeypatch, calls, sharing):
    """The masked-LM grid's last layer: m query rows attend over all of x; at 3 rows the unfolded form is cheaper."""
    attn, shared = make_attention(sharing)
    x = torch.randn(2, N, D, dtype=torch.float64, requires_grad=True)
    for rows, expected_calls in ((12, 1), (3, 1)):
        queries = torch.randn(2, rows, D, dtype=torch.float64, requires_grad=True)
        folded, unfolded = both_paths(monkeypatch, lambda: outputs_and_grads(attn, shared, x, None, queries))
        for a, b in zip(folded, unfolded):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
        assert calls["folded"] == expected_calls
    assert folding.folding_pays(7, K, D, H) and not folding.folding_pays(6, K, D, H)


def test_fairseq_arithmetic_folds_too(monkeypatch, calls):
    attn, shared = make_attention("kv", fairseq_compat=True)
    x = torch.randn(2, N, D, dtype=torch.float64, requires_grad=True)
    folded, unfolded = both_paths(monkeypatch, lambda: outputs_and_grads(attn, shared, x))
    assert calls["folded"] == 1
    for a, b in zip(folded, unfolded):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_a_sample_with_every_key_masked_stays_finite(monkeypatch, calls):
    attn, _ = make_attention("headwise", "mean_pool", dtype=torch.float32)
    x = torch.randn(2, N, D, requires_grad=True)
    mask = torch.zeros(2, N, dtype=torch.bool)
    mask[1] = True
    out = attn(x, mask)
    out.sum().backward()
    assert calls["folded"] == 1
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters() if p.grad is not None)


@pytest.mark.parametrize("precision", ["bf16-model", "bf16-autocast", "fp16-model"])
def test_low_precision_stays_close_to_fp64(monkeypatch, calls, precision):
    attn, _ = make_attention("headwise", dtype=torch.float32)
    reference = copy.deepcopy(attn).double()
    x = torch.randn(2, N, D, dtype=torch.float64)
    if precision.endswith("model"):
        attn = attn.to(torch.bfloat16 if precision == "bf16-model" else torch.float16)
        out = attn(x.to(attn.q_proj.weight.dtype))
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = attn(x.float())
    assert calls["folded"] == 1
    assert out.dtype in (torch.bfloat16, torch.float16, torch.float32)
    # bf16 keeps 8 significant bits: errors of a few 1e-2 on outputs of order 1 are rounding, not a wrong formula.
    tolerance = 1e-2 if precision == "fp16-model" else 6e-2
    torch.testing.assert_close(out.double(), reference(x), atol=tolerance, rtol=tolerance)


def test_dropout_on_the_folded_probabilities_is_unbiased(calls):
    """The output is linear in the probabilities, so the mean over dropout draws is the output without dropout:
    a wrong keep scale or a mask on the wrong tensor moves it."""
    attn, _ = make_attention("headwise", dtype=torch.float32, dropout=0.3)
    x = torch.randn(1, N, D)
    with torch.no_grad():
        expected = attn.eval()(x)
        attn.train()
        torch.manual_seed(1)
        draws = torch.stack([attn(x) for _ in range(3000)])
    assert calls["folded"] == 3001
    assert not torch.equal(draws[0], draws[1])  # dropout is on
    standard_error = draws.std(0) / 3000**0.5
    assert ((draws.mean(0) - expected).abs() <= 5 * standard_error + 1e-6).all()


def test_compiled_folded_attention_matches_eager(calls):
    attn, _ = make_attention("headwise", dtype=torch.float32)
    x = torch.randn(2, N, D)
    mask = torch.zeros(2, N, dtype=torch.bool)
    mask[0, 20:] = True
    compiled = torch.compile(attn, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, mask), attn(x, mask))
    assert calls["folded"] >= 1


def test_folding_pays_follows_the_multiply_add_count():
    """k d^2 + n d H k against n d^2 + n k d per sample: small H k next to d + k, and n large enough."""
    assert folding.folding_pays(512, 64, 256, 4)  # 4 heads of 64 at k = 64: from n > 256 on
    assert not folding.folding_pays(256, 64, 256, 4)  # a tie is left unfolded
    assert not folding.folding_pays(40, 64, 256, 4)  # the masked-LM grid's ~15% of 256 rows
    assert not folding.folding_pays(4096, 256, 768, 12)  # RoBERTa-base shape at k = 256: H k = 3072 > d + k
    assert not folding.folding_pays(1, 4, D, H)  # a classifier's single <s> row
