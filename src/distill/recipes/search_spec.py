"""The ``search:`` section of a recipe: the students ``distill search`` may try (each
architecture field a fixed value or a range to search), the deployment budget they must
meet, and how the search runs (Optuna sampler, trials, the short distillation that scores a
candidate)."""

from __future__ import annotations

import difflib
import math
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from distill.recipes.specs import Strict

DIMENSION_KEYS = {"choices", "low", "high", "step", "log", "layers"}
Measured = float | Literal["student"]


class Dimension(Strict):
    """One searched architecture field: ``{choices: [...]}``; ``{low, high}`` with an
    optional ``step`` or ``log: true`` (integers when both ends are integers); or a list of
    widths, ``{layers: [fewest, most], low, high}``, one per layer (an MLP's ``hidden``, a
    CNN's ``channels``), each searched on its own."""

    choices: list[Any] | None = Field(None, min_length=1, description="the values to try")
    low: int | float | None = Field(None, description="the range's lowest value")
    high: int | float | None = Field(None, description="the range's highest value")
    step: int | float | None = Field(None, gt=0, description="the range's spacing")
    log: bool = Field(False, description="draw the range on a log scale")
    layers: tuple[int, int] | None = Field(
        None, description="[fewest, most] layers, each of a width in the range"
    )

    @model_validator(mode="after")
    def _kind(self) -> Dimension:
        ranged = self.low is not None or self.high is not None
        if self.choices is not None:
            if ranged or self.step is not None or self.log or self.layers is not None:
                raise ValueError("give either choices or low/high (with step, log, layers)")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give choices, or both low and high")
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("give step or log: true, not both")
        if self.layers is not None:
            fewest, most = self.layers
            if not 1 <= fewest <= most:
                raise ValueError(f"layers [{fewest}, {most}] must be 1 <= fewest <= most")
            if not self.integer:
                raise ValueError("layers: the widths low and high must be integers")
        return self

    @property
    def integer(self) -> bool:
        ends = (self.low, self.high, self.step if self.step is not None else 1)
        return all(isinstance(v, int) and not isinstance(v, bool) for v in ends)

    def corners(self) -> list[Any]:
        """The smallest and the largest value this field can take (a list per layer count)."""
        if self.choices is not None:
            return list(self.choices)
        if self.layers is None:
            return [self.low, self.high]
        return [[self.low] * self.layers[0], [self.high] * self.layers[1]]


class Candidate(Strict):
    """A family of students: ``model`` as in ``student.model`` and its ``args``, each a
    fixed value or a ``Dimension`` to search (a mapping with choices, low/high, layers)."""

    model: str = Field(description="as student.model")
    args: dict[str, Any] = Field(
        default_factory=dict, description="each a fixed value or a dimension to search"
    )

    @field_validator("args")
    @classmethod
    def _dimensions(cls, args: dict[str, Any]) -> dict[str, Any]:
        return {name: dimension(name, value) for name, value in args.items()}

    @property
    def searched(self) -> dict[str, Dimension]:
        return {k: v for k, v in self.args.items() if isinstance(v, Dimension)}


def is_dimension(value: Any) -> bool:
    """A mapping meant as a searched range: any of its keys is a ``Dimension`` key, or
    close to one (a typo such as ``lo``); other mappings are fixed values (a model's
    nested settings)."""
    return isinstance(value, dict) and any(
        key in DIMENSION_KEYS or difflib.get_close_matches(str(key), DIMENSION_KEYS, cutoff=0.6)
        for key in value
    )


def dimension(name: str, value: Any) -> Any:
    """``value`` as a ``Dimension`` if it is meant as one, else as given."""
    if not is_dimension(value):
        return value
    unknown = [str(key) for key in value if key not in DIMENSION_KEYS]
    if unknown:
        guesses = {key: difflib.get_close_matches(key, DIMENSION_KEYS, n=1) for key in unknown}
        named = ", ".join(
            f"{key!r}" + (f" (did you mean {guess[0]!r}?)" if guess else "")
            for key, guess in guesses.items()
        )
        raise ValueError(
            f"{name}: unknown range key {named}; a searched field is {{low, high}} (with "
            "step, log or layers) or {choices: [...]}"
        )
    try:
        return Dimension.model_validate(value)
    except ValidationError as error:
        raise ValueError(f"{name}: {first_problem(error)}") from None


