"""Transformer encoder layers with pluggable self-attention, post-LN (RoBERTa) or pre-LN.

The Encoder owns the one projection that `layerwise` sharing uses in every layer, so it is registered once.
"""
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from linformer_pt.modules.attention import AttentionSpec, build_attention
from linformer_pt.modules.dropout import dropout as fast_dropout
from linformer_pt.modules.masked_grid import MaskedGrid
from linformer_pt.modules.projections import SequenceProjection, build_projection


class EncoderLayer(nn.Module):
    """Self-attention + GELU feed-forward block, each wrapped in dropout, residual and LayerNorm."""

    def __init__(
        self,
        attention: nn.Module,
        embed_dim: int,
        ffn_embed_dim: int,
        dropout: float,
        activation_dropout: float,
        normalize_before: bool,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.self_attn = attention
        self.attn_layer_norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.fc1 = nn.Linear(embed_dim, ffn_embed_dim)
        self.fc2 = nn.Linear(ffn_embed_dim, embed_dim)
        self.final_layer_norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.dropout, self.activation_dropout = dropout, activation_dropout
        self.normalize_before = normalize_before

    def _residual(self, x: Tensor, norm: nn.LayerNorm, block: Callable[[Tensor], Tensor]) -> Tensor:
        if self.normalize_before:
            return x + fast_dropout(block(norm(x)), self.dropout, self.training)
        return norm(x + fast_dropout(block(x), self.dropout, self.training))

    def _ffn(self, x: Tensor) -> Tensor:
        return self.fc2(fast_dropout(F.gelu(self.fc1(x)), self.activation_dropout, self.training))

    def forward(
        self,
        x: Tensor,
        padding_mask: Optional[Tensor] = None,
        shared_projection: Optional[SequenceProjection] = None,
        grid: Optional[MaskedGrid] = None,
    ) -> Tensor:
        """(B, n, d) -> (B, n, d); with a grid, only its rows: (M, d), queries at those rows, keys over all of x."""
        if grid is None:
            x = self._residual(x, self.attn_layer_norm, lambda h: self.self_attn(h, padding_mask, shared_projection))
        else:
            h = self.attn_layer_norm(x) if self.normalize_before else x
            attended = grid.pick(self.self_attn(h, padding_mask, shared_projection, grid.gather(h)))
            x, attended = grid.pick(grid.gather(x)), fast_dropout(attended, self.dropout, self.training)
            x = x + attended if self.normalize_before else self.attn_layer_norm(x + attended)
        return self._residual(x, self.final_layer_norm, self._ffn)


class Encoder(nn.Module):
    """A stack of EncoderLayers; `ks` gives each layer's projected length (ignored by standard attention)."""

    def __init__(
        self,
        layers: int,
        embed_dim: int,
        ffn_embed_dim: int,
        num_heads: int,
        max_positions: int,
        ks: List[int],
        attention: AttentionSpec,
        dropout: float = 0.1,
        activation_dropout: float = 0.0,
        normalize_before: bool = False,
        freeze_projections: bool = False,
        checkpoint_activations: bool = False,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if len(ks) != layers:
            raise ValueError(f"got {len(ks)} values of k for {layers} layers")
        layerwise = attention.kind == "linformer" and attention.sharing == "layerwise"
        self.shared_projection = (
            build_projection(attention.projection, max_positions, ks[0], None, attention.projection_init)
            if layerwise
            else None
        )
        self.layers = nn.ModuleList(
            EncoderLayer(
                build_attention(attention, embed_dim, num_heads, max_positions, k),
                embed_dim, ffn_embed_dim, dropout, activation_dropout, normalize_before, layer_norm_eps,
            )  # fmt: skip
            for k in ks
        )
        self.final_layer_norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps) if normalize_before else None
        self.checkpoint_activations = checkpoint_activations
        if freeze_projections:
            for module in self.modules():
                if isinstance(module, SequenceProjection):
                    module.requires_grad_(False)

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None, grid: Optional[MaskedGrid] = None) -> Tensor:
        """(B, n, d) -> (B, n, d); with a grid of masked positions, (M, d) at those rows only: the last layer then
        computes just them (modules/masked_grid.py)."""
        for i, layer in enumerate(self.layers):
            args = (x, padding_mask, self.shared_projection, grid if i == len(self.layers) - 1 else None)
            if self.checkpoint_activations and self.training and torch.is_grad_enabled():
                # Keeps only each layer's input; backward reruns the layer (with the same dropout masks).
                x = checkpoint(layer, *args, use_reentrant=False)
            else:
                x = layer(*args)
        return x if self.final_layer_norm is None else self.final_layer_norm(x)
