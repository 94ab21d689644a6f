"""The five classic ways distillation "does nothing", each as a check with a verdict.

Every check measures something, compares it with a stated threshold and returns a
``Finding``: a verdict (``ok``, ``warning``, ``problem``), the measurement in words, the
numbers, and a suggestion. Thresholds are rules of thumb from the KD literature, stated
in each function so a user can disagree with them.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.measure import parameter_count

Verdict = Literal["ok", "warning", "problem"]


@dataclass
class Finding:
    """One check's result."""

    check: str
    verdict: Verdict
    summary: str
    suggestion: str
    measurements: dict[str, Any] = field(default_factory=dict)


# -- 1. temperature -----------------------------------------------------------------------


def soft_target_stats(logits: Tensor, temperature: float) -> tuple[float, float]:
    """(mean entropy / log C, mean share of the possible off-top mass) of softmax(logits / T):
    the second is (1 − max p) / (1 − 1/C), 0 for one-hot targets and 1 for uniform ones."""
    classes = logits.shape[-1]
    log_p = F.log_softmax(logits.float() / temperature, dim=-1)
    p = log_p.exp()
    entropy = -(p * log_p).sum(-1).mean() / math.log(classes)
    return float(entropy), float((1 - p.max(-1).values.mean()) / (1 - 1 / classes))


def temperature_check(
    teacher_logits: Tensor,
    temperature: float,
    temperatures: Sequence[float] = (1, 2, 4, 8),
    band: tuple[float, float] = (0.05, 0.8),
) -> Finding:
    """How much the soft targets say beyond the label at each temperature.

    Measured: the teacher's mean normalised entropy and its off-top share — the mass off
    the top class as a share of the most there can be, (1 − max p) / (1 − 1/C) — at each
    T. The recipe's T is a ``problem`` when the share is below ``band[0]`` (the soft
    targets are the labels again: Hinton's reason for T > 1) and a ``warning`` above
    ``band[1]`` (the targets are nearly uniform; the ranking of the wrong classes is washed
    out). Recommended: the lowest T whose share is in the band.
    """
    temps = sorted({*temperatures, temperature})
    rows = {t: soft_target_stats(teacher_logits, t) for t in temps}
    entropy, share = rows[temperature]
    in_band = [t for t in temps if band[0] <= rows[t][1] <= band[1]]
    recommended = in_band[0] if in_band else (temps[-1] if share < band[0] else temps[0])
    measurements = {
        "temperature": temperature,
        "recommended": recommended,
        "by_temperature": {
            str(t): {"entropy": e, "off_top_share": m} for t, (e, m) in rows.items()
        },
    }
    described = (
        f"at T = {temperature:g} the soft targets hold {100 * share:.1f}% of the off-top mass "
        "they could"
    )
    if share < band[0]:
        return Finding(
            "temperature",
            "problem",
            f"{described}: they are nearly the labels again",
            f"raise the KD temperature to {recommended:g} ({100 * rows[recommended][1]:.0f}% "
            "there), or run a sweep: distill doctor --sweep",
            measurements,
        )
    if share > band[1]:
        fix = f"lower the temperature to {recommended:g}"
        if recommended >= temperature:  # nearly uniform at the lowest T tried
            fix = f"lower the temperature below {temperature:g}, and check the teacher is trained"
        return Finding(
            "temperature",
            "warning",
            f"{described}: they are nearly uniform (entropy {entropy:.2f} of the maximum)",
            fix,
            measurements,
        )
    return Finding(
        "temperature", "ok", described, "keep it; a sweep (--sweep) can still tune it", measurements
    )


# -- 2. overconfidence ----------------------------------------------------------------------


def calibration(probs: Tensor, labels: Tensor, bins: int = 15) -> dict[str, Any]:
    """Expected calibration error (Guo et al. 2017) and the reliability diagram's bins."""
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece, diagram = 0.0, []
    for low, high in itertools.pairwise(edges):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            share = float(inside.float().mean())
            conf, acc = float(confidence[inside].mean()), float(correct[inside].mean())
            ece += share * abs(conf - acc)
            diagram.append(
                {
                    "low": float(low),
                    "high": float(high),
                    "confidence": conf,
                    "accuracy": acc,
                    "count": int(inside.sum()),
                }
            )
    return {
        "ece": ece,
        "mean_confidence": float(confidence.mean()),
        "accuracy": float(correct.mean()),
        "diagram": diagram,
    }


