"""Fashion-MNIST from its IDX gzip files.

Where the files are looked for, in order: an explicit path, ``$DISTILL_DATA`` (the folder
itself or its ``fashion-mnist`` subfolder), ``/usr/share/datasets/fashion-mnist`` (Debian's
``dataset-fashion-mnist``), then the download cache ``~/.cache/distill/fashion-mnist``;
when none has them, they are downloaded from the official source and checked against the
official MD5 sums. Offline, the error says where to put the files.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from distill.errors import DataError
from distill.paths import cache_root

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
OFFICIAL_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
SOURCE = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MEAN, STD = 0.2860, 0.3530

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not) into an array of its stated shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:  # truncated or not gzip
        raise DataError(
            f"{path}: damaged ({error or type(error).__name__}); delete it and get it again "
            "(distill downloads Fashion-MNIST again when it may)"
        ) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_DTYPES[data[2]])
    body = data[4 + 4 * ndim :]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(body) != expected:
        raise DataError(f"{path}: header says {shape} ({expected} bytes), file has {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def _has_files(folder: Path) -> bool:
    return all((folder / name).exists() for name in FILES.values())


def _candidates() -> list[Path]:
    found = []
    if os.environ.get("DISTILL_DATA"):
        root = Path(os.environ["DISTILL_DATA"])
        found += [root, root / "fashion-mnist"]
    found += [SYSTEM_DIR, cache_dir()]
    return found


def cache_dir() -> Path:
    return cache_root() / "fashion-mnist"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def download(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, md5 in OFFICIAL_MD5.items():
        target = folder / name
        if target.exists() and _md5(target) == md5:
            continue
        partial = target.with_suffix(".part")
        urllib.request.urlretrieve(SOURCE + name, partial)
        if _md5(partial) != md5:
            partial.unlink()
            raise DataError(f"downloaded {name} does not match its official MD5 {md5}")
        partial.rename(target)


def locate(path: str | Path | None = None, allow_download: bool = True) -> Path:
    """The folder holding the four Fashion-MNIST files (see the module docstring); an
    explicit ``path`` is the only place looked at."""
    if path is not None:
        if _has_files(Path(path)):
            return Path(path)
        raise FileNotFoundError(
            f"data.path={path} does not hold the Fashion-MNIST files {sorted(FILES.values())}"
        )
    for folder in _candidates():
        if _has_files(folder):
            return folder
    if allow_download:
        try:
            download(cache_dir())
            return cache_dir()
        except OSError as error:
            reason = f"the download failed ({error})"
    else:
        reason = "downloading is off"
    raise FileNotFoundError(
        f"Fashion-MNIST not found and {reason}. Put {', '.join(FILES.values())} in one of: "
        f"{SYSTEM_DIR} (Debian: apt-get install dataset-fashion-mnist), a folder named by "
        f"$DISTILL_DATA, or {cache_dir()}; or set data.path"
    )


def fashion_mnist_available(path: str | Path | None = None) -> bool:
    """Whether the four files are on this machine already (no download is tried): in
    ``path`` when given, else in the places ``locate`` looks."""
    if path is not None:
        return _has_files(Path(path))
    return any(_has_files(folder) for folder in _candidates())


def load_fashion_mnist(
    path: str | Path | None = None, allow_download: bool = True
) -> tuple[TensorDataset, TensorDataset]:
    """(train, test) as normalised float images (N, 1, 28, 28) and int64 labels."""
    folder = locate(path, allow_download)

    def part(images: str, labels: str) -> TensorDataset:
        x = torch.from_numpy(read_idx(folder / FILES[images]).copy()).float().div_(255.0)
        y = torch.from_numpy(read_idx(folder / FILES[labels]).astype(np.int64))
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{folder}: {x.shape[0]} images but {y.shape[0]} labels")
        return TensorDataset(x.sub_(MEAN).div_(STD).unsqueeze(1), y)

    return part("train_images", "train_labels"), part("test_images", "test_labels")
