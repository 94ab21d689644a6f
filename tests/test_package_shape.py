"""The package's shape, read from the source with ``ast`` (see ../shared/DESIGN.md):
no import cycle (imports inside functions count), no private name imported from another
module, at most 12 modules at the package root, no module over 450 lines, nothing
below ``runs/`` importing ``runs/`` or the command line; and the run layer's width: a
kind of run's folder and name stay in that folder and the task table, the ``Task`` core
has at most 12 hooks, and no task implements a hook only to raise."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "distill"
MAX_ROOT_MODULES = 12
MAX_LINES = 450
TOP = ("distill.cli", "distill.runs", "distill.doctor", "distill.recipes", "distill.__main__")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> list[tuple[str, list[str], int]]:
    """(imported distill module, names taken from it, line) for every import in ``name``,
    at any depth (function-level imports too)."""
    path = MODULES[name]
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "distill":
                    found.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            if base.split(".")[0] != "distill":
                continue
            names = [alias.name for alias in node.names]
            submodules = [n for n in names if f"{base}.{n}" in MODULES]
            for sub in submodules:
                found.append((f"{base}.{sub}", [], node.lineno))
            rest = [n for n in names if n not in submodules]
            if rest or not submodules:
                found.append((base, rest, node.lineno))
    return found


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in MODULES}
    for name in MODULES:
        for target, _, _ in imports(name):
            if target in MODULES and target != name:
                edges[name].add(target)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_private_name_crosses_a_module_border():
    crossings = []
    for name in MODULES:
        for target, names, line in imports(name):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            private += [p for p in target.split(".") if p.startswith("_") and p != "__main__"]
            if private:
                crossings.append(f"{MODULES[name].name}:{line} imports {private} from {target}")
    assert not crossings, "\n".join(crossings)


def test_at_most_twelve_modules_at_the_package_root():
    root = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(root) <= MAX_ROOT_MODULES, root


def test_no_module_over_450_lines():
    long = {
        name: n
        for name, path in MODULES.items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


def test_nothing_below_the_run_layer_imports_it():
    upward = [
        f"{name} imports {target}"
        for name in MODULES
        if not name.startswith(TOP)
        for target, _, _ in imports(name)
        if target.startswith(("distill.runs", "distill.cli"))
    ]
    assert not upward, "\n".join(upward)


# the layers of ../shared/DESIGN.md, top to bottom; a module imports its own layer or below
LAYERS = [
    (
        "distill.cli",
        "distill.__main__",
        "distill.runs",
        "distill.doctor",
        "distill.recipes",
        "distill.integrations",
    ),
    (
        "distill.training",
        "distill.methods",
        "distill.teachers",
        "distill.objective",
        "distill.schedules",
    ),
    (
        "distill.losses",
        "distill.outputs",
        "distill.taps",
        "distill.projectors",
        "distill.batch",
        "distill.cache",
        "distill.measure",
        "distill.paths",
        "distill.errors",
        "distill.dependencies",
        "distill.compress",
        "distill.models",
        "distill.data",
    ),
]


def layer_of(name: str) -> int | None:
    for depth, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return depth
    return None  # the package's __init__, which re-exports the public API


def test_every_module_has_a_layer_and_imports_only_its_own_or_lower_ones():
    unplaced = [name for name in MODULES if name != "distill" and layer_of(name) is None]
    assert not unplaced, unplaced
    upward = [
        f"{name} imports {target}"
        for name in MODULES
        if name != "distill"
        for target, _, _ in imports(name)
        if target in MODULES and target != "distill" and layer_of(target) < layer_of(name)  # type: ignore[operator]
    ]
    assert not upward, "\n".join(upward)


def test_what_the_benchmarks_import_exists():
    """The benchmarks do not run in the tests; their imports of distill at least resolve."""
    import importlib

    missing = []
    for script in sorted((PACKAGE.parents[1] / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("distill"):
                module = importlib.import_module(node.module)  # type: ignore[arg-type]
                for alias in node.names:
                    if (
                        not hasattr(module, alias.name)
                        and f"{node.module}.{alias.name}" not in MODULES
                    ):
                        missing.append(f"{script.name}: {node.module}.{alias.name}")
    assert not missing, missing


# -- the run layer's width (issue 37): kinds of run as capabilities ------------------------

TASKS_DIR = "distill.runs.tasks"
TASK_TABLES = ("distill.runs.table", "distill.runs.tasks")  # the Tasks; the recipes
TASK_CORE_LIMIT = 12


def task_folders() -> dict[str, str]:
    """Each kind of run's folder (``distill.runs.tasks.<kind>``) and the task names its
    ``Task`` classes declare (``name = "..."``)."""
    names: dict[str, str] = {}
    for module, path in MODULES.items():
        if not module.startswith(TASKS_DIR + "."):
            continue
        folder = ".".join(module.split(".")[:4])
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if (
                        isinstance(item, ast.Assign)
                        and [getattr(t, "id", None) for t in item.targets] == ["name"]
                        and isinstance(item.value, ast.Constant)
                    ):
                        names[item.value.value] = folder
    return names


def outside(module: str, folder: str) -> bool:
    return not (module in (folder, *TASK_TABLES) or module.startswith(folder + "."))


def test_the_task_folders_and_names_are_found():
    folders = task_folders()
    assert set(folders) == {
        "classification",
        "causal_lm",
        "masked_lm",
        "clip",
        "diffusion",
        "self_supervised",
    }
    assert folders["causal_lm"] == folders["masked_lm"] == f"{TASKS_DIR}.language"


def test_no_module_outside_a_task_folder_imports_it():
    folders = set(task_folders().values())
    found = {
        (name, folder)
        for name in MODULES
        for target, _, _ in imports(name)
        for folder in folders
        if (target == folder or target.startswith(folder + ".")) and outside(name, folder)
    }
    assert not found, sorted(found)


def test_no_task_name_is_written_outside_its_folder():
    """A string equal to a task's name, in the layers that know about tasks (the models'
    own words, e.g. CLIP's pooling, do not count)."""
    names = task_folders()
    counts: dict[str, int] = {}
    for name, path in MODULES.items():
        if not name.startswith(TOP):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            named = isinstance(node, ast.Constant) and node.value in names
            if named and outside(name, names[node.value]):  # type: ignore[union-attr]
                counts[name] = counts.get(name, 0) + 1
    assert not counts, counts


