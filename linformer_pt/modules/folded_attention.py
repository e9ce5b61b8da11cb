"""Linformer attention with the query and output maps folded into the k projected keys and values.

With K, V projected to k rows, each head's scores and output can be associated the other way round:

    scores_h = (X W_Q^h + b_Q^h) K_h^T          = X (W_Q^h K_h^T) + b_Q^h K_h^T
    output   = sum_h P_h V_h W_O^h + b_O         = [P_1 .. P_H] [V_1 W_O^1; ..; V_H W_O^H] + b_O

The folded matrices (d x H k for the queries, H k x d for the output) cost k d^2 each to build and replace the
query map, the per-head score products, the per-head P V products and the output map by two plain (n x d x H k)
products: per sample k d^2 + n d H k against n d^2 + n k d multiply-adds on each side. It pays where H k is small
next to d + k and n is large (4 heads of 64 at k = 64: from n > 256 on; the module's FLOPs fall 8% at n = 512 and
14% at n = 2048), and where it does, the attention runs as a few large GEMMs and one softmax over contiguous rows: no
head split, no attention kernel, no transposes. `folding_pays` decides from the shapes alone, so the choice costs no
device sync; under torch.compile a batch whose query-row count crosses the break-even point takes the other
branch's graph.

The outputs are the same function of the same parameters (equal up to rounding; tests compare values and gradients
with the unfolded path); dropout on the probabilities draws its mask in another layout, so a run with attention
dropout draws other (equally distributed) masks than the unfolded path would.
"""
from typing import Optional

import torch
from torch import Tensor, nn

from linformer_pt.modules.dropout import dropout

# Module switch: the A/B benchmarks (scripts/bench_step_ab.py, scripts/bench_attention.py) turn it off to time the
# unfolded path on the same model.
ENABLED = True


def folding_pays(rows: int, projected: int, embed_dim: int, num_heads: int) -> bool:
    """True when the folded form needs fewer multiply-adds per sample than the unfolded one (each side, as above),
    for `rows` query rows attending over `projected` key/value rows."""
    folded = projected * embed_dim * embed_dim + rows * embed_dim * num_heads * projected
    unfolded = rows * embed_dim * embed_dim + rows * projected * embed_dim
    return ENABLED and folded < unfolded


def folded_attention(
    rows: Tensor,
    k: Tensor,
    v: Tensor,
    q_proj: nn.Linear,
    out_proj: nn.Linear,
    key_mask: Optional[Tensor] = None,
    p: float = 0.0,
    training: bool = False,
) -> Tensor:
    """out_proj(softmax(q_proj(rows) K^T / sqrt(dh)) V) for rows (B, m, d), K and V (B, H, k, dh).

    key_mask (B or 1, k) is True at projected rows that hold no real position (excluded as keys); p is the dropout
    on the probabilities.
    """
    batch, heads, projected, head_dim = k.shape
    d = rows.shape[-1]
    scale = head_dim**-0.5
    # K_h W_Q^h for every head, scaled: (B, H k, d), row h k + j for head h's key j. Plain (broadcast) matmuls:
    # einsum's permutes cost ~5-10% more here.
    w_q = q_proj.weight.view(heads, head_dim, d).to(k.dtype) * scale
    keys = torch.matmul(k, w_q).view(batch, heads * projected, d)
    query_bias = torch.matmul(k, q_proj.bias.view(heads, head_dim, 1).to(k.dtype) * scale)
    scores = torch.baddbmm(query_bias.view(batch, 1, heads * projected), rows, keys.transpose(1, 2))
    scores = scores.view(batch, -1, heads, projected)  # (B, m, H, k): each head's k scores are contiguous
    if key_mask is not None:
        # The dtype's lowest finite value, not -inf: a sample with every key masked gets finite probabilities.
        scores = scores.masked_fill(key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
    probs = dropout(scores.softmax(-1), p, training).flatten(2)
    # V_h W_O^h for every head: (B, H k, d).
    w_o = out_proj.weight.view(d, heads, head_dim).permute(1, 2, 0).to(v.dtype)
    values = torch.matmul(v, w_o).view(batch, heads * projected, d)
    bias = out_proj.bias.to(probs.dtype).expand(batch, 1, d)
    return torch.baddbmm(bias, probs, values.to(probs.dtype))
