"""RoBERTa-style masked-LM encoder with Linformer self-attention (or standard attention as a baseline).

Embeddings (tokens + learned positions, LayerNorm) -> Encoder -> LM head tied to the token embeddings.
"""
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linformer_pt.config import check, check_choice
from linformer_pt.errors import UserError
from linformer_pt.modules.attention import ATTENTION_KINDS, SHARING_SCHEMES, AttentionSpec
from linformer_pt.modules.dropout import dropout as fast_dropout
from linformer_pt.modules.encoder import Encoder
from linformer_pt.modules.folded_attention import folding_pays
from linformer_pt.modules.masked_grid import MaskedGrid
from linformer_pt.modules.projections import PROJECTION_INITS, PROJECTIONS
from linformer_pt.registry import register_model


@dataclass
class LinformerRobertaConfig:
    name: str = "linformer_roberta"
    layers: int = 4
    embed_dim: int = 256
    ffn_embed_dim: int = 1024
    heads: int = 4
    max_positions: int = 256
    attention: str = "linformer"  # linformer | standard
    k: Any = 64  # projected length: an int, or a list with one k per layer
    compressed: int = 0  # fairseq's alias: k = max_positions // compressed (0: use k)
    sharing: str = "headwise"  # none | headwise | kv | layerwise
    projection: str = "linear"  # linear | mean_pool | max_pool | conv | identity (k = n, k ignored)
    projection_init: str = "xavier"  # xavier | normal (N(0, 0.02)), for projection=linear
    freeze_projections: bool = False  # keep E/F at their initial (or loaded) values
    fairseq_compat: bool = False  # ignore the padding mask in projections, as fairseq does (parity runs only)
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    normalize_before: bool = False  # False: post-LN as in RoBERTa
    layer_norm_eps: float = 1e-5  # every LayerNorm's epsilon (BERT's checkpoints use 1e-12)
    checkpoint_activations: bool = False  # recompute each layer in backward instead of storing its activations

    def __post_init__(self) -> None:
        for key in ("layers", "embed_dim", "ffn_embed_dim", "heads", "max_positions"):
            check(getattr(self, key) > 0, f"model.{key}={getattr(self, key)} must be > 0")
        check(
            self.embed_dim % self.heads == 0,
            f"model.embed_dim={self.embed_dim} must be divisible by model.heads={self.heads}",
        )
        check_choice("model.attention", self.attention, list(ATTENTION_KINDS))
        check_choice("model.sharing", self.sharing, list(SHARING_SCHEMES))
        check_choice("model.projection", self.projection, list(PROJECTIONS))
        check_choice("model.projection_init", self.projection_init, list(PROJECTION_INITS))
        for key in ("dropout", "attention_dropout", "activation_dropout"):
            check(0.0 <= getattr(self, key) < 1.0, f"model.{key}={getattr(self, key)} must be in [0, 1)")
        check(0.0 < self.layer_norm_eps < 1.0, f"model.layer_norm_eps={self.layer_norm_eps} must be in (0, 1)")
        check(self.compressed >= 0, f"model.compressed={self.compressed} must be >= 0")
        self.layer_ks()  # validates k

    def attention_spec(self) -> AttentionSpec:
        return AttentionSpec(
            self.attention, self.sharing, self.projection, self.projection_init, self.attention_dropout,
            self.fairseq_compat,
        )  # fmt: skip

    def layer_ks(self) -> List[int]:
        """One projected length per layer, validated against max_positions and the sharing scheme."""
        if self.compressed:
            k: Any = self.max_positions // self.compressed
            check(k > 0, f"model.compressed={self.compressed} leaves k=0 for max_positions={self.max_positions}")
        else:
            k = self.k
        ks = list(k) if isinstance(k, (list, tuple)) else [k] * self.layers
        check(
            len(ks) == self.layers,
            f"model.k has {len(ks)} values but model.layers={self.layers}; give one k or one per layer",
        )
        for value in ks:
            check(
                isinstance(value, int) and not isinstance(value, bool) and 0 < value <= self.max_positions,
                f"model.k={value!r} must be an integer in [1, max_positions={self.max_positions}]",
            )
        check(
            self.sharing != "layerwise" or len(set(ks)) == 1,
            f"model.sharing=layerwise shares one projection, so all layers need the same k (got {ks})",
        )
        return ks


