"""A kind of run: the ``Task`` core every kind has, and the capabilities a kind may add.

A ``Task`` is built per run from its recipe (``runs.table.task_for``) and holds that run's
state: the splits ``prepare`` made (``task.data``) and whatever the teacher taught it (a CLIP
teacher's logit scale, a diffusion run's domain classifier). The driver (``runs.driver``)
does everything else the same way for every kind of run.

The core is twelve hooks. What only some kinds of run can do is a capability, a small
base class a task adds to its bases; the driver, the commands and the doctor ask
``isinstance(task, Capability)``, never a task's name:

- ``Cacheable``: its teacher's answers can be stored once and read back (``distill cache``).
- ``Exportable``: its students become checked ONNX graphs (``distill export``).
- ``Samples``: ``distill sample`` draws from its runs' generative models.
- ``Generates``: its teacher writes a dataset (``distill generate``).
- ``Diagnosable``: ``distill doctor`` has checks for it.
- ``Chained``: it distils a chain of students before the final one (a teacher assistant,
  born-again generations); ``LessonPerStage``: each with its own lesson (diffusion's rounds).
- ``Peers``: its students may learn from each other (online mutual learning).
- ``Drafts``: its students are measured as speculative-decoding drafts for its teacher
  (``distill eval --speculative``).
- ``TransferSet``: the student's rows are made from the teacher (data-free, PATE).
- ``WrapsTeacher``: a student learns from the teacher through a wrapper (another tokenizer).
- ``MixesInputs`` / ``RewritesBatches``: every student's batches are mixed (mixup), or the
  distilled student's are rewritten (on-policy answers).
- ``SavesStudent``: a student is kept in more than ``student.safetensors``.
- ``ValidatesOwn``: its students are measured during training by its own measure, not by a
  classifier's accuracy on the validation rows (features judged by k-NN).
- ``Searchable``: ``distill search`` can search its students.
- ``Pushable``: ``distill push`` publishes its students on the Hugging Face Hub.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from distill import teachers
from distill.batch import Batch
from distill.cache import Layout
from distill.losses import cross_entropy
from distill.objective import Objective, Term
from distill.recipes import ModelSpec, Recipe
from distill.runs.workdir import Log
from distill.training import Distiller


@dataclass
class Splits:
    """The rows of a run: what the distilled and the label-only students train on, the
    validation rows that select each model, the test rows it is measured on."""

    student_train: Dataset
    baseline_train: Dataset
    val: Dataset
    test: Dataset
    regime: str  # one line for the log and the report: what data, how many labels
    # where the distilled students' lessons come from (e.g. how many rows each member of a
    # routed teacher taught): in the summary and in each of their checkpoints
    provenance: dict[str, Any] = field(default_factory=dict, kw_only=True)


@dataclass
class Lesson:
    """What one student learns from: ``objective(student)``; the live ``teacher`` model
    (the recipe's, or the stage before), or instead a teacher cache's ``answers`` or the
    student's own moving average (``ema_momentum``); its ``rows`` (``"student"``: the
    distilled student's, ``"baseline"``: the labelled ones); whether the task may rewrite
    its batches (``on_policy``: the student writes the answers)."""

    objective: Callable[[nn.Module], Objective]
    teacher: nn.Module | None = None
    answers: teachers.Teacher | None = None
    ema_momentum: float | None = None
    rows: Literal["student", "baseline"] = "student"
    on_policy: bool = False
    transform: Callable[[Batch, int], Batch] | None = None  # the task's for this stage
    answers_for: Callable[[nn.Module], teachers.Teacher] | None = None  # built on the student
    start: dict[str, Tensor] | None = None  # the weights it starts from (None: fresh, seeded)


@dataclass
class Objectives:
    """What students learn from once the teacher is known: the ``recipe`` they follow (a
    task may fill in what its objective's terms leave out) and the label-only
    student's objective (``baseline``)."""

    recipe: Recipe
    baseline: Objective


def loader(dataset: Dataset, recipe: Recipe, train: bool) -> DataLoader:
    spec = recipe.data
    return DataLoader(
        dataset,
        batch_size=spec.batch_size if train else spec.eval_batch_size,
        shuffle=train,
        num_workers=spec.num_workers,
    )


class Task(ABC):
    """One kind of run, for one recipe: how it prepares its data, builds and measures its
    models. ``name`` is the recipe's ``task``; ``data`` is set by ``prepare``."""

    name: ClassVar[str] = ""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self._data: Splits | None = None

    @property
    def data(self) -> Any:
        """The splits ``prepare`` made (a subclass of ``Splits``, the task's own)."""
        if self._data is None:
            raise RuntimeError(f"task {self.name}: prepare() first")
        return self._data

    @data.setter
    def data(self, value: Splits) -> None:
        self._data = value

    @abstractmethod
    def prepare(self, progress: bool, log: Log) -> Splits:
        """Load and split the recipe's data (kept as ``self.data``) and return it."""
        raise NotImplementedError

    def preflight(self) -> None:  # noqa: B027
        """Build what is cheap to build (the models, the objective) and check that it fits
        the data before anything trains, so a bad recipe fails in seconds, naming the field.
        No random draws: the run that follows is the same as without it."""

    @abstractmethod
    def teacher(self, progress: bool, log: Log) -> tuple[nn.Module, dict[str, Any]]:
        """The recipe's teacher: loaded, reused from the teacher store, or trained."""
        raise NotImplementedError

    @abstractmethod
    def train_teacher(self, progress: bool, log: Log) -> dict[str, Any]:
        """``distill teacher``: train (or fine-tune) the teacher and keep it in the store."""
        raise NotImplementedError

    @abstractmethod
    def build_student(self, spec: ModelSpec, teacher: nn.Module | None) -> nn.Module:
        """The student ``spec`` names (some are built from ``teacher``), before training."""
        raise NotImplementedError

    @abstractmethod
    def load_student(self, run_dir: Path) -> nn.Module:
        """The distilled student a run saved in ``run_dir`` (its checksums verified)."""
        raise NotImplementedError

    def objectives(self) -> Objectives:
        """Once the teacher is known: the recipe as given, and cross-entropy on the labels
        for the label-only student (and a ``recover: labels`` compression stage)."""
        return Objectives(self.recipe, Objective(ce=Term(cross_entropy)))

    def evaluate(self, model: nn.Module, judge: teachers.Teacher | None) -> dict[str, Any]:
        """Test-split metrics of ``model``, with KL and agreement to ``judge`` if given."""
        test = loader(self.data.test, self.recipe, False)
        return Distiller(model, judge, progress=False).evaluate(test)

    @abstractmethod
    def latency_input(self, model: nn.Module) -> tuple[Tensor, dict[str, Any]]:
        """One test input for a batch-1 latency measurement, and the forward's keywords."""
        raise NotImplementedError

    @abstractmethod
    def summary_fields(
        self, models: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Task-specific summary entries: (those before ``regime``, those after the gain)."""
        raise NotImplementedError

    @abstractmethod
    def describe_eval(self, metrics: dict[str, float]) -> str:
        """``distill eval``'s line for a student's test metrics."""
        raise NotImplementedError

    @abstractmethod
    def describe_teacher(self, info: dict[str, Any]) -> str:
        """``distill teacher``'s line for the teacher it trained."""
        raise NotImplementedError


def gap_closed(models: dict[str, dict[str, Any]]) -> float | None:
    """Share of the teacher–baseline accuracy gap that distillation closes (a summary
    entry of the tasks measured by accuracy)."""
    if "baseline" not in models or "teacher" not in models:
        return None
    gap = models["teacher"]["accuracy"] - models["baseline"]["accuracy"]
    if gap <= 0:
        return None
    return (models["student"]["accuracy"] - models["baseline"]["accuracy"]) / gap


# -- capabilities -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheMember:
    """One member of a routed teacher, cached apart: its ``name`` (the folder
    ``<cache dir>/member-<name>``), its ``model``, the ``rows`` routed to it and the
    ``layout`` of its cache (its fingerprint names the member and those rows)."""

    name: str
    model: nn.Module | teachers.Teacher  # a served member answers over HTTP
    rows: Dataset
    layout: Layout


class Cacheable(ABC):
    """The teacher's answers can be stored once (``distill cache``) and read back.

    ``cache_holds_test``: the cache holds the test rows too, so students are measured
    against the cache they learned from (a top-k cache would only bound the KL, so
    language models are measured against the live teacher). ``cache_example``: the
    section to suggest when a recipe lacks one."""

    cache_holds_test: ClassVar[bool] = False
    cache_example: ClassVar[str] = "cache: {}"

    @abstractmethod
    def cache_rows(self) -> Dataset:
        """The rows the teacher-output cache holds (example ids unique among them)."""
        raise NotImplementedError

    @abstractmethod
    def cache_layout(self, teacher: nn.Module, rows: int) -> Layout:
        raise NotImplementedError

    @abstractmethod
    def cache_fingerprint(self) -> dict[str, Any]:
        """What the cached answers depend on besides the inputs (which reads check by
        digest): a run reading the cache must agree on all of it."""
        raise NotImplementedError

    def cache_members(self, teacher: nn.Module) -> list[CacheMember]:
        """A routed teacher's members, each cached apart on the rows routed to it (so a row
        reads only its member's shards, and a member's cache serves any recipe that routes
        the same rows to it); none, by default: one cache of the whole teacher."""
        return []

    def cache_model(self, teacher: nn.Module) -> nn.Module:
        """The module whose outputs the cache stores: the teacher by default."""
        return teacher

    def cached_teacher(self, answers: teachers.Teacher) -> teachers.Teacher:
        """The teacher a distilled student reads from the cache: its answers as stored (a
        ``teachers.Cached``, or a routed ``teachers.Ensemble`` of them)."""
        return answers


class Exportable:
    """Its students are classifiers of one tensor: ``distill export`` (and a recipe's
    ``export``) turns them into ONNX graphs checked against PyTorch on the test split."""

    def deployed_student(self, run_dir: Path) -> nn.Module:
        """The classifier a deployment runs, made from the run's student: the student itself
        (a self-supervised encoder: with its linear probe as the classifier)."""
        return self.load_student(run_dir)  # type: ignore[attr-defined]


class Samples(ABC):
    """``distill sample`` draws from a run's generative model."""

    @abstractmethod
    def sample(self, run_dir: Path, **options: Any) -> dict[str, Any]:
        raise NotImplementedError


class Generates(ABC):
    """``distill generate``: the teacher answers the recipe's prompts, a dataset."""

    @abstractmethod
    def generate(self, progress: bool, log: Log) -> Path:
        raise NotImplementedError


class Diagnosable:
    """``distill doctor`` has checks for it: ``checks`` says which (``classifier``: the
    five checks on class logits, with the temperature sweep; ``own``: the kind's own, run
    by ``own_checks`` and drawn by ``plot_checks``: a language model's vocabulary, template,
    length and cache cost, a self-supervised encoder's collapse)."""

    checks: ClassVar[Literal["classifier", "own"]] = "classifier"

    def doctor_notes(self, teacher: nn.Module) -> list[str]:
        """What a reader of the findings should know about this kind of teacher."""
        return []

    def own_checks(
        self, sample: int, progress: bool, log: Log
    ) -> tuple[list[Any], list[str]] | None:
        """Its own checks' findings and notes; None: the five checks on class logits."""
        return None

    def plot_checks(self, findings: list[Any], out_dir: Path) -> dict[str, Path]:
        """The figure of its own checks' findings (name -> PNG); none by default."""
        return {}


class Chained(ABC):
    """It distils a chain of students before the final one, each the next one's teacher."""

    @abstractmethod
    def chain_stages(self) -> list[tuple[str, ModelSpec | None, str]]:
        """(run folder, student spec or None for the recipe's, description) of the students
        distilled before the final one."""
        raise NotImplementedError


class Drafts(ABC):
    """Its students can draft for its teacher (speculative decoding)."""

    @abstractmethod
    def measure_draft(self, run_dir: Path, *, row: str, log: Log, **options: Any) -> dict[str, Any]:
        """The run's ``row`` as a draft for its teacher: acceptance, speed-up, ..."""
        raise NotImplementedError


class Peers(ABC):
    """Its students may learn from each other: several trained together as a cohort."""

    @abstractmethod
    def peers(self) -> int:
        """How many students train together (1: one student)."""
        raise NotImplementedError


class LessonPerStage(Chained):
    """Each student of its chain learns a lesson of its own, not the recipe's objective."""

    @abstractmethod
    def stage_lesson(self, teacher: nn.Module | None, stage: str, per_epoch: int) -> Lesson:
        """What the student of ``stage`` (a chain folder, or ``"student"``) learns from
        ``teacher``."""
        raise NotImplementedError


class TransferSet(ABC):
    """The distilled student's rows are made from the teacher once it is known (inputs
    synthesised from it, a private ensemble's answers to public inputs)."""

    @abstractmethod
    def transfer_set(self, teacher: nn.Module, progress: bool, log: Log) -> nn.Module | None:
        """Make the rows (``self.data`` changes); returns the teacher the students learn
        from live: ``teacher``, or None when they learn only the rows' answers."""
        raise NotImplementedError

    def student_start(self) -> dict[str, Tensor] | None:
        """The weights the distilled student starts from, when making the rows trained one
        (a generator's student, which learned alongside it); None: a fresh student."""
        return None

    def own_average(self) -> float | None:
        """The momentum of the distilled student's own moving average, when it learns
        the rows without an answer from it (Mean Teacher); None: it does not."""
        return None


class WrapsTeacher(ABC):
    """A student learns from the teacher through a wrapper (its own tokenizer, a server)."""

    @abstractmethod
    def live_teacher(self, model: nn.Module) -> teachers.Teacher:
        raise NotImplementedError


class MixesInputs(ABC):
    """Every student's training batches are mixed (``data.mix``), the label-only one too."""

    @abstractmethod
    def input_mix(self) -> Callable[[Batch, int], Batch] | None:
        raise NotImplementedError


class RewritesBatches(ABC):
    """The distilled student's training batches are rewritten (on-policy answers)."""

    @abstractmethod
    def batch_transform(self, student: nn.Module) -> Callable[[Batch, int], Batch] | None:
        raise NotImplementedError


class ValidatesOwn(ABC):
    """Its students are measured at each validation by the task's own measure (the
    features' k-NN accuracy), not by a classifier's accuracy on the validation rows."""

    @abstractmethod
    def validate(self, student: nn.Module) -> dict[str, float]:
        """The validation metrics of ``student`` (logged as ``val/<name>``; returns with
        ``student`` in the mode it came in)."""
        raise NotImplementedError


class SavesStudent(ABC):
    """A student is kept in more than ``student.safetensors`` (a Hugging Face folder, a
    picture of its samples)."""

    @abstractmethod
    def save_student(self, student: nn.Module, run_dir: Path) -> list[str]:
        """The files written, relative to ``run_dir``, whose checksums go into
        finished.json (none for a picture)."""
        raise NotImplementedError


class Searchable:
    """``distill search`` can search its students: ``search_metric`` is the validation
    metric a trial is scored on unless the recipe names one; with
    ``students_from_teacher``, candidates may be built from the teacher, so the space
    and the budget are checked once it is known (else before it trains)."""

    search_metric: ClassVar[str] = "accuracy"
    students_from_teacher: ClassVar[bool] = False


class Pushable(ABC):
    """``distill push`` publishes its students: the model card's ``pipeline_tag`` and
    ``hub_library``, the folder it sends and how a reader loads it."""

    pipeline_tag: ClassVar[str] = ""
    hub_library: ClassVar[str] = "distill"

    @abstractmethod
    def hub_student(self, run_dir: Path, folder: Path, log: Log) -> None:
        """Write the run's student into ``folder`` in the format the Hub reads (or check
        that the run wrote it there); its checksums are verified first."""
        raise NotImplementedError

    @abstractmethod
    def hub_usage(self) -> list[str]:
        """The lines of Python that load the pushed student (``<this repository>``)."""
        raise NotImplementedError
