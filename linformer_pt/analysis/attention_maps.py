"""Each layer's attention input captured during a forward pass, and its attention matrix P recomputed from it.

A forward pre-hook on every attention module hands the layer's input to a reducer, which builds that layer's P,
reduces it to something small and drops it before the next layer runs: one layer's P in memory at a time.
"""
from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from linformer_pt.modules.attention import LinformerSelfAttention
from linformer_pt.modules.projections import SequenceProjection

# reduce(layer index, attention module, its input x (B, n, d), padding mask (B, n) or None, layerwise projection)
Reducer = Callable[[int, nn.Module, Tensor, Optional[Tensor], Optional[SequenceProjection]], Any]


@torch.no_grad()
def reduce_layers(model: nn.Module, tokens: Tensor, padding_mask: Optional[Tensor], reduce: Reducer) -> List[Any]:
    """Run the model's encoder on a batch and return reduce(...) of every layer's attention input, in layer order.

    The hook sees exactly the arguments the encoder calls attention with (pre-LN included, and a padding mask the
    model has already turned into None when nothing is padded), so no part of the forward pass is re-implemented.
    """
    results: List[Any] = []

    def hook(index: int) -> Callable:
        def capture(module: nn.Module, args: Tuple) -> None:
            x, mask, shared = args
            results.append(reduce(index, module, x, mask, shared))

        return capture

    handles = [layer.self_attn.register_forward_pre_hook(hook(i)) for i, layer in enumerate(model.encoder.layers)]
    try:
        model.extract_features(tokens, padding_mask)
    finally:
        for handle in handles:
            handle.remove()
    return results


def real_lengths(padding_mask: Optional[Tensor], batch: int, n: int, device: torch.device) -> Tensor:
    """Number of real (unpadded) tokens of each sequence; padding is on the right."""
    if padding_mask is None:
        return torch.full((batch,), n, dtype=torch.long, device=device)
    return (~padding_mask).sum(1)


def heads_qkv(attn: nn.Module, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Queries, keys and values of all n positions, split into heads as the module does: (B, heads, n, dh) each."""
    return attn.split_heads(attn.q_proj(x)), attn.split_heads(attn.k_proj(x)), attn.split_heads(attn.v_proj(x))


def attention_probs(q: Tensor, k: Tensor, key_padding: Optional[Tensor] = None) -> Tensor:
    """P = softmax(q k^T / sqrt(dh)): (B, heads, n, m); keys where key_padding (B or 1, m) is True get 0.

    The scale is that of scaled_dot_product_attention, which both attention modules call.
    """
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if key_padding is not None:
        scores = scores.masked_fill(key_padding[:, None, None, :], float("-inf"))
    return scores.softmax(-1)


def full_probs(attn: nn.Module, x: Tensor, padding_mask: Optional[Tensor]) -> Tensor:
    """The layer's full n x n context matrix P from its own q/k projections (a Linformer's E and F skipped)."""
    q, k, _ = heads_qkv(attn, x)
    return attention_probs(q, k, padding_mask)


def projected_keys_values(
    attn: LinformerSelfAttention, x: Tensor, padding_mask: Optional[Tensor], shared: Optional[SequenceProjection]
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """(E K, F V, projected key padding mask) of a Linformer layer: (B, heads, k, dh) twice, and (B or 1, k) or None.

    E is applied to the full n-row keys (the module's per-head path), which the module's project-first shortcut
    must equal; fairseq_compat adds the bias after projecting, so for it the module's own dispatch is kept.
    """
    e = shared if attn.sharing == "layerwise" else attn.proj_e
    f = attn.proj_f or e
    if attn.fairseq_compat:
        project = attn.project_first if e.linear and not e.per_head else attn.project_after
        return (*project(x, None, e, f), None)
    keep = None if padding_mask is None else ~padding_mask
    k, v = attn.project_after(x, keep, e, f)
    return k, v, e.projected_padding_mask(padding_mask, x.shape[1], x.device)


def recompute_output(
    attn: nn.Module, x: Tensor, padding_mask: Optional[Tensor], shared: Optional[SequenceProjection] = None
) -> Tensor:
    """The module's output out_proj(merge_heads(P V)) with P built explicitly (eval mode: no attention dropout)."""
    q, k, v = heads_qkv(attn, x)
    key_padding = padding_mask
    if isinstance(attn, LinformerSelfAttention):
        k, v, key_padding = projected_keys_values(attn, x, padding_mask, shared)
    return attn.out_proj(attn.merge_heads(attention_probs(q, k, key_padding) @ v))
