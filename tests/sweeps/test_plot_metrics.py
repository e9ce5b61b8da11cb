"""scripts/plot_metrics.py: runs labelled by the overrides that differ, a lone point still drawn."""
import importlib.util
import json
from pathlib import Path

from sweep_fixtures import write_run

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "plot_metrics.py"


def load_script():
    spec = importlib.util.spec_from_file_location("plot_metrics", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runs_are_labelled_by_differing_overrides_and_a_single_point_is_drawn(tmp_path):
    plot_metrics = load_script()
    long_run = write_run(tmp_path, "attention=k64", ["experiment=sweep_k", "attention=k64"])
    short_run = tmp_path / "attention=k32"  # started, validated once, trained one logged step: one point per panel
    (short_run / ".hydra").mkdir(parents=True)
    (short_run / ".hydra" / "overrides.yaml").write_text("- experiment=sweep_k\n- attention=k32\n")
    records = [{"split": "valid", "update": 0, "loss": 9.0, "ppl": 8103.1},
               {"split": "train", "update": 10, "loss": 8.9, "lr": 1e-5, "tokens_per_s": 900.0}]  # fmt: skip
    (short_run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    runs = plot_metrics.load_runs([long_run, short_run / "metrics.jsonl"])
    assert list(runs) == ["attention=k64", "attention=k32"]
    out = tmp_path / "curves.png"
    fig = plot_metrics.plot(runs, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for ax in fig.axes:
        lone = [line for line in ax.get_lines() if line.get_label() == "attention=k32"]
        assert len(lone) == 1 and len(lone[0].get_xdata()) == 1 and lone[0].get_marker() == "o", ax.get_title()
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["attention=k64", "attention=k32"]
