"""``distill doctor`` on a self-supervised recipe with a frozen teacher encoder: has the
teacher collapsed, and are the targets it will hand the student informative?

    feature_spread   the spread of the teacher's features across images, relative to their
                     size: near 0, every image gets the same features (a collapsed encoder)
    target_entropy   dino: the entropy of the teacher's centred, sharpened outputs (at
                     selfsup.teacher_temperature), as a share of its maximum (log out_dim):
                     near 1 the targets are uniform, near 0 one-hot
                     byol: the mean cosine similarity of the teacher's projections of
                     different images: near 1 they all point the same way

Each is measured on the global views of up to ``sample`` training images."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.doctor.checks import Finding
from distill.runs.workdir import Log

COLLAPSED_SPREAD = 0.01
UNIFORM, ONE_HOT = 0.9, 0.02
SAME_DIRECTION = 0.95


def spread_finding(features: Tensor) -> Finding:
    size = float(features.norm(dim=1).mean()) / math.sqrt(features.shape[1]) + 1e-12
    spread = float(features.std(0).mean()) / size
    measured = {"spread": spread, "per_dimension_std": features.std(0).tolist()}
    if spread < COLLAPSED_SPREAD:
        return Finding(
            "feature_spread",
            "problem",
            f"the teacher's features barely differ between images (spread {spread:.4f} of "
            "their size): a collapsed encoder",
            "train the teacher again: its batch-norm layers read each batch's statistics "
            "(distill does), a lower learning rate, a sharper teacher temperature",
            measured,
        )
    return Finding(
        "feature_spread",
        "ok",
        f"the teacher's features differ between images (spread {spread:.3f} of their size)",
        "",
        measured,
    )


def dino_finding(outputs: Tensor, temperature: float) -> Finding:
    centred = outputs - outputs.mean(0)
    p = F.softmax(centred / temperature, dim=-1)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1) / math.log(outputs.shape[1])
    share = float(entropy.mean())
    measured = {"entropy_share": share, "per_image": entropy.tolist(), "temperature": temperature}
    if share > UNIFORM:
        return Finding(
            "target_entropy",
            "problem",
            f"the centred targets at teacher temperature {temperature:g} are near uniform "
            f"({share:.2f} of the maximum entropy): the student learns nothing from them",
            f"lower selfsup.teacher_temperature (now {temperature:g}), e.g. to {temperature / 4:g}",
            measured,
        )
    if share < ONE_HOT:
        return Finding(
            "target_entropy",
            "warning",
            f"the targets are nearly one-hot ({share:.3f} of the maximum entropy)",
            f"raise selfsup.teacher_temperature (now {temperature:g}), e.g. to {temperature * 2:g}",
            measured,
        )
    return Finding(
        "target_entropy",
        "ok",
        f"the targets are informative ({share:.2f} of the maximum entropy)",
        "",
        measured,
    )


def byol_finding(projections: Tensor) -> Finding:
    unit = F.normalize(projections, dim=-1)
    similarity = unit @ unit.T
    n = len(unit)
    mean = float((similarity.sum() - similarity.diagonal().sum()) / max(1, n * (n - 1)))
    measured = {"mean_cosine": mean}
    if mean > SAME_DIRECTION:
        return Finding(
            "target_entropy",
            "problem",
            f"the teacher's projections of different images point the same way (mean "
            f"cosine {mean:.3f}): a collapsed target",
            "train the teacher again (see feature_spread)",
            measured,
        )
    return Finding(
        "target_entropy",
        "ok",
        f"the teacher's projections differ between images (mean cosine {mean:.3f})",
        "",
        measured,
    )


@torch.no_grad()
def diagnose_selfsup(task: Any, sample: int, progress: bool, log: Log) -> tuple[list, list[str]]:
    """The two findings, on the global views of up to ``sample`` training images."""
    recipe = task.recipe
    data = task.prepare(progress, log)
    task.preflight()
    teacher, _ = task.teacher(progress, log)
    count = min(sample, len(data.student_train), 512)
    views = torch.stack([data.student_train[i]["views"] for i in range(count)])
    outputs = teacher(views=views)  # (global views, N, D): what the student will learn from
    features = teacher.features(views[:, 0])
    method = recipe.selfsup
    target = (
        dino_finding(outputs[0], method.teacher_temperature)
        if method.method == "dino"
        else byol_finding(outputs[0])
    )
    log(f"doctor: the teacher's global views of {count} training images")
    return [spread_finding(features), target], []


def plot_selfsup(findings: list[Finding], out_dir: Path) -> dict[str, Path]:
    """The teacher's feature spread per dimension and (dino) its targets' entropy per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_check = {f.check: f.measurements for f in findings}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    spread = by_check["feature_spread"]["per_dimension_std"]
    axes[0].bar(range(len(spread)), spread, color="#1f77b4")
    axes[0].set(xlabel="feature dimension", ylabel="std across images", title="Feature spread")
    per_image = by_check["target_entropy"].get("per_image")
    if per_image is not None:
        axes[1].hist(per_image, bins=30, range=(0, 1), color="#d62728")
        axes[1].axvspan(UNIFORM, 1, color="#d62728", alpha=0.08, label="near uniform")
        axes[1].set(xlabel="entropy / log out_dim", ylabel="images", title="Target entropy")
        axes[1].legend(fontsize=8)
    else:
        axes[1].axis("off")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "doctor_selfsup.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"doctor": path}
