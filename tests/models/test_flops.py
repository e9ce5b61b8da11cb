"""The FLOP count behind MFU agrees with PyTorch's own counter on the real forward pass."""
import itertools

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from linformer_pt.models.linformer_roberta import LinformerRoberta, LinformerRobertaConfig, forward_flops
from linformer_pt.modules.masked_grid import MaskedGrid
from linformer_pt.modules.attention import SHARING_SCHEMES
from linformer_pt.modules.projections import PROJECTIONS

CASES = [("linformer", s, p, False) for s, p in itertools.product(SHARING_SCHEMES, PROJECTIONS)]
CASES += [("linformer", sharing, "linear", True) for sharing in ("headwise", "kv", "layerwise")]  # fairseq_compat
CASES += [("standard", "headwise", "linear", False)]


@pytest.mark.parametrize("attention, sharing, projection, fairseq_compat", CASES)
def test_forward_flops_match_pytorchs_counter(attention, sharing, projection, fairseq_compat):
    cfg = LinformerRobertaConfig(layers=2, embed_dim=64, ffn_embed_dim=256, heads=4, max_positions=128, k=16,
                                 attention=attention, sharing=sharing, projection=projection,
                                 fairseq_compat=fairseq_compat)  # fmt: skip
    model = LinformerRoberta(cfg, vocab_size=500, padding_idx=1).eval()
    tokens = torch.randint(5, 500, (1, 128))
    masked = torch.zeros_like(tokens, dtype=torch.bool)
    masked[0, ::8] = True
    # The math kernel spells attention out as matmuls, which the counter sees (it has no formula for CPU flash).
    for grid in (None, MaskedGrid.from_mask(masked)):  # every row (fine-tuning, features); the masked-LM loss's
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
            model(tokens, None, masked, grid)
        counted = counter.get_total_flops()
        # Exact: the count follows the code path (project first or not) that each scheme takes.
        last_rows = None if grid is None else int(masked.sum())
        expected = forward_flops(cfg, 500, 128, int(masked.sum()), last_layer_rows=last_rows)
        assert expected == pytest.approx(counted, rel=1e-9)
    assert model.forward_flops(128, int(masked.sum())) == expected  # training's count: the grid's