@register_model("linformer_roberta", LinformerRobertaConfig)
class LinformerRoberta(nn.Module):
    """Token + position embeddings, a Linformer encoder, and a masked-LM head tied to the embeddings."""

    def __init__(self, cfg: LinformerRobertaConfig, vocab_size: int, padding_idx: int) -> None:
        super().__init__()
        self.cfg, self.padding_idx = cfg, padding_idx
        d = cfg.embed_dim
        self.embed_tokens = nn.Embedding(vocab_size, d, padding_idx=padding_idx)
        self.embed_positions = nn.Embedding(cfg.max_positions, d)
        self.embed_layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.encoder = Encoder(
            cfg.layers, d, cfg.ffn_embed_dim, cfg.heads, cfg.max_positions, cfg.layer_ks(), cfg.attention_spec(),
            cfg.dropout, cfg.activation_dropout, cfg.normalize_before, cfg.freeze_projections,
            cfg.checkpoint_activations, cfg.layer_norm_eps,
        )  # fmt: skip
        self.lm_dense = nn.Linear(d, d)
        self.lm_layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.lm_bias = nn.Parameter(torch.zeros(vocab_size))
        self.apply(_init_bert_params)

    @classmethod
    def build(cls, cfg: LinformerRobertaConfig, task: Any) -> "LinformerRoberta":
        """Build for `task`, which supplies the vocabulary size and padding index."""
        return cls(cfg, vocab_size=task.vocab_size, padding_idx=task.pad_id)

    def extract_features(
        self, tokens: Tensor, padding_mask: Optional[Tensor] = None, grid: Optional[MaskedGrid] = None
    ) -> Tensor:
        """Encoder output (B, n, d) for token ids (B, n); padding_mask is True at padded positions. With a grid of
        masked positions, the output (M, d) at those positions only (the last layer computes no other rows)."""
        n = tokens.shape[1]
        if n > self.cfg.max_positions:
            raise UserError(f"input length {n} exceeds model.max_positions={self.cfg.max_positions}")
        positions = torch.arange(n, device=tokens.device)
        x = self.embed_layer_norm(self.embed_tokens(tokens) + self.embed_positions(positions))
        x = fast_dropout(x, self.cfg.dropout, self.training)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
            # No padding: attention can skip the masking work. In training the trainer drops such masks itself, on
            # the host (training/step.py): looking here would make the host wait for the device every micro-batch.
            if not self.training and not padding_mask.any():
                padding_mask = None
        return self.encoder(x, padding_mask, grid)

    def lm_head(self, features: Tensor) -> Tensor:
        """Vocabulary logits for features (..., d), using the tied token embedding matrix."""
        x = self.lm_layer_norm(F.gelu(self.lm_dense(features)))
        return F.linear(x, self.embed_tokens.weight, self.lm_bias)

    def forward_flops(self, n: int, masked: float) -> float:
        """Matmul FLOPs of one training forward pass over n tokens with `masked` LM-head positions (the last layer
        at those rows only, as with collate's grid)."""
        return forward_flops(self.cfg, self.embed_tokens.num_embeddings, n, masked, last_layer_rows=masked)

    def forward(
        self,
        tokens: Tensor,
        padding_mask: Optional[Tensor] = None,
        masked_positions: Optional[Tensor] = None,
        grid: Optional[MaskedGrid] = None,
    ) -> Tensor:
        """LM logits: (M, V) at the M masked positions when given, else (B, n, V). `masked_positions` is a bool
        (B, n) mask, or the M row-major flat indices of its True entries (int64, as collate's "masked_index").
        `grid` (collate's "masked_grid"), the same positions laid out per sample, replaces them and lets the last
        layer compute only those rows (the same logits, in the same order).

        Running the head only where the loss is computed saves most of its cost (vocabulary x positions). Indices
        are what training passes: a boolean index makes a GPU wait to learn M before it can size the result, while
        indices computed by the data loader on the host size it up front.
        """
        if grid is not None:
            return self.lm_head(self.extract_features(tokens, padding_mask, grid))
        features = self.extract_features(tokens, padding_mask)
        if masked_positions is not None and masked_positions.dtype == torch.long:
            features = features.flatten(0, 1).index_select(0, masked_positions)
        elif masked_positions is not None:
            features = features[masked_positions]
        return self.lm_head(features)