def calibrating_temperature(logits: Tensor, labels: Tensor) -> float:
    """The temperature that minimises the teacher's NLL on labelled data (temperature
    scaling, Guo et al. 2017): above 1 means overconfident."""
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)
    logits = logits.float()

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def overconfidence_check(
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    one_hot_confidence: float = 0.98,
    max_ece: float = 0.05,
) -> Finding:
    """Is the teacher near one-hot or over-confident on labelled held-out data?

    Measured: mean max-probability, accuracy, expected calibration error (15 bins) and the
    calibrating temperature. ``problem`` when the mean confidence is at least
    ``one_hot_confidence`` (its soft targets at T = 1 carry little but the label);
    ``warning`` when ECE exceeds ``max_ece`` with confidence above accuracy.
    """
    probs = F.softmax(teacher_logits.float(), -1)
    stats = calibration(probs, labels)
    stats["calibrating_temperature"] = calibrating_temperature(teacher_logits, labels)
    conf, acc, ece = stats["mean_confidence"], stats["accuracy"], stats["ece"]
    described = (
        f"mean confidence {100 * conf:.1f}% for {100 * acc:.1f}% accuracy, ECE {ece:.3f}, "
        f"calibrating temperature {stats['calibrating_temperature']:.2f}"
    )
    advice = (
        "use a higher KD temperature (around the calibrating one or above), add intermediate-"
        "layer terms (hint, attention_transfer) that do not depend on the output softness, "
        "and avoid teachers trained with label smoothing (Müller et al. 2019)"
    )
    if conf >= one_hot_confidence:
        return Finding("overconfidence", "problem", f"near one-hot: {described}", advice, stats)
    if ece > max_ece and conf > acc:
        return Finding("overconfidence", "warning", f"over-confident: {described}", advice, stats)
    return Finding(
        "overconfidence", "ok", f"calibrated enough: {described}", "nothing to do", stats
    )


# -- 3. capacity gap ------------------------------------------------------------------------


def fit_probe(
    student: nn.Module,
    inputs: Tensor,
    teacher_logits: Tensor,
    *,
    steps: int = 300,
    lr: float = 3e-3,
    batch_size: int = 128,
    seed: int = 0,
) -> dict[str, float]:
    """Train a copy of ``student`` to match ``teacher_logits`` (KL at T = 1) on ``inputs``
    for ``steps`` steps; its KL and top-1 agreement before and after, on the same inputs."""
    torch.manual_seed(seed)
    probe = copy.deepcopy(student).train()
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    target = F.log_softmax(teacher_logits.float(), -1)

    @torch.no_grad()
    def measure() -> tuple[float, float]:
        probe.eval()
        log_s = F.log_softmax(probe(inputs).float(), -1)
        probe.train()
        kl = float(F.kl_div(log_s, target, log_target=True, reduction="batchmean"))
        return kl, float((log_s.argmax(-1) == target.argmax(-1)).float().mean())

    kl_before, agree_before = measure()
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(
            inputs.shape[0], (min(batch_size, inputs.shape[0]),), generator=generator
        )
        log_s = F.log_softmax(probe(inputs[index]).float(), -1)
        loss = F.kl_div(log_s, target[index], log_target=True, reduction="batchmean")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    kl_after, agree_after = measure()
    return {
        "kl_before": kl_before,
        "kl_after": kl_after,
        "agreement_before": agree_before,
        "agreement_after": agree_after,
    }


