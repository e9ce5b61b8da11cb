"""Time from command to first update: resuming late in a large corpus vs a fresh start (token shards and streaming).

Resuming seeks to the saved data position; it must not cost more than a fresh start (goal: <= 1.2x) wherever
the position is. The corpus is the given files repeated until it holds about --tokens tokens.

Run: .venv/bin/python scripts/bench_resume.py [--files ../shared/data/gutenberg/*.txt] [--tokens 5e7] [--out ...]
"""
import argparse
import glob
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch
from benchlib import cpu_model, fmt, write_results

from linformer_pt.data.tokenizer import load_tokenizer
from linformer_pt.training.checkpoint import load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FILES = str(REPO.parent / "shared" / "data" / "gutenberg" / "*.txt")
TRAIN = [sys.executable, "-m", "linformer_pt.cli.train"]
PARTS = 8  # the corpus is split into this many files (streaming splits work by file)


def run(command: List[str]) -> None:
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_resume: {' '.join(command[:4])} ... failed:\n{proc.stderr[-3000:]}")


def build_corpus(files: List[Path], tokens: float, work: Path) -> Dict[str, Path]:
    """PARTS text files holding about `tokens` tokens (the inputs repeated), a small validation file, a tokenizer."""
    text = "\n\n".join(Path(f).read_text(encoding="utf-8", errors="replace") for f in files)
    run([str(Path(sys.executable).parent / "linformer-train-tokenizer"), "dataset=text",
         f"dataset.train_files=[{files[0]}]", f"dataset.cache_dir={work / 'cache'}", "tokenizer.vocab_size=8192",
         f"output={work / 'tokenizer.json'}", f"hydra.run.dir={work / 'logs'}"])  # fmt: skip
    tokenizer = load_tokenizer(work / "tokenizer.json")
    sample = text[:2_000_000]
    bytes_per_token = len(sample.encode()) / len(tokenizer.encode(sample, add_special_tokens=False).ids)
    copies = max(1, round(tokens * bytes_per_token / len(text.encode())))
    corpus = work / "corpus"
    corpus.mkdir(exist_ok=True)
    documents = text.split("\n\n")
    outputs = [open(corpus / f"part-{part}.txt", "w", encoding="utf-8") for part in range(PARTS)]
    for i, doc in enumerate(doc for _ in range(copies) for doc in documents):
        outputs[i % PARTS].write(doc + "\n\n")  # documents dealt round-robin: PARTS files of equal size
    for f in outputs:
        f.close()
    (work / "valid.txt").write_text(text[: 200_000], encoding="utf-8")
    return {"corpus": corpus, "valid": work / "valid.txt", "tokenizer": work / "tokenizer.json",
            "bytes_per_token": bytes_per_token}  # fmt: skip


