"""Tiny pretrained encoders to import: transformers folders and fairseq checkpoints, built from random weights."""
import json
from pathlib import Path
from typing import Dict, List

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

CORPUS = ["the cat sat on the mat and the dog sat on the log", "a quick brown fox jumps over the lazy dog",
          "linformer projects keys and values to k rows", "tokens and positions are embedded then encoded",
          "hello world, the model predicts the masked word"] * 20  # fmt: skip
BERT_SPECIALS = ["[PAD]"] + [f"[unused{i}]" for i in range(10)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def byte_level_bpe(vocab_size: int = 200) -> Tokenizer:
    """RoBERTa-style: <s> <pad> </s> <unk> first, <mask> added last (as RoBERTa's and XLM-R's have it)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)  # fmt: skip
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return tokenizer


def wordpiece() -> Tokenizer:
    """BERT-style: [PAD]=0, [UNK] [CLS] [SEP] [MASK] at 11..14 (BERT has them at 100..103), lower-casing."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=150, special_tokens=BERT_SPECIALS, show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.post_processor = processors.BertProcessing(
        ("[SEP]", tokenizer.token_to_id("[SEP]")), ("[CLS]", tokenizer.token_to_id("[CLS]"))
    )
    return tokenizer


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Move every weight away from its init (LayerNorms off 1/0, biases off 0), so a mismapped one shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)


def transformers_folder(folder: Path, model_type: str, max_positions: int = 64) -> Path:
    """save_pretrained of a tiny random *ForMaskedLM of `model_type` and its fast tokenizer, in `folder`."""
    import transformers
    from transformers import PreTrainedTokenizerFast

    torch.manual_seed(0)
    bert = model_type == "bert"
    tokenizer = wordpiece() if bert else byte_level_bpe()
    if bert:
        names = dict(unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    else:
        names = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>", cls_token="<s>",
                     sep_token="</s>", mask_token=AddedToken("<mask>", lstrip=True, special=True))  # fmt: skip
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **names)
    pad = tokenizer.token_to_id("[PAD]" if bert else "<pad>")
    classes = {"roberta": ("RobertaConfig", "RobertaForMaskedLM"), "bert": ("BertConfig", "BertForMaskedLM"),
               "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaForMaskedLM")}  # fmt: skip
    config_class, model_class = (getattr(transformers, name) for name in classes[model_type])
    config = config_class(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=max_positions + (0 if bert else pad + 1), pad_token_id=pad,
        type_vocab_size=2 if bert else 1, layer_norm_eps=1e-12 if bert else 1e-5,
    )  # fmt: skip
    if not bert:
        config.bos_token_id, config.eos_token_id = 0, 2
    model = model_class(config)
    perturb(model)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def padded_batch(lengths: List[int], vocab: int, pad: int, specials: List[int], seed: int = 0) -> Dict[str, torch.Tensor]:
    """input_ids of random ordinary tokens, right-padded with `pad`, and their attention_mask."""
    generator = torch.Generator().manual_seed(seed)
    ordinary = torch.tensor([i for i in range(vocab) if i not in specials])
    n = max(lengths)
    ids = torch.full((len(lengths), n), pad, dtype=torch.long)
    mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, :length] = ordinary[torch.randint(len(ordinary), (length,), generator=generator)]
        mask[row, :length] = 1
    return {"input_ids": ids, "attention_mask": mask}


def write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value), encoding="utf-8")


