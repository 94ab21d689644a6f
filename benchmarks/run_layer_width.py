"""How wide the run layer's shared interface is, read from the source with ``ast``: the
numbers issue 37 asks for before and after its rebuild. Prints a table.

    python benchmarks/run_layer_width.py            # this checkout
    python benchmarks/run_layer_width.py --json     # the same as JSON

- Task hooks: the methods and flags of the Task base class (abstract ones counted apart;
  a property is state, not a hook), and how many of them exactly one kind of run
  overrides.
- Task-name literals outside the task modules: string constants equal to a task's name
  ("classification", "causal_lm", ...) in ``src/distill`` outside the files of that kind of
  run (and the task table).
- Identity look-ups: ``assert isinstance(data, ...)``.
- Recipe refusals: ``raise`` statements in the recipe schema (``recipes/`` and each kind
  of run's ``recipe.py``); cross-field ones mention two fields; how many raise the one
  phrasing (``refusal(...)``: "`a` does not combine with `b`: why; what to do"); and the
  refused combinations the support table holds (each kind's ``lacks`` and the clashes).
- Teacher kinds compared as strings: ``== "ema"``, ``startswith("hf-clip:")``, ...
- Size workarounds: ``# fmt: skip`` and ``type: ignore[union-attr]`` lines.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "distill"
TASK_NAMES = ("classification", "causal_lm", "masked_lm", "clip", "diffusion")
# the files that belong to one kind of run (any layout: flat modules or tasks/<kind>/)
TASK_FILES = re.compile(
    r"runs/(tasks/|classify|clip|diffusion|language|private|speculative|generate)"
)
TEACHER_KINDS = re.compile(
    r"""(==|!=)\s*"(ema|ensemble|teacher)"|startswith\("(hf-clip:|served:|hf:)"\)"""
    r"""|in \("(ema|ensemble|teacher)\""""
)


def task_base() -> ast.ClassDef | None:
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == "Task":
                return node
    return None


def task_subclasses() -> list[ast.ClassDef]:
    found = []
    for path in SRC.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and b.id == "Task" for b in node.bases
            ):
                found.append(node)
    return found


def hooks(node: ast.ClassDef) -> tuple[list[str], list[str], list[str]]:
    """(methods, flags, abstract methods) of a class body."""
    methods, flags, abstract = [], [], []
    for item in node.body:
        properties = [
            getattr(d, "id", getattr(d, "attr", "")) for d in getattr(item, "decorator_list", [])
        ]
        if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
            if {"property", "setter"} & set(properties):
                continue  # state (the task's data), not a hook
            methods.append(item.name)
            if any(getattr(d, "id", None) == "abstractmethod" for d in item.decorator_list):
                abstract.append(item.name)
        elif isinstance(item, (ast.Assign, ast.AnnAssign)):
            targets = item.targets if isinstance(item, ast.Assign) else [item.target]
            flags += [t.id for t in targets if isinstance(t, ast.Name) and t.id != "name"]
    return methods, flags, abstract


def measure() -> dict[str, int]:
    base = task_base()
    methods, flags, abstract = hooks(base) if base else ([], [], [])
    overridden: dict[str, int] = {}
    for sub in task_subclasses():
        sub_methods, sub_flags, _ = hooks(sub)
        for name in {*sub_methods, *sub_flags} & {*methods, *flags}:
            overridden[name] = overridden.get(name, 0) + 1
    one_task = [h for h in [*methods, *flags] if overridden.get(h) == 1 and h not in abstract]
    literals = isinstance_data = refusals = cross_field = kinds = fmt_skip = union_ignores = 0
    one_phrasing = 0
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        text = path.read_text()
        fmt_skip += text.count("# fmt: skip")
        union_ignores += text.count("type: ignore[union-attr]")
        kinds += len(TEACHER_KINDS.findall(text))
        isinstance_data += len(re.findall(r"assert isinstance\(data,", text))
        tree = ast.parse(text)
        tables = ("runs/run.py", "runs/table.py", "runs/tasks/__init__.py")
        if not TASK_FILES.search(relative) and relative not in tables:
            literals += sum(
                1
                for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and node.value in TASK_NAMES
            )
        if relative.startswith("recipes/") or relative.endswith("/recipe.py"):
            for node in ast.walk(tree):
                if isinstance(node, ast.Raise) and node.exc is not None:
                    refusals += 1
                    message = ast.get_source_segment(text, node.exc) or ""
                    if message.startswith("refusal("):
                        one_phrasing += 1
                    elif len(set(re.findall(r"\b[a-z_]+\.[a-z_]+\b", message))) >= 2:
                        cross_field += 1
    return {
        "task hooks (methods + flags)": len(methods) + len(flags),
        "task hooks: abstract": len(abstract),
        "task hooks one kind of run overrides": len(one_task),
        "task-name literals outside the task modules": literals,
        "assert isinstance(data, ...)": isinstance_data,
        "raise in the recipe schema": refusals,
        "raise in the recipe schema naming two fields, in other words": cross_field,
        "raise in the recipe schema in the one phrasing": one_phrasing,
        "refused combinations in the support table": table_entries(),
        "teacher kinds compared as strings": kinds,
        "# fmt: skip lines": fmt_skip,
        "type: ignore[union-attr]": union_ignores,
        "modules in runs/": sum(1 for _ in (SRC / "runs").rglob("*.py")),
    }


def table_entries() -> int:
    """Each kind's ``lacks`` plus the clashes (0 before the support table existed)."""
    try:
        from distill.recipes.kinds import recipe_kinds
        from distill.recipes.support import CLASHES
    except ImportError:
        return 0
    kinds = recipe_kinds().values()
    return sum(len(kind.lacks) + len(kind.clashes) for kind in kinds) + len(CLASHES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    numbers = measure()
    if parser.parse_args().json:
        print(json.dumps(numbers, indent=2))
        return
    print("| measure | count |\n| --- | ---: |")
    for name, value in numbers.items():
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
