"""What a Linformer's projections E and F learned, and what they cost: spectra, similarity, attention error.

Every linear projection (linear, mean_pool, conv) is read as its k x n matrix at n = max_positions, obtained by
projecting the identity, so all kinds are compared the same way; max_pool is not linear and has no matrix.
The error compares softmax(Q (E K)^T / sqrt(dh)) (F V) with softmax(Q K^T / sqrt(dh)) V from the same Q, K, V,
as is and after the best scalar rescaling: a learned F need not preserve the scale of V, which W_O can absorb.
"""
import math
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor, nn
from tqdm import tqdm

from linformer_pt.analysis.attention_maps import attention_probs, heads_qkv, projected_keys_values, reduce_layers
from linformer_pt.analysis.output import rounded, table
from linformer_pt.errors import UserError
from linformer_pt.modules.projections import SequenceProjection

NOTES = {
    "linear": "learned E and F: k x n matrices",
    "mean_pool": "fixed averaging over k windows (nothing learned): the matrix is that of pooling n positions",
    "conv": "learned taps of a strided conv: k disjoint windows, so rank k by construction; only the taps differ",
    "max_pool": "not linear: no matrix, so no spectra or similarity; only the attention error applies",
}
ENERGIES = (0.9, 0.99)  # shares of the squared singular values (the Frobenius energy) a rank keeps


def check_projections(model: nn.Module) -> None:
    """Refuse models without sequence projections, naming what they are."""
    cfg = model.cfg
    if cfg.attention != "linformer":
        raise UserError(
            f"projections needs a Linformer model; this one has model.attention={cfg.attention} (no E, F): "
            "use `linformer-analyze spectrum` for its attention"
        )
    if cfg.projection == "identity":
        raise UserError("projections needs E and F; model.projection=identity has none (k = n): use spectrum")


def projection_matrix(proj: SequenceProjection, n: int, heads: int, device: torch.device) -> Optional[Tensor]:
    """The (k, n) matrix proj applies to n positions, (heads, k, n) with per-head weights; None if not linear."""
    if not proj.linear:
        return None
    eye = torch.eye(n, device=device)
    with torch.no_grad():
        if proj.per_head:
            return proj(eye.expand(1, heads, n, n)).squeeze(0)
        return proj(eye.unsqueeze(0)).squeeze(0)


def named_matrices(model: nn.Module) -> List[Dict[str, Any]]:
    """{name, layer, which, head, matrix} of every distinct projection, one per head with sharing=none.

    layer is None for the single layerwise projection; which is E, F, or E=F where keys and values share one.
    """
    cfg, encoder = model.cfg, model.encoder
    device = model.embed_tokens.weight.device
    if encoder.shared_projection is not None:
        owners = [(None, "E=F", encoder.shared_projection)]
    else:
        owners = []
        for i, layer in enumerate(encoder.layers):
            attn = layer.self_attn
            owners.append((i, "E" if attn.proj_f is not None else "E=F", attn.proj_e))
            if attn.proj_f is not None:
                owners.append((i, "F", attn.proj_f))
    entries = []
    for layer, which, proj in owners:
        matrix = projection_matrix(proj, cfg.max_positions, cfg.heads, device)
        if matrix is None:
            continue
        prefix = "all layers" if layer is None else f"layer {layer}"
        for head, m in enumerate(matrix) if matrix.dim() == 3 else [(None, matrix)]:
            name = f"{prefix} {which}" + ("" if head is None else f" head {head}")
            entries.append({"name": name, "layer": layer, "which": which, "head": head, "matrix": m.double().cpu()})
    return entries


def matrix_stats(m: Tensor) -> Dict[str, Any]:
    """Singular values, effective rank exp(entropy of s / sum s), and the ranks keeping 90% / 99% of sum s^2."""
    s = torch.linalg.svdvals(m)
    p = s / s.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    energy = (s**2).cumsum(0) / (s**2).sum()
    ranks = {f"rank_{round(e * 100)}": int((energy >= e - 1e-12).nonzero()[0]) + 1 for e in ENERGIES}
    effective_rank = round(math.exp(entropy), 4)
    return {"shape": list(m.shape), "singular_values": rounded(s), "effective_rank": effective_rank, **ranks}


def row_space(m: Tensor) -> Tensor:
    """An orthonormal basis (r, n) of the span of m's rows, r its numerical rank."""
    _, s, vh = torch.linalg.svd(m, full_matrices=False)
    return vh[s > s[0] * 1e-10]


