"""Changing max_positions of a trained model: explicit resizing, never a shape crash."""
import pytest
import torch

from linformer_pt.errors import UserError
from linformer_pt.models.linformer_roberta import LinformerRoberta, LinformerRobertaConfig
from linformer_pt.models.loading import load_model
from linformer_pt.models.resize import resize_positions, resize_projection_matrix
from linformer_pt.training.checkpoint import save_checkpoint


def test_projection_resize_keeps_the_projected_magnitude_of_smooth_inputs():
    e = torch.rand(64, 8)
    for new in (64, 128, 256, 32):
        resized = resize_projection_matrix(e, new)
        assert resized.shape == (new, 8)
        ones_old, ones_new = torch.ones(64), torch.ones(new)
        # E^T 1 (what a constant input projects to) barely moves; exact for new == old.
        torch.testing.assert_close(resized.T @ ones_new, e.T @ ones_old, rtol=0.05, atol=0)
    torch.testing.assert_close(resize_projection_matrix(e, 64), e)
    per_head = torch.rand(4, 64, 8)
    assert resize_projection_matrix(per_head, 100).shape == (4, 100, 8)


def test_positions_are_truncated_or_tiled():
    pos = torch.arange(12.0).reshape(6, 2)
    assert torch.equal(resize_positions(pos, 4), pos[:4])
    assert torch.equal(resize_positions(pos, 9)[6:], pos[:3])


@pytest.mark.parametrize("projection, sharing", [("linear", "headwise"), ("linear", "none"), ("conv", "layerwise")])
def test_checkpoint_loads_at_a_new_max_positions(tmp_path, projection, sharing):
    cfg = LinformerRobertaConfig(layers=2, embed_dim=32, ffn_embed_dim=64, heads=4, max_positions=64, k=16,
                                 projection=projection, sharing=sharing)  # fmt: skip
    torch.manual_seed(0)
    model = LinformerRoberta(cfg, vocab_size=100, padding_idx=1).eval()
    path = save_checkpoint(tmp_path / "ckpt.pt", {
        "model": model.state_dict(), "cfg": {"model": vars(cfg)}, "model_args": {"vocab_size": 100, "pad_id": 1},
    })  # fmt: skip
    tokens = torch.randint(5, 100, (2, 40))
    same = load_model(path)
    torch.testing.assert_close(same(tokens), model(tokens), atol=0, rtol=0)
    longer = load_model(path, max_positions=256)
    assert longer.cfg.max_positions == 256
    assert longer(torch.randint(5, 100, (2, 200))).shape == (2, 200, 100)
    with pytest.raises(UserError, match=r"model.k=16 must be an integer in \[1, max_positions=8\]"):
        load_model(path, max_positions=8)


def test_missing_or_foreign_checkpoint_is_one_line(tmp_path):
    with pytest.raises(UserError, match="nope.pt: no such file"):
        load_model(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pt is truncated or not a checkpoint"):
        load_model(tmp_path / "junk.pt")
