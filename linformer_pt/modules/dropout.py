"""Dropout with a cheaper random mask on the CPU, and softmax attention with that dropout on its probabilities.

On a CPU, torch draws one number from its serial Mersenne Twister per element for a dropout mask (`bernoulli_`):
13 ms for the 2M elements of one (32, 256, 256) activation on 2 cores, more than the matmuls around it in bf16,
and ~15-25% of a small model's training step. Here each 64-bit draw gives four 16-bit uniforms instead, compared
with p quantised to 1/65536 (p = 0.1 drops with probability 6554/65536 = 0.100006, and the kept values are scaled
by the matching 1/(1 - p), so the expectation is exact): 4x fewer draws, ~3.5x less time. The mask is still a pure
function of torch's CPU generator state, so the trainer's per-update seeding keeps runs reproducible.

CUDA (whose dropout already uses a parallel Philox generator) keeps torch's own dropout. Under torch.compile on a
CPU the cheaper mask is used too: inductor's code for torch's dropout made a compiled step 7% slower than eager,
with this mask it is 8% faster (docs/benchmarks.md). Masks under compile are a function of the seed as well, but not
the same masks as eager's.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

LEVELS = 1 << 16  # 16-bit uniforms: four per 64-bit draw
# Module switch: the A/B benchmark (scripts/bench_step_ab.py) turns it off to time torch's own dropout.
ENABLED = True


def _fast(x: Tensor, p: float, training: bool) -> bool:
    return ENABLED and training and x.device.type == "cpu" and 0 < round(p * LEVELS) < LEVELS


def keep_mask(shape: Tuple[int, ...], p: float) -> Tuple[Tensor, float]:
    """A boolean mask of `shape`, True with probability 1 - p' where p' = round(p * 65536) / 65536, and 1 / (1 - p')."""
    drop = round(p * LEVELS)
    numel = math.prod(shape)
    words = torch.randint(-(1 << 63), (1 << 63) - 1, ((numel + 3) // 4,), dtype=torch.int64)
    uniforms = words.view(torch.int16)[:numel].view(shape)  # each uniform on [-32768, 32767]
    return uniforms >= drop - LEVELS // 2, LEVELS / (LEVELS - drop)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """F.dropout(x, p, training), with the cheaper mask on the CPU."""
    if not _fast(x, p, training):
        return F.dropout(x, p, training)
    keep, scale = keep_mask(tuple(x.shape), p)
    # where() keeps only the boolean mask for backward (as torch's dropout does), not a float copy of it.
    return torch.where(keep, x * scale, 0.0)


def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor], p: float, training: bool) -> Tensor:
    """softmax(q k^T / sqrt(dh)) v with dropout p on the probabilities; attn_mask (bool) True where attended.

    On a CPU, F.scaled_dot_product_attention has no fused kernel with dropout: it falls back to its math path
    (these same ops) with torch's slow mask, so the fast path spells the ops out with the cheaper mask. Elsewhere,
    and without dropout, SDPA.
    """
    if not _fast(q, p, training):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p if training else 0.0)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    if attn_mask is not None:
        # The dtype's lowest finite value, not -inf: a row with every key masked (an all-padding sample) then
        # gets finite probabilities, where -inf would make NaNs that backward spreads into the weights.
        scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
    probs = dropout(scores.softmax(-1), p, True)
    return probs.to(v.dtype) @ v
