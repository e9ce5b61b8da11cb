"""Attention spectra: exact rank of a hand-built P, the suggested k, and padding left out of P."""
import pytest
import torch

from linformer_pt.analysis.attention_maps import full_probs, real_lengths, reduce_layers
from linformer_pt.analysis.spectrum import SpectrumAccumulator, cumulative, default_k, on_grid, spectra_by_length
from tiny_models import padded, random_tokens, tiny_model


def rank_r_attention(n: int, r: int, seed: int = 0) -> torch.Tensor:
    """P = A B: each row a mixture (A, n x r, rows summing to 1) of r fixed distributions (B, r x n, row-stochastic)."""
    g = torch.Generator().manual_seed(seed)
    own = torch.nn.functional.one_hot(torch.arange(n) % r, r).double()  # each row leans on one distribution
    a = 0.7 * own + 0.3 * torch.distributions.Dirichlet(torch.ones(r)).sample((n,))
    b = torch.rand(r, n, generator=g, dtype=torch.float64) ** 4
    b = b / b.sum(1, keepdim=True)
    return a @ b


@pytest.mark.parametrize("r", [1, 3, 8])
def test_a_rank_r_attention_matrix_has_r_singular_values_and_k99_is_r(r):
    torch.manual_seed(r)
    n = 64
    p = rank_r_attention(n, r)
    torch.testing.assert_close(p.sum(1), torch.ones(n, dtype=torch.float64))
    p = p[None, None]  # one sequence, one head
    [(length, s)] = list(spectra_by_length(p, torch.tensor([n])))
    s = s[0, 0]
    assert length == n and s.shape == (n,)
    assert (s[:r] > 1e-3 * s[0]).all() and (s[r:] < 1e-9 * s[0]).all()
    acc = SpectrumAccumulator(layers=1, heads=1, points=n)
    acc.add(0, p, torch.tensor([n]))
    summary = acc.summary(k=r)
    assert summary["k_for_energy"]["0.99"] == [r]
    assert summary["suggested"]["0.99"] == f"model.k=[{r}]"
    assert summary["at_k"][0][0] == pytest.approx(1.0, abs=1e-6)


def test_the_grid_reads_full_length_curves_exactly_and_rescales_shorter_ones():
    c = cumulative(torch.tensor([4.0, 2.0, 1.0, 1.0]))
    torch.testing.assert_close(on_grid(c, 4), c)
    # A length-4 spectrum on an 8-point grid: even points are its indices, odd ones halfway between.
    torch.testing.assert_close(on_grid(c, 8)[1::2], c)
    torch.testing.assert_close(on_grid(c, 8)[0], c[0] / 2)
    assert default_k(512) == 128 and default_k(4096) == 128 and default_k(32) == 8


def test_a_padded_sequence_has_the_spectrum_of_the_same_sequence_unpadded():
    model = tiny_model(attention="standard")
    short, full = random_tokens(19, seed=1), random_tokens(32, seed=2)

    def spectra(tokens, padding_mask):
        lengths = real_lengths(padding_mask, *tokens.shape, tokens.device)
        reduce = lambda _, attn, x, mask, __: dict(spectra_by_length(full_probs(attn, x, mask), lengths))  # noqa: E731
        return reduce_layers(model, tokens, padding_mask, reduce)

    together = spectra(*padded([short, full]))
    alone = spectra(*padded([short]))
    assert not padded([short])[1].any()  # alone: no padding at all
    for layer_together, layer_alone in zip(together, alone):
        s = layer_together[19][0]
        assert s.shape == (4, 19)
        torch.testing.assert_close(s, layer_alone[19][0], atol=1e-5, rtol=1e-4)


def test_accumulated_curves_do_not_depend_on_how_sequences_are_batched():
    model = tiny_model(attention="standard")
    sequences = [random_tokens(32, seed=1), random_tokens(13, seed=2), random_tokens(25, seed=3)]

    def accumulate(batches):
        acc = SpectrumAccumulator(2, 4, points=32)
        for tokens, padding_mask in batches:
            lengths = real_lengths(padding_mask, *tokens.shape, tokens.device)
            add = lambda layer, attn, x, mask, _: acc.add(layer, full_probs(attn, x, mask), lengths)  # noqa: E731
            reduce_layers(model, tokens, padding_mask, add)
        return acc.summary(k=8)

    one_batch = accumulate([padded(sequences)])
    one_by_one = accumulate([padded([s]) for s in sequences])
    assert one_batch["sequences"] == one_by_one["sequences"] == 3
    for key in ("curve_mean", "curve_min", "curve_max", "at_k"):
        torch.testing.assert_close(torch.tensor(one_batch[key]), torch.tensor(one_by_one[key]), atol=1e-5, rtol=0)
    assert one_batch["k_for_energy"] == one_by_one["k_for_energy"]
    mean = torch.tensor(one_batch["curve_mean"])
    assert mean.shape == (2, 32) and (mean.diff(dim=1) >= 0).all() and mean[:, -1].eq(1).all()