def class_named(name: str, module: str) -> ast.ClassDef:
    for node in ast.parse(MODULES[module].read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"no class {name} in {module}")


def test_the_task_core_has_at_most_twelve_hooks():
    """Public methods (a property is the run's state, not a hook) and class attributes."""
    core = class_named("Task", "distill.runs.task")
    hooks = []
    for item in core.body:
        if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
            decorators = {getattr(d, "id", getattr(d, "attr", "")) for d in item.decorator_list}
            if not {"property", "setter"} & decorators:
                hooks.append(item.name)
        elif isinstance(item, (ast.Assign, ast.AnnAssign)):
            targets = item.targets if isinstance(item, ast.Assign) else [item.target]
            hooks += [t.id for t in targets if isinstance(t, ast.Name) and t.id != "name"]
    assert len(hooks) <= TASK_CORE_LIMIT, hooks


def test_a_task_keeps_its_state_and_implements_no_hook_only_to_raise():
    """No identity look-ups on the data (``assert isinstance(data, ...)``); a method of a
    kind of run whose whole body is a ``raise`` means a capability it does not have."""
    found = []
    for name, path in MODULES.items():
        text = path.read_text()
        if "assert isinstance(data," in text:
            found.append(f"{name}: assert isinstance(data, ...)")
        if not name.startswith(TASKS_DIR):
            continue
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.ClassDef):
                continue
            for item in node.body:
                if not isinstance(item, ast.FunctionDef):
                    continue
                body = [
                    s
                    for s in item.body
                    if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
                ]
                if len(body) == 1 and isinstance(body[0], ast.Raise):
                    found.append(f"{name}: {node.name}.{item.name} only raises")
    assert not found, found


def test_the_checks_of_the_run_layers_width_can_fail():
    """The checks above, on made-up code: a hook that only raises, a task name outside."""
    tree = ast.parse(
        "class Fake:\n    def cache_rows(self):\n        'doc'\n        raise ValueError('no')\n"
    )
    method = tree.body[0].body[0]  # type: ignore[attr-defined]
    body = [s for s in method.body if not isinstance(s, ast.Expr)]
    assert len(body) == 1 and isinstance(body[0], ast.Raise)
    assert outside("distill.runs.report.document", f"{TASKS_DIR}.clip")
    assert not outside(f"{TASKS_DIR}.clip.task", f"{TASKS_DIR}.clip")
    assert not outside(TASK_TABLES[0], f"{TASKS_DIR}.clip")
