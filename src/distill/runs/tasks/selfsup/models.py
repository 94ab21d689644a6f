"""A self-supervised run's network: an encoder (any model of ``distill.models`` with
``selfsup.embed_dim`` outputs: the features the probes read), the method's projection head,
BYOL's predictor (the student's only) and a linear classifier (what the label-only
baseline trains; the features never read it).

``forward(views=v)`` with ``v`` of shape (N, V, …) returns the head's (V, N, D) outputs:
every view in training (through the predictor, if any), the first ``global_views`` in eval
mode, which is what a teacher (the moving average, or a frozen encoder) computes. A teacher
normalises its batch-norm layers with the statistics of the views it reads, as BYOL's and
DINO's teachers do (with the running statistics, copied from a student that reads other
views, the moving-average teacher's targets collapse to one point in a few steps: measured
on Fashion-MNIST, probe accuracy below the random encoder's). ``forward(x)`` is the
classifier on the encoder's features, with the running statistics."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from distill.batch import logits_of
from distill.models import build_model
from distill.recipes import ModelSpec, Recipe


class Normalized(nn.Module):
    """L2-normalises its input along the last dimension (DINO's bottleneck)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1)


def prototypes(bottleneck: int, out: int) -> nn.Module:
    """DINO's last layer: ``out`` weight-normalised prototypes of unit length (their norm
    fixed, not learnt), so its outputs are cosine similarities in [-1, 1]."""
    layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out, bias=False))
    magnitude = layer.parametrizations.weight.original0
    magnitude.data.fill_(1.0)
    magnitude.requires_grad_(False)
    return layer


def dino_head(embed: int, hidden: int, bottleneck: int, out: int) -> nn.Module:
    """DINO's projection: an MLP to an L2-normalised bottleneck, then ``out`` unit-length
    prototypes (Caron et al. 2021)."""
    return nn.Sequential(
        nn.Linear(embed, hidden),
        nn.GELU(),
        nn.Linear(hidden, hidden),
        nn.GELU(),
        nn.Linear(hidden, bottleneck),
        Normalized(),
        prototypes(bottleneck, out),
    )


def byol_mlp(inputs: int, hidden: int, out: int) -> nn.Module:
    """BYOL's projector and predictor: linear, batch norm, ReLU, linear (Grill et al.)."""
    return nn.Sequential(
        nn.Linear(inputs, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out)
    )


@contextlib.contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """``model``'s batch-norm layers normalise with the batch's statistics, leaving their
    running statistics as they were."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.momentum) for m in norms]
    for m in norms:
        m.train()
        m.momentum = 0.0  # running = (1 - 0) · running + 0 · batch: unchanged
    try:
        yield
    finally:
        for m, (training, momentum) in zip(norms, saved, strict=True):
            m.train(training)
            m.momentum = momentum


class SelfSupNet(nn.Module):
    """The encoder, its heads and the classifier (see the module)."""

    unused_parameters = True  # the classifier (features) or the heads (labels) idle: DDP

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Module,
        classifier: nn.Module,
        predictor: nn.Module | None = None,
        global_views: int = 2,
    ) -> None:
        super().__init__()
        self.encoder, self.head, self.classifier = encoder, head, classifier
        self.predictor, self.global_views = predictor, global_views

    def features(self, x: Tensor) -> Tensor:
        return logits_of(self.encoder(x))

    def forward(self, x: Tensor | None = None, *, views: Tensor | None = None) -> Tensor:
        if views is None:
            if x is None:
                raise ValueError("SelfSupNet needs inputs x or views=(N, V, ...)")
            return self.classifier(self.features(x))
        n, total = views.shape[:2]
        count = total if self.training else min(self.global_views, total)
        flat = views[:, :count].transpose(0, 1).reshape(count * n, *views.shape[2:])
        with contextlib.nullcontext() if self.training else batch_statistics(self):
            out = self.head(self.features(flat))
        if self.training and self.predictor is not None:
            out = self.predictor(out)
        return out.reshape(count, n, *out.shape[1:])


def build_net(
    recipe: Recipe, spec: ModelSpec, num_classes: int, in_shape: tuple[int, ...]
) -> SelfSupNet:
    """The network of ``spec`` (the student, or an earlier run's) under ``recipe``'s method."""
    method = recipe.selfsup
    args: dict[str, Any] = dict(spec.args)
    encoder = build_model(spec.model, method.embed_dim, in_shape, args)
    if method.method == "dino":
        head = dino_head(method.embed_dim, method.hidden, method.bottleneck, method.out_dim)
        predictor = None
    else:
        head = byol_mlp(method.embed_dim, method.hidden, method.out_dim)
        predictor = byol_mlp(method.out_dim, method.hidden, method.out_dim)
    classifier = nn.Linear(method.embed_dim, num_classes)
    return SelfSupNet(encoder, head, classifier, predictor, recipe.data.views.global_views)


def on_shared_views(loss: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``loss`` on the rows both encoders read: the teacher reads the global views, the
    student every view, view by view (``SelfSupNet``), so the student's first rows are the
    teacher's views in the same order."""

    @functools.wraps(loss)  # the same signature: the objective reads what ``loss`` reads
    def shared(student_features: Tensor, teacher_features: Tensor, **options: Any) -> Tensor:
        return loss(student_features[: len(teacher_features)], teacher_features, **options)

    return shared


@torch.no_grad()
def embed(model: SelfSupNet, rows: Any, batch_size: int) -> tuple[Tensor, Tensor]:
    """(features, labels) of every example of ``rows`` (an (x, y, ...) dataset)."""
    was_training = model.training
    model.eval()
    features, labels = [], []
    for x, y, *_ in DataLoader(rows, batch_size=batch_size):
        features.append(model.features(x).float())
        labels.append(torch.as_tensor(y))
    model.train(was_training)
    return torch.cat(features), torch.cat(labels)
