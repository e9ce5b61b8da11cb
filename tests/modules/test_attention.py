"""Linformer attention: exactness against softmax attention, padding invariance, sharing, lengths, gradients."""
import pytest
import torch

from linformer_pt.errors import UserError
from linformer_pt.modules.attention import SHARING_SCHEMES, LinformerSelfAttention, StandardSelfAttention
from linformer_pt.modules.encoder import Encoder
from linformer_pt.modules.projections import LinearProjection

D, H, N = 16, 4, 12


def make_attention(sharing: str, k: int = 5, max_positions: int = N) -> tuple:
    torch.manual_seed(0)
    attn = LinformerSelfAttention(D, H, max_positions, k, sharing).double()
    shared = LinearProjection(max_positions, k).double() if sharing == "layerwise" else None
    return attn, shared


@pytest.mark.parametrize("sharing", SHARING_SCHEMES)
def test_identity_projection_with_k_equal_n_is_softmax_attention(sharing):
    attn, shared = make_attention(sharing, k=N)
    for proj in [attn.proj_e, attn.proj_f, shared]:
        if proj is not None:
            with torch.no_grad():
                proj.weight.copy_(torch.eye(N, dtype=torch.float64).expand_as(proj.weight))
    standard = StandardSelfAttention(D, H, 0.0).double()
    standard.load_state_dict(attn.state_dict(), strict=False)
    x = torch.randn(3, N, D, dtype=torch.float64)
    torch.testing.assert_close(attn(x, None, shared), standard(x), atol=1e-10, rtol=0)


@pytest.mark.parametrize("sharing", SHARING_SCHEMES)
def test_outputs_at_real_positions_ignore_padding_content_and_amount(sharing):
    attn, shared = make_attention(sharing)
    alone = torch.randn(1, 7, D, dtype=torch.float64)
    expected = attn(alone, None, shared)
    for total in (8, N):
        batch = torch.randn(2, total, D, dtype=torch.float64) * 100  # garbage in the padded slots
        batch[0, :7] = alone[0]
        mask = torch.zeros(2, total, dtype=torch.bool)
        mask[0, 7:] = True
        out = attn(batch, mask, shared)
        torch.testing.assert_close(out[0, :7], expected[0], atol=1e-10, rtol=0)


@pytest.mark.parametrize("sharing", ["headwise", "kv", "layerwise"])
def test_projecting_the_sequence_first_equals_projecting_keys_first(sharing):
    attn, shared = make_attention(sharing)
    x = torch.randn(2, 9, D, dtype=torch.float64)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[1, 6:] = True
    keep = (~mask).double()
    k, v = attn._project_first(x, keep, shared)
    e = shared if sharing == "layerwise" else attn.proj_e
    f = attn.proj_f or e
    keys = attn.k_proj(x) * keep[..., None]  # the textbook order: K = X W_K + b, padding zeroed, then E
    values = attn.v_proj(x) * keep[..., None]
    torch.testing.assert_close(k, attn.split_heads(e.matrix(9).T @ keys), atol=1e-10, rtol=0)
    torch.testing.assert_close(v, attn.split_heads(f.matrix(9).T @ values), atol=1e-10, rtol=0)


def projection_parameters(sharing: str, layers: int = 3, n: int = 20, k: int = 6) -> int:
    def count(attention: str) -> int:
        enc = Encoder(layers, D, 32, H, n, [k] * layers, attention, sharing, 0.0, 0.0)
        return sum(p.numel() for p in enc.parameters())

    return count("linformer") - count("standard")


def test_parameter_counts_match_each_sharing_scheme():
    layers, n, k = 3, 20, 6
    assert projection_parameters("none") == layers * 2 * H * n * k
    assert projection_parameters("headwise") == layers * 2 * n * k
    assert projection_parameters("kv") == layers * n * k
    assert projection_parameters("layerwise") == n * k


def test_layerwise_registers_exactly_one_projection_matrix():
    enc = Encoder(3, D, 32, H, 20, [6] * 3, "linformer", "layerwise", 0.0, 0.0)
    matrices = [name for name, p in enc.named_parameters() if p.shape == (20, 6)]
    assert matrices == ["shared_projection.weight"]


@pytest.mark.parametrize("sharing", SHARING_SCHEMES)
def test_gradients_reach_every_projection(sharing):
    enc = Encoder(2, D, 32, H, N, [5, 5], "linformer", sharing, 0.0, 0.0)
    enc(torch.randn(2, N, D)).square().sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_shorter_inputs_use_the_first_columns_and_longer_inputs_fail():
    attn, _ = make_attention("headwise")
    x = torch.randn(1, 4, D, dtype=torch.float64)
    assert attn(x).shape == (1, 4, D)
    with pytest.raises(UserError, match="input length 13 exceeds max_positions 12"):
        attn(torch.randn(1, N + 1, D, dtype=torch.float64))


def test_nonuniform_k_gives_each_layer_its_own_length():
    enc = Encoder(3, D, 32, H, N, [8, 4, 2], "linformer", "kv", 0.0, 0.0)
    assert [layer.self_attn.proj_e.weight.shape for layer in enc.layers] == [(N, 8), (N, 4), (N, 2)]
    assert enc(torch.randn(2, N, D)).shape == (2, N, D)
