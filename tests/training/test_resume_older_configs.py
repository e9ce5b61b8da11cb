"""A checkpoint written before a config field existed resumes: the missing field counts as its default."""
import pytest
from conftest import build_trainer

from linformer_pt.errors import UserError
from linformer_pt.training.checkpoint import load_checkpoint
from linformer_pt.training.resume import check_compatible

NEW_FIELDS = {"dataset": ["max_tokens", "sources", "temperature", "valid_sets"], "checkpoint": ["best_valid_set"]}


def test_fields_added_since_a_checkpoint_count_as_their_defaults(small_run, tmp_path):
    trainer = build_trainer([*small_run, "optimization.max_update=1", "checkpoint.async_save=false"], tmp_path / "run")
    state = load_checkpoint(trainer.save())
    for section, keys in NEW_FIELDS.items():
        for key in keys:
            del state["cfg"][section][key]  # as an older version wrote it
    check_compatible(state, trainer.cfg, trainer.provenance, 1, tmp_path / "old.pt")  # no refusal
    trainer.cfg.dataset.max_tokens = 4096  # ...but a value other than the default is a change
    with pytest.raises(UserError, match=r"dataset.max_tokens=0 in the checkpoint, 4096 now"):
        check_compatible(state, trainer.cfg, trainer.provenance, 1, tmp_path / "old.pt")
