"""fairseq_compat=True reproduces fairseq's MultiheadLinearAttention (examples/linformer) numerically."""
from typing import Optional

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from linformer_pt.modules.attention import AttentionSpec, LinformerSelfAttention
from linformer_pt.modules.projections import build_projection

D, H, MAX_POSITIONS, K = 16, 4, 12, 5


def fairseq_linear_attention(
    x: Tensor, attn: LinformerSelfAttention, compress_k: Tensor, compress_v: Optional[Tensor]
) -> Tensor:
    """fairseq's formula written out. compress_* are nn.Linear(max_seq_len, k, bias=False) weights (k, max_seq_len).

    q = (x W_q + b_q) * head_dim^-0.5; k = (E x) W_k + b_k with E = compress_k.weight[:, :n]; v likewise with
    compress_v (compress_k when shared_kv_compressed=1); softmax(q k^T) v per head, then out_proj.
    The key padding mask plays no part.
    """
    n = x.shape[1]
    dh = D // H
    scaling = dh**-0.5
    q = (x @ attn.q_proj.weight.T + attn.q_proj.bias) * scaling
    e = compress_k[:, :n]
    f = (compress_k if compress_v is None else compress_v)[:, :n]
    k = (e @ x) @ attn.k_proj.weight.T + attn.k_proj.bias
    v = (f @ x) @ attn.v_proj.weight.T + attn.v_proj.bias

    def heads(t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], t.shape[1], H, dh).transpose(1, 2)

    probs = torch.softmax(heads(q) @ heads(k).transpose(-1, -2), dim=-1)
    out = (probs @ heads(v)).transpose(1, 2).reshape(x.shape[0], n, D)
    return out @ attn.out_proj.weight.T + attn.out_proj.bias


# headwise: fairseq's default (compress_k, compress_v per layer); kv: shared_kv_compressed=1;
# layerwise: shared_compress_layer (one matrix for E and F in every layer).
@pytest.mark.parametrize("sharing", ["headwise", "kv", "layerwise"])
@pytest.mark.parametrize("n", [MAX_POSITIONS, 9])  # 9: a shorter input uses E's first columns
def test_fairseq_compat_matches_fairseqs_linear_attention(sharing, n):
    torch.manual_seed(0)
    spec = AttentionSpec("linformer", sharing, "linear", fairseq_compat=True)
    attn = LinformerSelfAttention(D, H, MAX_POSITIONS, K, spec).double()
    shared = build_projection("linear", MAX_POSITIONS, K).double() if sharing == "layerwise" else None
    with torch.no_grad():  # biases far from zero, so adding b once or (E 1) b times differs clearly
        for linear in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
            linear.bias.uniform_(-1.0, 1.0)
    e = shared if sharing == "layerwise" else attn.proj_e
    # Our E is stored (max_positions, k); fairseq's compress layer weight is its transpose (k, max_positions).
    compress_k = e.weight.T
    compress_v = attn.proj_f.weight.T if sharing == "headwise" else None

    x = torch.randn(2, n, D, dtype=torch.float64)
    mask = torch.zeros(2, n, dtype=torch.bool)
    mask[1, n - 3 :] = True  # fairseq ignores it, and so must the parity mode
    expected = fairseq_linear_attention(x, attn.eval(), compress_k, compress_v)
    for padding_mask in (None, mask):
        torch.testing.assert_close(attn(x, padding_mask, shared), expected, atol=1e-12, rtol=0)
