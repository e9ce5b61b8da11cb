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
from typing import Any, Callable, Dict, Union

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
    """
    if (final / MANIFEST).exists() and read_manifest(final).get("spec") == json.loads(json.dumps(spec)):
        return final
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


def read_manifest(folder: Union[str, Path]) -> Dict[str, Any]:
    with open(Path(folder) / MANIFEST, encoding="utf-8") as f:
        return json.load(f)


def write_json_atomic(path: Union[str, Path], obj: Any) -> None:
    """Write JSON through a temporary file, fsync and rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
