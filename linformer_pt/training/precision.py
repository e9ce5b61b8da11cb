"""Mixed precision: autocast for bf16/fp16, and fp16's dynamic loss scaling (fairseq's rules).

fp16 gradients are computed on loss * scale; an overflow (inf/nan gradient norm) skips the update and halves the
scale; `scale_window` clean updates in a row double it; a scale below `min_scale` stops the run.
"""
import contextlib
import math
from typing import ContextManager, Dict, Iterable

import torch
from torch import Tensor

from linformer_pt.errors import UserError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast context plus loss scaling; fp32 and bf16 use scale 1 and never skip."""

    def __init__(
        self,
        precision: str,
        device: torch.device,
        init_scale: float = 2.0**7,
        scale_window: int = 256,
        min_scale: float = 1e-4,
    ) -> None:
        if precision not in PRECISIONS:
            raise UserError(f"trainer.precision={precision!r} is not allowed; choose one of: {', '.join(PRECISIONS)}")
        self.precision, self.device = precision, device
        self.dtype = PRECISIONS[precision]
        self.scale = init_scale if precision == "fp16" else 1.0
        self.scale_window, self.min_scale = scale_window, min_scale
        self.clean_updates = 0

    @property
    def dynamic(self) -> bool:
        return self.precision == "fp16"

    def autocast(self) -> ContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def scale_loss(self, loss: Tensor) -> Tensor:
        return loss * self.scale if self.dynamic else loss

    def unscale_(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Divide gradients by the loss scale, in place, before clipping and the optimizer step."""
        if self.dynamic:
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(1.0 / self.scale)  # a plain loop: FSDP's gradients are DTensors

    def update(self, grad_norm: float) -> bool:
        """Record one update's gradient norm; False means overflow: skip it (fp16) or stop (fp32/bf16)."""
        finite = math.isfinite(grad_norm)
        if not self.dynamic:
            return finite
        if not finite:
            self.scale /= 2.0
            self.clean_updates = 0
            if self.scale < self.min_scale:
                raise FloatingPointError(
                    f"fp16 loss scale fell below trainer.fp16_min_scale={self.min_scale:g}: the loss keeps overflowing; "
                    "try trainer.precision=bf16 or a lower optim.lr"
                )
            return False
        self.clean_updates += 1
        if self.clean_updates % self.scale_window == 0:
            self.scale *= 2.0
        return True

    def state_dict(self) -> Dict[str, float]:
        return {"scale": self.scale, "clean_updates": self.clean_updates}

    def load_state_dict(self, state: Dict[str, float]) -> None:
        self.scale, self.clean_updates = state["scale"], state["clean_updates"]
