"""Multi-head self-attention: Linformer's softmax(Q (E K)^T) (F V), and standard attention as the baseline.

Both take x (B, n, d) and an optional padding mask (B, n), True at padded positions, and return (B, n, d).
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linformer_pt.modules.dropout import attention as softmax_attention
from linformer_pt.modules.folded_attention import folded_attention, folding_pays
from linformer_pt.modules.projections import SequenceProjection, build_projection, project_pair

SHARING_SCHEMES = ("none", "headwise", "kv", "layerwise")
ATTENTION_KINDS = ("linformer", "standard")


@dataclass(frozen=True)
class AttentionSpec:
    """How every layer's self-attention is built (all but the per-layer k)."""

    kind: str = "linformer"  # linformer | standard
    sharing: str = "headwise"  # none | headwise | kv | layerwise
    projection: str = "linear"  # linear | mean_pool | max_pool | conv | identity
    projection_init: str = "xavier"
    dropout: float = 0.0  # on attention probabilities
    fairseq_compat: bool = False  # fairseq's arithmetic: padding mask ignored, K/V bias added after projecting


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

    def qkv(self, x: Tensor, queries: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """Q, K, V of x (B, n, d), each (B, n, d), from one GEMM against [W_Q; W_K; W_V]; with `queries`
        (B, m, d), Q of those rows instead (and K, V of x from one GEMM against [W_K; W_V]).

        One matmul of the same FLOPs as three reads x once and makes one call instead of three; the weights stay
        three nn.Linear modules, so state-dict names and shapes (checkpoints, hub import/export) do not change.
        """
        if queries is not None:
            return (self.q_proj(queries), *self.kv(x))
        q, k, v = self._fused(x, (self.q_proj, self.k_proj, self.v_proj))
        return q, k, v

    def kv(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """K, V of x (B, n, d), each (B, n, d), from one GEMM against [W_K; W_V]."""
        k, v = self._fused(x, (self.k_proj, self.v_proj))
        return k, v

    @staticmethod
    def _fused(x: Tensor, maps: Tuple[nn.Linear, ...]) -> Tuple[Tensor, ...]:
        weight, bias = torch.cat([m.weight for m in maps]), torch.cat([m.bias for m in maps])
        return F.linear(x, weight, bias).chunk(len(maps), dim=-1)

    def split_heads(self, x: Tensor) -> Tensor:
        """(B, m, d) -> (B, heads, m, head_dim)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def merge_heads(self, x: Tensor) -> Tensor:
        """(B, heads, n, head_dim) -> (B, n, d)."""
        return x.transpose(1, 2).flatten(2)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        return self.merge_heads(softmax_attention(q, k, v, attn_mask, self.dropout, self.training))


class StandardSelfAttention(_MultiHeadBase):
    """softmax(Q K^T / sqrt(dh)) V over all n keys, padded keys excluded (PyTorch's fused SDPA)."""

    def forward(
        self,
        x: Tensor,
        padding_mask: Optional[Tensor] = None,
        shared_projection: Optional[SequenceProjection] = None,
        queries: Optional[Tensor] = None,
    ) -> Tensor:
        """`shared_projection` is accepted and ignored, so layers can call any attention the same way. `queries`
        (B, m, d): attend from those rows only (over all of x), giving (B, m, d)."""
        q, k, v = (self.split_heads(h) for h in self.qkv(x, queries))
        attn_mask = None if padding_mask is None else ~padding_mask[:, None, None, :]
        return self.out_proj(self.attend(q, k, v, attn_mask))


class LinformerSelfAttention(_MultiHeadBase):
    """Linformer attention with keys and values projected along the sequence axis from n to k rows.

    sharing: `none` (E_i, F_i per head), `headwise` (E, F per layer), `kv` (E = F per layer), or
    `layerwise` (one E = F for all layers, owned by the encoder and passed to forward()).
    """

    def __init__(self, embed_dim: int, num_heads: int, max_positions: int, k: int, spec: AttentionSpec) -> None:
        super().__init__(embed_dim, num_heads, spec.dropout)
        if spec.sharing not in SHARING_SCHEMES:
            raise ValueError(f"sharing {spec.sharing!r} is not one of {SHARING_SCHEMES}")
        self.sharing, self.fairseq_compat = spec.sharing, spec.fairseq_compat
        heads = num_heads if spec.sharing == "none" else None

        def make() -> SequenceProjection:
            return build_projection(spec.projection, max_positions, k, heads, spec.projection_init)

        self.proj_e = make() if spec.sharing != "layerwise" else None
        self.proj_f = make() if spec.sharing in ("none", "headwise") else None

    def forward(
        self,
        x: Tensor,
        padding_mask: Optional[Tensor] = None,
        shared_projection: Optional[SequenceProjection] = None,
        queries: Optional[Tensor] = None,
    ) -> Tensor:
        """(B, n, d) -> (B, n, d); with `queries` (B, m, d), attention from those rows only: (B, m, d)."""
        e = shared_projection if self.sharing == "layerwise" else self.proj_e
        if e is None:
            raise ValueError("layerwise sharing needs the encoder's shared projection")
        f = self.proj_f or e
        # A boolean keep: in a bf16/fp16 model a float one would round the window lengths it is summed into.
        keep = None if padding_mask is None or self.fairseq_compat else ~padding_mask
        rows = x if queries is None else queries
        # Shapes alone decide (no device sync): fold W_Q and W_O into the projected keys and values where it is cheaper.
        fold = folding_pays(rows.shape[1], e.projected_rows(x.shape[1]), self.embed_dim, self.num_heads)
        q: Optional[Tensor] = None
        if e.linear and not e.per_head:
            # K and V are mapped on the k projected rows, Q on the n rows of x: no common input to fuse them on.
            q = None if fold else self.q_proj(rows)
            k, v = self.project_first(x, keep, e, f)
        else:
            q, k, v = (None, *self.kv(x)) if fold else self.qkv(x, queries)
            k, v = self.project_heads(k, v, keep, e, f)
        key_mask = None if self.fairseq_compat else e.projected_padding_mask(padding_mask, x.shape[1], x.device)
        if q is None:
            return folded_attention(rows, k, v, self.q_proj, self.out_proj, key_mask, self.dropout, self.training)
        attn_mask = None if key_mask is None else ~key_mask[:, None, None, :]
        return self.out_proj(self.attend(self.split_heads(q), k, v, attn_mask))

    def project_first(
        self, x: Tensor, keep: Optional[Tensor], e: SequenceProjection, f: SequenceProjection
    ) -> Tuple[Tensor, Tensor]:
        """K = E(m*(X W_K + b_K)) computed as E(m*X) W_K + E(m) b_K: the K/V maps then run on k rows, not n.

        fairseq_compat computes fairseq's k_proj(E X) = (E X) W_K + b_K instead: the bias once per projected row.
        """
        ex, fx, e1, f1 = project_pair(e, f, x, keep)  # E and F in one GEMM where both are learned matrices
        if self.fairseq_compat:
            return self.split_heads(self.k_proj(ex)), self.split_heads(self.v_proj(fx))
        k = F.linear(ex, self.k_proj.weight) + e1 * self.k_proj.bias
        v = F.linear(fx, self.v_proj.weight) + f1 * self.v_proj.bias
        return self.split_heads(k), self.split_heads(v)

    def project_after(
        self, x: Tensor, keep: Optional[Tensor], e: SequenceProjection, f: SequenceProjection
    ) -> Tuple[Tensor, Tensor]:
        """Per-head or non-linear (max-pool) projections need the full n-row keys and values first."""
        return self.project_heads(self.k_proj(x), self.v_proj(x), keep, e, f)

    def project_heads(
        self, k: Tensor, v: Tensor, keep: Optional[Tensor], e: SequenceProjection, f: SequenceProjection
    ) -> Tuple[Tensor, Tensor]:
        """Full keys and values (B, n, d) projected to k rows by E and F, split into heads (B, heads, k, head_dim)."""

        def project(h: Tensor, proj: SequenceProjection) -> Tensor:
            return proj(self.split_heads(h), keep) if proj.per_head else self.split_heads(proj(h, keep))

        return project(k, e), project(v, f)


def build_attention(spec: AttentionSpec, embed_dim: int, num_heads: int, max_positions: int, k: int) -> nn.Module:
    """The self-attention module of one layer."""
    if spec.kind == "standard":
        return StandardSelfAttention(embed_dim, num_heads, spec.dropout)
    if spec.kind != "linformer":
        raise ValueError(f"attention {spec.kind!r} is not one of {ATTENTION_KINDS}")
    return LinformerSelfAttention(embed_dim, num_heads, max_positions, k, spec)
