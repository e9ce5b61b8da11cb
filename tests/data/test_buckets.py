"""Token-budget batches (dataset.max_tokens): the budget, every item once in validation, seeded order, exact resume,
the same updates for any processes x update_freq, refused positions, loss normalisation, and the wired-in tools."""
import json
import os
import random
import signal
from itertools import islice
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
from conftest import build_trainer, compose_config
from hub_fixtures import train_tiny_run
from torch.utils.data import Dataset

from linformer_pt.cli import predict as predict_cli
from linformer_pt.cli.train import run
from linformer_pt.data.batching import EpochBatchIterator
from linformer_pt.data.buckets import TokenBudgetBatchIterator, batch_iterator_for, cut_by_budget, sample_lengths
from linformer_pt.errors import RunInterrupted, UserError
from linformer_pt.training.trainer import Trainer

LENGTHS = np.random.default_rng(0).integers(1, 60, size=301)  # many ties, lengths far apart
BUDGET = 200


class Items(Dataset):
    """Item i is (i, its length); the collated batch says which items it holds and its padded size."""

    def __init__(self, lengths: np.ndarray) -> None:
        self.lengths = lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int):
        return index, int(self.lengths[index])


def collate(samples):
    return {"items": [i for i, _ in samples], "padded": len(samples) * max(n for _, n in samples)}


def iterator(shuffle: bool = True, rank: int = 0, world_size: int = 1, update_freq: int = 1, seed: int = 1,
             lengths: np.ndarray = LENGTHS, max_tokens: int = BUDGET) -> TokenBudgetBatchIterator:  # fmt: skip
    return TokenBudgetBatchIterator(Items(lengths), lengths, max_tokens, collate, seed, shuffle, rank=rank,
                                    world_size=world_size, update_freq=update_freq)  # fmt: skip


def epoch_updates(it: TokenBudgetBatchIterator) -> List[List[List[int]]]:
    """One epoch of updates from the position, each a list of micro-batches (item lists)."""
    updates, epoch = [], it.epoch
    for group in it.forever():
        updates.append([b["items"] for b in group])
        if it.epoch != epoch:
            return updates


def valid_items(world_size: int) -> List[List[List[int]]]:
    per_rank = []
    for rank in range(world_size):
        it = iterator(shuffle=False, rank=rank, world_size=world_size)
        it.restart()
        per_rank.append([b["items"] for b in it.epoch_iter()])
    return per_rank


def test_every_batch_fits_the_budget_and_the_cut_is_greedy():
    it = iterator()
    for _ in range(3):  # three epochs of training batches
        for update in epoch_updates(it):
            for items in update:
                assert len(items) * LENGTHS[items].max() <= BUDGET
    batches = valid_items(1)[0]
    assert sum(len(b) for b in batches) == len(LENGTHS)
    for batch, following in zip(batches, batches[1:]):
        # Shortest first; the next item would have broken the budget (greedy: no batch is cut early).
        assert LENGTHS[batch].max() <= LENGTHS[following].min()
        assert (len(batch) + 1) * LENGTHS[following[0]] > BUDGET
    assert np.mean([len(b) for b in batches]) > 5  # short items share batches


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_validation_visits_every_item_exactly_once(world_size):
    per_rank = valid_items(world_size)
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert sorted(seen) == list(range(len(LENGTHS)))  # no duplicates, none missing
    counts = [len(batches) for batches in per_rank]
    assert max(counts) - min(counts) <= 1  # dealt in turn: a rank may get one batch fewer
    again = valid_items(world_size)
    assert again == per_rank  # the same batches at every validation


def test_the_order_is_a_function_of_seed_and_epoch_and_every_epoch_has_the_same_updates():
    a, b, c = iterator(seed=1), iterator(seed=1), iterator(seed=2)
    first, same, other = epoch_updates(a), epoch_updates(b), epoch_updates(c)
    assert first == same
    assert first != other
    second = epoch_updates(a)
    assert second != first and len(second) == len(first) == a.updates_per_epoch()
    # Each epoch holds every batch of the cut but the tail that fills no update (here: none, one update = 1 batch).
    assert sorted(i for u in second for b in u for i in b) == list(range(len(LENGTHS)))


