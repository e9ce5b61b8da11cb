"""`linformer-eval RUN_OR_CKPT_OR_EXPORT [overrides]`: masked-LM loss and perplexity of a trained model on a corpus.

The masks are the validation ones (a pure function of seed, epoch 1 and sample index), so a number is comparable
between models and runs. The corpus is chosen with linformer-train's dataset overrides (`dataset=text
dataset.valid_files=[a.txt]`), or `eval_files=[a.txt,b.txt]`; without any, a run's own validation set. The tokenizer
is always the model's own. The result is one JSON line on stdout; the progress bar goes to stderr.

Which samples: on a run's own data, those its validations scored (its dataset.max_valid_tokens subset, or for a
streamed run the same head of the stream), so the loss is the run's last validation's (checkpoint_last.pt, --last)
to float rounding; `dataset.max_valid_tokens=0` scores the whole validation set instead, another value another
subset. A corpus named by eval_files or dataset overrides is scored whole unless dataset.max_valid_tokens is given.
The JSON's "valid_set" says which set was used.
"""
import argparse
import json
import math
import sys
from functools import partial
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F

from linformer_pt.cli.common import compose, one_line_errors
from linformer_pt.sweeps.labels import override_key
from linformer_pt.config import DatasetConfig, TrainConfig, load_config
from linformer_pt.errors import UserError

PROG = "linformer-eval"
BUDGET = "dataset.max_valid_tokens"  # the one dataset key that keeps a run's own dataset: it chooses its subset


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
    keys = [override_key(o) for o in overrides]
    budget_given = BUDGET in keys
    run_cfg = getattr(model, "run_cfg", None)
    if not own_data(overrides):
        check_eval_files(config, "eval_files" in keys)
        if not budget_given:  # a named corpus is scored whole
            config.dataset.max_valid_tokens = 0
        return config
    if run_cfg is None:
        raise UserError(
            "an exported model carries no dataset: name one, e.g. eval_files=[test.txt] or "
            "dataset=text dataset.train_files=[...] dataset.valid_files=[test.txt]"
        )
    from linformer_pt.registry import build_dataclass

    budget = config.dataset.max_valid_tokens  # the user's, when given
    config.dataset = build_dataclass("dataset", DatasetConfig, run_cfg["dataset"])
    if budget_given:
        config.dataset.max_valid_tokens = budget
    elif BUDGET.split(".")[1] not in run_cfg["dataset"]:  # a run from before the budget validated on the whole set
        config.dataset.max_valid_tokens = 0
    return config


def own_data(overrides: List[str]) -> bool:
    """Whether eval reads the run's own dataset: no override names another (dataset.max_valid_tokens does not)."""
    keys = [override_key(o) for o in overrides]
    return not any(key.split(".")[0] in ("dataset", "eval_files") for key in keys if key != BUDGET)


def check_eval_files(config: TrainConfig, given: bool) -> None:
    """eval_files fill dataset.train_files and valid_files: a bad one is named as eval_files, not as those."""
    if given:
        from linformer_pt.data.sources import expand_paths

        expand_paths(config.dataset.valid_files, "eval_files", config.dataset.file_glob)


def valid_set(config: TrainConfig, run_budget: Optional[int]) -> str:
    """What the JSON's "valid_set" says: the whole validation set, or which subset (the run's: run_budget's)."""
    budget = config.dataset.max_valid_tokens
    if not budget:
        return "the whole validation set"
    kind = "streamed validation head" if config.dataset.streaming else "validation subset"
    whose = "the run's" if budget == run_budget else "a"
    return f"{whose} {kind} ({BUDGET}={budget})"


def eval_corpus(config: TrainConfig, tokenizer_path: Path) -> Any:
    """The validation split of config.dataset, tokenized with the model's tokenizer (cached like training's)."""
    from linformer_pt.data.corpus import cached_corpus, preprocessed_corpora, resolve_sources
    from linformer_pt.data.tokenizer import load_tokenizer, special_ids

    data = config.dataset
    sets = named_sets(config, tokenizer_path)
    if sets is not None:  # a mixture or named validation sets: the first of them (linformer-analyze reads one)
        return next(iter(sets.values()))
    if data.name == "shards":
        corpora = preprocessed_corpora(data.path, tokenizer_path)["corpora"]
        if "valid" not in corpora:
            raise UserError(f"dataset.path={data.path} has no valid split to evaluate")
        return corpora["valid"]
    tokenizer = load_tokenizer(tokenizer_path)
    source = resolve_sources(data)["valid"]
    return cached_corpus(data.cache_dir, source, tokenizer_path, tokenizer, special_ids(tokenizer)["eos"])


def named_sets(config: TrainConfig, tokenizer_path: Path) -> Optional[Dict[str, Any]]:
    """The named validation sets (dataset.valid_sets, a mixture's held-out parts, --set), tokenized; None: one set."""
    from linformer_pt.data.named_corpora import named_corpora

    data = config.dataset
    if data.name != "mixture" and not data.valid_sets:
        return None
    return named_corpora(data, config.tokenizer, tokenizer_path, with_train=False).valid


def set_options(given: List[str]) -> List[Dict[str, Any]]:
    """--set NAME=FILE[,FILE...] options as dataset.valid_sets entries."""
    sets = []
    for item in given:
        name, _, files = item.partition("=")
        if not name or not files:
            raise UserError(f"--set {item}: write NAME=FILE[,FILE...] (e.g. --set books=held_out/ --set wiki=test.txt)")
        sets.append({"name": name, "files": files.split(",")})
    return sets


