"""Validation on a budget: a fixed seeded subset of samples, the same on any process count; no validation at start."""
import json

from conftest import compose_config

from linformer_pt.cli.train import run
from linformer_pt.config import load_config
from linformer_pt.tasks.masked_lm import MaskedLMTask, ValidSubset


def valid_indices(task: MaskedLMTask, world_size: int) -> list:
    """Indices into the full validation set of the samples all ranks read, in reading order."""
    seen = []
    for rank in range(world_size):
        iterator = task.batch_iterator("valid", rank, world_size)
        for step in iterator._steps(1):
            seen += [int(iterator.dataset.indices[i]) for i in iterator._micro_batches(step)[0]]
    return seen


def test_the_valid_subset_is_the_same_for_one_and_two_processes_and_every_run(tiny_overrides, capsys):
    cfg = load_config(compose_config(tiny_overrides + ["dataset.max_valid_tokens=3000"]))
    task = MaskedLMTask(cfg)
    one, two = valid_indices(task, 1), valid_indices(task, 2)
    assert sorted(one) == sorted(two) and len(set(one)) == len(one)  # each sample once, none lost or added
    assert valid_indices(MaskedLMTask(cfg), 1) == one  # a fresh run chooses the same samples
    subset = task.batch_iterator("valid").dataset
    full = task.dataset("valid")
    assert isinstance(subset, ValidSubset) and len(subset) < len(full)
    assert 3000 <= subset.num_tokens < 3000 + cfg.task.tokens_per_sample  # just past the budget
    assert subset[0]["targets"].tolist() == full[one[0]]["targets"].tolist()  # the full set's samples
    assert sorted(one) != list(range(len(one)))  # spread over the set, not its first samples
    whole = MaskedLMTask(load_config(compose_config(tiny_overrides + ["dataset.max_valid_tokens=0"])))
    assert len(whole.batch_iterator("valid").dataset) == len(full)
    task.batch_iterator("train")
    out = capsys.readouterr().out
    assert "data valid:" in out and "validating on" in out and "data train:" in out and "epochs" in out


def test_validate_at_start_false_skips_the_update_0_validation(tiny_overrides, tmp_path, capsys):
    overrides = tiny_overrides + ["optimization.max_update=2", "optimization.validate_at_start=false"]
    summary = run(compose_config(overrides), tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in records if r["split"] == "valid"] == [2]
    assert summary["first_valid"] == {} and summary["final_valid"]["loss"] > 0
    done = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("done:"))
    assert f"valid loss {summary['final_valid']['loss']:.3f} (ppl" in done


def streamed_valid_rows(task: MaskedLMTask, world_size: int) -> list:
    """Every validation sample all ranks read (its input ids, masks applied, then its masked targets), sorted."""
    rows = []
    for rank in range(world_size):
        iterator = task.batch_iterator("valid", rank, world_size)
        iterator.restart()  # as Trainer.validate
        for batch in iterator.epoch_iter():
            masked_rows = batch["masked_positions"].nonzero()[:, 0].tolist()  # row of each target, row-major
            targets = batch["targets"].tolist()
            for row, (tokens, pad) in enumerate(zip(batch["tokens"], batch["padding_mask"])):
                mine = [t for t, r in zip(targets, masked_rows) if r == row]
                rows.append((tuple(tokens[~pad].tolist()), tuple(mine)))
    return sorted(rows)


def streaming_task(tiny_overrides, corpus_files, *extra: str) -> MaskedLMTask:
    files = [f"dataset.train_files=[{corpus_files['train']}]", f"dataset.valid_files=[{corpus_files['valid']}]"]
    return MaskedLMTask(load_config(compose_config(tiny_overrides + ["dataset=text", "dataset.streaming=true",
                                                                     *files, *extra])))  # fmt: skip


def test_streamed_validation_honours_the_budget_for_any_process_and_worker_count(tiny_overrides, corpus_files, capsys):
    budget = ["dataset.max_valid_tokens=2000"]
    one = streamed_valid_rows(streaming_task(tiny_overrides, corpus_files, *budget), 1)
    tokens = sum(len(tokens) for tokens, _ in one)
    n = load_config(compose_config(tiny_overrides)).task.tokens_per_sample
    assert 2000 <= tokens < 2000 + n  # just past the budget, as ValidSubset
    assert streamed_valid_rows(streaming_task(tiny_overrides, corpus_files, *budget), 1) == one  # every validation
    assert streamed_valid_rows(streaming_task(tiny_overrides, corpus_files, *budget), 2) == one  # two processes
    workers = streaming_task(tiny_overrides, corpus_files, *budget, "dataset.num_workers=2")
    assert streamed_valid_rows(workers, 1) == one and streamed_valid_rows(workers, 2) == one
    assert "validating on the first ~2,000 tokens of the stream" in capsys.readouterr().out
    whole = streaming_task(tiny_overrides, corpus_files, "dataset.max_valid_tokens=0", "dataset.num_workers=2")
    all_rows = streamed_valid_rows(whole, 1)
    assert sum(len(tokens) for tokens, _ in all_rows) > 10 * tokens
    assert streamed_valid_rows(whole, 2) == all_rows  # the masks do not depend on the process count either
