"""Write a folder of files so that a crash, kill -9 or full disk never leaves a mix of old and new files.

Exports (model.safetensors + config.json + tokenizer.json + code) are written into a staging folder beside the
target and moved into place only when every file is complete and synced.
"""
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entry to disk (a rename survives a power loss only once its folder is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def staged_folder(folder: Path, marker: str) -> Iterator[Path]:
    """Yield an empty staging folder; when the block ends without error, its files take their places in `folder`.

    A new `folder` is the staging folder renamed: all or nothing. An existing one keeps files the staging folder
    does not hold; for the others, `marker` (the file loaders look for first, e.g. config.json) is removed first
    and put back last. A kill at any moment leaves the old files, the new ones, or a folder without `marker`,
    which loaders call incomplete; never new weights under an old config. On an error the staging folder is
    removed and `folder` is untouched.
    """
    folder = Path(folder).expanduser()
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_stages(folder)
    stage = folder.parent / f".{folder.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)  # our own leftover from an earlier process with this pid
    stage.mkdir()
    try:
        yield stage
        mask = current_umask()
        for path in stage.iterdir():
            # Writers may create files 0600 (safetensors writes through a private temporary file): an export is
            # shared like any file the user writes, so each gets the mode a plain open() would give it.
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
            fsync_path(path)
        if not folder.exists():
            os.rename(stage, folder)
        else:
            move_files(stage, folder, marker)
        fsync_path(folder.parent)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # only still there when something above failed


def current_umask() -> int:
    """The process's umask (os.umask can only be read by setting it: set it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_dead_stages(folder: Path) -> None:
    """Remove the staging folders that killed processes (kill -9, power loss) left beside `folder`.

    A staging folder whose process still runs is another export under way and stays.
    """
    prefix = f".{folder.name}.partial-"  # not a glob: a folder's name may hold [ or *
    for stage in folder.parent.iterdir():
        pid = stage.name[len(prefix):]
        if stage.name.startswith(prefix) and pid.isdigit() and not process_is_alive(int(pid)):
            shutil.rmtree(stage, ignore_errors=True)


def process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def move_files(stage: Path, folder: Path, marker: str) -> None:
    """Replace `folder`'s files by the staged ones, `marker` removed first and put back last."""
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    (folder / marker).unlink(missing_ok=True)
    fsync_path(folder)
    for path in sorted(stage.iterdir(), key=lambda p: p.name == marker):
        os.replace(path, folder / path.name)
    fsync_path(folder)
