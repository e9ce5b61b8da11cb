"""Sequence-axis projections n -> k (Linformer's E and F): learned linear, mean/max pooling, strided conv, identity.

Every projection maps (..., n, C) to (..., k, C) and ignores padded positions: `keep` (B, n) is True (or 1) at
real positions and False (or 0) at padding, which must be on the right. Inputs shorter than max_positions use the
first n rows of a learned E; pooling and conv windows adapt to each sample's real length, so padding never changes
them.
"""
import math
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linformer_pt.errors import UserError

PROJECTIONS = ("linear", "mean_pool", "max_pool", "conv", "identity")
PROJECTION_INITS = ("xavier", "normal", "average")


def _masked(x: Tensor, keep: Tensor, per_head: bool = False) -> Tensor:
    """x with padded positions set to zero (masked_fill, so non-finite padding cannot leak in as NaN)."""
    pad = keep == 0
    return x.masked_fill(pad[:, None, :, None] if per_head else pad[:, :, None], 0.0)


class SequenceProjection(nn.Module):
    """Base class. `linear` means P(XW + 1b) = P(X)W + P(1)b, which lets attention project X before W_K, W_V."""

    linear = True
    per_head = False  # True: expects (B, heads, n, dh) and has one set of weights per head

    def __init__(self, max_positions: int, k: int) -> None:
        super().__init__()
        self.max_positions, self.k = max_positions, k

    def check_length(self, n: int) -> None:
        if n > self.max_positions:
            raise UserError(f"input length {n} exceeds max_positions {self.max_positions} of the Linformer projection")

    def projected_rows(self, n: int) -> int:
        """How many rows an input of n rows is projected to."""
        return self.k

    def projected_padding_mask(self, padding_mask: Optional[Tensor], n: int, device: torch.device) -> Optional[Tensor]:
        """(B or 1, k) True where a projected row holds no real position (masked out as keys), or None."""
        return None


def window_average(n: int, k: int) -> Tensor:
    """(n, k): column j averages positions [floor(j n / k), ceil((j + 1) n / k)), as adaptive mean pooling does.

    The init that keeps a swapped-in Linformer close to the standard attention it replaces (an imported RoBERTa):
    each projected key and value is the mean of a window of real ones, so attention starts as attention over window
    means instead of over random mixtures of all positions.
    """
    matrix = torch.zeros(n, k)
    for j in range(k):
        start, end = (j * n) // k, -((-(j + 1) * n) // k)
        matrix[start:end, j] = 1.0 / (end - start)
    return matrix


class LinearProjection(SequenceProjection):
    """Learned E of shape (max_positions, k), or (heads, max_positions, k) with one E per head."""

    def __init__(self, max_positions: int, k: int, num_heads: Optional[int] = None, init: str = "xavier") -> None:
        super().__init__(max_positions, k)
        self.per_head = num_heads is not None
        shape = (max_positions, k) if num_heads is None else (num_heads, max_positions, k)
        self.weight = nn.Parameter(torch.empty(shape))
        if init == "xavier":
            # fairseq's gain 1/sqrt(2): E and F each carry half of a key/value projection pair.
            bound = math.sqrt(6.0 / (max_positions + k)) / math.sqrt(2.0)
            nn.init.uniform_(self.weight, -bound, bound)
        elif init == "normal":
            nn.init.normal_(self.weight, mean=0.0, std=0.02)
        elif init == "average":
            with torch.no_grad():
                self.weight.copy_(window_average(max_positions, k).expand(shape))
        else:
            raise UserError(f"projection init {init!r} is not allowed; choose one of: {', '.join(PROJECTION_INITS)}")

    def matrix(self, n: int) -> Tensor:
        """The first n rows of E: (n, k), or (heads, n, k) for per-head projections."""
        self.check_length(n)
        return self.weight[..., :n, :]

    def forward(self, x: Tensor, keep: Optional[Tensor] = None) -> Tensor:
        """x (B, n, C) -> (B, k, C); per head: (B, heads, n, dh) -> (B, heads, k, dh)."""
        if keep is not None:
            x = _masked(x, keep, self.per_head)
        return self.matrix(x.shape[-2]).transpose(-1, -2).to(x.dtype) @ x


class IdentityProjection(SequenceProjection):
    """k = n: standard softmax attention through the Linformer code path (padded keys masked out)."""

    def forward(self, x: Tensor, keep: Optional[Tensor] = None) -> Tensor:
        self.check_length(x.shape[-2])
        return x if keep is None else _masked(x, keep)

    def projected_rows(self, n: int) -> int:
        return n

    def projected_padding_mask(self, padding_mask: Optional[Tensor], n: int, device: torch.device) -> Optional[Tensor]:
        return padding_mask


class WindowProjection(SequenceProjection):
    """Projections over k contiguous windows of each sample's real length L (pooling, strided conv)."""

    def forward(self, x: Tensor, keep: Optional[Tensor] = None) -> Tensor:
        n = x.shape[-2]
        self.check_length(n)
        if keep is None:
            return self.windows(x, n)
        # Count on a boolean: summing a bf16 keep rounds 299 and 301 both to 300 (8 significant bits).
        lengths = (keep != 0).sum(1)
        out = x.new_empty(*x.shape[:-2], self.k, x.shape[-1])
        # Samples of equal length share one call; a packed batch has few distinct lengths.
        for length in torch.unique(lengths).tolist():
            rows = (lengths == length).nonzero().squeeze(1)
            out[rows] = self.windows(x[rows][..., : max(length, 1), :], max(length, 1))
        return out

    def windows(self, x: Tensor, length: int) -> Tensor:
        """Project x (..., length, C) -> (..., k, C)."""
        raise NotImplementedError


