"""Judging frozen features with labels they never trained on: k-NN (Wu et al. 2018, as DINO
runs it) and a linear probe (multinomial logistic regression fitted by L-BFGS)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def knn_accuracy(
    train: Tensor,
    train_labels: Tensor,
    test: Tensor,
    test_labels: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> float:
    """Weighted k-NN accuracy: each test example's ``k`` most cosine-similar training
    examples vote for their class with weight ``exp(cos / temperature)``."""
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    bank, k = F.normalize(train, dim=1), min(k, len(train))
    correct = 0
    for start in range(0, len(test), chunk):
        query = F.normalize(test[start : start + chunk], dim=1)
        similarity, index = (query @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(query), classes)
        votes.scatter_add_(1, train_labels[index], (similarity / temperature).exp())
        correct += int((votes.argmax(1) == test_labels[start : start + chunk]).sum())
    return correct / len(test)


def fit_probe(
    train: Tensor,
    train_labels: Tensor,
    steps: int = 300,
    weight_decay: float = 1e-4,
    classes: int | None = None,
) -> nn.Linear:
    """A logistic regression on standardised features (the training features' mean and
    spread), fitted by full-batch L-BFGS with an L2 penalty; returned as one linear layer on
    the raw features (the standardisation folded into its weights), with ``classes``
    outputs (None: the largest label + 1)."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    x = (train - mean) / std
    classes = classes or int(train_labels.max()) + 1
    generator = torch.Generator().manual_seed(0)
    weight = (torch.randn(x.shape[1], classes, generator=generator) * 0.01).requires_grad_()
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = (
            F.cross_entropy(x @ weight + bias, train_labels) + weight_decay * weight.square().sum()
        )
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    layer = nn.Linear(x.shape[1], classes)
    with torch.no_grad():  # (f - mean) / std @ W + b = f @ (W / std) + (b - mean / std @ W)
        scaled = weight / std[:, None]
        layer.weight.copy_(scaled.T)
        layer.bias.copy_(bias - mean @ scaled)
    return layer


@torch.no_grad()
def linear_probe(
    train: Tensor,
    train_labels: Tensor,
    test: Tensor,
    test_labels: Tensor,
    steps: int = 300,
    weight_decay: float = 1e-4,
) -> float:
    """Test accuracy of ``fit_probe`` on ``train``."""
    probe = fit_probe(train, train_labels, steps, weight_decay)
    return float((probe(test).argmax(1) == test_labels).float().mean())