def test_the_tail_that_fills_no_update_is_dropped():
    it = iterator(update_freq=4)
    assert it.updates_per_epoch() == it.num_batches // 4
    updates = epoch_updates(it)
    assert len(updates) == it.num_batches // 4 and all(len(u) == 4 for u in updates)
    seen = [i for u in updates for b in u for i in b]
    assert len(seen) == len(set(seen)) < len(LENGTHS)


def test_a_resume_mid_epoch_yields_exactly_the_remaining_batches():
    def take(it: TokenBudgetBatchIterator, updates: int) -> List[List[List[int]]]:
        return [[b["items"] for b in group] for group in islice(it.forever(), updates)]

    uninterrupted = take(iterator(update_freq=2), 70)  # 27 updates per epoch: crosses two boundaries
    stopped = iterator(update_freq=2)
    head = take(stopped, 33)
    state = stopped.state_dict()
    assert state["epoch"] > 1 and state["offset"] > 0  # mid-epoch, after an epoch boundary
    resumed = iterator(update_freq=2)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # through a checkpoint's plain types
    tail = take(resumed, 70 - 33)
    assert head + tail == uninterrupted


def test_two_processes_see_the_updates_of_one_process_accumulating_two_micro_batches():
    one = epoch_updates(iterator(update_freq=2))
    ranks = [epoch_updates(iterator(rank=r, world_size=2)) for r in range(2)]
    assert len(one) == len(ranks[0]) == len(ranks[1])
    for update, (r0, r1) in zip(one, zip(*ranks)):
        assert sorted(i for b in update for i in b) == sorted(i for b in r0 + r1 for i in b)


def test_a_position_of_another_cut_is_refused_in_one_line():
    state = iterator(update_freq=2).state_dict()
    for other in (iterator(update_freq=2, max_tokens=BUDGET + 1), iterator(update_freq=1),
                  iterator(update_freq=2, lengths=LENGTHS[:-1])):  # fmt: skip
        with pytest.raises(UserError, match="the saved data position is for") as info:
            other.load_state_dict(state)
        assert "\n" not in str(info.value) and "reset_dataloader" in str(info.value)
    iterator(rank=1, world_size=2).load_state_dict(state)  # 2 processes x 1 = 1 x 2: the same updates
    fixed = EpochBatchIterator(Items(LENGTHS), 8, collate, 1, True, update_freq=2)
    with pytest.raises(UserError, match="max_tokens=0, this run has max_tokens=200"):
        iterator(update_freq=2).load_state_dict(fixed.state_dict())
    with pytest.raises(UserError, match="max_tokens=200, this run has max_tokens=0"):
        fixed.load_state_dict(state)


def test_an_item_longer_than_the_budget_and_too_few_batches_are_one_line_errors():
    with pytest.raises(UserError, match=r"dataset.max_tokens=50 is smaller than the longest item \(59 tokens\)"):
        iterator(max_tokens=50)
    with pytest.raises(UserError, match="--max-tokens=3 is smaller than the longest item"):
        cut_by_budget(np.arange(2), np.array([2, 4]), 3)
    with pytest.raises(UserError, match="fewer than one update's"):
        iterator(update_freq=1000)


def test_the_factory_picks_fixed_batches_for_max_tokens_0_without_asking_for_lengths():
    def no_lengths():
        raise AssertionError("lengths are not needed for fixed batches")

    fixed = batch_iterator_for(Items(LENGTHS), no_lengths, 8, 0, collate, 1, True)
    assert type(fixed) is EpochBatchIterator
    budget = batch_iterator_for(Items(LENGTHS), lambda: LENGTHS, 8, BUDGET, collate, 1, True)
    assert isinstance(budget, TokenBudgetBatchIterator)
    assert "token-budget batches:" in budget.summary() and "padding" in budget.summary()