def first_update_seconds(args: List[str], run_dir: Path, update: int) -> float:
    """Seconds from launching linformer-train until metrics.jsonl shows the train record of `update`."""
    start = time.perf_counter()
    proc = subprocess.Popen([*TRAIN, *args, f"hydra.run.dir={run_dir}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    metrics, needle = run_dir / "metrics.jsonl", f'"update": {update},'
    while True:
        if metrics.exists() and any(needle in l and '"train"' in l for l in metrics.read_text().splitlines()):
            elapsed = time.perf_counter() - start
            break
        if proc.poll() is not None:
            sys.exit(f"bench_resume: the run stopped before update {update}:\n{proc.stderr.read()[-3000:]}")
        time.sleep(0.02)
    proc.wait()
    return elapsed


def late_position(args: List[str], fraction: float, bytes_per_token: float) -> Dict:
    """The data position `fraction` of the way through epoch 1, as the task's own iterator reports it."""
    from hydra import compose, initialize_config_module

    import linformer_pt.models  # noqa: F401
    import linformer_pt.tasks  # noqa: F401
    from linformer_pt.config import load_config
    from linformer_pt.registry import TASKS

    with initialize_config_module(config_module="linformer_pt.configs", version_base="1.3"):
        cfg = load_config(compose("train", overrides=args))
    iterator = TASKS.get(cfg.task.name).cls.setup(cfg).batch_iterator("train")
    if hasattr(iterator, "updates_per_epoch"):  # an epoch over token shards: jump there
        updates = int(iterator.updates_per_epoch() * fraction)
        iterator.load_state_dict({**iterator.state_dict(), "offset": updates})
        return {"state": iterator.state_dict(), "updates": updates}
    # A stream has no index: walk it once (setup, not measured) to learn its position that far in.
    total_tokens = sum(p.stat().st_size for p in Path(cfg.dataset.train_files[0]).iterdir()) / bytes_per_token
    updates = int(total_tokens * fraction / (cfg.dataset.batch_size * cfg.task.tokens_per_sample))
    batches = iterator.forever()
    for _ in range(updates):
        next(batches)
    return {"state": iterator.state_dict(), "updates": updates}


def measure(mode: str, args: List[str], work: Path, fraction: float, bytes_per_token: float) -> Dict:
    fresh_dir, resume_dir = work / f"{mode}-fresh", work / f"{mode}-resume"
    shutil.rmtree(fresh_dir, ignore_errors=True)
    shutil.rmtree(resume_dir, ignore_errors=True)
    fresh = first_update_seconds(args + ["optimization.max_update=1"], fresh_dir, 1)
    position = late_position(args, fraction, bytes_per_token)
    shutil.copytree(fresh_dir, resume_dir)
    path = resume_dir / "checkpoints" / "checkpoint_last.pt"
    state = load_checkpoint(path)
    state.update(update=position["updates"], train_iterator=[position["state"]], metrics_lines=0)
    save_checkpoint(path, state)
    target = position["updates"] + 1
    resumed = first_update_seconds(args + [f"optimization.max_update={target}"], resume_dir, target)
    return {"mode": mode, "fresh_s": fresh, "resume_s": resumed, "ratio": resumed / fresh,
            "position_updates": position["updates"], "position_fraction": fraction}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", default=DEFAULT_FILES, help="glob of UTF-8 text files to build the corpus from")
    parser.add_argument("--tokens", type=float, default=5e7, help="approximate corpus size in tokens")
    parser.add_argument("--fraction", type=float, default=0.9, help="how far into the epoch the resume starts")
    parser.add_argument("--work", default="", help="working folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--out", default=str(REPO / "docs" / "bench_resume"), help="results folder")
    opts = parser.parse_args()
    files = sorted(Path(f) for f in glob.glob(opts.files))
    if not files:
        sys.exit(f"bench_resume: no files match {opts.files}")
    work = Path(opts.work) if opts.work else Path(tempfile.mkdtemp(prefix="bench_resume-"))
    work.mkdir(parents=True, exist_ok=True)
    paths = build_corpus(files, opts.tokens, work)
    common = [
        "experiment=smoke", "dataset=text", f"dataset.train_files=[{paths['corpus']}]",
        f"dataset.valid_files=[{paths['valid']}]", f"dataset.cache_dir={work / 'cache'}",
        f"tokenizer.path={paths['tokenizer']}", "logging.progress_bar=false", "logging.tensorboard=false",
        "logging.log_interval=1", "optimization.validate_interval_updates=0", "checkpoint.save_interval_minutes=0",
        "task.sample_break_mode=none",
    ]  # fmt: skip
    # The token cache is built once, outside the timings (linformer-preprocess's job; see bench_data.py).
    first_update_seconds(common + ["optimization.max_update=1"], work / "warm-cache", 1)
    bpt = paths["bytes_per_token"]
    rows = [measure("shards", common, work, opts.fraction, bpt),
            measure("streaming", common + ["dataset.streaming=true"], work, opts.fraction, bpt)]  # fmt: skip
    print(f"corpus: {sum(p.stat().st_size for p in paths['corpus'].iterdir()) / 1e6:.0f} MB in {PARTS} files")
    print(f"| data | fresh start to first update (s) | resume at {opts.fraction:.0%} of the epoch (s) | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['mode']} | {fmt(r['fresh_s'], '.1f')} | {fmt(r['resume_s'], '.1f')} | {fmt(r['ratio'], '.2f')} |")
    env = {"cpu": cpu_model(), "torch": torch.__version__, "corpus_bytes": sum(p.stat().st_size for p in paths["corpus"].iterdir())}
    write_results(rows, env, vars(opts), Path(opts.out), ["mode", "fresh_s", "resume_s", "ratio", "position_updates"])
    if not opts.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
