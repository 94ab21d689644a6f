"""Reading recipes: YAML (safe loader only), ``--set a.b=c`` overrides, readable errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from torch import nn

from distill.data import DATASETS
from distill.errors import RecipeError
from distill.losses.registry import loss_info
from distill.methods.token_kd import lm_head_term
from distill.objective import Objective, Term
from distill.recipes.kinds import section_for
from distill.recipes.schema import Recipe, TermSpec


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=0.01"`` -> (["train", "lr"], 0.01); the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {text!r}: write it as field.path=value, e.g. train.epochs=5")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as error:
        raise RecipeError(f"--set {text!r}: the value is not valid YAML ({error})") from None
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The recipe with ``--set a.b=c`` overrides applied; a number indexes a list
    (``teacher.members.0.model=zoo:mlp``)."""
    result = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node: Any = result
        for i, key in enumerate(path):
            above = ".".join(path[:i])
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise RecipeError(
                        f"--set {text!r}: {above} is a list of {len(node)}; index it with "
                        f"0..{len(node) - 1}"
                    )
                key = int(key)  # type: ignore[assignment]
            elif not isinstance(node, dict):
                raise RecipeError(f"--set {text!r}: {above} is a value, not a section")
            if i == len(path) - 1:
                node[key] = value
            else:
                if isinstance(node, dict) and node.get(key) is None:
                    node[key] = {}
                node = node[key]
    return result


_UNION_TAGS = {"float", "int", "str", "bool", "none", "list", "dict"}
DATA_TAGS = {*DATASETS, "text"}


def _field_path(loc: tuple[Any, ...]) -> str:
    """``objective.kd.weight`` from pydantic's location, without union-branch tags (the
    type names of a union, and the dataset that picks the data section's schema)."""
    parts: list[str] = []
    for p in map(str, loc):
        if p in _UNION_TAGS or "[" in p or (parts == ["data"] and p in DATA_TAGS):
            continue
        parts.append(p)
    return ".".join(parts) or "(top level)"


def _describe(item: dict[str, Any]) -> str:
    kind = item["type"]
    if kind == "union_tag_invalid":
        ctx = item["ctx"]
        return f"must be one of {ctx['expected_tags']} (got {ctx['tag']!r})"
    if kind == "union_tag_not_found":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; the schema is distill.recipes.Recipe)"
    if kind == "missing":
        return "required field is missing"
    message = item["msg"].removeprefix("Value error, ")
    got = item.get("input")
    return message if isinstance(got, dict) else f"{message} (got {got!r})"


def _format_errors(error: ValidationError, source: str) -> str:
    by_field: dict[str, list[str]] = {}
    for item in error.errors():
        loc = tuple(item["loc"])
        if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc += (item["ctx"]["discriminator"].strip("'"),)  # data -> data.dataset
        by_field.setdefault(_field_path(loc), []).append(_describe(item))
    lines = [f"{source}: the recipe has {len(by_field)} problem(s):"]
    for field, messages in by_field.items():
        specific = [m for m in messages if not m.startswith("Input should be a valid number")]
        if len(specific) < len(messages) and any("ScheduleSpec" in m for m in specific):
            got = specific[0].rpartition(" (got ")[2]
            specific = [
                "expected a number or a schedule such as "
                f"{{kind: warmup, value: 1.0, epochs: 20}} (got {got}"
            ]
        text = "; ".join(specific or messages)
        lines.append(f"  {text}" if field == "(top level)" else f"  {field}: {text}")
    return "\n".join(lines)


def validate_recipe(raw: Any, source: str = "recipe") -> Recipe:
    if not isinstance(raw, dict):
        raise RecipeError(
            f"{source}: a recipe is a YAML mapping of sections, got {type(raw).__name__}"
        )
    try:
        kind = section_for(raw)
    except ValueError as error:
        raise RecipeError(f"{source}: the recipe has 1 problem(s):\n  {error}") from None
    try:
        return kind.model_validate(raw)
    except ValidationError as error:
        raise RecipeError(_format_errors(error, source)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a text file (a recipe is YAML)") from None
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML: {error}") from None
    return raw if raw is not None else {}


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    return validate_recipe(raw, str(path))


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML (every default written out)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def build_term(
    name: str,
    spec: TermSpec,
    steps_per_epoch: int,
    student: nn.Module | None = None,
    teacher: nn.Module | None = None,
    sparse_teacher: bool = False,
    compile: bool | str = False,
) -> Term:
    def value(v):
        return v if isinstance(v, (int, float)) or v is None else v.build(steps_per_epoch)

    info = loss_info(spec.loss)
    if info.lm_heads:
        if student is None or (teacher is None and not sparse_teacher):
            raise RecipeError(
                f"objective.{name}: {spec.loss} reads two language models' LM heads; use it in "
                "a recipe with task causal_lm or masked_lm"
            )
        if spec.student or spec.teacher:
            raise RecipeError(f"objective.{name}: {spec.loss} finds its own taps; drop them")
        try:  # against a top-k teacher cache, or the live teacher's head
            return lm_head_term(
                student,
                None if sparse_teacher else teacher,
                weight=value(spec.weight),
                temperature=value(spec.temperature) or 1.0,
                options={"compile": compile, **spec.options} if compile else spec.options,
            )
        except (TypeError, AttributeError) as error:
            raise RecipeError(f"objective.{name}: {error}") from None
    try:
        return Term(
            info.fn,
            weight=value(spec.weight),
            temperature=value(spec.temperature),
            student=spec.student,
            teacher=spec.teacher,
            rows=spec.rows,
            **spec.options,
        )
    except TypeError as error:
        raise RecipeError(f"objective.{name}: {error}") from None


def build_objective(
    terms: dict[str, TermSpec],
    steps_per_epoch: int,
    student: nn.Module | None = None,
    teacher: nn.Module | None = None,
    sparse_teacher: bool = False,
    compile: bool | str = False,
) -> Objective:
    """The recipe's objective; ``lm_head_kd`` terms need the two models (or the student
    and, with ``sparse_teacher``, a top-k teacher cache). ``compile`` (a backend name)
    compiles the LM-head terms' chunks unless a term says otherwise."""
    return Objective(
        {
            name: build_term(name, spec, steps_per_epoch, student, teacher, sparse_teacher, compile)
            for name, spec in terms.items()
        }
    )
