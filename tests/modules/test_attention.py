"""Linformer attention: exactness against softmax attention, padding invariance, sharing, lengths, gradients."""
import itertools

import pytest
import torch

from linformer_pt.errors import UserError
from linformer_pt.modules.attention import (
    SHARING_SCHEMES,
    AttentionSpec,
    LinformerSelfAttention,
    StandardSelfAttention,
)
from linformer_pt.modules.encoder import Encoder
from linformer_pt.modules.projections import PROJECTIONS, build_projection

D, H, N = 16, 4, 12
ALL_KINDS = list(itertools.product(SHARING_SCHEMES, PROJECTIONS))


def make_attention(sharing: str, projection: str = "linear", k: int = 5, max_positions: int = N, **kw) -> tuple:
    torch.manual_seed(0)
    spec = AttentionSpec("linformer", sharing, projection, **kw)
    attn = LinformerSelfAttention(D, H, max_positions, k, spec).double()
    shared = build_projection(projection, max_positions, k).double() if sharing == "layerwise" else None
    if projection == "conv":  # move conv taps away from their mean-pooling initial value
        for p in list(attn.parameters()) + (list(shared.parameters()) if shared else []):
            if p.ndim <= 2 and p.shape[-1] == -(-max_positions // k):
                p.data.uniform_(0.5, 1.5)
    return attn, shared


def standard_twin(attn: LinformerSelfAttention) -> StandardSelfAttention:
    standard = StandardSelfAttention(D, H, 0.0).double()
    standard.load_state_dict({k: v for k, v in attn.state_dict().items() if not k.startswith("proj_")})
    return standard


@pytest.mark.parametrize("sharing", SHARING_SCHEMES)
def test_identity_matrices_with_k_equal_n_give_softmax_attention(sharing):
    attn, shared = make_attention(sharing, k=N)
    for proj in [attn.proj_e, attn.proj_f, shared]:
        if proj is not None:
            with torch.no_grad():
                proj.weight.copy_(torch.eye(N, dtype=torch.float64).expand_as(proj.weight))
    x = torch.randn(3, N, D, dtype=torch.float64)
    torch.testing.assert_close(attn(x, None, shared), standard_twin(attn)(x), atol=1e-10, rtol=0)


@pytest.mark.parametrize("sharing", SHARING_SCHEMES)
def test_identity_projection_is_softmax_attention_with_padding(sharing):
    attn, shared = make_attention(sharing, "identity")
    x = torch.randn(2, N, D, dtype=torch.float64)
    mask = torch.zeros(2, N, dtype=torch.bool)
    mask[1, 8:] = True
    torch.testing.assert_close(attn(x, mask, shared), standard_twin(attn)(x, mask), atol=1e-10, rtol=0)


@pytest.mark.parametrize("sharing, projection", ALL_KINDS)
def test_outputs_at_real_positions_ignore_padding_content_and_amount(sharing, projection):
    attn, shared = make_attention(sharing, projection)
    for length in (7, 3):  # 3 < k: windows shorter than the projected length
        alone = torch.randn(1, length, D, dtype=torch.float64)
        expected = attn(alone, None, shared)
        for total in (length + 1, N):
            batch = torch.randn(2, total, D, dtype=torch.float64) * 100  # garbage in the padded slots
            batch[0, :length] = alone[0]
            mask = torch.zeros(2, total, dtype=torch.bool)
            mask[0, length:] = True
            out = attn(batch, mask, shared)
            torch.testing.assert_close(out[0, :length], expected[0], atol=1e-10, rtol=0)


def test_fairseq_compat_lets_padding_leak_in_as_fairseq_does():
    attn, _ = make_attention("headwise", fairseq_compat=True)
    alone = torch.randn(1, 7, D, dtype=torch.float64)
    batch = torch.cat([alone, torch.randn(1, 5, D, dtype=torch.float64)], dim=1)
    mask = torch.zeros(1, N, dtype=torch.bool)
    mask[0, 7:] = True
    assert not torch.allclose(attn(batch, mask)[0, :7], attn(alone)[0])


# Per-head projections (sharing=none with learned E) never take the project-first path.
PROJECT_FIRST_KINDS = [(s, p) for s, p in ALL_KINDS if p in ("linear", "mean_pool", "conv") and s != "none"]


@pytest.mark.parametrize("sharing, projection", PROJECT_FIRST_KINDS)
def test_projecting_the_sequence_first_equals_projecting_keys_first(sharing, projection):
    attn, shared = make_attention(sharing, projection)
    e = shared if sharing == "layerwise" else attn.proj_e
    f = attn.proj_f or e
    x = torch.randn(3, 9, D, dtype=torch.float64)
    mask = torch.zeros(3, 9, dtype=torch.bool)
    mask[1, 6:] = True
    mask[2, 2:] = True
    keep = ~mask
    k, v = attn.project_first(x, keep, e, f)
    k_after, v_after = attn.project_after(x, keep, e, f)  # the textbook order: K = X W_K + b, then E
    torch.testing.assert_close(k, k_after, atol=1e-10, rtol=0)
    torch.testing.assert_close(v, v_after, atol=1e-10, rtol=0)


@pytest.mark.parametrize("projection", ["linear", "mean_pool", "max_pool", "conv"])
@pytest.mark.parametrize("k", [4, 5, 12])
def test_projected_length_is_exactly_k_for_any_input_length(projection, k):
    proj = build_projection(projection, N, k)
    for n in sorted({k, min(k + 1, N), N}):
        assert proj(torch.randn(2, n, D)).shape == (2, k, D)
        keep = torch.ones(2, n)
        keep[1, n // 2 :] = 0
        assert proj(torch.randn(2, n, D), keep).shape == (2, k, D)


def projection_parameters(sharing: str, projection: str = "linear", layers: int = 3, n: int = 20, k: int = 6) -> int:
    def count(kind: str) -> int:
        enc = Encoder(layers, D, 32, H, n, [k] * layers, AttentionSpec(kind, sharing, projection), 0.0)
        return sum(p.numel() for p in enc.parameters())

    return count("linformer") - count("standard")


def test_parameter_counts_match_each_sharing_scheme():
    layers, n, k, taps = 3, 20, 6, 4  # conv taps = ceil(n / k)
    expected = {
        "none": (layers * 2 * H * n * k, layers * 2 * H * taps),
        "headwise": (layers * 2 * n * k, layers * 2 * taps),
        "kv": (layers * n * k, layers * taps),
        "layerwise": (n * k, taps),
    }
    for sharing, (linear, conv) in expected.items():
        assert projection_parameters(sharing, "linear") == linear, sharing
        assert projection_parameters(sharing, "conv") == conv, sharing
        for free in ("mean_pool", "max_pool", "identity"):
            assert projection_parameters(sharing, free) == 0


def test_layerwise_registers_exactly_one_projection_matrix():
    enc = Encoder(3, D, 32, H, 20, [6] * 3, AttentionSpec(sharing="layerwise"), 0.0)
    matrices = [name for name, p in enc.named_parameters() if p.shape == (20, 6)]
    assert matrices == ["shared_projection.weight"]


@pytest.mark.parametrize("sharing, projection", [(s, p) for s, p in ALL_KINDS if p in ("linear", "conv")])
def test_gradients_reach_every_projection_unless_frozen(sharing, projection):
    spec = AttentionSpec("linformer", sharing, projection)
    enc = Encoder(2, D, 32, H, N, [5, 5], spec, 0.0)
    enc(torch.randn(2, N, D)).square().sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    frozen = Encoder(2, D, 32, H, N, [5, 5], spec, 0.0, freeze_projections=True)
    frozen_names = {name for name, p in frozen.named_parameters() if not p.requires_grad}
    assert frozen_names and all("proj" in name for name in frozen_names)


def test_shorter_inputs_use_the_first_columns_and_longer_inputs_fail():
    attn, _ = make_attention("headwise")
    x = torch.randn(1, 4, D, dtype=torch.float64)
    first_rows = attn.proj_e.matrix(4)
    assert torch.equal(first_rows, attn.proj_e.weight[:4])
    assert attn(x).shape == (1, 4, D)
    with pytest.raises(UserError, match="input length 13 exceeds max_positions 12"):
        attn(torch.randn(1, N + 1, D, dtype=torch.float64))


def test_nonuniform_k_gives_each_layer_its_own_length():
    enc = Encoder(3, D, 32, H, N, [8, 4, 2], AttentionSpec(sharing="kv"), 0.0)
    assert [layer.self_attn.proj_e.weight.shape for layer in enc.layers] == [(N, 8), (N, 4), (N, 2)]
    assert enc(torch.randn(2, N, D)).shape == (2, N, D)


@pytest.mark.parametrize("sharing", SHARING_SCHEMES)
def test_state_dict_round_trip(sharing):
    spec = AttentionSpec("linformer", sharing, "linear")
    torch.manual_seed(0)
    a = Encoder(2, D, 32, H, N, [5, 5], spec, 0.0).eval()
    torch.manual_seed(1)
    b = Encoder(2, D, 32, H, N, [5, 5], spec, 0.0).eval()
    x = torch.randn(2, N, D)
    assert not torch.allclose(a(x), b(x))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)


def test_the_average_init_makes_each_projected_row_a_window_mean():
    from linformer_pt.modules.projections import LinearProjection, window_average

    e = LinearProjection(10, 4, init="average").weight
    assert torch.allclose(e.sum(0), torch.ones(4))  # each column averages its window
    assert (e > 0).sum(0).tolist() == [3, 3, 3, 3]  # windows [0,3) [2,5) [5,8) [7,10): adaptive pooling's
    x = torch.arange(10.0).reshape(1, 10, 1)
    pooled = torch.nn.functional.adaptive_avg_pool1d(x.transpose(1, 2), 4).transpose(1, 2)
    assert torch.allclose(window_average(10, 4).t() @ x[0], pooled[0])
    per_head = LinearProjection(10, 4, num_heads=2, init="average").weight
    assert torch.equal(per_head[0], e) and torch.equal(per_head[1], e)
