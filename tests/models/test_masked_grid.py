"""The last layer at the masked rows only (modules/masked_grid.py): the same logits and gradients as computing every
row and gathering, for every attention kind, sharing, projection, LayerNorm placement and dtype; and fewer rows."""
import numpy as np
import pytest
import torch

from linformer_pt.data.masking import collate
from linformer_pt.models.linformer_roberta import LinformerRoberta, LinformerRobertaConfig
from linformer_pt.modules.masked_grid import MaskedGrid
from linformer_pt.tasks.masked_lm import masked_logits

LENGTHS = (16, 9, 13, 5)  # ragged: padded rows; one sample gets no masked position at all


def batch(seed: int = 0, lengths=LENGTHS) -> dict:
    rng = np.random.default_rng(seed)
    samples = []
    for i, length in enumerate(lengths):
        tokens = rng.integers(5, 100, length)
        masked = rng.random(length) < (0.0 if i == 2 else 0.3)
        samples.append({"inputs": tokens, "targets": tokens, "is_masked": masked})
    return collate(samples, pad_id=1)


def test_the_grid_holds_exactly_the_masked_positions_in_target_order():
    b = batch()
    grid = MaskedGrid(b["masked_grid_rows"], b["masked_grid_real"])
    counts = b["masked_positions"].sum(1)
    assert grid.rows.shape == (len(LENGTHS), int(counts.max()))
    x = torch.randn(*b["tokens"].shape, 3)
    expected = x.flatten(0, 1)[b["masked_index"]]
    assert torch.equal(grid.pick(grid.gather(x)), expected)
    assert len(grid.real) == len(b["targets"])


def test_a_batch_without_masked_positions_gives_an_empty_pick():
    grid = MaskedGrid.from_mask(torch.zeros(3, 7, dtype=torch.bool))
    assert grid.rows.shape == (3, 1) and grid.real.numel() == 0
    assert grid.pick(grid.gather(torch.randn(3, 7, 4))).shape == (0, 4)


CASES = {
    "linformer headwise post-LN": {},
    "linformer headwise pre-LN": {"normalize_before": True},
    "linformer sharing none (per-head E, F)": {"sharing": "none"},
    "linformer sharing kv": {"sharing": "kv"},
    "linformer sharing layerwise": {"sharing": "layerwise"},
    "linformer max_pool": {"projection": "max_pool"},
    "linformer mean_pool": {"projection": "mean_pool"},
    "linformer conv": {"projection": "conv"},
    "linformer identity": {"projection": "identity"},
    "linformer fairseq_compat": {"fairseq_compat": True},
    "linformer per-layer k, checkpointed": {"k": [4, 6], "checkpoint_activations": True},
    "standard post-LN": {"attention": "standard"},
    "standard pre-LN": {"attention": "standard", "normalize_before": True},
}


def model_for(overrides: dict, **extra) -> LinformerRoberta:
    base = {"layers": 2, "embed_dim": 32, "ffn_embed_dim": 64, "heads": 4, "max_positions": 16, "k": 4}
    cfg = LinformerRobertaConfig(**{**base, **overrides, **extra})
    torch.manual_seed(0)
    return LinformerRoberta(cfg, vocab_size=100, padding_idx=1)


