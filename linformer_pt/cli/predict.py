"""`linformer-predict RUN_OR_EXPORT FILE`: predictions of a fine-tuned sentence_prediction model for a file.

Writes one JSON line per example (the label and the probability of each label, or the predicted value for
regression) in the file's order, and prints the metrics when the file has the label column.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from tqdm import tqdm

from linformer_pt.cli.common import one_line_errors
from linformer_pt.errors import UserError

PROG = "linformer-predict"


@torch.no_grad()
def predict(model: Any, ids: List[np.ndarray], pad_id: int, batch_size: int, device: torch.device,
            progress: bool = True, max_tokens: int = 0) -> np.ndarray:  # fmt: skip
    """Outputs (N, num_outputs) in input order; batches hold examples of similar length (less padding): batch_size
    of them, or with max_tokens > 0 as many as fit max_tokens padded tokens (many short ones, few long ones)."""
    from linformer_pt.data.buckets import cut_by_budget
    from linformer_pt.tasks.sentence_prediction import collate

    model.to(device)
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    batches = (cut_by_budget(order, lengths, max_tokens, "--max-tokens") if max_tokens
               else [order[i : i + batch_size] for i in range(0, len(order), batch_size)])  # fmt: skip
    outputs = np.zeros((len(ids), model.num_outputs), dtype=np.float32)
    for rows in tqdm(batches, desc="predict", unit="batch", disable=not progress):
        batch = collate([(ids[i], np.int64(0)) for i in rows], pad_id)
        logits = model(batch["tokens"].to(device), batch["padding_mask"].to(device))
        outputs[rows] = logits.float().cpu().numpy()
    return outputs


def records(outputs: np.ndarray, state: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One JSON-able record per example: label and probabilities, or the predicted value."""
    if state["regression"]:
        return [{"index": i, "prediction": float(row[0])} for i, row in enumerate(outputs)]
    probs = torch.softmax(torch.from_numpy(outputs), dim=-1).numpy()
    names = state["labels"]
    return [{"index": i, "label": names[int(row.argmax())],
             "probabilities": {name: float(p) for name, p in zip(names, row)}} for i, row in enumerate(probs)]  # fmt: skip


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a fine-tuning run folder (its checkpoint_best.pt), a checkpoint .pt file or an export folder")
    parser.add_argument("file", help="examples: .tsv/.csv/.jsonl/.parquet with the run's text (and label) columns")
    parser.add_argument("--out", default="predictions.jsonl", help="the JSONL to write (default predictions.jsonl)")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per forward pass (default 32)")
    parser.add_argument("--max-tokens", type=int, default=0, help="padded tokens per forward pass instead of "
                        "--batch-size examples (examples sorted by length; default 0: --batch-size)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--last", action="store_true", help="a run folder's checkpoint_last.pt, not checkpoint_best.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    with one_line_errors(PROG):
        if args.batch_size < 1:
            raise UserError(f"--batch-size={args.batch_size} must be >= 1")
        if args.max_tokens < 0:
            raise UserError(f"--max-tokens={args.max_tokens} must be >= 0 (0: --batch-size examples per batch)")
        from linformer_pt.config import check_device
        from linformer_pt.data.labelled import encode_labels, read_labelled
        from linformer_pt.data.tokenizer import load_tokenizer
        from linformer_pt.hub.fine_tuned import load_classifier
        from linformer_pt.tasks.metrics import classification_metrics, regression_metrics
        from linformer_pt.tasks.sentence_prediction import encode_examples, special_ids_of
        from linformer_pt.training.trainer import resolve_device

        check_device("--device", args.device)
        fine_tuned = load_classifier(args.model, args.last)
        model, task_cfg, state = fine_tuned.model, fine_tuned.task_cfg, fine_tuned.state
        examples = read_labelled([args.file], task_cfg.text_column, task_cfg.pair_column, task_cfg.label_column,
                                 key=args.file, require_labels=False)  # fmt: skip
        tokenizer = load_tokenizer(fine_tuned.tokenizer_path)
        special_ids = special_ids_of(tokenizer)
        ids, truncated = encode_examples(tokenizer, examples, task_cfg, special_ids)
        labels = None if examples.labels is None else encode_labels(examples.labels, state["labels"], args.file)
        outputs = predict(model, ids, special_ids["pad"], args.batch_size, resolve_device(args.device),
                          progress=not args.no_progress, max_tokens=args.max_tokens)  # fmt: skip
        out = Path(args.out).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(record) + "\n" for record in records(outputs, state))
        summary: Dict[str, Any] = {"predictions": str(out), "examples": len(ids), "truncated": truncated}
        if labels is not None:
            metrics = regression_metrics(outputs[:, 0], labels) if state["regression"] else classification_metrics(outputs, labels)
            summary.update(metrics)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
