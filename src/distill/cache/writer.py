"""Writing a teacher cache: shards written atomically, the shard's JSON last, so a rerun
skips what is done; several workers can fill one folder."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from distill.batch import Batch, as_batch
from distill.cache.compact import encode_topk
from distill.cache.layout import (
    HEAD_FILE,
    KEY_FIELDS,
    LAYOUT_FILE,
    LOGPROB_DTYPES,
    MANIFEST_FILE,
    Layout,
    example_ids,
    input_hashes,
    narrowest_id_dtype,
)
from distill.errors import CacheError
from distill.outputs import TeacherOutput, topk_of
from distill.paths import atomic_save, atomic_write, read_json, sha256_file, write_json


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

    def write_head(self, head: nn.Module) -> None:
        """Keep the teacher's LM head once (``head.safetensors``: ``weight`` and any
        ``bias``), for a hidden-state cache; the same head is required of every writer."""
        tensors = {"weight": head.weight.detach().float().cpu().contiguous()}
        if getattr(head, "bias", None) is not None:
            tensors["bias"] = head.bias.detach().float().cpu().contiguous()
        path = self.folder / HEAD_FILE
        if path.is_file():
            stored = load_file(path)
            same = stored.keys() == tensors.keys() and all(
                torch.equal(stored[k], tensors[k]) for k in tensors
            )
            if not same:
                raise CacheError(f"{path}: holds another LM head; write this cache elsewhere")
            return
        atomic_save(path, lambda target: save_file(tensors, str(target)))

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
        named = shards[0]["files"]
        first = named[next(n for n in named if n not in KEY_FIELDS)]["shape"]
        positions = int(np.prod(first[1:-1])) if len(first) > 2 else 1
        manifest["positions_per_example"] = positions
        payload = [f for s in shards for n, f in s["files"].items() if n not in KEY_FIELDS]
        manifest["bytes_per_token" if len(first) > 2 else "bytes_per_example"] = sum(
            f["payload_bytes"] for f in payload
        ) / (self.layout.num_examples * positions)
        if self.layout.kind == "topk":
            manifest["bytes_per_entry"] = manifest["bytes_per_token"] / self.layout.k
        head = self.folder / HEAD_FILE
        if self.layout.kind == "hidden":
            if not head.is_file():
                raise CacheError(f"{self.folder}: a hidden-state cache without its {HEAD_FILE}")
            manifest["head"] = {
                "file": HEAD_FILE,
                "sha256": sha256_file(head),
                "bytes": head.stat().st_size,
            }
        manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json(self.folder / MANIFEST_FILE, manifest)
        return manifest


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


def teacher_arrays(output: TeacherOutput, layout: Layout) -> dict[str, np.ndarray]:
    """What a cache stores of one batch of teacher answers: dense logits, or the top-k of
    the logits, or a top-k the teacher gave itself (a served teacher), which must hold
    ``layout.k`` entries at the layout's temperature."""
    if layout.kind == "hidden":
        if len(output.features) != 1:
            raise CacheError("a hidden-state cache needs the teacher's one tap of final states")
        hidden = next(iter(output.features.values())).detach().float().cpu().numpy()
        if hidden.shape[-1] != layout.hidden_size or not np.isfinite(hidden).all():
            raise CacheError(
                f"final hidden states of shape {hidden.shape}, not finite or not "
                f"of hidden_size {layout.hidden_size}"
            )
        stored = hidden.astype(np.float16)
        if not np.isfinite(stored).all():
            raise CacheError("final hidden states beyond float16's range; cache top-k instead")
        return {"hidden": stored}
    if output.topk is not None and output.logits is None:
        target = output.topk
        if layout.kind != "topk" or target.ids.shape[-1] != layout.k:
            raise CacheError(
                f"the teacher answers with its top {target.ids.shape[-1]} tokens; the cache "
                f"wants {'dense logits' if layout.kind == 'dense' else f'the top {layout.k}'}"
            )
        if abs(target.temperature - layout.temperature) > 1e-6:
            raise CacheError(
                f"the teacher answers at temperature {target.temperature:g}, the cache is "
                f"built at {layout.temperature:g}"
            )
    elif output.logits is None:
        raise CacheError("the teacher returned no logits to cache")
    elif layout.kind == "dense":
        return {"logits": output.logits.detach().float().cpu().numpy()}
    else:
        logits = output.logits
        assert layout.k is not None and layout.vocab_size is not None
        if logits.shape[-1] < layout.vocab_size:
            raise CacheError(
                f"the teacher returns {logits.shape[-1]} logits, the cache's vocabulary is "
                f"{layout.vocab_size}"
            )
        target = topk_of(logits[..., : layout.vocab_size], layout.k, layout.temperature)
    assert layout.vocab_size is not None
    if layout.encoding == "compact":
        return encode_topk(target, layout.vocab_size, layout.curve_degree, layout.residual_bits)
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
    head: nn.Module | None = None,
) -> dict[str, Any]:
    """Run ``teacher`` (a ``distill.teachers`` teacher) over ``dataset`` and write this
    worker's missing shards; returns what it did and, once all shards are done, the
    manifest. ``dataset`` items must carry an ``example_id``. Rerun to resume. A
    hidden-state cache (``kind="hidden"``) takes a teacher tapped at its final hidden
    states (``teachers.Module(model, taps=[final_hidden_tap(model)])``) and its LM ``head``.
    """

    if len(dataset) != layout.num_examples:  # type: ignore[arg-type]
        raise CacheError(
            f"the dataset has {len(dataset)} examples, the cache layout "  # type: ignore[arg-type]
            f"{layout.num_examples}"
        )
    writer = CacheWriter(folder, layout)
    if layout.kind == "hidden":
        if head is None:
            raise CacheError("a hidden-state cache keeps the teacher's LM head: pass head=")
        writer.write_head(head)
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
                arrays = {
                    "example_id": example_ids(batch),
                    "input_hash": input_hashes(batch),
                    **teacher_arrays(teacher(batch), layout),
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
