"""Pretrain a standard RoBERTa with transformers itself, on the sweeps' data, as a source for linformer-import.

transformers' own RobertaForMaskedLM and DataCollatorForLanguageModeling (its 80/10/10 masking at 15%), with the
sweeps' CPU scale (experiment=sweep_cpu: Gutenberg, 4 x 256, n = 512, an 8k BPE, batch 16, AdamW lr 1e-3 with 60
warmup updates then linear decay, bf16 autocast). The blocks are linformer-pt's (the same tokenizer, the same
shuffled blocks of 512 tokens), so the imported model is uptrained on the data it was trained on. The result is a
transformers folder (save_pretrained: config.json, model.safetensors, tokenizer) that linformer-import reads.

Run: python scripts/train_hf_roberta.py --out runs/hf_roberta --updates 450
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/hf_roberta"))
    parser.add_argument("--updates", type=int, default=450)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast, RobertaConfig, RobertaForMaskedLM

    import linformer_pt.models  # noqa: F401  (their config schemas, which train.yaml names)
    import linformer_pt.tasks  # noqa: F401
    import linformer_pt.training  # noqa: F401
    from linformer_pt.cli.common import compose
    from linformer_pt.config import load_config
    from linformer_pt.registry import TASKS

    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(compose("train", ["experiment=sweep_cpu"]))
    task = TASKS.get("masked_lm").cls.setup(config)
    train = task.dataset("train")
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(task.tokenizer_path), bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")  # fmt: skip
    n, batch = config.task.tokens_per_sample, config.dataset.batch_size
    model_cfg = RobertaConfig(vocab_size=task.vocab_size, hidden_size=config.model.embed_dim,
                              num_hidden_layers=config.model.layers, num_attention_heads=config.model.heads,
                              intermediate_size=config.model.ffn_embed_dim, max_position_embeddings=n + 2,
                              pad_token_id=task.pad_id, bos_token_id=task.special_ids["bos"],
                              eos_token_id=task.special_ids["eos"], type_vocab_size=1)  # fmt: skip
    torch.manual_seed(config.common.seed)
    model = RobertaForMaskedLM(model_cfg)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, return_tensors="pt")
    decay = [p for name, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for name, p in model.named_parameters() if p.ndim < 2]
    opt = config.optim
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": opt.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                                  lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps)  # fmt: skip
    warmup = config.lr_scheduler.warmup_updates
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda u: u / warmup if u < warmup else max(0.0, (args.updates - u) / (args.updates - warmup)))
    order = np.random.default_rng(config.common.seed).permutation(len(train))
    model.train()
    tokens_seen, started = 0, time.perf_counter()
    bar = tqdm(range(args.updates), unit="upd", desc="transformers RoBERTa")
    for update in bar:
        rows = [train[int(i)]["targets"] for i in order[update * batch : (update + 1) * batch]]
        inputs = collator([{"input_ids": row.tolist()} for row in rows])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                         labels=inputs["labels"]).loss  # fmt: skip
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optimization.clip_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += int(inputs["attention_mask"].sum())
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tokens_seen / (time.perf_counter() - started):.0f}")
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"{args.updates} updates, {tokens_seen:,} tokens, {time.perf_counter() - started:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