def logits_and_grads(model: LinformerRoberta, b: dict, use_grid: bool):
    model.zero_grad()
    if not use_grid:
        b = {k: v for k, v in b.items() if not k.startswith("masked_grid")}
    logits = masked_logits(model, b)
    torch.nn.functional.cross_entropy(logits.float(), b["targets"]).backward()
    return logits.detach().float(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case", list(CASES))
def test_the_grid_gives_the_logits_and_gradients_of_every_row(case):
    # Training mode (checkpointing and the training-only paths run) with dropout 0, so both compute the same function.
    model = model_for(CASES[case], dropout=0.0, attention_dropout=0.0).train()
    b = batch()
    full_logits, full_grads = logits_and_grads(model, b, use_grid=False)
    grid_logits, grid_grads = logits_and_grads(model, b, use_grid=True)
    torch.testing.assert_close(grid_logits, full_logits, rtol=1e-5, atol=1e-5)
    assert full_grads.keys() == grid_grads.keys()
    for name in full_grads:
        torch.testing.assert_close(grid_grads[name], full_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_model_cast_to_half_precision_gives_the_same_logits(dtype):
    model = model_for({}, dropout=0.0, attention_dropout=0.0).to(dtype).eval()
    b = batch(1)
    with torch.no_grad():
        full = masked_logits(model, {k: v for k, v in b.items() if not k.startswith("masked_grid")}).float()
        grid = masked_logits(model, b).float()
    torch.testing.assert_close(grid, full, rtol=0.05, atol=0.05)
    assert torch.isfinite(grid).all()


def test_the_last_layer_computes_only_the_masked_rows():
    """A wrong implementation that runs every row and gathers afterwards gives the same logits; this one does not."""
    model = model_for({}).train()
    b = batch()
    rows = {}
    for i, layer in enumerate(model.encoder.layers):
        layer.fc1.register_forward_hook(lambda m, inputs, out, i=i: rows.__setitem__(i, inputs[0].shape[:-1].numel()))
    masked_logits(model, b)
    assert rows[0] == b["tokens"].numel()  # every layer but the last: all positions (its keys and values)
    assert rows[1] == len(b["targets"])  # the last: the masked positions only


def test_training_with_dropout_through_the_grid_is_a_function_of_the_seed():
    model = model_for({})
    b = batch()
    losses = []
    for _ in range(2):
        torch.manual_seed(7)
        losses.append(torch.nn.functional.cross_entropy(masked_logits(model.train(), b), b["targets"]).item())
    assert losses[0] == losses[1] and np.isfinite(losses[0])


def test_a_batch_with_no_masked_position_trains_to_zero_loss_and_finite_gradients():
    model = model_for({}).train()
    b = batch(lengths=(6, 4))
    b["masked_positions"][:] = False
    grid = MaskedGrid.from_mask(b["masked_positions"])
    b.update(masked_grid_rows=grid.rows, masked_grid_real=grid.real, targets=b["targets"][:0])
    logits = masked_logits(model, b)
    loss = torch.nn.functional.cross_entropy(logits, b["targets"], reduction="sum")
    loss.backward()
    assert logits.shape == (0, 100) and loss.item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("attention", ["linformer", "standard"])
def test_the_sentence_classifier_computes_the_last_layer_at_its_first_position_only(attention):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from linformer_pt.models.classifier import LinformerRobertaClassifier

    cfg = LinformerRobertaConfig(layers=2, embed_dim=32, ffn_embed_dim=64, heads=4, max_positions=16, k=4,
                                 attention=attention, dropout=0.0, attention_dropout=0.0)  # fmt: skip
    torch.manual_seed(0)
    model = LinformerRobertaClassifier(cfg, vocab_size=100, padding_idx=1, num_outputs=3, pooler_dropout=0.0).train()
    b = batch()
    rows = []
    model.encoder.layers[1].fc1.register_forward_hook(lambda m, inputs, out: rows.append(inputs[0].shape[0]))
    outputs = []
    for run in (lambda: model(b["tokens"], b["padding_mask"]),
                lambda: model.classification_head(model.extract_features(b["tokens"], b["padding_mask"]))):
        model.zero_grad()
        logits = run()
        logits.pow(2).sum().backward()
        outputs.append((logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(outputs[0][0], outputs[1][0], rtol=1e-5, atol=1e-6)
    for a, c in zip(outputs[0][1], outputs[1][1]):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-6)
    assert rows[0] == len(LENGTHS)  # one row per sample in the last layer, against B * n without the grid
    tokens = b["tokens"][:1]  # the first sample fills the batch's 16 positions: no padding
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(tokens)
    assert model.forward_flops(tokens.shape[1]) == pytest.approx(counter.get_total_flops(), rel=1e-9)
