"""The task table: a recipe's ``task`` and the ``Task`` class that runs it. The one place
outside ``runs/tasks/`` that names the kinds of run."""

from __future__ import annotations

from distill.recipes import Recipe
from distill.runs.task import Task
from distill.runs.tasks.classify.task import Classification
from distill.runs.tasks.clip.task import Clip
from distill.runs.tasks.diffusion.task import Diffusion
from distill.runs.tasks.language.task import CausalLM, MaskedLM
from distill.runs.tasks.selfsup.task import SelfSupervised

TASKS: dict[str, type[Task]] = {
    task.name: task
    for task in (Classification, CausalLM, MaskedLM, Clip, Diffusion, SelfSupervised)
}


def task_for(recipe: Recipe) -> Task:
    """The task that runs ``recipe``, built for it (it keeps this run's state)."""
    return TASKS[recipe.task](recipe)


def tasks_with(capability: type) -> list[str]:
    """The names of the tasks that have ``capability`` (``runs.task``), in the table's
    order: what an error says when a recipe's task lacks it."""
    return [name for name, task in TASKS.items() if issubclass(task, capability)]


def named_with(capability: type) -> str:
    """The tasks that have ``capability`` as a sentence says them: ``a, b and c``."""
    found = tasks_with(capability)
    return ", ".join(found[:-1]) + " and " + found[-1] if len(found) > 1 else found[0]
