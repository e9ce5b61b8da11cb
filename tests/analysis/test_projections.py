"""Projection analysis: which matrices there are, their ranks and similarity, and Linformer's error vs softmax."""
import pytest
import torch

from linformer_pt.analysis.projections import (
    attention_errors,
    check_projections,
    layer_errors,
    matrix_stats,
    named_matrices,
    projections_report,
    relative_error,
    similarities,
)
from linformer_pt.errors import UserError
from linformer_pt.modules.attention import AttentionSpec, LinformerSelfAttention
from tiny_models import padded, random_tokens, tiny_model

N, D, H = 64, 32, 4


def set_projection(attn: LinformerSelfAttention, weight: torch.Tensor) -> None:
    """E = F = weight (n x k) for a headwise linear projection."""
    with torch.no_grad():
        attn.proj_e.weight.copy_(weight)
        attn.proj_f.weight.copy_(weight)


def test_identity_projections_with_k_equal_n_give_zero_error_through_the_model():
    model = tiny_model(n=32, k=32, sharing="headwise")
    for layer in model.encoder.layers:
        set_projection(layer.self_attn, torch.eye(32))
    # Full-length sequences: with padding, E's rows for padded positions project to zero keys that still take
    # attention (a learned E has no padded rows to mask), which is the model's real behaviour, not an error here.
    batches = [padded([random_tokens(32, seed=1), random_tokens(32, seed=2)])]
    errors = attention_errors(model, batches, total=1, progress=False)
    assert errors.shape == (2, 2, 4) and errors.max() < 1e-5


def errors_over_k(make_weight, seeds):
    """Mean relative error of one fixed layer and input for k = n, n/2, n/4, n/8, averaged over `seeds`."""
    torch.manual_seed(0)
    reference = LinformerSelfAttention(D, H, N, N, AttentionSpec("linformer", "headwise")).eval()
    with torch.no_grad():
        reference.q_proj.weight.mul_(4.0)  # attention far from uniform: there is something to lose
    x = torch.randn(4, N, D)
    means = []
    for k in (N, N // 2, N // 4, N // 8):
        attn = LinformerSelfAttention(D, H, N, k, AttentionSpec("linformer", "headwise")).eval()
        attn.load_state_dict({name: p for name, p in reference.state_dict().items() if not name.startswith("proj_")},
                             strict=False)  # fmt: skip
        errors = []
        for seed in seeds:
            set_projection(attn, make_weight(k, torch.Generator().manual_seed(seed)))
            with torch.no_grad():
                errors.append(layer_errors(attn, x, None, None)[0].mean().item())
        means.append(sum(errors) / len(errors))
    return means


def test_the_error_grows_as_truncated_projections_keep_fewer_positions():
    means = errors_over_k(lambda k, _: torch.eye(N)[:, :k], seeds=[0])
    assert means[0] < 1e-6
    assert means == sorted(means) and means[1] > 1e-3


def test_the_error_grows_as_random_projections_get_shorter():
    # Johnson-Lindenstrauss-style E: N(0, 1/k) entries; the mean over seeds makes the order stable.
    means = errors_over_k(lambda k, g: torch.randn(N, k, generator=g) / k**0.5, seeds=range(8))
    assert means == sorted(means) and means[-1] > 2 * means[0] > 0


@pytest.mark.parametrize(
    "sharing, projection, count",
    [("none", "linear", 2 * 2 * 4), ("none", "conv", 2 * 2 * 4), ("headwise", "linear", 2 * 2), ("kv", "conv", 2), ("layerwise", "linear", 1),
     ("headwise", "mean_pool", 2 * 2), ("headwise", "max_pool", 0)],
)  # fmt: skip
def test_every_distinct_projection_is_listed_once(sharing, projection, count):
    model = tiny_model(sharing=sharing, projection=projection)
    entries = named_matrices(model)
    assert len(entries) == count and len({e["name"] for e in entries}) == count
    assert all(e["matrix"].shape == (8, 32) for e in entries)
    if sharing == "kv":
        assert {e["which"] for e in entries} == {"E=F"}
    if sharing == "layerwise":
        assert entries[0]["layer"] is None


def test_a_linear_projection_matrix_is_e_transposed():
    model = tiny_model(sharing="headwise")
    [e, f, *_] = named_matrices(model)
    torch.testing.assert_close(e["matrix"], model.encoder.layers[0].self_attn.proj_e.weight.T.double())
    assert (e["which"], f["which"], e["layer"]) == ("E", "F", 0)


def test_ranks_of_orthonormal_and_rank_one_rows():
    q, _ = torch.linalg.qr(torch.randn(64, 8, dtype=torch.float64))
    stats = matrix_stats(q.T)
    assert stats["effective_rank"] == pytest.approx(8.0, abs=1e-6)
    assert (stats["rank_90"], stats["rank_99"]) == (8, 8)
    rank_one = matrix_stats(torch.ones(8, 64, dtype=torch.float64))
    assert rank_one["effective_rank"] == pytest.approx(1.0, abs=1e-6) and rank_one["rank_99"] == 1


def test_similarity_tells_shared_matrices_from_shared_row_spaces():
    m = torch.randn(8, 64, dtype=torch.float64)
    permuted = m[torch.randperm(8)]
    other = torch.randn(8, 64, dtype=torch.float64)
    shorter = m[:4]
    cosine, overlap = similarities([m, permuted, other, shorter])
    assert cosine[0][0] == pytest.approx(1.0) and overlap[0][0] == pytest.approx(1.0)
    assert cosine[0][1] < 0.5 and overlap[0][1] == pytest.approx(1.0)  # same rows, other order: same row space
    assert overlap[0][2] < 0.5 and cosine[0][3] is None and overlap[0][3] == pytest.approx(1.0)


def test_report_keys_and_shapes():
    model = tiny_model(sharing="none")
    report = projections_report(model, [padded([random_tokens(32, seed=1), random_tokens(9, seed=2)])], progress=False)
    assert report["k"] == [8, 8] and report["n"] == 32 and len(report["matrices"]) == 16
    assert len(report["similarity"]["cosine"]) == 16 and len(report["relative_error"]) == 2
    assert torch.tensor(report["relative_error_heads"]).shape == (2, 4)
    assert torch.tensor(report["rescaled_error_heads"]).shape == (2, 4)
    # The best scale c is at least as good as c = 1, sequence by sequence, so also on average.
    assert (torch.tensor(report["rescaled_error_heads"]) <= torch.tensor(report["relative_error_heads"])).all()
    assert all(0 < e < 10 for e in report["relative_error"])


def test_relative_errors_ignore_padded_queries_and_the_rescaled_one_ignores_scale():
    exact = torch.randn(2, 3, 5, 4)
    padding_mask = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    approx = 2 * exact
    approx[1, :, 3:] = 100.0  # padded query rows: not counted
    relative, rescaled = relative_error(approx, exact, padding_mask)
    torch.testing.assert_close(relative, torch.ones(2, 3))
    assert rescaled.abs().max() < 1e-6


@pytest.mark.parametrize("cfg", [dict(attention="standard"), dict(projection="identity")])
def test_models_without_projections_are_refused(cfg):
    with pytest.raises(UserError, match="projections needs"):
        check_projections(tiny_model(**cfg))