def capacity_gap_check(
    teacher: nn.Module,
    student: nn.Module,
    inputs: Tensor,
    teacher_logits: Tensor,
    *,
    steps: int = 300,
    min_agreement: float = 0.8,
) -> Finding:
    """Can the student fit the teacher at all? A short probe: the student (a copy) is
    trained on the teacher's soft targets for ``steps`` steps on a subset and measured on
    that same subset, so only capacity (not generalisation) limits it. ``problem`` when it
    still disagrees with the teacher's top class on more than 1 − ``min_agreement`` of the
    inputs it was fitted on: a gap that training longer on more data rarely closes
    (Mirzadeh et al. 2020). Suggested fix: a teacher assistant of intermediate size."""
    probe = fit_probe(student, inputs, teacher_logits, steps=steps)
    t_params, s_params = parameter_count(teacher), parameter_count(student)
    trained = sum(p.numel() for p in student.parameters() if p.requires_grad)
    residual = probe["kl_after"] / max(probe["kl_before"], 1e-12)
    measurements = {
        **probe,
        "teacher_parameters": t_params,
        "student_parameters": s_params,
        "trained_parameters": trained,
        "size_ratio": t_params / max(s_params, 1),
        "residual_kl_share": residual,
    }
    described = (
        f"teacher {t_params:,} vs student {s_params:,} parameters ({t_params / s_params:.1f}×"
        + (f"; {trained:,} of them trained, LoRA" if trained < s_params else "")
        + "); "
        f"fitted to the teacher for {steps} steps on {len(inputs):,} inputs, the student "
        f"agrees with its top class on {100 * probe['agreement_after']:.1f}% of them "
        f"(KL {probe['kl_before']:.3f} → {probe['kl_after']:.3f})"
    )
    if probe["agreement_after"] < min_agreement:
        assistant = int(math.sqrt(t_params * s_params))
        return Finding(
            "capacity_gap",
            "problem",
            f"the student cannot follow the teacher: {described}",
            f"distil through a teacher assistant of about {assistant:,} parameters "
            "(recipe: assistant:), or use a larger student",
            measurements,
        )
    return Finding("capacity_gap", "ok", described, "nothing to do", measurements)


# -- 5. teacher cost ------------------------------------------------------------------------


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def teacher_cost_check(
    teacher: nn.Module,
    student: nn.Module,
    inputs: Tensor,
    *,
    steps_per_epoch: int,
    epochs: int,
    repeats: int = 5,
    max_overhead: float = 0.5,
    min_seconds: float = 30.0,
    cacheable: bool = True,
) -> Finding:
    """What the teacher costs: measured forward time of the teacher and forward+backward of
    the student on one batch, the predicted overhead of online KD (teacher time over
    student step time), and what caching the teacher's outputs would save over the run.
    ``warning`` when online KD adds more than ``max_overhead`` to every step and the
    teacher's forward passes add up to more than ``min_seconds`` over the run. With
    ``cacheable`` False (inputs augmented or mixed anew every step) the fix is not a cache."""
    teacher.eval()

    def teacher_forward() -> None:
        with torch.inference_mode():
            teacher(inputs)

    probe = copy.deepcopy(student).train()

    def student_step() -> None:
        probe.zero_grad()
        probe(inputs).float().logsumexp(-1).mean().backward()

    t_teacher = median_seconds(teacher_forward, repeats)
    t_student = median_seconds(student_step, repeats)
    overhead = t_teacher / t_student
    steps = steps_per_epoch * epochs
    measurements = {
        "teacher_forward_ms": 1e3 * t_teacher,
        "student_step_ms": 1e3 * t_student,
        "online_overhead": overhead,
        "run_teacher_seconds": t_teacher * steps,
        "cache_teacher_seconds": t_teacher * steps_per_epoch,
        "saving_seconds": t_teacher * steps_per_epoch * (epochs - 1),
        "batch": int(inputs.shape[0]),
    }
    described = (
        f"teacher forward {1e3 * t_teacher:.2f} ms vs student step {1e3 * t_student:.2f} ms per "
        f"batch of {inputs.shape[0]}: online KD adds {100 * overhead:.0f}% per step; over "
        f"{epochs} epoch(s) the teacher runs {t_teacher * steps:.1f} s, a cache "
        f"{t_teacher * steps_per_epoch:.3g} s"
    )
    if overhead > max_overhead and t_teacher * steps > min_seconds:
        fix = "cache its outputs once (distill cache; teachers.Cached), run it in bf16 "
        if not cacheable:
            fix = "(its inputs change every step, so no cache can hold its answers) run it in bf16 "
        return Finding(
            "teacher_cost",
            "warning",
            f"the teacher dominates training: {described}",
            fix + "(teacher.autocast), or distil from a smaller teacher",
            measurements,
        )
    if overhead > max_overhead:
        described += f", under the {min_seconds:.0f} s that would make a cache worth building"
    return Finding("teacher_cost", "ok", described, "nothing to do", measurements)


def verdict_rank(findings: Iterable[Finding]) -> Verdict:
    """The worst verdict among ``findings``."""
    order = {"ok": 0, "warning": 1, "problem": 2}
    worst = max((order[f.verdict] for f in findings), default=0)
    return next(k for k, v in order.items() if v == worst)  # type: ignore[return-value]