def _init_bert_params(module: nn.Module) -> None:
    """BERT/RoBERTa initialisation: N(0, 0.02) weights, zero biases; Linformer projections keep their own."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()


def forward_flops(
    cfg: LinformerRobertaConfig, vocab_size: int, n: int, masked: float, last_layer_rows: Optional[float] = None
) -> float:
    """Matmul FLOPs of one forward pass over a sequence of n tokens with `masked` LM-head positions.

    Counts what this implementation computes: Linformer's projections and n x k attention, the K/V maps on k rows
    where the sequence is projected first, and the LM head at masked positions only. `last_layer_rows`: the rows the
    last layer computes queries, attention, output map and feed-forward for (default n; masked with collate's grid,
    whose per-sample padding entries are not counted). Training is about 3x this. Pooling and conv windows are
    sums, not matmuls: they count 0, as in PyTorch's FlopCounterMode.
    """
    d, f = cfg.embed_dim, cfg.ffn_embed_dim
    total = 2.0 * masked * (d * d + d * vocab_size)
    ks = cfg.layer_ks()
    for i, k in enumerate(ks):
        rows = n if last_layer_rows is None or i < len(ks) - 1 else last_layer_rows
        total += 4.0 * rows * d * f  # feed-forward
        if cfg.attention == "standard" or cfg.projection == "identity":
            total += 4.0 * rows * d * d + 4.0 * n * d * d + 4.0 * rows * n * d  # Q, K, V, output maps; QK^T, PV
            continue
        if folding_pays(round(rows), k, d, cfg.heads):  # W_Q, W_O folded into K', V' (modules/folded_attention.py)
            total += 4.0 * k * d * d + 2.0 * k * d + 4.0 * rows * d * cfg.heads * k  # 2kd: the query bias's term
        else:  # Q and output maps; softmax(Q K'^T) V' over k rows
            total += 4.0 * rows * d * d + 4.0 * rows * k * d
        total += _kv_flops(cfg, n, k)
    return total


def _kv_flops(cfg: LinformerRobertaConfig, n: int, k: int) -> float:
    """K/V maps and sequence projections of one Linformer layer, following LinformerSelfAttention's two paths."""
    d = cfg.embed_dim
    learned = cfg.projection == "linear"
    # Attention projects the sequence first when the projection is linear in X and has no per-head weights:
    # pooling never has per-head weights, so mean_pool projects first even with sharing=none.
    per_head = cfg.sharing == "none" and cfg.projection in ("linear", "conv")
    if cfg.projection == "max_pool" or per_head:
        return 4.0 * n * d * d + (2 * 2.0 * k * n * d if learned else 0.0)  # K/V maps on n rows, then E and F
    projections = 1 if cfg.sharing in ("kv", "layerwise") else 2
    # E X. E 1, the bias term, is E's column sums without padding (with padding, a product with the keep mask: 2kn
    # more per sample, not counted here, as training batches of sample_break_mode=none have no padding).
    project = 2.0 * k * n * d if learned else 0.0
    return 4.0 * k * d * d + projections * project
