"""linformer-import of fairseq RoBERTa and linformer_roberta checkpoints: equal to fairseq's forward, in float64."""
import argparse
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from import_sources import fairseq_state, gpt2_bpe_files  # noqa: E402
from linformer_pt import LinformerForMaskedLM
from linformer_pt.cli import import_model as import_cli

PAD, HEADS = 1, 4


def fairseq_forward(state: dict, tokens: Tensor, heads: int = HEADS) -> Tensor:
    """fairseq's RoBERTa / Linformer masked-LM forward written out (eval mode), for a state dict with its names.

    Positions: padding_idx + cumulative count of real tokens (pads get padding_idx); the embeddings of pads are
    zeroed after the LayerNorm; post-LN layers; Linformer: K = (E[:, :n] X) W_k + b_k, the padding mask ignored;
    standard attention masks padded keys. LM head: dense, GELU, LayerNorm, tied decoder + bias.
    """
    s = {name: t.double() for name, t in state.items()}
    e = "encoder.sentence_encoder."
    pad = tokens.eq(PAD)
    positions = torch.cumsum(~pad, dim=1) * ~pad + PAD
    x = s[e + "embed_tokens.weight"][tokens] + s[e + "embed_positions.weight"][positions]

    def norm(x: Tensor, name: str) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], s[name + ".weight"], s[name + ".bias"], eps=1e-5)

    def linear(x: Tensor, name: str) -> Tensor:
        return x @ s[name + ".weight"].T + s[name + ".bias"]

    x = norm(x, e + "layernorm_embedding") * (~pad).unsqueeze(-1)
    b, n, d = x.shape
    dh = d // heads
    layer = 0
    while f"{e}layers.{layer}.fc1.weight" in s:
        p = f"{e}layers.{layer}."
        q = linear(x, p + "self_attn.q_proj") * dh**-0.5
        compress_k = s.get(p + "self_attn.compress_k.weight")
        if compress_k is not None:
            compress_v = s.get(p + "self_attn.compress_v.weight", compress_k)
            k = linear(compress_k[:, :n] @ x, p + "self_attn.k_proj")
            v = linear(compress_v[:, :n] @ x, p + "self_attn.v_proj")
            bias = 0.0
        else:
            k, v = linear(x, p + "self_attn.k_proj"), linear(x, p + "self_attn.v_proj")
            bias = torch.zeros(b, 1, 1, n, dtype=x.dtype).masked_fill(pad[:, None, None, :], -math.inf)

        def split(t: Tensor) -> Tensor:
            return t.reshape(b, -1, heads, dh).transpose(1, 2)

        probs = torch.softmax(split(q) @ split(k).transpose(-1, -2) + bias, dim=-1)
        attn = linear((probs @ split(v)).transpose(1, 2).reshape(b, n, d), p + "self_attn.out_proj")
        x = norm(x + attn, p + "self_attn_layer_norm")
        x = norm(x + linear(F.gelu(linear(x, p + "fc1")), p + "fc2"), p + "final_layer_norm")
        layer += 1
    h = norm(F.gelu(linear(x, "encoder.lm_head.dense")), "encoder.lm_head.layer_norm")
    return h @ s["encoder.lm_head.weight"].T + s["encoder.lm_head.bias"]


def make_source(folder: Path, sharing, hyperparameters: str, old_names: bool = False) -> dict:
    """model.pt + dict.txt + encoder.json + vocab.bpe in `folder`; returns the state dict saved."""
    token_ids = gpt2_bpe_files(folder)
    vocab = 4 + len(token_ids) + 1 + 1  # specials, GPT-2 tokens, madeupword0000, <mask>
    state = fairseq_state(vocab, sharing, old_names=old_names)
    model_args = {"encoder_attention_heads": HEADS, "activation_fn": "gelu", "dropout": 0.1,
                  "arch": "roberta_base" if sharing is None else "linformer_roberta"}  # fmt: skip
    if hyperparameters == "namespace":  # older fairseq: argparse.Namespace under "args"
        checkpoint = {"args": argparse.Namespace(**model_args), "model": state}
    elif hyperparameters == "dictconfig":  # newer fairseq: omegaconf DictConfig under "cfg"
        from omegaconf import OmegaConf

        checkpoint = {"args": None, "cfg": OmegaConf.create({"model": model_args, "task": {"_name": "masked_lm"}}),
                      "model": state}  # fmt: skip
    elif hyperparameters == "dict":
        checkpoint = {"cfg": {"model": model_args}, "model": state}
    else:  # none: only tensors; the head count must be given
        checkpoint = {"model": state}
    torch.save(checkpoint, folder / "model.pt")
    return state


