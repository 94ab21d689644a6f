"""The doctor's checks of a language-model recipe's teacher and training step: how much
a top-k keeps, sampling vs loss temperature, a teacher that is not deterministic, the loss
normalisation under gradient accumulation, and what the teacher costs per token.

Each measures on a few batches, compares with a stated threshold and returns a
``Finding`` with the fix, like the classic five (``doctor.checks``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from distill.batch import Batch, as_batch, logits_of
from distill.doctor.checks import Finding, median_seconds
from distill.objective import Objective
from distill.outputs import TeacherOutput
from distill.runs.report.tables import span
from distill.teachers import Teacher
from distill.training import Distiller

TOP_KS = (1, 4, 16, 64, 256, 1024, 4096)


def token_mask(batch: Batch) -> Tensor:
    """The positions the losses count: the mask, else the labelled ones, else all."""
    if batch.mask is not None:
        return batch.mask.bool()
    if batch.labels is not None:
        return batch.labels != -100
    ids = batch.kwargs["input_ids"] if "input_ids" in batch.kwargs else batch.args[0]
    return torch.ones(ids.shape[:2], dtype=torch.bool)


# -- top-k mass -----------------------------------------------------------------------------


def kept_mass(teacher_logits: Tensor, ks: Sequence[int], temperature: float = 1.0) -> Tensor:
    """(tokens, len(ks)): the teacher's probability mass in its ``k`` most likely tokens at
    ``temperature``, per position."""
    probs = F.softmax(teacher_logits.float() / temperature, dim=-1)
    top = probs.topk(min(max(ks), probs.shape[-1]), dim=-1).values.cumsum(-1)
    return torch.stack([top[:, min(k, top.shape[-1]) - 1] for k in ks], dim=-1)


def top_k_mass_check(
    teacher_logits: Tensor | None,
    *,
    temperature: float,
    k: int | None,
    sparse: str | None,
    served_mass: Tensor | None = None,
    warn_below: float = 0.95,
    problem_below: float = 0.80,
) -> Finding:
    """How much of the teacher's distribution a top-k keeps, at the loss temperature.

    Measured per token on a sample: the mass in the k most likely tokens for k in
    ``TOP_KS`` (and the recipe's), its mean and 5th percentile. When the teacher reaches
    the student sparsely (``sparse``: a top-k cache or a served teacher) the recipe's k is
    a ``warning`` below ``warn_below`` mean kept mass and a ``problem`` below
    ``problem_below``: the rest reaches the student as one lump, its shape lost."""
    by_k: dict[str, dict[str, float]] = {}
    if teacher_logits is not None:
        ks = sorted({*[x for x in TOP_KS if x < teacher_logits.shape[-1]], *([k] if k else [])})
        mass = kept_mass(teacher_logits, ks, temperature)
        for i, kk in enumerate(ks):
            by_k[str(kk)] = {
                "mean": float(mass[:, i].mean()),
                "p5": float(mass[:, i].quantile(0.05)),
            }
    if served_mass is not None and k is not None:
        by_k[str(k)] = {"mean": float(served_mass.mean()), "p5": float(served_mass.quantile(0.05))}
    needed = {
        goal: next((int(kk) for kk, v in by_k.items() if v["mean"] >= goal), None)
        for goal in (0.95, 0.99)
    }
    measurements = {
        "temperature": temperature,
        "k": k,
        "sparse": sparse,
        "by_k": by_k,
        "k_for": {str(g): v for g, v in needed.items()},
    }
    if not by_k:
        return Finding(
            "top_k_mass", "ok", "no teacher distribution to measure", "nothing to do", measurements
        )
    reach = ", ".join(
        f"{100 * g:.0f}% at k = {v}" if v else f"{100 * g:.0f}% beyond k = {max(map(int, by_k))}"
        for g, v in needed.items()
    )
    if sparse is None or k is None:
        shown = "64" if "64" in by_k else max(by_k, key=int)
        return Finding(
            "top_k_mass",
            "ok",
            f"the student reads the teacher's full distribution at T = {temperature:g}; a "
            f"top-{shown} cache would keep {100 * by_k[shown]['mean']:.1f}% of it (mean kept "
            f"mass reaches {reach})",
            "nothing to do",
            measurements,
        )
    kept = by_k[str(k)]
    summary = (
        f"the {sparse} keeps the top {k}: {100 * kept['mean']:.1f}% of the teacher's mass on "
        f"average at T = {temperature:g}, {100 * kept['p5']:.1f}% at the 5th percentile "
        f"(mean kept mass reaches {reach})"
    )
    fix = f"raise the top k to {needed[0.95] or 'more'} (cache.top_k, or the served top_k)"
    if kept["mean"] < problem_below:
        return Finding("top_k_mass", "problem", summary, fix, measurements)
    if kept["mean"] < warn_below:
        return Finding("top_k_mass", "warning", summary, fix, measurements)
    return Finding("top_k_mass", "ok", summary, "nothing to do", measurements)


# -- sampling vs loss temperature -------------------------------------------------------------


def sampling_distribution(logits: Tensor, temperature: float, top_p: float = 1.0) -> Tensor:
    """What sampling at ``temperature`` with nucleus ``top_p`` draws from (0: greedy)."""
    logits = logits.float()
    if temperature == 0:
        return F.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    probs = F.softmax(logits / temperature, dim=-1)
    if top_p >= 1:
        return probs
    ordered, order = probs.sort(dim=-1, descending=True)
    keep = ordered.cumsum(-1) - ordered < top_p  # the smallest set reaching top_p
    kept = torch.zeros_like(probs).scatter(-1, order, ordered * keep)
    return kept / kept.sum(-1, keepdim=True)


def sampling_temperature_check(
    teacher_logits: Tensor | None,
    *,
    loss_temperature: float | None,
    samplers: dict[str, tuple[float, float]],
    max_tvd: float = 0.2,
) -> Finding:
    """Does the text the student learns from come from the distribution its token term
    teaches? ``samplers`` name who samples (``generate``: the teacher's answers;
    ``on_policy``: the student's) with (temperature, top_p).

    Measured on the teacher's next-token distributions: the mean total variation between
    what each sampler draws from and the loss's target softmax(z / T). ``warning`` above
    ``max_tvd`` when a token term reads the teacher (``loss_temperature`` set): the answers
    follow one distribution and the loss pulls towards another."""
    if not samplers:
        return Finding(
            "sampling_temperature",
            "ok",
            "nothing is sampled: the rows are fixed text",
            "nothing to do",
            {},
        )
    if teacher_logits is None:
        return Finding(
            "sampling_temperature",
            "ok",
            "no full teacher distribution to compare with",
            "nothing to do",
            {},
        )
    target_t = 1.0 if loss_temperature is None else loss_temperature
    target = F.softmax(teacher_logits.float() / target_t, dim=-1)
    tvd = {
        who: float(
            0.5 * (sampling_distribution(teacher_logits, t, p) - target).abs().sum(-1).mean()
        )
        for who, (t, p) in samplers.items()
    }
    described = "; ".join(
        f"{who} samples at temperature {samplers[who][0]:g}, top-p {samplers[who][1]:g}: "
        f"{100 * d:.1f}% total variation from the teacher at T = {target_t:g}"
        for who, d in tvd.items()
    )
    measurements = {"loss_temperature": loss_temperature, "samplers": samplers, "tvd": tvd}
    far = [who for who, d in tvd.items() if d > max_tvd]
    if loss_temperature is not None and far:
        who = far[0]
        return Finding(
            "sampling_temperature",
            "warning",
            f"{described}: the answers follow another distribution than the token term teaches",
            f"sample at the loss temperature ({who}.temperature: {target_t:g}, top_p: 1.0), "
            "or drop the token term for pure sequence-level KD",
            measurements,
        )
    if loss_temperature is None:
        described += " (no token term reads the teacher: sequence-level KD only)"
    return Finding("sampling_temperature", "ok", described, "nothing to do", measurements)


# -- a teacher that is not deterministic ----------------------------------------------------


def dropout_layers(model: nn.Module) -> int:
    """Dropout modules with p > 0 in ``model``."""
    return sum(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


def _log_probs(output: TeacherOutput) -> Tensor:
    if output.topk is not None:
        return output.topk.logprobs.float()
    return F.log_softmax(output.logits.float(), dim=-1)  # type: ignore[union-attr]


def teacher_mode_check(
    teacher: Teacher, model: nn.Module | None, batch: Batch, *, tolerance: float = 1e-4
) -> Finding:
    """Are the teacher's targets the same every time? Measured: the model's train/eval
    mode as handed over, its dropout layers, and the largest difference between two of the
    teacher's answers to the same batch (log-probabilities). ``problem`` above
    ``tolerance``: dropout (or another train-mode layer) makes the targets noisy."""
    training = None if model is None else bool(model.training)
    dropouts = 0 if model is None else dropout_layers(model)
    first, second = _log_probs(teacher(batch)), _log_probs(teacher(batch))
    difference = float((first - second).abs().max())
    measurements = {"training": training, "dropout_layers": dropouts, "max_difference": difference}
    mode = "" if training is None else f"handed over in {'train' if training else 'eval'} mode, "
    summary = (
        f"{mode}{dropouts} dropout layer(s); two passes over one batch differ by at most "
        f"{difference:.2g} in log-probability"
    )
    if difference > tolerance:
        return Finding(
            "teacher_mode",
            "problem",
            f"the teacher's targets are noisy: {summary}",
            "run the teacher in eval mode under no_grad (teachers.Module does both); turn "
            "dropout off in its config for a custom teacher",
            measurements,
        )
    return Finding("teacher_mode", "ok", summary, "nothing to do", measurements)


# -- loss normalisation under gradient accumulation ---------------------------------------------


def deterministic_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every dropout off (modules and attention dropout rates)."""
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    return clone


def one_update(
    student: nn.Module,
    teacher: Teacher | None,
    make_objective: Callable[[nn.Module], Objective],
    rows: Dataset,
    batch_size: int,
    accum: int,
) -> Tensor:
    """The weight change of one SGD step (lr 1, no momentum) by distill's engine over
    ``rows`` in micro-batches of ``batch_size``, ``accum`` of them per step: -gradient.
    ``make_objective`` builds the objective for the student it is given (LM-head terms
    read that student's head)."""
    model = deterministic_copy(student)
    objective = make_objective(model)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    Distiller(
        model,
        teacher,
        objective,
        optimizer="sgd",
        lr=1.0,
        momentum=0.0,
        lr_schedule="constant",
        grad_accum_steps=accum,
        select_metric=None,
        progress=False,
        log=lambda line: None,
    ).fit(DataLoader(rows, batch_size=batch_size), max_steps=1)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return after - before


def accumulation_check(
    student: nn.Module,
    teacher: Teacher | None,
    make_objective: Callable[[nn.Module], Objective],
    rows: Dataset,
    *,
    batch_size: int,
    accum: int,
    tolerance: float = 1e-3,
    problem_above: float = 1e-2,
) -> Finding:
    """Is one optimizer step over ``accum`` micro-batches the step of one batch of the same
    rows? Token losses average over each micro-batch's counted tokens; when the counts
    differ, averaging the micro-batches' means (normalising by rows, as a loop that
    divides each loss by the accumulation steps does) weighs a token by the size of its
    micro-batch. distill's engine weighs each micro-batch by its share of the window's
    tokens. Measured: the relative difference of the two updates (dropout off, SGD, lr 1;
    float rounding leaves about 1e-7), and the counted tokens per micro-batch. A term that
    averages over other units than the engine weighs (a loss that ignores the mask, or
    one that averages over aligned spans, as ``cross_tokenizer_kd`` does) makes it a
    ``warning`` above ``tolerance`` and a ``problem`` above ``problem_above``."""
    accum = max(accum, 2)
    window = Subset(rows, range(min(len(rows), batch_size * accum)))  # type: ignore[arg-type]
    counting = make_objective(student).labelled_rows_only
    counts = [as_batch(raw).rows(counting) for raw in DataLoader(window, batch_size=batch_size)]
    accumulated = one_update(student, teacher, make_objective, window, batch_size, accum)
    single = one_update(student, teacher, make_objective, window, batch_size * accum, 1)
    difference = float((accumulated - single).norm() / single.norm().clamp_min(1e-30))
    skew = max(counts) / max(min(counts), 1)
    measurements = {
        "accum": accum,
        "tokens_per_micro_batch": counts,
        "relative_difference": difference,
        "row_normalised_skew": skew,
    }
    described = (
        f"micro-batches of {batch_size} rows hold {span(min(counts), max(counts))} counted "
        f"tokens; the update from {accum} of them differs from one batch of the same rows by "
        f"{difference:.2g} (relative)"
    )
    if not math.isfinite(difference) or difference > tolerance:
        verdict = "warning" if difference <= problem_above else "problem"
        return Finding(
            "accumulation",
            verdict,  # type: ignore[arg-type]
            f"{described}: a term averages over other units than the tokens the engine "
            "weighs (the mask ignored, or spans instead of tokens)",
            "average every term over the masked tokens (losses.reductions.masked_mean with "
            "the batch's mask); for a span-averaged term, a larger batch or fewer "
            "accumulation steps make the difference smaller",
            measurements,
        )
    note = (
        f"; normalising by rows instead would weigh a token {skew:.2g}× more in the smallest"
        if skew > 1
        else ""
    )
    return Finding("accumulation", "ok", described + note, "nothing to do", measurements)


# -- teacher cost per token ------------------------------------------------------------------


def lm_teacher_cost_check(
    teacher: Teacher,
    student: nn.Module,
    batch: Batch,
    *,
    micro_batches: int,
    cache_batches: int,
    cache_bytes_per_token: float,
    reads_logits: bool,
    cacheable: bool = True,
    repeats: int = 3,
    max_overhead: float = 0.5,
    min_seconds: float = 30.0,
) -> Finding:
    """What the teacher costs per token, and whether a cache pays off. Measured: the
    teacher's answer to one batch (as the engine asks for it) and the student's forward and
    backward on it; the run's ``micro_batches`` make the online cost, the cache's one pass
    over ``cache_batches`` its cost. ``warning`` when online KD adds more than
    ``max_overhead`` to each step and a cache would save more than ``min_seconds`` in
    this run alone (a teacher that cannot be cached: ``cacheable`` False, when it adds
    more than ``min_seconds``)."""
    tokens = max(int(token_mask(batch).sum()), 1)
    probe = copy.deepcopy(student).train()

    def student_step() -> None:
        probe.zero_grad()
        logits_of(batch.run(probe)).float().logsumexp(-1).mean().backward()

    t_teacher = median_seconds(lambda: teacher(batch, logits=reads_logits), repeats)
    t_student = median_seconds(student_step, repeats)
    overhead = t_teacher / t_student
    online, cached = t_teacher * micro_batches, t_teacher * cache_batches
    size = cache_bytes_per_token * tokens * cache_batches
    measurements = {
        "teacher_ms_per_1k_tokens": 1e6 * t_teacher / tokens,
        "student_ms_per_1k_tokens": 1e6 * t_student / tokens,
        "online_overhead": overhead,
        "run_teacher_seconds": online,
        "cache_teacher_seconds": cached,
        "cache_bytes": size,
        "tokens_per_batch": tokens,
    }
    described = (
        f"teacher {1e6 * t_teacher / tokens:.1f} ms vs student step {1e6 * t_student / tokens:.1f} "
        f"ms per 1,000 tokens: online KD adds {100 * overhead:.0f}% per step, {online:.1f} s "
        f"over the run; a cache takes {cached:.1f} s once and {size / 2**20:.1f} MiB"
    )
    if not cacheable:
        described = described.split("; a cache")[0] + " (this teacher cannot be cached)"
        if overhead > max_overhead and online > min_seconds:
            return Finding(
                "teacher_cost",
                "warning",
                f"the teacher dominates training: {described}",
                "run it in bf16 (teacher.autocast) or distil from a smaller teacher",
                measurements,
            )
        return Finding("teacher_cost", "ok", described, "nothing to do", measurements)
    if overhead > max_overhead and online - cached > min_seconds:
        return Finding(
            "teacher_cost",
            "warning",
            f"the teacher dominates training: {described}",
            f"cache its answers once (distill cache; cache: {{top_k: 64}}) and save "
            f"{online - cached:.0f} s per run, or run it in bf16 (teacher.autocast)",
            measurements,
        )
    if online <= cached:
        described += "; this run reads too few batches for a cache to pay off (unless reused)"
    return Finding("teacher_cost", "ok", described, "nothing to do", measurements)
