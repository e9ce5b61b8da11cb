"""Multi-head self-attention: Linformer's softmax(Q (E K)^T) (F V), and standard attention as the baseline.

Both take x (B, n, d) and an optional padding mask (B, n), True at padded positions, and return (B, n, d).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linformer_pt.modules.projections import LinearProjection

SHARING_SCHEMES = ("none", "headwise", "kv", "layerwise")


class _MultiHeadBase(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def split_heads(self, x: Tensor) -> Tensor:
        """(B, m, d) -> (B, heads, m, head_dim)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def merge_heads(self, x: Tensor) -> Tensor:
        """(B, heads, n, head_dim) -> (B, n, d)."""
        return x.transpose(1, 2).flatten(2)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        p = self.dropout if self.training else 0.0
        return self.merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p))


class StandardSelfAttention(_MultiHeadBase):
    """softmax(Q K^T / sqrt(dh)) V over all n keys, padded keys excluded (PyTorch's fused SDPA)."""

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None, shared_projection=None) -> Tensor:
        q, k, v = (self.split_heads(proj(x)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        attn_mask = None if padding_mask is None else ~padding_mask[:, None, None, :]
        return self.out_proj(self.attend(q, k, v, attn_mask))


class LinformerSelfAttention(_MultiHeadBase):
    """Linformer attention with keys and values projected along the sequence axis from n to k rows.

    sharing: `none` (E_i, F_i per head), `headwise` (E, F per layer), `kv` (E = F per layer), or
    `layerwise` (one E = F for all layers, owned by the encoder and passed to forward()).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        max_positions: int,
        k: int,
        sharing: str = "headwise",
        dropout: float = 0.0,
        projection_init: str = "xavier",
    ) -> None:
        super().__init__(embed_dim, num_heads, dropout)
        if sharing not in SHARING_SCHEMES:
            raise ValueError(f"sharing {sharing!r} is not one of {SHARING_SCHEMES}")
        self.sharing, self.k = sharing, k
        heads = num_heads if sharing == "none" else None
        make = lambda: LinearProjection(max_positions, k, heads, projection_init)  # noqa: E731
        self.proj_e = make() if sharing != "layerwise" else None
        self.proj_f = make() if sharing in ("none", "headwise") else None

    def forward(
        self, x: Tensor, padding_mask: Optional[Tensor] = None, shared_projection: Optional[LinearProjection] = None
    ) -> Tensor:
        keep = None if padding_mask is None else (~padding_mask).to(x.dtype)
        q = self.split_heads(self.q_proj(x))
        if self.sharing == "none":
            k = self.proj_e(self.split_heads(self.k_proj(x)), keep)
            v = self.proj_f(self.split_heads(self.v_proj(x)), keep)
        else:
            k, v = self._project_first(x, keep, shared_projection)
        return self.out_proj(self.attend(q, k, v))

    def _project_first(self, x: Tensor, keep: Optional[Tensor], shared: Optional[LinearProjection]):
        """K = E (m*X W_K + m b_K) computed as (E (m*X)) W_K + (E m) b_K: the K/V maps then run on k rows, not n."""
        e = shared if self.sharing == "layerwise" else self.proj_e
        f = self.proj_f or e
        if e is None:
            raise ValueError("layerwise sharing needs the encoder's shared projection")
        ex = e(x, keep)
        fx = ex if f is e else f(x, keep)
        ek = e.project_keep(keep, x.shape[1], x.dtype)
        fk = ek if f is e else f.project_keep(keep, x.shape[1], x.dtype)
        k = F.linear(ex, self.k_proj.weight) + ek.unsqueeze(-1) * self.k_proj.bias
        v = F.linear(fx, self.v_proj.weight) + fk.unsqueeze(-1) * self.v_proj.bias
        return self.split_heads(k), self.split_heads(v)
