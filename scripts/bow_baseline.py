"""Bag-of-words logistic regression on labelled text: the score a fine-tuned encoder has to beat.

Run: python scripts/bow_baseline.py --train ../shared/data/sst2/train.tsv --valid ../shared/data/sst2/dev.tsv
         [--text-column sentence --label-column label] [--out results.json]
Lowercased word unigrams and bigrams found in at least --min-count training texts (the --max-features most
frequent), TF-IDF weighted (or binary) and L2-normalised per text, feed a multinomial logistic regression fitted
by full-batch L-BFGS in torch. The L2 penalty is the --l2 value best on a held-out 10% of train; the model is then
refitted on all of train and scored on --valid.
"""
import argparse
import json
import math
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from linformer_pt.cli.common import one_line_errors
from linformer_pt.data.labelled import encode_labels, label_names, read_labelled
from linformer_pt.errors import UserError
from linformer_pt.tasks.metrics import classification_metrics

WORD = re.compile(r"\w+|[^\w\s]")  # words and single punctuation marks: "!" and "?" carry sentiment
HELD_OUT = 0.1
L2_GRID = [1e-6, 1e-5, 1e-4, 1e-3]  # per-example penalty; sklearn's C=1 on 60k texts is about 1.7e-5


def ngrams(text: str) -> List[str]:
    """Lowercased word unigrams and bigrams of a text."""
    words = WORD.findall(text.lower())
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


class Features:
    """A vocabulary of n-grams and their inverse document frequencies, learned on training texts."""

    def __init__(self, docs: List[List[str]], min_count: int, max_features: int, kind: str) -> None:
        df = Counter(gram for doc in docs for gram in set(doc))
        # Most frequent first, ties by the n-gram itself, so the vocabulary never depends on hash order.
        kept = sorted((g for g, n in df.items() if n >= min_count), key=lambda g: (-df[g], g))[:max_features]
        if not kept:
            raise UserError(f"no n-gram occurs in {min_count} or more training texts; lower --min-count")
        self.index = {gram: i for i, gram in enumerate(kept)}
        self.kind = kind
        # Smoothed idf, log((1 + N) / (1 + df)) + 1: scikit-learn's TfidfVectorizer default.
        self.idf = np.log((1 + len(docs)) / (1 + np.array([df[g] for g in kept], dtype=np.float64))) + 1

    def __len__(self) -> int:
        return len(self.index)

    def matrix(self, docs: List[List[str]]) -> torch.Tensor:
        """(texts, features) sparse float32 rows, each of unit L2 norm (an empty row stays zero)."""
        rows, cols, vals = [], [], []
        for r, doc in enumerate(docs):
            counts = Counter(self.index[g] for g in doc if g in self.index)
            if not counts:
                continue
            ids = np.fromiter(counts, dtype=np.int64, count=len(counts))
            weights = np.ones(len(ids)) if self.kind == "binary" else np.array(list(counts.values())) * self.idf[ids]
            rows.append(np.full(len(ids), r))
            cols.append(ids)
            vals.append(weights / np.linalg.norm(weights))
        coords = np.stack([np.concatenate(rows or [[]]), np.concatenate(cols or [[]])]).astype(np.int64)
        indices = torch.from_numpy(coords)
        values = torch.from_numpy(np.concatenate(vals or [[]]).astype(np.float32))
        return torch.sparse_coo_tensor(indices, values, (len(docs), len(self)), check_invariants=True).coalesce()