CASES = [(None, "namespace", True), (None, "dictconfig", False), ("headwise", "dict", False),
         ("kv", "dictconfig", False), ("layerwise", "namespace", False)]  # fmt: skip


@pytest.mark.parametrize("sharing,hyperparameters,old_names", CASES)
def test_import_equals_fairseqs_forward(tmp_path, sharing, hyperparameters, old_names):
    state = make_source(tmp_path / "src", sharing, hyperparameters, old_names)
    import_cli.main([str(tmp_path / "src" / "model.pt"), str(tmp_path / "out")])
    ours = LinformerForMaskedLM.from_pretrained(tmp_path / "out")
    expected_cfg = ("standard", False) if sharing is None else ("linformer", True)
    assert (ours.cfg.attention, ours.cfg.fairseq_compat) == expected_cfg
    if sharing is not None:
        assert (ours.cfg.sharing, ours.cfg.k) == (sharing, 5)
    assert ours.cfg.max_positions == 12 and ours.padding_idx == PAD
    tokens = torch.full((3, 10), PAD)
    for row, length in enumerate((10, 7, 4)):
        tokens[row, :length] = torch.randint(4, ours.embed_tokens.num_embeddings - 1, (length,))
    reference = fairseq_state_of(state)
    expected = fairseq_forward(reference, tokens)
    with torch.no_grad():
        got = ours.double()(tokens, tokens.eq(PAD))
    real = tokens.ne(PAD)
    torch.testing.assert_close(got[real], expected[real], atol=1e-10, rtol=0)


def fairseq_state_of(state: dict) -> dict:
    """The state under fairseq's current names (the reference reads those), undoing old_names."""
    if not any(name.startswith("decoder.") for name in state):
        return state
    out = {}
    for name, tensor in state.items():
        name = "encoder." + name[len("decoder."):]
        name = name.replace(".emb_layer_norm.", ".layernorm_embedding.")
        if ".in_proj_" in name:
            base, part = name.split(".in_proj_")
            for proj, chunk in zip("qkv", tensor.chunk(3)):
                out[f"{base}.{proj}_proj.{part}"] = chunk
            continue
        out[name] = tensor
    return out


def test_tokenizer_follows_dict_txt_and_puts_mask_last(tmp_path):
    folder = tmp_path / "src"
    make_source(folder, None, "dict")
    token_ids = gpt2_bpe_files(folder)  # the same files again (seeded): GPT-2 token -> fairseq id
    import_cli.main([str(folder), str(tmp_path / "out")])
    ours = LinformerForMaskedLM.from_pretrained(tmp_path / "out")
    ids = ours.tokenize(["the cat sat"])[0][0].tolist()
    pieces = ours.tokenizer.encode("the cat sat", add_special_tokens=False).tokens
    assert ids == [0] + [token_ids[p] for p in pieces] + [2]
    special = ours.special_ids()
    assert special["mask"] == ours.embed_tokens.num_embeddings - 1 and special["pad"] == 1
    assert len(ours.fill_mask(["the <mask> sat"], top_k=2)[0]) == 1


def test_heads_come_from_the_flag_when_the_checkpoint_has_no_hyperparameters(tmp_path, capsys):
    make_source(tmp_path / "src", "kv", "none")
    with pytest.raises(SystemExit) as stop:
        import_cli.main([str(tmp_path / "src"), str(tmp_path / "out")])
    assert stop.value.code == 2 and "--heads" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    import_cli.main([str(tmp_path / "src"), str(tmp_path / "out"), "--heads", "4"])
    assert LinformerForMaskedLM.from_pretrained(tmp_path / "out").cfg.heads == 4
