"""The line a stopped run ends with: a single run is resumed by naming its folder, a --multirun job by its sweep."""
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict

from linformer_pt.training.signals import interrupted_message, multirun_sweep_dir

RUN = Path("/runs/multirun/sweep_k/attention=k256")


def test_a_single_run_is_resumed_by_naming_its_folder():
    assert interrupted_message("SIGTERM", 389, RUN, None) == (
        f"SIGTERM: interrupted at update 389; checkpoint written; rerun to resume (the same command with "
        f"hydra.run.dir={RUN})"
    )


def test_a_multirun_job_is_resumed_by_rerunning_its_sweep():
    message = interrupted_message("SIGTERM", 389, RUN, RUN.parent)
    assert message.startswith("SIGTERM: interrupted at update 389; checkpoint written; rerun to resume")
    assert "the same --multirun command" in message and f"hydra.sweep.dir={RUN.parent}" in message
    assert "finished runs are skipped" in message and f"resumes from {RUN}" in message
    assert "hydra.run.dir" not in message and "\n" not in message


def hydra_job_config(mode: RunMode, sweep_dir: Path):
    """train.yaml with its `hydra` node as Hydra sets it for a running job (HydraConfig.get() reads it)."""
    with initialize_config_module(config_module="linformer_pt.configs", version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = mode
        cfg.hydra.sweep.dir = str(sweep_dir)
    return cfg


def test_the_run_mode_is_read_from_hydra(tmp_path, monkeypatch):
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # restored after the test
    assert multirun_sweep_dir() is None  # no Hydra app running (the Python API, tests): a single run

    HydraConfig.instance().set_config(hydra_job_config(RunMode.RUN, tmp_path / "sweep"))
    assert multirun_sweep_dir() is None

    HydraConfig.instance().set_config(hydra_job_config(RunMode.MULTIRUN, tmp_path / "sweep"))
    assert multirun_sweep_dir() == tmp_path / "sweep"

    HydraConfig.instance().set_config(hydra_job_config(RunMode.MULTIRUN, Path("multirun/sweep_k")))
    assert multirun_sweep_dir() == Path.cwd() / "multirun/sweep_k"  # absolute: the advice holds from any folder