def test_masked_lm_sample_lengths_count_the_block_and_its_bos():
    class Samples:
        starts, ends = np.array([0, 10, 30]), np.array([10, 30, 31])

    class Subset:
        dataset, indices = Samples(), np.array([2, 0])

    assert sample_lengths(Samples()).tolist() == [11, 21, 2]
    assert sample_lengths(Subset()).tolist() == [2, 11]


# ---- the trainer, fine-tuning, linformer-predict ---------------------------------------------------------------
WORDS = "the film was and its story a plot with some actors scene music long".split()


def write_reviews(path: Path, rows: int, seed: int) -> Path:
    """Reviews of 1 to 26 words (lengths that token budgets group), labelled by their first word."""
    rng = random.Random(seed)
    lines = ["sentence\tlabel"]
    for _ in range(rows):
        positive = rng.random() < 0.5
        words = ["great" if positive else "awful"] + [rng.choice(WORDS) for _ in range(rng.randint(0, 25))]
        lines.append(f"{' '.join(words)}\t{'pos' if positive else 'neg'}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def finetune(tmp_path_factory, cache_dir) -> List[str]:
    folder = tmp_path_factory.mktemp("buckets")
    pretrained = train_tiny_run(folder / "pretrain", cache_dir, ["model.max_positions=64", "task.tokens_per_sample=64"],
                                updates=2)  # fmt: skip
    train, valid = write_reviews(folder / "train.tsv", 40, 1), write_reviews(folder / "dev.tsv", 30, 2)
    return [
        "task=sentence_prediction", "dataset=text", f"dataset.train_files=[{train}]", f"dataset.valid_files=[{valid}]",
        f"checkpoint.finetune_from={pretrained}", "task.tokens_per_sample=64", "model.max_positions=64",
        "dataset.batch_size=8", "dataset.max_tokens=256", "optim.lr=1e-3", "optimization.max_update=12",
        "lr_scheduler.total_num_update=12", "optimization.validate_interval_updates=5", "model.dropout=0.0",
        "logging.progress_bar=false", "logging.tensorboard=false", "logging.log_interval=1", "common.threads=1",
    ]  # fmt: skip


def test_one_batch_and_the_same_examples_in_two_micro_batches_give_the_same_loss_and_gradients(finetune, tmp_path):
    from linformer_pt.tasks.sentence_prediction import collate as collate_examples

    trainer = build_trainer(finetune + ["optimization.clip_norm=0", "model.attention_dropout=0.0"], tmp_path)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.valid_iterator.restart()
    batches = list(trainer.valid_iterator.epoch_iter())
    short, long = batches[0], batches[-1]  # shortest first: many short examples, then few long ones
    assert len(short["targets"]) > 2 * len(long["targets"])  # a per-batch mean would weigh them very differently

    def examples(batch):
        return [(row[~pad].numpy(), label.numpy()) for row, pad, label in
                zip(batch["tokens"], batch["padding_mask"], batch["targets"])]  # fmt: skip

    def one_update(micro_batches):
        """The normalised loss and the gradients the optimizer steps with, from the same initial weights."""
        trainer.model.load_state_dict(initial)
        grads, step = [], trainer.optimizer.step

        def record_then_step(*args, **kwargs):
            grads.append([p.grad.clone() for p in trainer.model.parameters() if p.grad is not None])
            return step(*args, **kwargs)

        trainer.optimizer.step = record_then_step
        stats = trainer.step(micro_batches, 0)
        trainer.optimizer.step = step
        return stats["loss_sum"] / stats["masked"], grads[0]

    loss_one, grads_one = one_update([collate_examples(examples(short) + examples(long), trainer.task.pad_id)])
    loss_two, grads_two = one_update([short, long])
    assert loss_two == pytest.approx(loss_one, rel=1e-5)
    assert len(grads_one) == len(grads_two) > 0
    for a, b in zip(grads_one, grads_two):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fine_tuning_with_a_token_budget_trains_and_resumes_exactly(finetune, tmp_path, monkeypatch, capsys):
    reference = run(compose_config(finetune), tmp_path / "reference")
    out = capsys.readouterr().out
    assert "data train: token-budget batches:" in out and "data valid: token-budget batches:" in out
    records = [json.loads(line) for line in (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert len(train) == 12 and train[-1]["epoch"] > 1  # every update logged; crossed an epoch boundary
    assert all(0 < r["loss"] < 5 for r in train)  # a classifier's finite cross-entropy
    assert reference["final_valid"]["masked"] == 30  # every validation example once
    real_step = Trainer.train_step

    def step_then_sigterm(self, batches):
        stats = real_step(self, batches)
        if self.update == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return stats

    monkeypatch.setattr(Trainer, "train_step", step_then_sigterm)
    with pytest.raises(RunInterrupted):
        run(compose_config(finetune), tmp_path / "stopped")
    monkeypatch.undo()
    run(compose_config(finetune), tmp_path / "stopped")
    compared = ("split", "update", "epoch", "loss", "gnorm", "masked", "accuracy")
    resumed = [json.loads(line) for line in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()]
    assert [{k: r.get(k) for k in compared} for r in resumed] == [{k: r.get(k) for k in compared} for r in records]
    with pytest.raises(UserError, match="max_tokens"):  # another budget cuts other updates: refused
        run(compose_config(finetune + ["dataset.max_tokens=300", "optimization.max_update=14"]), tmp_path / "stopped")


def test_predict_with_max_tokens_returns_the_outputs_of_fixed_batches_in_input_order(finetune, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run(compose_config(finetune + ["optimization.max_update=2", "optimization.validate_interval_updates=0"]), run_dir)
    valid = finetune[3].split("[", 1)[1].rstrip("]")
    rows = {}
    for name, option in (("fixed", ["--batch-size", "7"]), ("budget", ["--max-tokens", "150"])):
        out = tmp_path / f"{name}.jsonl"
        predict_cli.main([str(run_dir), valid, "--out", str(out), "--no-progress", *option])
        rows[name] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows["budget"]] == list(range(30))
    for a, b in zip(rows["fixed"], rows["budget"]):
        assert a["label"] == b["label"]
        np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), rtol=1e-5)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        predict_cli.main([str(run_dir), valid, "--out", str(tmp_path / "x.jsonl"), "--no-progress", "--max-tokens", "5"])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--max-tokens=5 is smaller than the longest item" in err


def test_masked_lm_reads_token_budget_batches_and_linformer_eval_scores_the_same_loss(small_run, tmp_path, capsys):
    from linformer_pt.cli.eval import evaluate, eval_config
    from linformer_pt.hub.export_folder import load_any

    args = small_run + ["task.sample_break_mode=complete_doc", "dataset.max_tokens=512", "optimization.max_update=3",
                        "optimization.validate_interval_updates=0"]  # fmt: skip
    result = run(compose_config(args), tmp_path / "mlm")
    assert "token-budget batches:" in capsys.readouterr().out
    model = load_any(str(tmp_path / "mlm"), True)
    config = eval_config(model, [])  # the run's own validation set, cut by its own dataset.max_tokens
    assert config.dataset.max_tokens == 512
    budget = evaluate(model, config, torch.device("cpu"), progress=False)
    config.dataset.max_tokens = 0  # (an override would name another corpus, scored whole)
    fixed = evaluate(model, config, torch.device("cpu"), progress=False)
    assert budget["masked"] == fixed["masked"] == result["final_valid"]["masked"]
    assert budget["loss"] == pytest.approx(fixed["loss"], rel=1e-5) == pytest.approx(result["final_valid"]["loss"])
    with pytest.raises(UserError, match="dataset.max_tokens=512 needs dataset.streaming=false"):
        run(compose_config(args + ["dataset.streaming=true"]), tmp_path / "streamed")
