"""Reading a finished teacher cache: memory-mapped shards, each checked against its
SHA-256 the first time it is touched, rows looked up by example id."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from distill.cache.layout import FORMAT, LAYOUT_FILE, MANIFEST_FILE, Layout
from distill.errors import CacheError
from distill.paths import read_json, sha256_file


def read_manifest(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.exists():
        if (folder / LAYOUT_FILE).exists():
            layout = Layout.from_json(read_json(folder / LAYOUT_FILE, CacheError))
            done = len(list(folder.glob("shard-*.json")))
            raise CacheError(
                f"{folder}: the cache is incomplete ({done} of {layout.num_shards} shards); "
                "run `distill cache` again to finish it (finished shards are kept)"
            )
        raise CacheError(f"{folder} holds no teacher cache (no {MANIFEST_FILE}); build it first")
    manifest = read_json(path, CacheError)
    if manifest.get("format") != FORMAT:
        raise CacheError(f"{path}: format {manifest.get('format')!r}, this distill reads {FORMAT}")
    return manifest


class CacheReader:
    """Memory-mapped rows of a finished cache, looked up by example id."""

    def __init__(self, folder: str | Path, verify: bool = True) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        fields = {k: v for k, v in self.manifest.items() if k in Layout.__dataclass_fields__}
        self.layout = Layout.from_json(fields)
        self.verify = verify
        self._maps: dict[tuple[int, str], np.ndarray] = {}
        for shard in self.manifest["shards"]:
            marker = self.folder / f"shard-{shard['index']:05d}.json"
            for meta in shard["files"].values():
                path = self.folder / meta["file"]
                if not path.exists() or path.stat().st_size != meta["bytes"]:
                    raise CacheError(
                        f"{path}: missing or of the wrong size (expected {meta['bytes']} bytes); "
                        f"delete {marker} and "
                        "manifest.json, then run `distill cache` again to rebuild that shard"
                    )
        ids = [self._field(i, "example_id") for i in range(self.layout.num_shards)]
        all_ids = np.concatenate(ids)
        self._order = np.argsort(all_ids, kind="stable")
        self._sorted_ids = all_ids[self._order]
        if len(np.unique(self._sorted_ids)) != len(all_ids):
            raise CacheError(f"{self.folder}: an example id appears twice in the cache")

    @property
    def fields(self) -> list[str]:
        return list(self.manifest["shards"][0]["files"])

    def _field(self, index: int, name: str) -> np.ndarray:
        """One field of one shard, memory-mapped; its checksum verified on first use."""
        key = (index, name)
        if key not in self._maps:
            meta = self.manifest["shards"][index]["files"][name]
            path = self.folder / meta["file"]
            if self.verify and sha256_file(path) != meta["sha256"]:
                raise CacheError(
                    f"{path}: checksum mismatch, the file changed or is corrupt; delete "
                    f"{self.folder / f'shard-{index:05d}.json'} and manifest.json, then run "
                    "`distill cache` again to rebuild that shard"
                )
            self._maps[key] = np.load(path, mmap_mode="r")
        return self._maps[key]

    def __len__(self) -> int:
        return self.layout.num_examples

    def rows(self, example_ids: Iterable[int]) -> dict[str, np.ndarray]:
        """Every field for ``example_ids``, in that order (copied out of the maps)."""
        wanted = np.asarray(
            list(example_ids) if not isinstance(example_ids, np.ndarray) else example_ids,
            dtype=np.int64,
        )
        where = np.searchsorted(self._sorted_ids, wanted)
        where = np.clip(where, 0, len(self._sorted_ids) - 1)
        missing = wanted[self._sorted_ids[where] != wanted]
        if missing.size:
            raise CacheError(
                f"example ids {missing[:5].tolist()} are not in the cache {self.folder} "
                f"({missing.size} of {wanted.size} missing); build it over the same data"
            )
        flat = self._order[where]  # position in shard order
        shard, row = np.divmod(flat, self.layout.shard_size)
        out: dict[str, np.ndarray] = {}
        for index in np.unique(shard):
            picked = shard == index
            for name in self.fields:
                array = self._field(int(index), name)
                if name not in out:
                    out[name] = np.empty((wanted.size, *array.shape[1:]), dtype=array.dtype)
                out[name][picked] = array[row[picked]]
        return out