def eval_batches(
    model: Any, config: TrainConfig, corpus: Any = None, budget: Optional[int] = None
) -> Tuple[Iterator[Dict[str, torch.Tensor]], Optional[int]]:
    """The validation batches the run's validate() reads (its subset or stream head, its masks), and how many
    there are (None when streamed: unknown before the end). `corpus` and `budget`: one named set's."""
    from linformer_pt.data.buckets import batch_iterator_for, sample_lengths
    from linformer_pt.data.masking import MaskedLMDataset, collate
    from linformer_pt.data.streaming import StreamingBatchIterator
    from linformer_pt.data.tokenizer import load_tokenizer, special_ids, special_mask, word_begins
    from linformer_pt.tasks.masked_lm import streamed_valid, valid_subset

    t, data, seed = config.task, config.dataset, config.common.seed
    tokenizer = load_tokenizer(model.tokenizer_path)
    ids = {name: id for name, id in special_ids(tokenizer).items() if name != "unk"}
    begins = word_begins(tokenizer) if t.mask_whole_words else None
    if data.streaming:  # the run streamed its validation: read the same stream head, not a cached copy
        stream = streamed_valid(config, tokenizer, ids, special_mask(tokenizer), begins)
        iterator = StreamingBatchIterator(stream, data.batch_size, 0)
        return iterator.epoch_iter(), None
    masking = t.masking()
    corpus = corpus if corpus is not None else eval_corpus(config, model.tokenizer_path)
    full = MaskedLMDataset(corpus, t.tokens_per_sample, t.sample_break_mode, masking, ids, special_mask(tokenizer),
                           seed, begins)  # fmt: skip
    dataset = valid_subset(full, data.max_valid_tokens if budget is None else budget, seed)
    if len(dataset) == 0:
        raise UserError("the evaluation corpus is empty")
    batches = batch_iterator_for(dataset, lambda: sample_lengths(dataset), data.batch_size, data.max_tokens,
                                 partial(collate, pad_id=ids["pad"]), seed, shuffle=False,
                                 num_workers=data.num_workers)  # fmt: skip
    return batches.epoch_iter(), batches.updates_per_epoch()  # one process: one batch per validation step


def evaluate(model: Any, config: TrainConfig, device: torch.device, progress: bool = True) -> Dict[str, Any]:
    """The validation set's figures; with named sets, each set's under "sets" and the first set's at the top."""
    from linformer_pt.data.mixture_spec import set_budget

    if config.task.tokens_per_sample > model.cfg.max_positions:
        raise UserError(f"task.tokens_per_sample={config.task.tokens_per_sample} exceeds the model's "
                        f"max_positions={model.cfg.max_positions}")  # fmt: skip
    sets = named_sets(config, model.tokenizer_path)
    if sets is None:
        return evaluate_batches(model, config, device, eval_batches(model, config), "eval", progress)
    results = {name: evaluate_batches(model, config, device, eval_batches(model, config, corpus, set_budget(config.dataset, name)),
                                      f"eval {name}", progress)
               for name, corpus in sets.items()}  # fmt: skip
    return {**next(iter(results.values())), "sets": results}


@torch.no_grad()
def evaluate_batches(model: Any, config: TrainConfig, device: torch.device, batches: Tuple[Iterator[Any], Optional[int]],
                     desc: str, progress: bool) -> Dict[str, Any]:  # fmt: skip
    """Summed cross-entropy over the masked tokens of the validation batches, as the trainer's validate()."""
    from tqdm import tqdm

    from linformer_pt.tasks.masked_lm import masked_logits

    batches, steps = batches
    model.to(device).eval()
    loss_sum, masked, tokens, samples = 0.0, 0, 0, 0
    for batch in tqdm(batches, total=steps, desc=desc, disable=not progress, file=sys.stderr):
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = masked_logits(model, batch)  # as validation computes them, so the figures are the same
        loss_sum += F.cross_entropy(logits.float(), batch["targets"], reduction="sum").item()
        masked += int(batch["targets"].numel())
        tokens += int((~batch["padding_mask"]).sum())
        samples += len(batch["tokens"])
    if samples == 0:
        raise UserError("the evaluation corpus is empty")
    loss = loss_sum / max(masked, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "masked": masked, "tokens": tokens,
            "samples": samples, "seed": config.common.seed}  # fmt: skip


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a run folder, a checkpoint .pt file, or a linformer-export folder")
    parser.add_argument("overrides", nargs="*", help="linformer-train overrides (dataset=..., task.*, common.*) or "
                        "eval_files=[...]; dataset.max_valid_tokens=0: a run's whole validation set")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=FILES", dest="sets",
                        help="a named set to score (files, folders or globs, comma-separated); repeat for several")
    parser.add_argument("--last", action="store_true", help="a run folder's checkpoint_last.pt instead of checkpoint_best.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    # intermixed: options may follow the model and the overrides (`linformer-eval RUN eval_files=[a] --last`)
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    with one_line_errors(PROG):
        from linformer_pt.hub.export_folder import load_any
        from linformer_pt.training.trainer import resolve_device

        model = load_any(args.model, args.last)
        sets = set_options(args.sets)
        config = eval_config(model, args.overrides)
        if sets:  # named files are scored whole unless a budget is given, as eval_files are
            config.dataset.valid_sets, config.dataset.valid_files = sets, []
            if BUDGET not in [override_key(o) for o in args.overrides]:
                config.dataset.max_valid_tokens = 0
        result = evaluate(model, config, resolve_device(config.common.device), progress=not args.no_progress)
        run_cfg = getattr(model, "run_cfg", None)
        own_budget = run_cfg["dataset"].get("max_valid_tokens", 0) if run_cfg and own_data(args.overrides) else None
        result["valid_set"] = valid_set(config, own_budget)
        result["model"] = str(args.model)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
