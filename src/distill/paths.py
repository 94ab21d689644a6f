"""Where distill keeps files, and how it writes them so that nothing is lost or silent.

- ``cache_root()``: ``$DISTILL_CACHE`` or ``~/.cache/distill``.
- ``atomic_write``: into a temporary file next to the target, flushed and fsynced, then
  renamed over it: a crash leaves the old file or the new one, never half of one.
- ``write_checksums`` / ``verify_checksums``: a folder's files and their SHA-256 in one JSON
  file written last, so a reader can tell a complete, intact folder from a damaged one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

CHECKSUMS_FILE = "checksums.json"


def cache_root() -> Path:
    return Path(os.environ.get("DISTILL_CACHE", Path.home() / ".cache" / "distill"))


def json_digest(value: Any, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``value`` as sorted-key JSON: a
    stable name for settings (store entries, caches, studies)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:length]


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(folder: str | Path) -> None:
    """Make a rename inside ``folder`` durable (where the platform allows it)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """``write(handle)`` into ``path`` atomically: a temporary file, fsynced, renamed."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, mode) as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_dir(path.parent)


def atomic_save(path: str | Path, save: Callable[[Path], None]) -> None:
    """``save(temporary_path)`` (a writer that takes a path, as safetensors' does), then
    fsync and rename it over ``path``."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save(temporary)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_dir(path.parent)


def write_json(path: str | Path, data: Any, indent: int = 1) -> None:
    atomic_write(path, lambda h: h.write(json.dumps(data, indent=indent)), mode="w")


def read_json(path: str | Path, error_type: type[Exception] = ValueError) -> Any:
    """A JSON file; one that does not parse is an ``error_type`` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise error_type(f"{path}: not valid JSON ({error}); delete it and rerun") from None


def write_checksums(folder: str | Path, names: Iterable[str]) -> dict[str, str]:
    """SHA-256 of ``folder``'s files ``names`` (each fsynced first), in ``checksums.json``."""
    folder = Path(folder)
    sums = {}
    for name in sorted(names):
        with open(folder / name, "rb") as handle:
            os.fsync(handle.fileno())
        sums[name] = sha256_file(folder / name)
    write_json(folder / CHECKSUMS_FILE, sums)
    return sums


def verify_checksums(folder: str | Path) -> list[str]:
    """The files of ``folder`` that are missing or differ from ``checksums.json`` (empty:
    intact). A folder without the file has nothing to verify against: ``["checksums.json"]``."""
    folder = Path(folder)
    if not (folder / CHECKSUMS_FILE).exists():
        return [CHECKSUMS_FILE]
    try:
        sums = read_json(folder / CHECKSUMS_FILE)
    except ValueError:
        return [CHECKSUMS_FILE]
    return changed_files(folder, sums)


def changed_files(folder: str | Path, sums: dict[str, str | None]) -> list[str]:
    """The files named in ``sums`` (paths relative to ``folder``) that are missing or whose
    SHA-256 is not the one given."""
    folder = Path(folder)
    return [
        name
        for name, digest in sums.items()
        if not (folder / name).is_file() or sha256_file(folder / name) != digest
    ]
