"""Shared fixtures: the real scikit-learn digits data (1,797 8×8 images, 10 classes)."""

import pytest
import torch
from torch.utils.data import TensorDataset


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
