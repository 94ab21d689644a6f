"""What a deployment cares about: parameters, bytes on disk, CPU latency per example; and
for image encoders, the quality of their embeddings (linear probe, retrieval recall)."""

from __future__ import annotations

import statistics
import tempfile
import time
import weakref
from pathlib import Path

import torch
from safetensors.torch import save_model
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


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
    model: nn.Module,
    example: torch.Tensor,
    repeats: int = 50,
    warmup: int = 5,
    batch: int = 1,
    **kwargs,
) -> dict[str, float]:
    """Wall time per example of a forward on the CPU, in milliseconds: the median of
    ``repeats`` timed forwards of ``batch`` copies of ``example`` (batch 1: the latency of
    one request), divided by ``batch``, after ``warmup`` untimed ones; and the 10th and
    90th percentiles (the spread). ``kwargs`` go to the forward (e.g. a routed ensemble's
    ``domain``)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    if device.type != "cpu":  # moved outside inference mode: quantized weights must swap
        model.cpu()
    model.eval()
    x = example.unsqueeze(0).cpu().expand(batch, *example.shape).contiguous()
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x, **kwargs)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x, **kwargs)
            times.append(1000.0 * (time.perf_counter() - start) / batch)
    if device.type != "cpu":
        model.to(device)
    model.train(was_training)
    low, high = statistics.quantiles(times, n=10)[::8] if len(times) > 1 else (times[0],) * 2
    return {"latency_ms": statistics.median(times), "latency_p10_ms": low, "latency_p90_ms": high}


def cpu_latency_ms(
    model: nn.Module,
    example: torch.Tensor,
    repeats: int = 50,
    warmup: int = 5,
    batch: int = 1,
    **kwargs,
) -> float:
    """The median of ``cpu_latency``, in milliseconds per example."""
    return cpu_latency(model, example, repeats, warmup, batch, **kwargs)["latency_ms"]


class _StorageWatch(TorchDispatchMode):
    """Counts the bytes of every storage the ops allocate from the moment it appears as an
    op's output until Python frees it (a storage first seen as an input existed before)."""

    def __init__(self) -> None:
        super().__init__()
        self.known: set[int] = set()
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        for leaf in tree_leaves((args, kwargs)):
            if isinstance(leaf, Tensor):
                self.known.add(leaf.untyped_storage().data_ptr())
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, Tensor):
                self._watch(leaf.untyped_storage())
        return out

    def _watch(self, storage: torch.UntypedStorage) -> None:
        pointer, size = storage.data_ptr(), storage.nbytes()
        if pointer == 0 or pointer in self.known:
            return
        self.known.add(pointer)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._freed, pointer, size)

    def _freed(self, pointer: int, size: int) -> None:
        self.known.discard(pointer)
        self.live -= size


def forward_memory_bytes(model: nn.Module, example: Tensor, batch: int = 1, **kwargs) -> int:
    """Memory a forward of ``batch`` copies of ``example`` needs: the model's parameters
    and buffers plus the peak of the tensors its ops allocate and still hold (measured op
    by op, on the CPU)."""
    was_training = model.training
    model.eval()
    weights = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in model.state_dict().values()
    }
    watch = _StorageWatch()
    with torch.inference_mode(), watch:
        model(example.unsqueeze(0).expand(batch, *example.shape).contiguous(), **kwargs)
    model.train(was_training)
    return sum(weights.values()) + watch.peak


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
