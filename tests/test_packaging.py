"""A regular (non-editable) install carries the Hydra configs: compose works from the installed wheel alone."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import linformer_pt, linformer_pt.models, linformer_pt.tasks, linformer_pt.training
from hydra import compose, initialize_config_module
with initialize_config_module(config_module="linformer_pt.configs", version_base="1.3"):
    cfg = compose(config_name="train", overrides=["model=linformer_base", "experiment=smoke"])
print(linformer_pt.__file__)
print(cfg.model.k, cfg.optimization.max_update)
"""


@pytest.mark.slow
def test_wheel_ships_configs_and_composes(tmp_path):
    source, wheels, target = tmp_path / "src", tmp_path / "wheels", tmp_path / "site"
    # Build from a copy: setuptools leaves a build/ folder in the tree it builds.
    source.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("linformer_pt", "configs"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    wheel = next(wheels.glob("linformer_pt-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tmp_path, env={"PYTHONPATH": str(target)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    installed_at, values = result.stdout.split("\n")[:2]
    assert installed_at.startswith(str(target))
    configs = target / "linformer_pt" / "configs"
    shipped = sorted(str(p.relative_to(configs)) for p in configs.rglob("*.yaml"))
    expected = sorted(str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob("*.yaml"))
    assert shipped == expected  # every config group, nested ones (hydra/launcher) included
    assert values == "16 20"  # experiment=smoke overrides the base preset's k and max_update
