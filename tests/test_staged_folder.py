"""staged_folder: a folder of files replaced so that no crash point leaves new files under an old marker."""
import os
import subprocess
import sys

import pytest

from linformer_pt import staged_folder as staged

OLD = {"config.json": "old config", "model.safetensors": "old weights", "tokenizer.json": "old tokenizer"}
NEW = {"config.json": "new config", "model.safetensors": "new weights", "tokenizer.json": "new tokenizer",
       "modeling_linformer.py": "new code"}  # fmt: skip


def write(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def contents(folder):
    return {p.name: p.read_text() for p in folder.iterdir()}


def leftovers(parent):
    return [p.name for p in parent.iterdir() if ".partial-" in p.name]


def export(folder):
    with staged.staged_folder(folder, "config.json") as stage:
        write(stage, NEW)


def test_a_new_folder_appears_whole(tmp_path):
    export(tmp_path / "deep" / "out")
    assert contents(tmp_path / "deep" / "out") == NEW and leftovers(tmp_path / "deep") == []


def test_an_error_while_staging_leaves_no_folder_and_no_staging(tmp_path):
    with pytest.raises(OSError):
        with staged.staged_folder(tmp_path / "out", "config.json") as stage:
            (stage / "model.safetensors").write_text("half")
            raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_keeps_the_users_files(tmp_path):
    write(tmp_path / "out", {**OLD, "notes.txt": "mine"})
    export(tmp_path / "out")
    assert contents(tmp_path / "out") == {**NEW, "notes.txt": "mine"} and leftovers(tmp_path) == []


@pytest.mark.parametrize("crash_at", range(len(NEW)))
def test_a_crash_at_any_move_never_leaves_new_files_under_the_old_marker(tmp_path, monkeypatch, crash_at):
    write(tmp_path / "out", {**OLD, "notes.txt": "mine"})
    moves = []
    real_replace = os.replace

    def replace(src, dst):
        if len(moves) == crash_at:
            raise KeyboardInterrupt  # stands for a kill between two renames
        moves.append(os.path.basename(dst))
        real_replace(src, dst)

    monkeypatch.setattr(staged.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        export(tmp_path / "out")
    found = contents(tmp_path / "out")
    assert found["notes.txt"] == "mine"
    assert "config.json" not in found  # removed before the first move, put back only by the last
    assert "config.json" not in moves
    for name in moves:
        assert found[name] == NEW[name]
    assert leftovers(tmp_path) == []


def test_the_marker_moves_last(tmp_path, monkeypatch):
    write(tmp_path / "out", OLD)
    moves = []
    real_replace = os.replace

    def replace(src, dst):
        moves.append(os.path.basename(dst))
        real_replace(src, dst)

    monkeypatch.setattr(staged.os, "replace", replace)
    export(tmp_path / "out")
    assert moves[-1] == "config.json" and sorted(moves) == sorted(NEW)


def test_staging_left_by_a_killed_process_is_removed_and_a_live_ones_is_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "print(__import__('os').getpid())"], capture_output=True, text=True)
    dead_pid = dead.stdout.strip()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write(tmp_path / f".out.partial-{dead_pid}", {"model.safetensors": "half"})  # its process is gone
        write(tmp_path / f".out.partial-{live.pid}", {"model.safetensors": "under way"})  # an export still running
        write(tmp_path / f".other.partial-{dead_pid}", {"model.safetensors": "another folder's"})
        export(tmp_path / "out")
        assert sorted(leftovers(tmp_path)) == sorted([f".out.partial-{live.pid}", f".other.partial-{dead_pid}"])
        assert contents(tmp_path / "out") == NEW
    finally:
        live.kill()
        live.wait()