def first_problem(error: ValidationError) -> str:
    item = error.errors()[0]
    where = ".".join(map(str, item["loc"]))
    message = item["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


ONNX_MEASURES = ("onnx_latency_ms", "onnx_int8_latency_ms")  # timed together, back to back


class BudgetSpec(Strict):
    """What every candidate must meet, measured on this machine before it trains (forwards
    of ``batch_size`` examples; 1: the latency of one request): a number, or ``student``,
    the recipe's hand-picked student measured the same way at the start of the search."""

    batch_size: int = Field(
        1,
        ge=1,
        description="examples per timed forward (latency and memory per example "
        "at a serving batch size)",
    )
    latency_ms: Measured | None = Field(None, description="CPU latency per example (median)")
    parameters: int | Literal["student"] | None = Field(None, ge=1, description="at most this many")
    memory_mb: Measured | None = Field(
        None, description="weights plus the peak of tensors alive during the forward"
    )
    onnx_latency_ms: Measured | None = Field(
        None, description="ONNX Runtime latency per example (the compress extra)"
    )
    onnx_int8_latency_ms: Measured | None = Field(
        None, description="ONNX Runtime latency per example of its dynamic int8 version"
    )
    margin: float = Field(
        0.05,
        ge=0,
        le=1,
        description="share added to a latency limit measured from the recipe's student "
        "(`student`, the upper quartile of 5 timings), for the timing noise of this machine",
    )

    @field_validator("latency_ms", "memory_mb", "onnx_latency_ms", "onnx_int8_latency_ms")
    @classmethod
    def _positive(cls, value: Measured | None) -> Measured | None:
        if isinstance(value, float) and not (value > 0 and math.isfinite(value)):
            raise ValueError(f"must be a positive number or 'student', got {value}")
        return value

    def in_onnx_runtime(self) -> list[str]:
        """The ONNX Runtime latencies the budget names (both are then measured)."""
        return [name for name in ONNX_MEASURES if getattr(self, name) is not None]

    def limits(self) -> dict[str, Any]:
        """The limits set, by measure name."""
        settings = {"batch_size", "margin"}
        return {k: v for k, v in self.model_dump(exclude=settings).items() if v is not None}


class SearchSpec(Strict):
    """``distill search``: Optuna tries ``trials`` students drawn from ``candidates``; each
    one that meets the ``budget`` is distilled briefly (the recipe's ``train`` with
    ``search.train`` on top) and scored by its best validation ``metric``; then the best
    one is distilled with the recipe's full budget once per seed in ``seeds``, next to the
    recipe's own student."""

    candidates: list[Candidate] = Field(min_length=1, description="the families searched")
    budget: BudgetSpec = Field(default_factory=BudgetSpec, description="what a student must meet")
    sampler: Literal["tpe", "nsga2", "random"] = Field(
        "tpe",
        description="tpe: the best metric under the budget; nsga2: the Pareto front of metric "
        "and latency; random: the baseline to beat",
    )
    trials: int = Field(40, ge=1, description="trials in all (--trials overrides)")
    metric: str | None = Field(
        None, description="the validation metric scored (default: accuracy; loss for LMs)"
    )
    train: dict[str, Any] = Field(
        default_factory=lambda: {"epochs": 1},
        description="train settings of a trial's short distillation, over the recipe's",
    )
    holdout: int = Field(
        0,
        ge=0,
        description="inputs of the student's training rows held out of every trial; each "
        "trial's heldout_kl_to_teacher and heldout_teacher_agreement are measured on them "
        "at its end (proxies that need no labels: metric: heldout_kl_to_teacher)",
    )
    evaluations: int = Field(
        4, ge=1, description="validations per trial (the pruner stops a trial between them)"
    )
    pruner: Literal["median", "halving", "hyperband", "none"] = Field(
        "median",
        description="how trials stop early (tpe, random): median: below the median of earlier "
        "trials at the same validation; halving: successive halving, only the best third of "
        "the trials at each rung (a validation) go on; hyperband: several halving brackets "
        "with different first rungs (Li et al. 2018)",
    )
    population: int = Field(10, ge=2, description="nsga2: candidates per generation")
    seeds: list[int] | None = Field(
        None, min_length=1, description="seeds of the full runs (default: the recipe's)"
    )
    compare: bool = Field(True, description="also distil the recipe's own student fully")

    @model_validator(mode="after")
    def _held_out_metric_needs_rows(self) -> SearchSpec:
        if self.metric is not None and self.metric.startswith("heldout_") and not self.holdout:
            raise ValueError(
                f"metric {self.metric} is measured on held-out inputs: set search.holdout "
                "(e.g. 5000) to hold that many of the student's training rows out of every trial"
            )
        return self