def gpt2_bpe_files(folder: Path, seed: int = 0) -> Dict[str, int]:
    """encoder.json + vocab.bpe (GPT-2's layout) of a tiny byte-level BPE, and dict.txt listing its ids shuffled
    (fairseq's dictionary order is not GPT-2's); returns {GPT-2 token: fairseq id}."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=120, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)  # fmt: skip
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.model.save(str(folder))
    (folder / "vocab.json").rename(folder / "encoder.json")
    (folder / "merges.txt").rename(folder / "vocab.bpe")
    encoder = json.loads((folder / "encoder.json").read_text(encoding="utf-8"))
    order = torch.randperm(len(encoder), generator=torch.Generator().manual_seed(seed)).tolist()
    gpt2_ids = sorted(encoder.values())
    lines = [f"{gpt2_ids[i]} {1000 - n}" for n, i in enumerate(order)] + ["madeupword0000 0"]
    (folder / "dict.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    by_id = {i: token for token, i in encoder.items()}
    return {by_id[gpt2_ids[i]]: 4 + n for n, i in enumerate(order)}


def fairseq_state(vocab: int, sharing: str, layers: int = 2, dim: int = 16, ffn: int = 24, max_positions: int = 12,
                  k: int = 5, old_names: bool = False, seed: int = 0) -> Dict[str, torch.Tensor]:
    """A state dict with fairseq's names and shapes: RoBERTa (sharing None), or linformer_roberta with compress_k /
    compress_v per layer (headwise), compress_k only (kv: shared_kv_compressed=1), or the encoder's compress_layer
    shared by every layer (layerwise: shared_layer_kv_compressed=1). old_names: the first released checkpoints'
    decoder.* prefix, emb_layer_norm and fused in_proj."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.3, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale + mean

    e = "encoder.sentence_encoder."
    embed = rand(vocab, dim)
    embed[1] = 0.0  # fairseq zeroes the padding row
    state = {e + "embed_tokens.weight": embed, e + "embed_positions.weight": rand(max_positions + 2, dim),
             e + "layernorm_embedding.weight": rand(dim, mean=1.0), e + "layernorm_embedding.bias": rand(dim),
             e + "version": torch.tensor(2.0)}  # fmt: skip
    shared = rand(k, max_positions) if sharing == "layerwise" else None
    if shared is not None:
        state[e + "compress_layer.weight"], state[e + "compress_layer.bias"] = shared, rand(k)
    for i in range(layers):
        p = f"{e}layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            state[f"{p}self_attn.{name}.weight"], state[f"{p}self_attn.{name}.bias"] = rand(dim, dim), rand(dim)
        for name in ("self_attn_layer_norm", "final_layer_norm"):
            state[f"{p}{name}.weight"], state[f"{p}{name}.bias"] = rand(dim, mean=1.0), rand(dim)
        state[p + "fc1.weight"], state[p + "fc1.bias"] = rand(ffn, dim), rand(ffn)
        state[p + "fc2.weight"], state[p + "fc2.bias"] = rand(dim, ffn), rand(dim)
        if sharing == "layerwise":
            state[p + "self_attn.compress_k.weight"] = state[p + "self_attn.compress_v.weight"] = shared
        elif sharing in ("headwise", "kv"):
            state[p + "self_attn.compress_k.weight"] = rand(k, max_positions)
            if sharing == "headwise":
                state[p + "self_attn.compress_v.weight"] = rand(k, max_positions)
    state["encoder.lm_head.dense.weight"], state["encoder.lm_head.dense.bias"] = rand(dim, dim), rand(dim)
    state["encoder.lm_head.layer_norm.weight"] = rand(dim, mean=1.0)
    state["encoder.lm_head.layer_norm.bias"] = rand(dim)
    state["encoder.lm_head.weight"], state["encoder.lm_head.bias"] = embed, rand(vocab)
    if old_names:
        renamed = {}
        for name, tensor in state.items():
            name = "decoder." + name[len("encoder."):]
            renamed[name.replace(".layernorm_embedding.", ".emb_layer_norm.")] = tensor
        for i in range(layers):
            p = f"decoder.sentence_encoder.layers.{i}.self_attn."
            for part in ("weight", "bias"):
                fused = [renamed.pop(f"{p}{name}_proj.{part}") for name in "qkv"]
                renamed[f"{p}in_proj_{part}"] = torch.cat(fused)
        state = renamed
    return state
