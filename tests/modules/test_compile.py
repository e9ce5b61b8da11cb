"""trainer.compile: the model under torch.compile (inductor; a C++ compiler on the CPU) gives eager's loss."""
import shutil

import pytest
import torch

from linformer_pt.modules.attention import AttentionSpec
from linformer_pt.modules.encoder import Encoder


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler")
def test_compiled_encoder_matches_eager_loss_and_gradients():
    torch.manual_seed(0)
    encoder = Encoder(2, 32, 64, 4, 16, [8, 8], AttentionSpec("linformer", "headwise"), dropout=0.0).eval()
    x = torch.randn(2, 16, 32)
    eager = encoder(x).pow(2).mean()
    eager.backward()
    eager_grads = [p.grad.clone() for p in encoder.parameters()]
    encoder.zero_grad()
    compiled = torch.compile(encoder)(x).pow(2).mean()
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    for p, g in zip(encoder.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-3, atol=1e-5)
