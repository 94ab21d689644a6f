"""The package's shape, read from the source with ``ast`` (see ../shared/DESIGN.md):
no import cycle (imports inside functions count), no private name imported from another
module, at most 12 modules at the package root, no module over 450 lines, and nothing
below ``runs/`` importing ``runs/`` or the command line."""

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