class PoolProjection(WindowProjection):
    """Adaptive mean or max pooling to exactly k rows (windows [floor(jL/k), ceil((j+1)L/k)))."""

    def __init__(self, max_positions: int, k: int, kind: str) -> None:
        super().__init__(max_positions, k)
        self.linear = kind == "mean_pool"
        self._pool: Callable = F.adaptive_avg_pool1d if self.linear else F.adaptive_max_pool1d

    def windows(self, x: Tensor, length: int) -> Tensor:
        flat = x.reshape(-1, length, x.shape[-1]).transpose(1, 2)  # pool over the sequence axis
        return self._pool(flat, self.k).transpose(1, 2).reshape(*x.shape[:-2], self.k, x.shape[-1])


class ConvProjection(WindowProjection):
    """Strided conv with kernel = stride = ceil(L/k): row j = mean over t of w_t * x[j*K + t] (zeros past L).

    One learned weight per tap, shared by all features (per head with sharing=none); initialised to 1, i.e. to
    mean pooling. Inputs shorter than max_positions use the first K taps.
    """

    def __init__(self, max_positions: int, k: int, num_heads: Optional[int] = None) -> None:
        super().__init__(max_positions, k)
        self.per_head = num_heads is not None
        taps = math.ceil(max_positions / k)
        self.weight = nn.Parameter(torch.ones(taps) if num_heads is None else torch.ones(num_heads, taps))

    def windows(self, x: Tensor, length: int) -> Tensor:
        kernel = math.ceil(length / self.k)
        x = F.pad(x, (0, 0, 0, self.k * kernel - length))  # zeros complete the last windows
        x = x.unflatten(-2, (self.k, kernel))  # (..., k, kernel, C)
        w = self.weight[..., :kernel].to(x.dtype)
        w = w.view(*w.shape[:-1], 1, kernel, 1)
        return (x * w).sum(-2) / kernel

    def projected_padding_mask(self, padding_mask: Optional[Tensor], n: int, device: torch.device) -> Optional[Tensor]:
        """Rows whose whole window lies past the real length L (row j starts at j * ceil(L/k)) hold no position."""
        lengths = torch.full((1,), n, device=device) if padding_mask is None else (~padding_mask).sum(1)
        lengths = lengths.unsqueeze(1)
        kernels = (lengths + self.k - 1) // self.k
        return torch.arange(self.k, device=device) * kernels >= lengths


def project_pair(
    e: SequenceProjection, f: SequenceProjection, x: Tensor, keep: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(E x, F x, E m, F m) for x (B, n, C), where m (B, n, 1) is 1 at kept positions (all ones without `keep`):
    E m and F m, (B or 1, k, 1), carry the bias terms of the key and value maps (E(XW + 1b) = (EX)W + (E1)b).

    Where both are shared-over-heads learned matrices: one (2k x n) @ (n x C) product against [E | F] masks x once
    and makes one call, and E m is [E | F]'s column sums (without padding) or its product with the keep mask; E x
    is reused when F is E (sharing kv / layerwise).
    """
    learned = all(isinstance(p, LinearProjection) and not p.per_head for p in (e, f))
    if not learned:
        ones = x.new_ones(x.shape[0], x.shape[1], 1)
        ex, e1 = e(x, keep), e(ones, keep)
        return (ex, ex, e1, e1) if f is e else (ex, f(x, keep), e1, f(ones, keep))
    if keep is not None:
        x = _masked(x, keep)
    n = x.shape[-2]
    both = e.matrix(n) if f is e else torch.cat([e.matrix(n), f.matrix(n)], dim=-1)
    both = both.transpose(-1, -2).to(x.dtype)
    projected = both @ x
    counts = both.sum(-1, keepdim=True).unsqueeze(0) if keep is None else both @ keep.to(x.dtype).unsqueeze(-1)
    if f is e:
        return projected, projected, counts, counts
    ex, fx = projected.split([e.k, f.k], dim=-2)
    e1, f1 = counts.split([e.k, f.k], dim=-2)
    return ex, fx, e1, f1


def build_projection(
    kind: str, max_positions: int, k: int, num_heads: Optional[int] = None, init: str = "xavier"
) -> SequenceProjection:
    """A projection of `kind`; num_heads gives one set of weights per head (learned kinds only)."""
    if kind == "linear":
        return LinearProjection(max_positions, k, num_heads, init)
    if kind == "conv":
        return ConvProjection(max_positions, k, num_heads)
    if kind in ("mean_pool", "max_pool"):
        return PoolProjection(max_positions, k, kind)
    if kind == "identity":
        return IdentityProjection(max_positions, max_positions)
    raise UserError(f"model.projection={kind!r} is not allowed; choose one of: {', '.join(PROJECTIONS)}")
