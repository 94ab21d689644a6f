"""Running recipes: one ``Task`` per kind of run (``classify``, ``language``), one driver
for all of them (``run``: the task table, ``run_recipe`` and the other commands), and the
stages that are not a task (``cache``, ``compress``, ``export``) plus the ``report``.

Nothing below this layer imports it; the command line and the doctor ask ``TASKS``."""

from distill.runs.run import TASKS, run_recipe, task_for

__all__ = ["TASKS", "run_recipe", "task_for"]
