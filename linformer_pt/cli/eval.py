"""`linformer-eval RUN_OR_CKPT_OR_EXPORT [overrides]`: masked-LM loss and perplexity of a trained model on a corpus.

The masks are the validation ones (a pure function of seed, epoch 1 and sample index), so a number is comparable
between models and runs. The corpus is chosen with linformer-train's dataset overrides (`dataset=text
dataset.valid_files=[a.txt]`), or `eval_files=[a.txt,b.txt]`; without any, a run's own validation set. The tokenizer
is always the model's own. The result is one JSON line on stdout; the progress bar goes to stderr.
"""
import argparse
import json
import math
import sys
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from linformer_pt.cli.common import compose, one_line_errors
from linformer_pt.sweeps.labels import override_key
from linformer_pt.config import DatasetConfig, TrainConfig, load_config
from linformer_pt.errors import UserError

PROG = "linformer-eval"


def eval_overrides(overrides: List[str], task: Dict[str, Any], seed: int) -> List[str]:
    """The model's masking settings and seed, then the user's overrides (theirs win); eval_files= -> dataset=text."""
    user: List[str] = []
    for item in overrides:
        if "=" not in item:
            raise UserError(f"{item!r} is not an override; write key=value (e.g. eval_files=[test.txt])")
        if override_key(item) == "eval_files":
            files = item.split("=", 1)[1]
            # The text dataset needs train files to validate; eval reads only its valid split, never tokenizing these.
            user += ["dataset=text", f"dataset.train_files={files}", f"dataset.valid_files={files}"]
        else:
            user.append(item)
    given = {override_key(o) for o in user}
    base = [f"task.{k}={json.dumps(v)}" for k, v in task.items() if f"task.{k}" not in given and k != "name"]
    base += [] if "common.seed" in given else [f"common.seed={seed}"]
    return base + user


def eval_config(model: Any, overrides: List[str]) -> TrainConfig:
    """linformer-train's composed config with the model's task settings; a run's own dataset unless overridden."""
    import linformer_pt.tasks  # noqa: F401  (registers the task, optimizer and schedule schemas train.yaml names)
    import linformer_pt.training  # noqa: F401

    extra = model.extra
    composed = compose("train", eval_overrides(overrides, extra.get("task", {}), int(extra.get("seed", 1))))
    config = load_config(composed)
    touches_dataset = any(override_key(o).split(".")[0] in ("dataset", "eval_files") for o in overrides)
    run_cfg = getattr(model, "run_cfg", None)
    if not touches_dataset:
        if run_cfg is None:
            raise UserError(
                "an exported model carries no dataset: name one, e.g. eval_files=[test.txt] or "
                "dataset=text dataset.train_files=[...] dataset.valid_files=[test.txt]"
            )
        from linformer_pt.registry import build_dataclass

        config.dataset = build_dataclass("dataset", DatasetConfig, run_cfg["dataset"])
    if config.dataset.streaming:
        config.dataset.streaming = False  # eval reads a tokenized, cached copy: a fixed set with fixed masks
    return config


def eval_corpus(config: TrainConfig, tokenizer_path: Path) -> Any:
    """The validation split of config.dataset, tokenized with the model's tokenizer (cached like training's)."""
    from linformer_pt.data.corpus import cached_corpus, preprocessed_corpora, resolve_sources
    from linformer_pt.data.tokenizer import EOS, load_tokenizer

    data = config.dataset
    if data.name == "shards":
        corpora = preprocessed_corpora(data.path, tokenizer_path)["corpora"]
        if "valid" not in corpora:
            raise UserError(f"dataset.path={data.path} has no valid split to evaluate")
        return corpora["valid"]
    tokenizer = load_tokenizer(tokenizer_path)
    source = resolve_sources(data)["valid"]
    return cached_corpus(data.cache_dir, source, tokenizer_path, tokenizer, tokenizer.token_to_id(EOS))


@torch.no_grad()
def evaluate(model: Any, config: TrainConfig, device: torch.device, progress: bool = True) -> Dict[str, Any]:
    """Summed cross-entropy over the masked tokens of the validation-style iterator, as the trainer's validate()."""
    from tqdm import tqdm

    from linformer_pt.data.batching import EpochBatchIterator
    from linformer_pt.data.masking import MaskedLMDataset, MaskingConfig, collate
    from linformer_pt.data.tokenizer import BOS, EOS, MASK, PAD, load_tokenizer, special_mask, word_begins

    t = config.task
    if t.tokens_per_sample > model.cfg.max_positions:
        raise UserError(f"task.tokens_per_sample={t.tokens_per_sample} exceeds the model's max_positions={model.cfg.max_positions}")
    tokenizer = load_tokenizer(model.tokenizer_path)
    ids = {name: tokenizer.token_to_id(tok) for name, tok in (("bos", BOS), ("pad", PAD), ("eos", EOS), ("mask", MASK))}
    masking = MaskingConfig(t.mask_prob, t.leave_unmasked_prob, t.random_token_prob, t.mask_multiple_length)
    dataset = MaskedLMDataset(
        eval_corpus(config, model.tokenizer_path), t.tokens_per_sample, t.sample_break_mode, masking, ids,
        special_mask(tokenizer), config.common.seed, word_begins(tokenizer) if t.mask_whole_words else None,
    )  # fmt: skip
    if len(dataset) == 0:
        raise UserError("the evaluation corpus is empty")
    batches = EpochBatchIterator(dataset, config.dataset.batch_size, partial(collate, pad_id=ids["pad"]),
                                 config.common.seed, shuffle=False, num_workers=config.dataset.num_workers)  # fmt: skip
    steps = math.ceil(len(dataset) / config.dataset.batch_size)
    model.to(device).eval()
    loss_sum, masked, tokens = 0.0, 0, 0
    for batch in tqdm(batches.epoch_iter(), total=steps, desc="eval", disable=not progress, file=sys.stderr):
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(batch["tokens"], batch["padding_mask"], batch["masked_positions"])
        loss_sum += F.cross_entropy(logits.float(), batch["targets"], reduction="sum").item()
        masked += int(batch["targets"].numel())
        tokens += int((~batch["padding_mask"]).sum())
    loss = loss_sum / max(masked, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "masked": masked, "tokens": tokens,
            "samples": len(dataset), "seed": config.common.seed}  # fmt: skip


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a run folder, a checkpoint .pt file, or a linformer-export folder")
    parser.add_argument("overrides", nargs="*", help="linformer-train overrides (dataset=..., task.*, common.*) or eval_files=[...]")
    parser.add_argument("--last", action="store_true", help="a run folder's checkpoint_last.pt instead of checkpoint_best.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    with one_line_errors(PROG):
        from linformer_pt.hub import load_any
        from linformer_pt.training.trainer import resolve_device

        model = load_any(args.model, args.last)
        config = eval_config(model, args.overrides)
        result = evaluate(model, config, resolve_device(config.common.device), progress=not args.no_progress)
        result["model"] = str(args.model)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
