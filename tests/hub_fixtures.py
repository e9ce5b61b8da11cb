"""A tiny masked-LM run trained for a few dozen updates on a repetitive corpus, for the export and inference tests."""
import random
from pathlib import Path
from typing import List

from conftest import build_trainer

PHRASE = "the quick brown fox jumps over the lazy dog ."  # in every document: fill-mask must recover "fox"
WORDS = "a man saw one red car near some old house and then we went home after it rained all day".split()


def write_corpus(path: Path, documents: int, seed: int) -> Path:
    """Documents of a few random sentences around the fixed phrase, blank-line separated."""
    rng = random.Random(seed)
    docs = []
    for _ in range(documents):
        noise = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
        docs.append(f"{noise} . {PHRASE} {noise} .")
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def train_tiny_run(folder: Path, cache_dir: Path, extra: List[str] = (), updates: int = 400) -> Path:
    """Train a 2-layer model on the phrase corpus into `folder` (checkpoints/ and tokenizer.json); returns it."""
    train = write_corpus(folder.parent / f"{folder.name}-train.txt", 400, seed=1)
    valid = write_corpus(folder.parent / f"{folder.name}-valid.txt", 40, seed=2)
    overrides = [
        "experiment=smoke",
        "dataset=text",
        f"dataset.train_files=[{train}]",
        f"dataset.valid_files=[{valid}]",
        f"dataset.cache_dir={cache_dir}",
        "tokenizer.vocab_size=400",
        "tokenizer.min_frequency=1",
        "task.tokens_per_sample=32",
        "model.max_positions=32",
        "model.k=8",
        "model.dropout=0.0",
        "model.attention_dropout=0.0",
        f"optimization.max_update={updates}",
        "optimization.validate_interval_updates=0",
        "optim.lr=5e-3",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
        *extra,
    ]
    build_trainer(overrides, folder).fit()
    return folder
