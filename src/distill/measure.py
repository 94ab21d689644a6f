"""What a deployment cares about: parameters, bytes on disk, CPU latency per example; and
for image encoders, the quality of their embeddings (linear probe, retrieval recall)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_model
from torch import Tensor, nn


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def size_on_disk(model: nn.Module, path: Path | None = None) -> int:
    """Bytes of the model's safetensors file (written to a temporary file if no path)."""
    if path is not None and Path(path).exists():
        return Path(path).stat().st_size
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "model.safetensors"
        save_model(model, str(target))
        return target.stat().st_size


def cpu_latency(
    model: nn.Module, example: torch.Tensor, repeats: int = 50, warmup: int = 5, **kwargs
) -> dict[str, float]:
    """Wall time of a batch-1 forward on the CPU, in milliseconds: the median of ``repeats``
    timed forwards after ``warmup`` untimed ones, and the 10th and 90th percentiles (the
    spread). ``kwargs`` go to the forward (e.g. a routed ensemble's ``domain``)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    if device.type != "cpu":  # moved outside inference mode: quantized weights must swap
        model.cpu()
    model.eval()
    x = example.unsqueeze(0).cpu()
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x, **kwargs)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x, **kwargs)
            times.append(1000.0 * (time.perf_counter() - start))
    if device.type != "cpu":
        model.to(device)
    model.train(was_training)
    low, high = statistics.quantiles(times, n=10)[::8] if len(times) > 1 else (times[0],) * 2
    return {"latency_ms": statistics.median(times), "latency_p10_ms": low, "latency_p90_ms": high}


def cpu_latency_ms(
    model: nn.Module, example: torch.Tensor, repeats: int = 50, warmup: int = 5, **kwargs
) -> float:
    """The median of ``cpu_latency``, in milliseconds."""
    return cpu_latency(model, example, repeats, warmup, **kwargs)["latency_ms"]


def linear_probe_accuracy(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
) -> float:
    """Test accuracy of a logistic regression fitted on frozen features: multinomial, L2
    penalty ``weight_decay · ‖W‖²``, features standardised on the training rows, full-batch
    L-BFGS (as scikit-learn's ``LogisticRegression``; the linear probe of CLIP, Radford et
    al. 2021)."""
    train_x, test_x = train_x.double(), test_x.double()
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-8)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    probe = nn.Linear(train_x.shape[1], classes).double()
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    optimizer = torch.optim.LBFGS(
        probe.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(probe(train_x), train_y)
        loss = loss + weight_decay * probe.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return float((probe(test_x).argmax(1) == test_y).double().mean())


def retrieval_recall(
    images: Tensor, texts: Tensor, caption_of_image: Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Image→text and text→image recall@k by cosine similarity.

    ``images`` (N, D), ``texts`` (M, D) the distinct captions, ``caption_of_image`` (N,) the
    index of each image's caption. Image→text: the share of images whose caption is among
    their k most similar texts. Text→image: the share of the captions some image carries
    for which one of the k most similar images carries it (with one caption per image, the
    usual protocol; with templated captions shared by many images, any of them counts)."""
    similarity = (
        nn.functional.normalize(images.float(), dim=-1)
        @ nn.functional.normalize(texts.float(), dim=-1).T
    )
    owner = caption_of_image.long()
    used = torch.unique(owner)
    out = {}
    for k in ks:
        top_texts = similarity.topk(min(k, texts.shape[0]), dim=1).indices
        out[f"image_to_text_r{k}"] = float((top_texts == owner[:, None]).any(1).float().mean())
        top_images = similarity[:, used].topk(min(k, images.shape[0]), dim=0).indices  # (k, U)
        out[f"text_to_image_r{k}"] = float(
            (owner[top_images] == used[None, :]).any(0).float().mean()
        )
    return out


def frechet_distance(features: Tensor, reference: Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to two sets of features (N, D):
    ``‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½)``, FID's formula (Heusel et al.,
    NeurIPS 2017) on whatever network made the features. Float64, symmetric matrix roots by
    eigendecomposition."""
    a, b = features.double(), reference.double()
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    distance = (mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return float(distance.clamp_min(0))