def similarities(matrices: List[Tensor]) -> Tuple[List[List[Optional[float]]], List[List[float]]]:
    """(cosine of the flattened matrices, None where shapes differ; row-space overlap), both matrix x matrix.

    The overlap is ||B_i B_j^T||_F^2 / min(r_i, r_j) for orthonormal row-space bases B: the mean squared cosine of
    the principal angles, 1 when one row space holds the other. Cosine 1 means sharing the matrix loses nothing;
    a high overlap with a low cosine means the same positions are mixed differently.
    """
    flat = [m.flatten() / m.norm().clamp_min(1e-300) for m in matrices]
    bases = [row_space(m) for m in matrices]
    cosine = [[round(float(a @ b), 6) if a.shape == b.shape else None for b in flat] for a in flat]
    overlap = [[round(float((a @ b.T).square().sum()) / min(len(a), len(b)), 6) for b in bases] for a in bases]
    return cosine, overlap


def relative_error(approx: Tensor, exact: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
    """(2, B, heads) over real query rows: ||A - B||_F / ||B||_F, and min_c ||c A - B||_F / ||B||_F (scale-free).

    A is approx, B exact; c = <A, B> / <A, A> is the least-squares scale.
    """
    if padding_mask is not None:
        pad = padding_mask[:, None, :, None]
        approx, exact = approx.masked_fill(pad, 0.0), exact.masked_fill(pad, 0.0)
    a, b = approx.flatten(2), exact.flatten(2)
    scale = (a * b).sum(-1, keepdim=True) / a.square().sum(-1, keepdim=True).clamp_min(1e-30)
    norm = b.norm(dim=-1).clamp_min(1e-30)
    return torch.stack([(a - b).norm(dim=-1) / norm, (scale * a - b).norm(dim=-1) / norm])


def layer_errors(
    attn: nn.Module, x: Tensor, padding_mask: Optional[Tensor], shared: Optional[SequenceProjection]
) -> Tensor:
    """Relative errors (2, B, heads) of a Linformer layer's P_lin V' against full softmax attention P V."""
    q, k, v = heads_qkv(attn, x)
    exact = attention_probs(q, k, padding_mask) @ v
    pk, pv, key_padding = projected_keys_values(attn, x, padding_mask, shared)
    return relative_error(attention_probs(q, pk, key_padding) @ pv, exact, padding_mask)


def attention_errors(
    model: nn.Module, batches: Iterable[Tuple[Tensor, Optional[Tensor]]], total: Optional[int], progress: bool
) -> Tensor:
    """Mean relative errors per layer and head (2, layers, heads): as is and rescaled, over the batches' sequences."""
    sums = torch.zeros(2, model.cfg.layers, model.cfg.heads, dtype=torch.float64)
    count = 0
    model.eval()
    for tokens, padding_mask in tqdm(batches, total=total, desc="projections", disable=not progress):
        errors = reduce_layers(model, tokens, padding_mask, lambda _, *layer_input: layer_errors(*layer_input))
        sums += torch.stack([e.sum(1) for e in errors], dim=1).double().cpu()
        count += tokens.shape[0]
    return sums / max(count, 1)


def projections_report(
    model: nn.Module,
    batches: Iterable[Tuple[Tensor, Optional[Tensor]]],
    total: Optional[int] = None,
    progress: bool = True,
) -> Dict[str, Any]:
    """Spectra and effective ranks of every E and F, their similarities, and the attention error per layer."""
    check_projections(model)
    cfg = model.cfg
    entries = named_matrices(model)
    cosine, overlap = similarities([e["matrix"] for e in entries])
    errors = attention_errors(model, batches, total, progress)
    return {
        "projection": cfg.projection,
        "sharing": cfg.sharing,
        "note": NOTES[cfg.projection],
        "layers": cfg.layers,
        "heads": cfg.heads,
        "n": cfg.max_positions,
        "k": cfg.layer_ks(),
        "matrices": [{**{key: e[key] for key in ("name", "layer", "which", "head")}, **matrix_stats(e["matrix"])}
                     for e in entries],  # fmt: skip
        "similarity": {"names": [e["name"] for e in entries], "cosine": cosine, "row_space_overlap": overlap},
        "relative_error": rounded(errors[0].mean(1)),
        "relative_error_heads": rounded(errors[0]),
        "rescaled_error": rounded(errors[1].mean(1)),
        "rescaled_error_heads": rounded(errors[1]),
    }


def format_table(report: Dict[str, Any]) -> str:
    """Per layer: k, the mean effective rank of its E and F (over heads), and the attention's relative errors."""
    rows = [["layer", "k", "E eff.rank", "F eff.rank", "rel.error", "rescaled"]]
    for layer, (error, rescaled) in enumerate(zip(report["relative_error"], report["rescaled_error"])):
        cells = [str(layer), str(report["k"][layer])]
        for side in ("E", "F"):
            ranks = [m["effective_rank"] for m in report["matrices"]
                     if m["layer"] in (layer, None) and side in m["which"]]  # fmt: skip
            cells.append(f"{sum(ranks) / len(ranks):.1f}" if ranks else "-")
        rows.append(cells + [f"{error:.4f}", f"{rescaled:.4f}"])
    return table(rows)
