"""`linformer-analyze spectrum|projections RUN_OR_CHECKPOINT [overrides]`: is attention low rank? what did E, F learn?

The model is loaded and the validation sequences are chosen as linformer-eval does (a run's own validation set, or
linformer-train's dataset overrides / eval_files=[...]), unmasked. Results: <out>/<command>.json and .png, and a
short table on stdout. Everything is checked before anything is written.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

import numpy as np
import torch

from linformer_pt.cli.common import one_line_errors
from linformer_pt.cli.eval import eval_config, eval_corpus
from linformer_pt.errors import UserError

PROG = "linformer-analyze"
COMMANDS = {
    "spectrum": "singular values of each layer's and head's attention matrix P (Linformer's Figure 1)",
    "projections": "spectra, effective rank and similarity of a Linformer's E and F, and its error vs full attention",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse's usage errors as this command's one-line errors (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(message)


def positive(text: str) -> int:
    """An integer >= 1 (for argparse)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return value


def command_parser(command: str) -> argparse.ArgumentParser:
    """The options of one subcommand."""
    parser = OneLineParser(prog=f"{PROG} {command}", description=COMMANDS[command])
    parser.add_argument("model", help="a run folder, a checkpoint .pt file, or a linformer-export folder")
    parser.add_argument("overrides", nargs="*", help="linformer-train dataset/task overrides, or eval_files=[...]")
    parser.add_argument("--out", type=Path, help="output folder (default: <model folder>/analysis)")
    parser.add_argument("--max-sequences", type=positive, default=64, help="validation sequences, evenly spread (64)")
    parser.add_argument("--batch-size", type=positive, default=8, help="sequences per forward pass (8)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--last", action="store_true", help="a run folder's checkpoint_last.pt, not checkpoint_best.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    if command == "spectrum":
        parser.add_argument("--k", type=positive, help="index of the heatmap (default: 128, or n/4 when shorter)")
    return parser


def parse(argv: List[str]) -> argparse.Namespace:
    """The subcommand first, then its model, overrides and options in any order."""
    top = OneLineParser(prog=PROG, usage=f"{PROG} [-h] {{{','.join(COMMANDS)}}} MODEL [overrides ...] [options]",
                        description=__doc__.splitlines()[0], epilog=f"options: {PROG} COMMAND --help")  # fmt: skip
    top.add_argument("command", choices=list(COMMANDS), help="; ".join(f"{k}: {v}" for k, v in COMMANDS.items()))
    command = top.parse_args(argv[:1]).command
    args = command_parser(command).parse_intermixed_args(argv[1:])
    args.command = command
    return args


def analysis_device(name: str) -> torch.device:
    """--device as a torch device; cuda without a visible GPU is a one-line error, not a crash mid-way."""
    from linformer_pt.training.trainer import resolve_device

    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: torch sees no CUDA device; use --device cpu or auto")
    return resolve_device(name)


def validation_sequences(model: Any, overrides: List[str], max_sequences: int) -> Tuple[List[np.ndarray], int]:
    """(up to max_sequences unmasked validation samples spread evenly over the set, task.tokens_per_sample).

    Samples are linformer-eval's: blocks of tokens_per_sample - 1 tokens by task.sample_break_mode, <s> first.
    """
    from linformer_pt.data.blocks import corpus_blocks

    config = eval_config(model, overrides)
    task = config.task
    corpus = eval_corpus(config, model.tokenizer_path)
    shard_ids, starts, ends = corpus_blocks(corpus, task.tokens_per_sample - 1, task.sample_break_mode)
    if len(starts) == 0:
        raise UserError(f"dataset={config.dataset.name} yields no sequence to analyse; name a non-empty validation set")
    picks = np.unique(np.linspace(0, len(starts) - 1, min(max_sequences, len(starts))).round().astype(int))
    bos = model.special_ids()["bos"]
    blocks = [corpus.shards[shard_ids[i]].tokens[starts[i] : ends[i]] for i in picks]
    return [np.concatenate([[bos], np.asarray(b)]).astype(np.int64) for b in blocks], task.tokens_per_sample


def padded_batches(
    sequences: List[np.ndarray], batch_size: int, pad_id: int, device: torch.device
) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """(tokens, padding_mask) batches, right-padded; sorted by length so that little padding is computed."""
    ordered = sorted(sequences, key=len, reverse=True)
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start : start + batch_size]
        tokens = torch.full((len(chunk), len(chunk[0])), pad_id, dtype=torch.long)
        for row, seq in enumerate(chunk):
            tokens[row, : len(seq)] = torch.from_numpy(seq)
        tokens = tokens.to(device)
        yield tokens, tokens.eq(pad_id)


def default_out(source: str) -> Path:
    """<run or export folder>/analysis, or analysis/ beside a checkpoint file."""
    path = Path(source).expanduser()
    return (path if path.is_dir() else path.parent) / "analysis"


def run(args: argparse.Namespace) -> Tuple[Path, Path, str]:
    """Analyse, then write <out>/<command>.json and .png; returns their paths and the table to print."""
    from linformer_pt.analysis import plots
    from linformer_pt.analysis.projections import check_projections, format_table, projections_report
    from linformer_pt.analysis.spectrum import default_k, format_summary, spectrum_report
    from linformer_pt.hub.export_folder import load_any

    model = load_any(args.model, args.last)
    if args.command == "projections":
        check_projections(model)
    plots.require_matplotlib()
    device = analysis_device(args.device)
    sequences, n = validation_sequences(model, args.overrides, args.max_sequences)
    model = model.to(device=device, dtype=torch.float32)  # exports may be bf16: analyse in fp32
    batches = padded_batches(sequences, args.batch_size, model.padding_idx, device)
    steps, progress = -(-len(sequences) // args.batch_size), not args.no_progress
    if args.command == "spectrum":
        k = default_k(n) if args.k is None else args.k
        if k > n:
            raise UserError(f"--k {k} exceeds the sequence length n = {n} (task.tokens_per_sample); choose 1..{n}")
        report, plot, text = spectrum_report(model, batches, n, k, steps, progress), plots.plot_spectrum, format_summary
    else:
        report, plot, text = projections_report(model, batches, steps, progress), plots.plot_projections, format_table
    report.update(model=str(args.model), overrides=list(args.overrides))
    out = args.out or default_out(args.model)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / f"{args.command}.json", out / f"{args.command}.png"
    json_path.write_text(json.dumps(report) + "\n", encoding="utf-8")
    plot(report, png_path)
    return json_path, png_path, text(report)


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of linformer-analyze."""
    with one_line_errors(PROG):
        args = parse(sys.argv[1:] if argv is None else argv)
        json_path, png_path, text = run(args)
    print(text)
    print(f"wrote {json_path} and {png_path}", flush=True)


if __name__ == "__main__":
    main()
