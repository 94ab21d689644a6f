"""The recipe as a union on ``task``: each kind of run's recipe is a ``schema.Recipe``
subclass in its own folder, listed by the table of recipe kinds (``runs.tasks.RECIPES``).
A field that belongs to another kind's section is refused naming both (the one phrasing of
``recipes.support``), before the section validates."""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel

from distill.recipes.schema import Recipe
from distill.recipes.support import refusal


def recipe_kinds() -> dict[str, type[Recipe]]:
    """Each kind of run's recipe by its ``task``, the default (the first) first."""
    from distill.runs.tasks import RECIPES  # the table lives beside the task folders

    return RECIPES


def default_task() -> str:
    return next(iter(recipe_kinds()))


def _section_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    models = [m for m in map(_section_model, get_args(annotation)) if m is not None]
    return models[0] if len(models) == 1 else None


def accepts(kind: type[Recipe], path: str) -> bool:
    """Whether ``kind``'s recipe has the field at dotted ``path`` (``data.mix``)."""
    model: type[BaseModel] | None = kind
    for part in path.split("."):
        if model is None or part not in model.model_fields:
            return False
        model = _section_model(model.model_fields[part].annotation)
    return True


def owners(path: str) -> list[str]:
    """The kinds of run whose recipes have the field at ``path``."""
    return [task for task, kind in recipe_kinds().items() if accepts(kind, path)]


def foreign_field(raw: dict[str, Any], task: str) -> str | None:
    """The first field of ``raw`` (top level, or in its data section) that ``task``'s
    recipe lacks and another kind's has."""
    kind = recipe_kinds()[task]
    paths = [key for key in raw if isinstance(key, str)]
    data = raw.get("data")
    if isinstance(data, dict):
        paths += [f"data.{key}" for key in data if isinstance(key, str)]
    for path in paths:
        if not accepts(kind, path) and owners(path):
            return path
    return None


def section_for(raw: dict[str, Any]) -> type[Recipe]:
    """The recipe class of ``raw``'s ``task``; ``ValueError`` for an unknown task or a field
    of another kind of run (named with the kinds that have it)."""
    kinds = recipe_kinds()
    task = raw.get("task", default_task())
    if task not in kinds:
        raise ValueError(f"task: must be one of {list(kinds)} (got {task!r})")
    field = foreign_field(raw, task)
    if field is not None:
        found = " or ".join(f"task: {name}" for name in owners(field))
        raise refusal(
            field,
            f"task: {task}",
            f"it belongs to the recipes of {found}; set that task, or drop {field}",
        )
    return kinds[task]
