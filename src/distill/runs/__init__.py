"""Running recipes: a ``Task`` per run (``task``: the core every kind of run has and the
capabilities some add), one folder per kind of run (``tasks/``) and the task table that
names them (``table``), one driver for all of them (``driver``: ``run_recipe``), the other
commands (``commands``), the stages that are not a task (``stages/``: cache, compress,
export), the report (``report/``) and student search (``search/``).

Nothing below this layer imports it; the command line and the doctor ask the table."""

from distill.runs.driver import run_recipe
from distill.runs.table import TASKS, task_for

__all__ = ["TASKS", "run_recipe", "task_for"]
