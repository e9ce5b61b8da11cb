"""A sentence classifier's forward + backward with the last layer at <s> only (the default) against every row.
Run: .venv/bin/python scripts/bench_sentence_grid.py [--reps 12 --threads 2 --json FILE]
Same model in both (4 x 256, 4 heads, FFN 1024, k = 64, dropout 0.1), same batches, steps interleaved in an order
alternated per repetition; median ms and the ratio of medians.
"""
import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

from linformer_pt.models.classifier import LinformerRobertaClassifier
from linformer_pt.models.linformer_roberta import LinformerRobertaConfig

POINTS = ((256, 32), (2048, 4))  # (n, batch): 8,192 tokens each


def measure(n: int, batch: int, reps: int) -> Dict:
    cfg = LinformerRobertaConfig(layers=4, embed_dim=256, ffn_embed_dim=1024, heads=4, max_positions=n, k=64)
    torch.manual_seed(0)
    model = LinformerRobertaClassifier(cfg, vocab_size=8192, padding_idx=1, num_outputs=2, pooler_dropout=0.1).train()
    tokens = torch.randint(5, 8192, (batch, n))
    runs: Dict[str, Callable[[], torch.Tensor]] = {
        "every row": lambda: model.classification_head(model.extract_features(tokens, None)),
        "<s> only": lambda: model(tokens, None),
    }
    ms: Dict[str, List[float]] = {name: [] for name in runs}
    for rep in range(reps + 2):
        for name in list(runs)[:: 1 if rep % 2 else -1]:
            start = time.perf_counter()
            runs[name]().sum().backward()
            model.zero_grad(set_to_none=True)
            if rep >= 2:  # two untimed repetitions first
                ms[name].append(1e3 * (time.perf_counter() - start))
    med = {name: statistics.median(values) for name, values in ms.items()}
    return {"n": n, "batch": batch, "every_row_ms": med["every row"], "first_only_ms": med["<s> only"],
            "speedup": med["every row"] / med["<s> only"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(n, batch, args.reps) for n, batch in POINTS]
    print("| n | batch | every row ms | <s> only ms | speed-up |\n|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']} | {r['batch']} | {r['every_row_ms']:.0f} | {r['first_only_ms']:.0f} | {r['speedup']:.2f}x |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"threads": args.threads, "reps": args.reps, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