def fit(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, max_iter: int, bar: Optional[tqdm] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weights (features, classes) and bias minimising mean cross-entropy + l2/2 |W|^2 (the bias is not penalised).

    `bar` advances by one per loss evaluation, max_iter in all per fit (a fit that converges early jumps to its end).
    """
    w = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    # The loss is convex and the data fit in memory: full-batch quasi-Newton converges in a few hundred steps.
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)  # fmt: skip

    done = 0

    def closure() -> torch.Tensor:
        nonlocal done
        if bar is not None and done < max_iter:  # the line search may evaluate more often than max_iter
            bar.update(1)
            done += 1
        opt.zero_grad()
        loss = F.cross_entropy(torch.sparse.mm(x, w) + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    if bar is not None:
        bar.update(max_iter - done)
    return w.detach(), b.detach()


def scores(x: torch.Tensor, model: Tuple[torch.Tensor, torch.Tensor]) -> np.ndarray:
    """(texts, classes) logits."""
    return (torch.sparse.mm(x, model[0]) + model[1]).numpy()


def train_and_score(
    train: Tuple[List[List[str]], np.ndarray], test: Tuple[List[List[str]], np.ndarray], num_classes: int,
    l2: float, args: argparse.Namespace, bar: Optional[tqdm] = None,
) -> Tuple[Dict[str, float], int]:  # fmt: skip
    """Learn features and a model on `train`, return the metrics on `test` and the number of features."""
    features = Features(train[0], args.min_count, args.max_features, args.features)
    if bar is not None:
        bar.set_postfix_str(f"l2={l2:g}", refresh=False)
    model = fit(features.matrix(train[0]), torch.from_numpy(train[1]), num_classes, l2, args.max_iter, bar)
    return classification_metrics(scores(features.matrix(test[0]), model), test[1]), len(features)


def choose_l2(
    docs: List[List[str]], y: np.ndarray, num_classes: int, args: argparse.Namespace, bar: Optional[tqdm] = None
) -> Dict[float, float]:
    """{l2: accuracy on a held-out HELD_OUT of the training texts, the model fitted on the rest}."""
    order = np.random.default_rng(args.seed).permutation(len(docs))
    held = max(1, int(len(docs) * HELD_OUT))
    if len(docs) - held < 1:
        raise UserError(f"--train has {len(docs)} text(s): too few to hold some out; give one --l2 value")
    fit_part = ([docs[i] for i in order[held:]], y[order[held:]])
    held_part = ([docs[i] for i in order[:held]], y[order[:held]])
    return {l2: train_and_score(fit_part, held_part, num_classes, l2, args, bar)[0]["accuracy"] for l2 in args.l2}


def run(args: argparse.Namespace) -> Dict:
    """Choose L2, fit on all of train, score valid; returns the results written to --out."""
    torch.manual_seed(args.seed)
    columns = (args.text_column, "", args.label_column)
    train = read_labelled([args.train], *columns, key="--train", require_labels=True)
    valid = read_labelled([args.valid], *columns, key="--valid", require_labels=True)
    num_classes = len(set(train.labels))
    if num_classes < 2:
        raise UserError(f"--train: all labels are {train.labels[0]!r}; a classifier needs two classes or more")
    names = label_names(train.labels, num_classes, [])
    y_train = encode_labels(train.labels, names, "--train")
    y_valid = encode_labels(valid.labels, names, "--valid")
    train_docs, valid_docs = [ngrams(t) for t in train.texts], [ngrams(t) for t in valid.texts]
    search = len(args.l2) > 1
    # The fits are the long part (minutes on SST-2's 67k texts): one bar over all of them, in L-BFGS evaluations.
    fits = len(args.l2) + 1 if search else 1
    with tqdm(total=fits * args.max_iter, desc=f"fit x{fits}", unit="eval", file=sys.stderr, dynamic_ncols=True) as bar:
        held_out = choose_l2(train_docs, y_train, num_classes, args, bar) if search else {args.l2[0]: math.nan}
        l2 = max(held_out, key=lambda value: (held_out[value], value))  # ties: the larger penalty, the simpler model
        metrics, num_features = train_and_score((train_docs, y_train), (valid_docs, y_valid), num_classes, l2, args,
                                                bar)  # fmt: skip
    return {
        "train": args.train, "valid": args.valid, "train_size": len(train_docs), "valid_size": len(valid_docs),
        "labels": names, "features": num_features, "feature_kind": args.features, "l2": l2,
        "held_out_accuracy": {str(k): v for k, v in held_out.items()},
        "valid_accuracy": metrics["accuracy"], "valid_f1": metrics["f1"], "valid_mcc": metrics["mcc"],
    }  # fmt: skip


def print_table(results: Dict) -> None:
    search = ", ".join(f"{k}: {v:.4f}" for k, v in results["held_out_accuracy"].items())
    for name, value in [
        ("train size", results["train_size"]), ("features", f"{results['features']} ({results['feature_kind']})"),
        ("chosen L2", f"{results['l2']:g} (held-out accuracy {search})"),
        ("dev accuracy", f"{results['valid_accuracy']:.4f}"), ("dev macro F1", f"{results['valid_f1']:.4f}"),
    ]:  # fmt: skip
        print(f"{name:<14}{value}")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, help="labelled training file (.tsv/.csv/.jsonl/.parquet)")
    parser.add_argument("--valid", required=True, help="labelled file to score")
    parser.add_argument("--text-column", default="sentence")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--features", choices=("tfidf", "binary"), default="tfidf")
    parser.add_argument("--min-count", type=int, default=2, help="keep n-grams found in at least this many texts")
    parser.add_argument("--max-features", type=int, default=100_000)
    parser.add_argument("--l2", type=float, nargs="+", default=L2_GRID, help="penalties to try (one: no search)")
    parser.add_argument("--max-iter", type=int, default=300, help="L-BFGS iterations per fit")
    parser.add_argument("--seed", type=int, default=0, help="picks the held-out texts")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    with one_line_errors("bow_baseline.py"):
        results = run(args)
    print_table(results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results: {args.out}")


if __name__ == "__main__":
    main()
