"""Content-keyed cache folders, built atomically.

A folder `<root>/<name>-<key>` is complete only once its manifest.json exists; it is built under a temporary
name and renamed into place, so an interrupted build is never mistaken for a finished one.
"""
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

from linformer_pt.errors import UserError

MANIFEST = "manifest.json"


def sha256_file(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def key_of(spec: Dict[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable description of what a cache entry was built from."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def cached_dir(root: Union[str, Path], name: str, spec: Dict[str, Any], build: Callable[[Path], Dict]) -> Path:
    """Return the complete cache folder for `spec`, calling build(tmp_folder) -> manifest extras if absent."""
    return build_folder(Path(root) / f"{name}-{key_of(spec)}", spec, build)


def build_folder(final: Path, spec: Dict[str, Any], build: Callable[[Path], Dict]) -> Path:
    """Make `final` hold what build() writes for `spec`; reuse it when its manifest has the same spec.

    build() writes into a temporary sibling folder, which replaces `final` only once complete: an interrupted or
    failed build leaves any earlier `final` untouched, and a half-built folder is never taken for a finished one.
    Only a folder built here (its manifest has a spec) or an empty one is replaced: anything else may be the
    user's own files (output=data would otherwise wipe data/), so it is refused and left as it was.
    """
    manifest = _own_manifest(final)
    if manifest is not None and manifest.get("spec") == json.loads(json.dumps(spec)):
        return final
    check_replaceable(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    try:
        extras = build(tmp)
        write_json_atomic(tmp / MANIFEST, {"spec": spec, **extras})
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return final


def check_replaceable(folder: Path, key: str = "") -> None:
    """UserError unless `folder` is absent, empty, or built by build_folder: never replace what we did not write."""
    if _own_manifest(folder) is None and (folder.is_file() or (folder.is_dir() and any(folder.iterdir()))):
        raise UserError(
            f"{key}{folder} already holds files and is not a folder this tool built (no {MANIFEST} with a spec); "
            "refusing to replace it: choose a new or empty folder"
        )


def _own_manifest(folder: Path) -> Optional[Dict[str, Any]]:
    """The manifest of a folder build_folder wrote (a JSON object with a spec), else None."""
    try:
        manifest = read_manifest(folder)
    except (OSError, ValueError):  # no folder, no manifest, or not JSON: not ours
        return None
    return manifest if isinstance(manifest, dict) and "spec" in manifest else None


def read_manifest(folder: Union[str, Path]) -> Dict[str, Any]:
    with open(Path(folder) / MANIFEST, encoding="utf-8") as f:
        return json.load(f)


def write_json_atomic(path: Union[str, Path], obj: Any) -> None:
    """Write JSON through a temporary file, fsync and rename, so readers never see half a file.

    On failure (a full disk: OSError) the temporary file is removed and the previous file at `path` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there when something above failed
