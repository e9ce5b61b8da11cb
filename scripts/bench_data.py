"""Preprocessing throughput (MB/s): linformer-preprocess's shard writer vs a plain `datasets.map` tokenization.

Run: .venv/bin/python scripts/bench_data.py [--files ../shared/data/gutenberg/*.txt] [--repeats 2] [--out ...]
"""
import argparse
import glob
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

from linformer_pt.data.binarize import write_shards
from linformer_pt.data.sources import iter_documents
from linformer_pt.data.tokenizer import EOS, train_tokenizer

DEFAULT_FILES = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "gutenberg" / "*.txt")


def ours(files: List[Path], tokenizer, work: Path) -> None:
    """What linformer-preprocess does: documents -> sentences -> encode_batch -> uint16 shards on disk."""
    write_shards(iter_documents(files), tokenizer, tokenizer.token_to_id(EOS), work)


def datasets_map(files: List[Path], tokenizer, work: Path) -> None:
    """HF run_mlm.py's recipe: the `text` builder (a record per line), then a batched map that tokenizes."""
    import datasets

    raw = datasets.load_dataset("text", data_files=[str(f) for f in files], split="train", cache_dir=str(work))
    fast = hf_tokenizer(tokenizer)

    def tokenize(batch: Dict[str, List[str]]) -> Dict:
        return fast(batch["text"], return_special_tokens_mask=True)

    raw.map(tokenize, batched=True, remove_columns=["text"], load_from_cache_file=False,
            cache_file_name=str(work / "tokenized.arrow"))  # fmt: skip


def hf_tokenizer(tokenizer):
    """transformers' fast tokenizer over the same model, as run_mlm.py uses; the raw one without transformers."""
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        return lambda texts, **_: {"input_ids": [e.ids for e in tokenizer.encode_batch(texts)]}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")  # fmt: skip


def timed(run: Callable, files: List[Path], tokenizer, repeats: int) -> float:
    """Best wall time over `repeats` runs, each in a fresh folder (no caches carried over)."""
    best = float("inf")
    for _ in range(repeats):
        work = Path(tempfile.mkdtemp(prefix="bench_data_"))
        try:
            start = time.perf_counter()
            run(files, tokenizer, work)
            best = min(best, time.perf_counter() - start)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", default=DEFAULT_FILES, help="a glob of text files (default: the Gutenberg books)")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_data/results.json"))
    args = parser.parse_args()
    files = sorted(Path(p) for p in glob.glob(args.files))
    if not files:
        parser.error(f"--files {args.files} matches no file")
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    tokenizer = train_tokenizer(iter_documents(files), args.vocab)  # not timed: both sides use it
    rows = []
    for name, run in (("linformer-preprocess", ours), ("datasets.map (run_mlm.py)", datasets_map)):
        seconds = timed(run, files, tokenizer, args.repeats)
        rows.append({"method": name, "seconds": seconds, "mb_per_s": megabytes / seconds})
    ratio = rows[0]["mb_per_s"] / rows[1]["mb_per_s"]
    print(f"corpus: {len(files)} files, {megabytes:.1f} MB; vocab {args.vocab}; python {platform.python_version()}")
    print("\n| method | seconds | MB/s |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['seconds']:.1f} | {r['mb_per_s']:.2f} |")
    print(f"\nlinformer-preprocess / datasets.map: {ratio:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"files": len(files), "megabytes": megabytes, "rows": rows, "ratio": ratio}, indent=2))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
