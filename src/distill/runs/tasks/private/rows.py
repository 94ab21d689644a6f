"""Classification students that never see the training data, as a transfer set
(``transfer_rows``, which the classification task calls once its teacher is known).

- ``data.synthetic``: ``synthetic_rows`` inverts the teacher (DeepInversion) into a
  transfer set kept in the cache (``$DISTILL_CACHE/synthetic``), made once, resumable and
  checksummed, keyed by the teacher and the settings; the student learns from the teacher
  on it (mixed pairs by default).
- ``pate``: ``split_public`` sets the public pool aside; ``pate_teachers`` trains one
  teacher per disjoint partition of the rest (each kept in the teacher store, so a killed
  run continues with the next); ``pate_rows`` asks the teachers about the student's
  queries, answers with Confident-GNMax, keeps the answers (never the vote counts) in the
  cache and accounts their privacy cost; ``privacy_note`` says what that covers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from distill.data import Augmented, Mixed
from distill.errors import CacheError, RecipeError
from distill.methods.generator import GeneratorSettings
from distill.methods.inversion import InversionSettings
from distill.methods.pate import Votes, confident_gnmax, gnmax, partition, pate_epsilon
from distill.methods.pate_dependent import data_dependent_epsilon
from distill.methods.synthetic import SyntheticSet, write_synthetic_set
from distill.paths import (
    atomic_save,
    cache_root,
    json_digest,
    read_json,
    verify_checksums,
    write_checksums,
    write_json,
)
from distill.recipes import Recipe
from distill.runs.report.tables import span
from distill.runs.store import Trained, fit_and_store_teacher, reuse_or_train, teacher_cache_dir
from distill.runs.task import loader
from distill.runs.workdir import Log
from distill.training.progress import TrainingProgress

ANSWERS_FILE = "answers.safetensors"
PRIVACY_FILE = "privacy.json"
MEMBER_VAL_ROWS = 512  # each PATE teacher's logged validation (never used to select it)


def synthetic_rows(
    recipe: Recipe,
    teacher: nn.Module,
    shape: tuple[int, ...],
    num_classes: int,
    build_student: Callable[[], nn.Module],
    progress: bool,
    log: Log,
) -> tuple[Dataset, dict[str, Tensor] | None, dict[str, Any]]:
    """The synthetic transfer set of ``data.synthetic`` (made now if the cache lacks it),
    the weights the distilled student starts from (``generator.warm_start``: the fresh
    ``build_student()`` that learned alongside the generator; else None) and what the
    summary says of it (the wall time of its making in this run: 0 when reused)."""
    spec = recipe.data.synthetic  # type: ignore[union-attr]
    assert spec is not None
    teacher_id = teacher_cache_dir(recipe).name
    # how the inputs were made (for DeepInversion, keyed as before generators existed)
    made = spec.model_dump(
        mode="json",
        exclude={"mixup", "augment"} | ({"generator"} if spec.generator is None else set()),
    )
    student = None
    if spec.generator is not None:
        made["student"] = recipe.student.model_dump(mode="json")
        made["generator"].pop("warm_start")  # how the student starts, not the inputs
        settings: InversionSettings | GeneratorSettings = GeneratorSettings(
            **spec.generator.model_dump(exclude={"warm_start"}), input_range=spec.input_range
        )
        torch.manual_seed(recipe.seed)
        student = build_student()
        kept = math.ceil(spec.examples / spec.batch_size)
        how = (
            f"a generator, {kept * spec.generator.rounds_per_batch:,} rounds of "
            f"{spec.batch_size}, {kept:,} kept"
        )
    else:
        knobs = spec.model_dump(
            exclude={"method", "generator", "examples", "batch_size", "mixup", "augment"}
        )
        settings = InversionSettings(**knobs)
        how = f"DeepInversion, {spec.steps} steps per batch of {spec.batch_size}"
    folder = cache_root() / "synthetic" / f"{teacher_id}-{json_digest(made)}"
    log(f"data-free: {spec.examples:,} inputs from the teacher by {how} ({folder})")
    started = time.perf_counter()
    write_synthetic_set(
        teacher,
        folder,
        examples=spec.examples,
        shape=shape,
        num_classes=num_classes,
        teacher_id=teacher_id,
        settings=settings,
        batch_size=spec.batch_size,
        seed=recipe.seed,
        student=student,
        progress=progress,
        log=log,
    )
    seconds = time.perf_counter() - started
    made_set = SyntheticSet(folder)
    record = {"method": spec.method, "examples": spec.examples, "folder": str(folder),
              "seconds_this_run": seconds}  # fmt: skip
    start = made_set.student_weights if spec.generator and spec.generator.warm_start else None
    if start is not None:
        log(
            "data-free: the distilled student starts from the one that learned beside the generator"
        )
    rows: Dataset = Mixed(made_set) if spec.mixup else made_set
    if spec.augment:
        rows = Augmented(rows, flip=len(shape) == 3, crop_padding=2)
    return rows, start, record


def split_public(train: Dataset, recipe: Recipe) -> tuple[Subset, Subset]:
    """(public pool, private rows) of the training split: ``pate.public`` rows drawn with
    the split seed, and the rest; too few rows for the partitions is a one-line error."""
    spec = recipe.pate
    assert spec is not None
    rows = len(train)  # type: ignore[arg-type]
    if spec.public >= rows:
        raise RecipeError(
            f"pate.public {spec.public:,} leaves no private rows: the training split (less "
            f"validation) has {rows:,}; lower pate.public"
        )
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(recipe.data.split_seed))
    public, private = order[: spec.public].tolist(), order[spec.public :].tolist()
    if spec.teachers > len(private):
        raise RecipeError(
            f"pate.teachers {spec.teachers:,} is more than the {len(private):,} private rows "
            "(the training split less validation and pate.public); lower pate.teachers"
        )
    return Subset(train, public), Subset(train, private)


def pate_teachers(
    recipe: Recipe,
    private: Dataset,
    val: Dataset,
    num_classes: int,
    build: Callable[[], nn.Module],
    progress: bool,
    log: Log,
) -> tuple[Votes, dict[str, Any]]:
    """``pate.teachers`` copies of the recipe's teacher, copy k trained on partition k
    only (and reused from the teacher store when an earlier run trained it)."""
    spec = recipe.pate
    assert spec is not None
    parts = partition(len(private), spec.teachers, seed=recipe.seed)  # type: ignore[arg-type]
    log(
        f"PATE: {spec.teachers} teachers {recipe.teacher.model}, each on its own "  # type: ignore[union-attr]
        f"{span(len(parts[-1]), len(parts[0]))} of {len(private):,} private rows"  # type: ignore[arg-type]
    )
    val_rows = Subset(val, range(min(MEMBER_VAL_ROWS, len(val))))  # type: ignore[arg-type]
    members, seconds, trained = [], 0.0, 0
    with TrainingProgress(spec.teachers, enabled=progress) as bar:
        for k, rows in enumerate(parts):
            part = f"pate {k}/{spec.teachers} public {spec.public}"

            def train(k: int = k, rows: Tensor = rows, part: str = part) -> Trained:
                nonlocal trained
                torch.manual_seed(recipe.seed * 100_003 + k)
                model = build()
                info = fit_and_store_teacher(
                    recipe,
                    model,
                    loader(Subset(private, rows.tolist()), recipe, True),
                    loader(val_rows, recipe, False),
                    False,
                    lambda line: None,
                    part=part,
                )
                trained += 1
                return model.eval(), info

            stored = reuse_or_train(recipe, build, train, log, part, say_reused=False)
            members.append(stored[0])
            seconds += stored[1].get("train_seconds", 0.0)
            bar.update(k + 1)
    log(f"PATE: trained {trained} teachers, reused {spec.teachers - trained} from the store")
    return Votes(members, num_classes).eval(), {"model": "pate", "train_seconds": seconds}


@torch.no_grad()
def _counts(votes: Votes, rows: Dataset, recipe: Recipe, progress: bool) -> tuple[Tensor, Tensor]:
    """The teachers' vote counts per query, and the queries' true labels (to score the
    answers; the student never sees them)."""
    batches = DataLoader(rows, batch_size=recipe.data.eval_batch_size)  # type: ignore[union-attr]
    counts, truth = [], []
    with TrainingProgress(len(batches), enabled=progress) as bar:
        for i, (x, y, *_) in enumerate(batches):
            counts.append(votes.counts(x))
            truth.append(y)
            bar.update(i + 1)
    return torch.cat(counts), torch.cat(truth)


class Answered(Dataset):
    """The answered queries with their noisy labels: rows ``(x, label, meta...)``; with
    ``unanswered``, every public row too, unlabelled (``-100``): the unanswered queries
    and the public inputs never asked about (they cost no privacy)."""

    def __init__(self, public: Dataset, labels: Tensor, unanswered: bool = False) -> None:
        full = torch.full((len(public),), -100, dtype=torch.long)  # type: ignore[arg-type]
        full[: len(labels)] = labels.where(labels >= 0, -100)  # unanswered: -1
        self.index = torch.nonzero(full >= 0).flatten().tolist()
        if unanswered:
            self.index += torch.nonzero(full < 0).flatten().tolist()
        self.public, self.labels = public, full

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        x, _, *meta = self.public[self.index[i]]
        return (x, int(self.labels[self.index[i]]), *meta)


def pate_rows(
    recipe: Recipe, public: Dataset, votes: Votes, progress: bool, log: Log
) -> tuple[Dataset, dict[str, Any]]:
    """The student's rows (answered queries, noisy labels) and the privacy record."""
    spec = recipe.pate
    assert spec is not None
    queries = Subset(public, range(spec.queries or len(public)))  # type: ignore[arg-type]
    answers_of = spec.model_dump(exclude={"unanswered", "ema_momentum"})  # not the student's
    key = {"teachers": teacher_cache_dir(recipe, "pate").name, "pate": answers_of}
    folder = cache_root() / "pate" / json_digest({**key, "seed": recipe.seed})
    if (folder / PRIVACY_FILE).exists():
        damaged = verify_checksums(folder)
        if damaged:
            log(f"{folder}: {', '.join(damaged)} damaged (checksum differs); answering again")
        else:
            labels = load_file(str(folder / ANSWERS_FILE))["labels"]
            privacy = read_json(folder / PRIVACY_FILE, CacheError)
            log(f"PATE: {privacy['answered']:,} answers reused from {folder}")
            return student_rows(public, labels, spec.unanswered, log), privacy
    log(f"PATE: the teachers vote on {len(queries):,} public queries")
    counts, truth = _counts(votes, queries, recipe, progress)
    generator = torch.Generator().manual_seed(recipe.seed)
    if spec.threshold is not None:
        assert spec.sigma_threshold is not None
        labels = confident_gnmax(
            counts, spec.threshold, spec.sigma_threshold, spec.sigma, generator
        ).labels
    else:
        labels = gnmax(counts, spec.sigma, generator)
    answered = int((labels >= 0).sum())
    epsilon, order = pate_epsilon(
        answered, spec.sigma, spec.delta, len(queries), spec.sigma_threshold
    )
    dependent, dependent_order = data_dependent_epsilon(
        counts.double().numpy(), (labels >= 0).numpy(), spec.sigma, spec.delta,
        spec.threshold, spec.sigma_threshold,
    )  # fmt: skip
    hit = (labels == truth)[labels >= 0]
    privacy = {
        "queries": len(queries),
        "answered": answered,
        "epsilon": epsilon,
        "delta": spec.delta,
        "order": order,
        "sigma": spec.sigma,
        "threshold": spec.threshold,
        "sigma_threshold": spec.sigma_threshold,
        "teachers": spec.teachers,
        "answer_accuracy": float(hit.float().mean()) if answered else None,
        "bound": "data-independent RDP (Opacus), converted to (ε, δ)",
        # the analysis of this run's votes (Papernot et al. 2018), not released privately
        "epsilon_data_dependent": dependent,
        "order_data_dependent": dependent_order,
    }
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save(folder / ANSWERS_FILE, lambda p: save_file({"labels": labels}, str(p)))
    write_json(folder / PRIVACY_FILE, privacy, indent=2)
    write_checksums(folder, [ANSWERS_FILE, PRIVACY_FILE])
    log(privacy_note(privacy))
    return student_rows(public, labels, spec.unanswered, log), privacy


