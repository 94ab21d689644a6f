"""Data loaders on small files written by the tests."""

import gzip

import numpy as np
import pytest
import torch

from distill.batch import IGNORE_INDEX
from distill.data import (
    Augmented,
    ImageFolder,
    idx,
    labeled_split,
    load_dataset,
    load_fashion_mnist,
    read_idx,
)

from .conftest import write_idx


def test_read_idx_round_trip(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx3-ubyte.gz", images)
    write_idx(tmp_path / "b-idx1-ubyte", np.array([7, 9], dtype=">i4"))
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte.gz"), images)
    assert read_idx(tmp_path / "b-idx1-ubyte").tolist() == [7, 9]


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short"
    write_idx(short, np.zeros((2, 3), dtype=np.uint8))
    short.write_bytes(short.read_bytes()[:-1])
    with pytest.raises(ValueError, match="header says"):
        read_idx(short)


def test_fashion_mnist_loader_from_explicit_path_and_env(digits_idx_dir, monkeypatch):
    train, test = load_fashion_mnist(digits_idx_dir, allow_download=False)
    assert len(train) == 1500 and len(test) == 297
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    monkeypatch.setenv("DISTILL_DATA", str(digits_idx_dir))
    monkeypatch.setattr(idx, "SYSTEM_DIR", digits_idx_dir / "nowhere")
    assert idx.locate(None, allow_download=False) == digits_idx_dir


def test_missing_fashion_mnist_offline_says_where_to_put_the_files(tmp_path, monkeypatch):
    monkeypatch.delenv("DISTILL_DATA", raising=False)
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(idx, "SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist(None, allow_download=False)
    message = str(info.value)
    assert (
        "train-images-idx3-ubyte.gz" in message
        and "apt-get install dataset-fashion-mnist" in message
    )
    assert "DISTILL_DATA" in message
    with pytest.raises(FileNotFoundError, match=r"data\.path"):
        load_fashion_mnist(tmp_path, allow_download=False)


def test_labeled_split_hides_labels_outside_the_budget(digits_idx_dir):
    train, _ = load_fashion_mnist(digits_idx_dir, allow_download=False)
    labelled, val, transfer = labeled_split(train, labeled=200, val_fraction=0.1, seed=0)
    assert len(labelled) == 180 and len(val) == 20 and len(transfer) == 1500 - 20
    labels = [transfer[i][1] for i in range(len(transfer))]
    assert sum(label != IGNORE_INDEX for label in labels) == 180
    assert set(labelled.indices).isdisjoint(val.indices)
    assert set(transfer.dataset.indices).isdisjoint(val.indices)
    # the labelled examples inside the transfer set carry their true labels
    assert labels[0] == int(train[labelled.indices[0]][1])


def test_augmented_keeps_shapes_and_changes_inputs():
    data = torch.utils.data.TensorDataset(torch.randn(4, 1, 28, 28), torch.arange(4))
    aug = Augmented(data)
    torch.manual_seed(0)
    views = [aug[0][0] for _ in range(4)]
    assert all(v.shape == (1, 28, 28) for v in views)
    assert any(not torch.equal(v, data[0][0]) for v in views)
    signal = Augmented(torch.utils.data.TensorDataset(torch.randn(2, 1, 40), torch.arange(2)))
    assert signal[1][0].shape == (1, 40)


def test_image_folder(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for name, color in (("cat", 30), ("dog", 200)):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (10, 12), (color, i, 0)).save(folder / f"{i}.png")
    train, _, classes = load_dataset("image_folder", tmp_path, image_size=16)
    assert classes == 2 and len(train) == 4 and train.classes == ["cat", "dog"]
    x, y = train[3]
    assert x.shape == (3, 16, 16) and y == 1 and -1.0 <= float(x.min()) <= float(x.max()) <= 1.0
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolder(tmp_path / "train" / "cat")


def test_mnist1d():
    train, test, classes = load_dataset("mnist1d")
    assert classes == 10 and len(train) == 4000 and len(test) == 1000
    assert train[0][0].shape == (1, 40)


def test_download_checks_the_official_md5(tmp_path, monkeypatch):
    def fake_download(url, target):
        assert url.startswith(idx.SOURCE)
        target.write_bytes(b"not the real file")

    monkeypatch.setattr(idx.urllib.request, "urlretrieve", fake_download)
    with pytest.raises(ValueError, match="official MD5"):
        idx.download(tmp_path)
    assert not list(tmp_path.glob("*.gz")) and not list(tmp_path.glob("*.part"))
