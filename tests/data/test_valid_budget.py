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
