"""Pad invariance holds in a model cast to bf16 or fp16: window lengths are counted exactly, not in that dtype."""
import pytest
import torch

from linformer_pt.modules.attention import AttentionSpec, LinformerSelfAttention

D, H, K = 16, 4, 64

# Lengths the dtype cannot count: bf16 rounds 299 and 301 to 300; fp16 rounds 2049 to 2048 and 2051 to 2052.
CASES = [(torch.bfloat16, (301, 299), 320), (torch.float16, (2051, 2049), 2064)]


@pytest.mark.parametrize("dtype, lengths, padded", CASES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("projection", ["mean_pool", "max_pool", "conv"])
@pytest.mark.parametrize("sharing", ["headwise", "none"])  # none: per-head conv taps, projected after the K/V maps
def test_outputs_at_real_positions_ignore_padding_in_low_precision(dtype, lengths, padded, projection, sharing):
    torch.manual_seed(0)
    attn = LinformerSelfAttention(D, H, padded, K, AttentionSpec("linformer", sharing, projection)).eval()
    if projection == "conv":  # taps away from their mean-pooling initial value
        with torch.no_grad():
            for proj in (attn.proj_e, attn.proj_f):
                proj.weight.uniform_(0.5, 1.5)
    attn = attn.to(dtype)
    mask = torch.zeros(len(lengths), padded, dtype=torch.bool)
    for i, length in enumerate(lengths):
        mask[i, length:] = True
    x = torch.randn(len(lengths), padded, D)
    x[mask] *= 100  # garbage in the padded slots: a window running one row too far picks it up
    x = x.to(dtype)
    with torch.no_grad():
        out = attn(x, mask)
        for i, length in enumerate(lengths):
            alone = attn(x[i : i + 1, :length])[0]
            torch.testing.assert_close(out[i, :length], alone)  # assert_close's default tolerance for the dtype
