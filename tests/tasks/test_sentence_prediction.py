"""Fine-tuning (task=sentence_prediction) from a real tiny pretraining run: learning, weights, labels, predictions."""
import json
import random
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
from conftest import build_trainer, compose_config
from hub_fixtures import train_tiny_run

from linformer_pt.cli import export as export_cli
from linformer_pt.cli import predict as predict_cli
from linformer_pt.cli.train import run
from linformer_pt.errors import UserError
from linformer_pt.hub.fine_tuned import load_classifier
from linformer_pt.hub.export_folder import LinformerForMaskedLM
from linformer_pt.training.checkpoint import load_checkpoint

GOOD = "great fine lovely superb wonderful".split()
BAD = "awful poor dreadful boring terrible".split()
FILLER = "the film was and its story a plot with some actors".split()


def write_reviews(path: Path, rows: int, seed: int, labels=("neg", "pos"), header="sentence\tlabel") -> Path:
    """Short 'reviews' whose label is given away by their first word, a sentiment word, before filler words.

    The first word, not a random one: Linformer's <s> sees the sequence through E and F, whose random initial rows
    mix positions with random signs, so a word at a random place takes a tiny model many updates to read.
    """
    rng = random.Random(seed)
    lines = [header]
    for _ in range(rows):
        positive = rng.random() < 0.5
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 8))]
        words.insert(0, rng.choice(GOOD if positive else BAD))
        lines.append(f"{' '.join(words)}\t{labels[int(positive)]}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, cache_dir) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("pretrain") / "run", cache_dir, updates=60)


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("reviews")
    return {"train": write_reviews(folder / "train.tsv", 400, 1), "valid": write_reviews(folder / "dev.tsv", 80, 2)}


def finetune_overrides(pretrained: Path, reviews: dict, extra: List[str] = ()) -> List[str]:
    return [
        "task=sentence_prediction", "dataset=text", f"dataset.train_files=[{reviews['train']}]",
        f"dataset.valid_files=[{reviews['valid']}]", f"checkpoint.finetune_from={pretrained}",
        "task.tokens_per_sample=32", "model.max_positions=32", "model.k=8", "dataset.batch_size=16", "optim.lr=3e-3",
        "optimization.max_update=80", "optimization.validate_interval_updates=40", "lr_scheduler.warmup_updates=5",
        "model.dropout=0.0", "logging.progress_bar=false", "logging.tensorboard=false", *extra,
    ]  # fmt: skip


def test_fine_tuning_learns_the_labels_and_keeps_the_best_checkpoint_by_accuracy(pretrained, reviews, tmp_path):
    result = run(compose_config(finetune_overrides(pretrained, reviews)), tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    valid = [r for r in records if r["split"] == "valid"]
    assert train[-1]["loss"] < 0.5 * train[0]["loss"]
    assert valid[-1]["accuracy"] > 0.9 and {"f1", "mcc", "loss"} <= set(valid[-1])
    best = load_checkpoint(tmp_path / "checkpoints" / "checkpoint_best.pt")
    assert best["task_state"]["labels"] == ["neg", "pos"]
    assert best["last_valid"]["accuracy"] == max(r["accuracy"] for r in valid)
    assert result["final_valid"]["accuracy"] == valid[-1]["accuracy"]


def test_the_encoder_is_loaded_bit_for_bit_and_the_lm_head_dropped(pretrained, reviews, tmp_path):
    trainer = build_trainer(finetune_overrides(pretrained, reviews, ["model.max_positions=64"]), tmp_path)
    trainer.task.init_model(trainer.model)
    source = load_checkpoint(pretrained / "checkpoints" / "checkpoint_best.pt")["model"]
    mine = trainer.model.state_dict()
    assert not [name for name in mine if name.startswith("lm_")]
    resized = {"embed_positions.weight"} | {n for n in mine if n.endswith(("proj_e.weight", "proj_f.weight"))}
    for name, value in mine.items():
        if name.startswith("classification_head.") or name in resized:
            continue
        assert torch.equal(value, source[name]), name
    # Grown from 32 to 64 positions: the first 32 position rows are the pretrained ones (tiled after them).
    assert torch.equal(mine["embed_positions.weight"][:32], source["embed_positions.weight"])
    # The architecture is the pretrained one, whatever the model preset says.
    assert trainer.cfg.model.k == 8 and trainer.cfg.model.layers == 2


@pytest.fixture(scope="module")
def fine_tuned_run(pretrained, reviews, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("fine_tuned") / "run"
    run(compose_config(finetune_overrides(pretrained, reviews, ["optimization.max_update=20"])), run_dir)
    return run_dir


def test_predict_writes_the_models_own_outputs_and_the_metrics(fine_tuned_run, pretrained, reviews, tmp_path, capsys):
    run_dir = fine_tuned_run
    out = tmp_path / "predictions.jsonl"
    predict_cli.main([str(run_dir), str(reviews["valid"]), "--out", str(out), "--no-progress", "--batch-size", "7"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == summary["examples"] == 80

    # In-process: the trainer's own model and validation batches, in file order.
    fine_tuned = load_classifier(run_dir)
    model, state = fine_tuned.model, fine_tuned.state
    trainer = build_trainer(finetune_overrides(pretrained, reviews), tmp_path / "scratch")
    trainer.model.load_state_dict(model.state_dict())
    trainer.model.eval()
    trainer.valid_iterator.restart()
    batches = list(trainer.valid_iterator.epoch_iter())
    with torch.no_grad():
        logits = torch.cat([trainer.model(b["tokens"], b["padding_mask"]) for b in batches])
    gold = np.concatenate([b["targets"].numpy() for b in batches])
    probs = torch.softmax(logits, -1).numpy()
    for row, p in zip(rows, probs):
        assert row["label"] == state["labels"][int(p.argmax())]
        assert np.allclose([row["probabilities"]["neg"], row["probabilities"]["pos"]], p, atol=1e-5)
    assert summary["accuracy"] == pytest.approx(float((probs.argmax(-1) == gold).mean()))


def test_an_export_predicts_exactly_as_its_run(fine_tuned_run, reviews, tmp_path, capsys):
    export = tmp_path / "export"
    export_cli.main([str(fine_tuned_run), str(export)])
    config = json.loads((export / "config.json").read_text())
    assert config["task"]["name"] == "sentence_prediction" and config["task_state"]["labels"] == ["neg", "pos"]
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    for source, name in ((fine_tuned_run, "run.jsonl"), (export, "export.jsonl")):
        predict_cli.main([str(source), str(reviews["valid"]), "--out", str(tmp_path / name), "--no-progress"])
    assert (tmp_path / "run.jsonl").read_bytes() == (tmp_path / "export.jsonl").read_bytes()
    # A bf16 export holds the run's weights rounded to bf16, and predicts in fp32 from them.
    export_cli.main([str(fine_tuned_run), str(tmp_path / "bf16"), "--dtype", "bf16"])
    full, half = load_classifier(fine_tuned_run).model.state_dict(), load_classifier(tmp_path / "bf16").model.state_dict()
    assert all(torch.equal(half[name], full[name].bfloat16().float()) for name in full)


def test_fine_tuned_and_masked_lm_models_are_not_mixed_up(pretrained, fine_tuned_run, tmp_path):
    export_cli.main([str(fine_tuned_run), str(tmp_path / "classifier")])
    export_cli.main([str(pretrained), str(tmp_path / "lm")])
    not_an_lm = "fine-tuned task=sentence_prediction model, not a masked LM"  # no masked LM from a classifier...
    with pytest.raises(UserError, match=not_an_lm):
        LinformerForMaskedLM.from_pretrained(tmp_path / "classifier")
    with pytest.raises(UserError, match=not_an_lm):
        LinformerForMaskedLM.from_checkpoint(fine_tuned_run)
    with pytest.raises(UserError, match="masked-LM export, not a fine-tuned"):  # ...and no classifier from an LM
        load_classifier(tmp_path / "lm")
    with pytest.raises(UserError, match="task=masked_lm run, not a fine-tuned"):
        load_classifier(pretrained)


def test_transformers_loads_the_trained_head_with_its_label_names(fine_tuned_run, reviews, tmp_path):
    transformers = pytest.importorskip("transformers", reason="needs pip install 'linformer-pt[hf]'")
    export_cli.main([str(fine_tuned_run), str(tmp_path / "export")])
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "export", trust_remote_code=True)
    assert theirs.eval().config.id2label == {0: "neg", 1: "pos"}
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "export", trust_remote_code=True)
    texts = [line.split("\t")[0] for line in reviews["valid"].read_text().splitlines()[1:9]]
    inputs = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        ours = load_classifier(fine_tuned_run).model(inputs["input_ids"], inputs["attention_mask"] == 0)
        assert torch.equal(theirs(**inputs).logits, ours)


def test_a_label_the_run_never_saw_is_one_line_at_prediction_time(pretrained, reviews, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run(compose_config(finetune_overrides(pretrained, reviews, ["optimization.max_update=2"])), run_dir)
    odd = write_reviews(tmp_path / "odd.tsv", 5, 3, labels=("neg", "meh"))
    with pytest.raises(SystemExit) as exit_info:
        predict_cli.main([str(run_dir), str(odd), "--out", str(tmp_path / "p.jsonl"), "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "meh" in err
    assert not (tmp_path / "p.jsonl").exists()


@pytest.mark.parametrize("extra, rows, expected", [
    (["task.num_classes=2"], ("0", "2"), "2"),  # an integer label out of range
    (["task.regression=true"], ("low", "high"), "not a finite number"),  # regression needs numbers
    (["task.label_column=stars"], ("neg", "pos"), "stars"),  # a missing column
], ids=["out-of-range", "non-numeric-regression", "missing-column"])  # fmt: skip
def test_bad_labels_and_columns_are_one_line_errors(pretrained, reviews, tmp_path, extra, rows, expected):
    bad = write_reviews(tmp_path / "bad.tsv", 20, 4, labels=rows)
    with pytest.raises(UserError, match=expected):
        run(compose_config(finetune_overrides(pretrained, {"train": bad, "valid": bad}, extra)), tmp_path / "run")


def test_an_empty_file_is_one_line(pretrained, reviews, tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(UserError, match="empty.tsv"):
        run(compose_config(finetune_overrides(pretrained, {"train": empty, "valid": reviews["valid"]})), tmp_path / "r")


def test_fine_tuning_without_a_pretrained_model_or_tokenizer_is_refused(reviews, tmp_path):
    overrides = [o for o in finetune_overrides(Path("/x"), reviews) if not o.startswith("checkpoint.finetune_from")]
    with pytest.raises(UserError, match="finetune_from"):
        run(compose_config(overrides), tmp_path / "run")


def test_validation_honours_max_valid_tokens_with_a_fixed_subset_of_whole_examples(pretrained, reviews, tmp_path,
                                                                                   capsys):  # fmt: skip
    from linformer_pt.config import load_config
    from linformer_pt.tasks.sentence_prediction import SentencePredictionTask

    def task(*extra: str) -> SentencePredictionTask:
        return SentencePredictionTask(load_config(compose_config(finetune_overrides(pretrained, reviews, extra))))

    whole = task("dataset.max_valid_tokens=0").datasets["valid"]
    subset = task("dataset.max_valid_tokens=200").datasets["valid"]
    assert len(whole) == 80 and 0 < len(subset) < 40
    tokens = sum(len(ids) for ids in subset.ids)
    assert 200 <= tokens < 200 + 32  # whole examples, just past the budget
    full = {(tuple(ids), int(label)) for ids, label in zip(whole.ids, whole.labels)}
    assert {(tuple(ids), int(label)) for ids, label in zip(subset.ids, subset.labels)} <= full
    again = task("dataset.max_valid_tokens=200").datasets["valid"]
    assert [i.tolist() for i in again.ids] == [i.tolist() for i in subset.ids]  # the same in every run
    summary = f"validating on {len(subset)} of them ({tokens} tokens, dataset.max_valid_tokens=200; 0: all)"
    assert summary in capsys.readouterr().out
    short = ["dataset.max_valid_tokens=200", "optimization.max_update=2", "optimization.validate_interval_updates=0"]
    result = run(compose_config(finetune_overrides(pretrained, reviews, short)), tmp_path)
    assert result["final_valid"]["masked"] == len(subset)  # validation scored exactly the subset's examples
