"""Teacher-output cache: run an expensive teacher once, train students against its answers.

A cache is a folder::

    layout.json                  what every shard holds (kind, k, dtypes, fingerprint)
    shard-00000.<field>.npy      one file per field per shard (numpy, memory-mappable)
    shard-00000.json             the shard's rows and each file's bytes and SHA-256;
                                 written last, so a shard without it is not done
    manifest.json                all shards, totals and bytes per token; written once
                                 every shard is done

Fields per example: ``example_id`` (int64), ``input_hash`` (a 64-bit BLAKE2 digest of the
model inputs the teacher saw, to catch a cache read against other data), then either
``logits`` (kind ``dense``: float32, exact; for small label spaces) or, for language
models (kind ``topk``), per position the ``ids`` of the k most likely tokens in the
narrowest integer type that holds the vocabulary, their ``logprobs`` (16-bit by default)
and ``tail``, the log of the remaining probability mass (see ``losses.sparse``).

Writing is resumable and parallel: shard files are written to a temporary name and
renamed, the shard's JSON last; a rerun skips finished shards, so a killed job continues
where it stopped, and ``worker=i, workers=n`` builds every n-th shard, so n machines can
fill one folder (or several folders copied together). Reading memory-maps the shards
(several processes share the pages) and checks each shard's SHA-256 the first time it is
touched.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from distill.batch import Batch, as_batch
from distill.errors import CacheError
from distill.outputs import topk_of
from distill.paths import atomic_write, read_json, sha256_file, write_json

FORMAT = "distill-teacher-cache/1"
LAYOUT_FILE = "layout.json"
MANIFEST_FILE = "manifest.json"
LOGPROB_DTYPES = {"float16": np.float16, "float32": np.float32}
Kind = Literal["dense", "topk"]


def narrowest_id_dtype(vocab_size: int) -> np.dtype:
    """The smallest integer type that holds token ids below ``vocab_size``."""
    for dtype in (np.uint8, np.uint16, np.int32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


@dataclass(frozen=True)
class Layout:
    """What a cache holds; two writers of one folder must agree on all of it."""

    kind: Kind
    num_examples: int
    shard_size: int
    k: int | None = None
    temperature: float = 1.0
    vocab_size: int | None = None
    logprob_dtype: str = "float16"
    fingerprint: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    def __post_init__(self) -> None:
        if self.kind not in ("dense", "topk"):
            raise ValueError(f"kind must be 'dense' or 'topk', got {self.kind!r}")
        if self.num_examples < 1 or self.shard_size < 1:
            raise ValueError("a cache needs at least one example and shard_size >= 1")
        if self.kind == "topk" and (not self.k or not self.vocab_size or self.k < 1):
            raise ValueError("a top-k cache needs k >= 1 and vocab_size")
        if self.k is not None and self.vocab_size is not None and self.k > self.vocab_size:
            raise ValueError(f"k={self.k} exceeds the vocabulary of {self.vocab_size}")
        if self.logprob_dtype not in LOGPROB_DTYPES:
            raise ValueError(f"logprob_dtype must be one of {', '.join(LOGPROB_DTYPES)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    @property
    def num_shards(self) -> int:
        return -(-self.num_examples // self.shard_size)

    def shard_rows(self, index: int) -> range:
        return range(index * self.shard_size, min(self.num_examples, (index + 1) * self.shard_size))

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Layout:
        return cls(**data)


def input_hashes(batch: Batch) -> np.ndarray:
    """One 64-bit digest per example of every tensor the model receives (args and kwargs,
    in a fixed order): the cache's check that it is read with the inputs it was built on."""
    tensors = [a for a in batch.args if isinstance(a, Tensor)]
    tensors += [
        batch.kwargs[k] for k in sorted(batch.kwargs) if isinstance(batch.kwargs[k], Tensor)
    ]
    if not tensors:
        raise CacheError("the batch holds no input tensor to fingerprint")
    arrays = [t.detach().cpu().contiguous().numpy() for t in tensors]
    out = np.empty(arrays[0].shape[0], dtype=np.int64)
    for row in range(out.shape[0]):
        digest = hashlib.blake2b(digest_size=8)
        for array in arrays:
            digest.update(array[row].tobytes())
        out[row] = np.frombuffer(digest.digest(), dtype=np.int64)[0]
    return out