def student_rows(public: Dataset, labels: Tensor, unanswered: str, log: Log) -> Answered:
    """The PATE student's rows: the answered queries, and with ``unanswered:
    mean_teacher`` every other public input, unlabelled."""
    rows = Answered(public, labels, unanswered == "mean_teacher")
    if unanswered == "mean_teacher":
        answered = int((labels >= 0).sum())
        log(
            f"PATE: the student learns {answered:,} answers, and all {len(rows):,} public "
            "inputs from its own moving average (Mean Teacher)"
        )
    return rows


def privacy_note(privacy: dict[str, Any]) -> str:
    """One paragraph: the (ε, δ) and what it protects."""
    checked = (
        f"Confident-GNMax (threshold {privacy['threshold']:g}, σ₁ {privacy['sigma_threshold']:g}, "
        f"paid on all {privacy['queries']:,} queries)"
        if privacy["threshold"] is not None
        else "GNMax on every query"
    )
    accuracy = privacy.get("answer_accuracy")
    return (
        f"Privacy: ({privacy['epsilon']:.2f}, {privacy['delta']:g})-DP for the private "
        f"training rows, partitioned among {privacy['teachers']} teachers; "
        f"{privacy['answered']:,} of {privacy['queries']:,} public queries answered by "
        f"{checked}, σ {privacy['sigma']:g}; bound: {privacy['bound']} at order "
        f"{privacy['order']:g}."
        + (
            f" The data-dependent analysis of these votes (Papernot et al. 2018) gives "
            f"ε = {privacy['epsilon_data_dependent']:.2f}; it depends on the private votes and "
            "is not released through smooth sensitivity, so it is the run's analysis, not "
            "a published guarantee."
            if privacy.get("epsilon_data_dependent") is not None
            else ""
        )
        + (
            f" {100 * accuracy:.1f}% of the answers are the true class."
            if accuracy is not None
            else ""
        )
        + " Not protected: the public inputs the student saw and their answers; the "
        "validation split (logged, not used to select); the recipe's seed, which draws the "
        "noise (keep it secret)."
    )
