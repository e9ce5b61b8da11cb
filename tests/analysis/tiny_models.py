"""Small randomly initialised models and padded batches for the analysis tests."""
from typing import List, Tuple

import torch

from linformer_pt.models.linformer_roberta import LinformerRoberta, LinformerRobertaConfig

VOCAB, PAD = 50, 1


def tiny_model(
    n: int = 32, layers: int = 2, heads: int = 4, sharpen: float = 4.0, k: int = 8, **cfg
) -> LinformerRoberta:
    """An eval-mode model whose query weights are scaled by `sharpen`, so attention is far from uniform.

    Value and output weights are scaled by 5, so attention outputs are of order 0.1-1 rather than 0.01.
    """
    torch.manual_seed(0)
    config = LinformerRobertaConfig(layers=layers, embed_dim=32, ffn_embed_dim=64, heads=heads, max_positions=n,
                                    k=k, dropout=0.0, attention_dropout=0.0, **cfg)  # fmt: skip
    model = LinformerRoberta(config, VOCAB, PAD).eval()
    with torch.no_grad():
        for layer in model.encoder.layers:
            layer.self_attn.q_proj.weight.mul_(sharpen)
            layer.self_attn.v_proj.weight.mul_(5.0)
            layer.self_attn.out_proj.weight.mul_(5.0)
    return model


def padded(sequences: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (tokens, padding_mask) of token sequences."""
    n = max(len(s) for s in sequences)
    tokens = torch.full((len(sequences), n), PAD, dtype=torch.long)
    for row, seq in enumerate(sequences):
        tokens[row, : len(seq)] = seq
    return tokens, tokens.eq(PAD)


def random_tokens(length: int, seed: int) -> torch.Tensor:
    """Token ids that are never the padding id."""
    return torch.randint(5, VOCAB, (length,), generator=torch.Generator().manual_seed(seed))