class CacheWriter:
    """Writes the shards of one cache folder; safe to run as several workers at once."""

    def __init__(self, folder: str | Path, layout: Layout) -> None:
        self.folder = Path(folder)
        self.layout = layout
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LAYOUT_FILE
        if path.exists():
            existing = read_json(path, CacheError)
            wanted = layout.to_json()
            differ = sorted(k for k in {*existing, *wanted} if existing.get(k) != wanted.get(k))
            if differ:
                details = "; ".join(
                    f"{k}: cache has {existing.get(k)!r}, asked {wanted.get(k)!r}" for k in differ
                )
                raise CacheError(
                    f"{self.folder} holds a cache built differently ({details}); delete the "
                    "folder or write the new cache elsewhere"
                )
        else:
            write_json(path, layout.to_json())

    def shard_file(self, index: int, name: str) -> Path:
        return self.folder / f"shard-{index:05d}.{name}.npy"

    def done(self) -> set[int]:
        """Shards whose JSON (written last) exists."""
        return {
            int(p.name[6:11])
            for p in self.folder.glob("shard-*.json")
            if int(p.name[6:11]) < self.layout.num_shards
        }

    def todo(self, worker: int = 0, workers: int = 1) -> list[int]:
        """This worker's shards (every ``workers``-th, from ``worker``) not yet done."""
        if not 0 <= worker < workers:
            raise ValueError(f"worker must be in [0, {workers}), got {worker}")
        done = self.done()
        return [i for i in range(worker, self.layout.num_shards, workers) if i not in done]

    def write_shard(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        rows = len(self.layout.shard_rows(index))
        files = {}
        for name, array in arrays.items():
            if array.shape[0] != rows:
                raise CacheError(f"shard {index}: {name} has {array.shape[0]} rows, not {rows}")
            path = self.shard_file(index, name)
            atomic_write(path, lambda h, a=array: np.save(h, np.ascontiguousarray(a)))
            files[name] = {
                "file": path.name,
                "sha256": sha256_file(path),
                "bytes": path.stat().st_size,
                "payload_bytes": int(array.nbytes),
                "dtype": str(array.dtype),
                "shape": list(array.shape),
            }
        write_json(
            self.folder / f"shard-{index:05d}.json", {"index": index, "rows": rows, "files": files}
        )

    def finalize(self) -> dict[str, Any] | None:
        """Write ``manifest.json`` once every shard is done; the manifest, or None."""
        if len(self.done()) < self.layout.num_shards:
            return None
        shards = [
            json.loads((self.folder / f"shard-{i:05d}.json").read_text())
            for i in range(self.layout.num_shards)
        ]
        total = sum(f["bytes"] for s in shards for f in s["files"].values())
        manifest: dict[str, Any] = {**self.layout.to_json(), "shards": shards, "bytes": total}
        first = shards[0]["files"]["logits" if self.layout.kind == "dense" else "ids"]["shape"]
        positions = int(np.prod(first[1:-1])) if len(first) > 2 else 1
        manifest["positions_per_example"] = positions
        payload = [f for s in shards for n, f in s["files"].items() if n not in KEY_FIELDS]
        manifest["bytes_per_token" if len(first) > 2 else "bytes_per_example"] = sum(
            f["payload_bytes"] for f in payload
        ) / (self.layout.num_examples * positions)
        manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json(self.folder / MANIFEST_FILE, manifest)
        return manifest


KEY_FIELDS = ("example_id", "input_hash")


def damaged_shards(folder: str | Path) -> list[int]:
    """The finished shards of ``folder`` whose files are missing or differ from the sizes
    and SHA-256 their shard JSON recorded."""
    bad = []
    for marker in sorted(Path(folder).glob("shard-*.json")):
        try:
            files = json.loads(marker.read_text())["files"]
        except (ValueError, KeyError):
            bad.append(int(marker.name[6:11]))
            continue
        for meta in files.values():
            path = Path(folder) / meta["file"]
            if (
                not path.is_file()
                or path.stat().st_size != meta["bytes"]
                or (sha256_file(path) != meta["sha256"])
            ):
                bad.append(int(marker.name[6:11]))
                break
    return bad


def discard_shards(folder: str | Path, shards: list[int]) -> None:
    """Forget ``shards`` (and the manifest), so the next build writes them again."""
    folder = Path(folder)
    (folder / MANIFEST_FILE).unlink(missing_ok=True)
    for index in shards:
        for path in folder.glob(f"shard-{index:05d}.*"):
            path.unlink()


def finalize_cache(folder: str | Path) -> dict[str, Any] | None:
    """Write the manifest of a cache whose shards are all done (None if some are missing):
    for workers of one launch, once they have all finished."""
    layout = Layout.from_json(read_json(Path(folder) / LAYOUT_FILE, CacheError))
    return CacheWriter(folder, layout).finalize()


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


def example_ids(batch: Batch) -> np.ndarray:
    ids = batch.meta.get("example_id")
    if ids is None:
        raise CacheError(
            "the batches carry no example_id; yield it from the dataset (a dict key "
            "'example_id', or the metadata dict of (inputs, labels, meta)), e.g. with "
            "distill.data.WithExampleId(dataset)"
        )
    return ids.detach().cpu().numpy().astype(np.int64)


def teacher_arrays(logits: Tensor, layout: Layout) -> dict[str, np.ndarray]:
    """What a cache stores of one batch of teacher logits."""
    if layout.kind == "dense":
        return {"logits": logits.detach().float().cpu().numpy()}
    assert layout.k is not None and layout.vocab_size is not None
    if logits.shape[-1] < layout.vocab_size:
        raise CacheError(
            f"the teacher returns {logits.shape[-1]} logits, the cache's vocabulary is "
            f"{layout.vocab_size}"
        )
    target = topk_of(logits[..., : layout.vocab_size], layout.k, layout.temperature)
    dtype = LOGPROB_DTYPES[layout.logprob_dtype]
    return {
        "ids": target.ids.cpu().numpy().astype(narrowest_id_dtype(layout.vocab_size)),
        "logprobs": target.logprobs.cpu().numpy().astype(dtype),
        "tail": target.tail.cpu().numpy().astype(dtype),
    }


def build_cache(
    teacher: Callable[[Batch], Any],
    dataset: Dataset,
    folder: str | Path,
    layout: Layout,
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    worker: int = 0,
    workers: int = 1,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run ``teacher`` (a ``distill.teachers`` teacher) over ``dataset`` and write this
    worker's missing shards; returns what it did and, once all shards are done, the
    manifest. ``dataset`` items must carry an ``example_id``. Rerun to resume."""

    if len(dataset) != layout.num_examples:  # type: ignore[arg-type]
        raise CacheError(
            f"the dataset has {len(dataset)} examples, the cache layout "  # type: ignore[arg-type]
            f"{layout.num_examples}"
        )
    writer = CacheWriter(folder, layout)
    todo = writer.todo(worker, workers)
    examples = sum(len(layout.shard_rows(i)) for i in todo)
    started = time.perf_counter()
    columns = (
        TextColumn("[bold]cache"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("<"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("cache", total=examples)
        for index in todo:
            rows = layout.shard_rows(index)
            loader = DataLoader(Subset(dataset, list(rows)), batch_size=batch_size)
            parts: dict[str, list[np.ndarray]] = {}
            for raw in loader:
                batch = as_batch(raw).to(torch.device(device))
                output = teacher(batch)
                if output.logits is None:
                    raise CacheError("the teacher returned no logits to cache")
                arrays = {
                    "example_id": example_ids(batch),
                    "input_hash": input_hashes(batch),
                    **teacher_arrays(output.logits, layout),
                }
                for name, array in arrays.items():
                    parts.setdefault(name, []).append(array)
                bar.advance(task, batch.size())
            writer.write_shard(index, {n: np.concatenate(a) for n, a in parts.items()})
    seconds = time.perf_counter() - started
    manifest = writer.finalize()
    skipped = layout.num_shards - len(todo)
    log(
        f"cache {writer.folder}: wrote {len(todo)} shard(s) ({examples:,} examples, "
        f"{seconds:.1f} s), {len(writer.done())}/{layout.num_shards} done"
        + (", manifest written" if manifest else "")
    )
    return {
        "folder": str(writer.folder),
        "written_shards": todo,
        "examples": examples,
        "seconds": seconds,
        "skipped_shards": skipped if workers == 1 else None,
        "manifest": manifest,
    }
