"""The support matrix: which kind of run (``task``) takes which feature, and which features
do not combine, as a Markdown page generated from the table the schema enforces
(``recipes.support``, each kind's ``lacks`` and ``clashes``, and the fields of each kind's
recipe), so the page cannot drift from what ``distill run`` accepts."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from distill.recipes.kinds import accepts, owners, recipe_kinds
from distill.recipes.schema import Recipe
from distill.recipes.support import CLASHES, FEATURE, FEATURES, Clash, Feature

__all__ = ["cell", "clashes", "refused", "support_matrix", "switched_on"]


def field_path(feature: Feature) -> str:
    """The recipe field a feature lives in: ``teacher.model`` for ``teacher.model: ema``."""
    return feature.field.partition(":")[0]


def parent(feature: Feature) -> Feature | None:
    """The feature whose field holds this one's (``cache`` for ``cache.top_k``)."""
    above = feature.field.rpartition(".")[0]
    return FEATURE.get(above) if above else None


def refused(kind: type[Recipe], feature: Feature) -> tuple[str, str] | None:
    """None where ``kind``'s recipe takes ``feature``; else what its refusal names first
    (the feature, the field it lives in, or the feature above it: ``cache`` for
    ``cache.top_k``) and why not and what to do."""
    above = parent(feature)
    if above is not None and (found := refused(kind, above)) is not None:
        return found
    path = field_path(feature)
    if not accepts(kind, path):
        found = " or ".join(f"task: {name}" for name in owners(path))
        return path, f"it belongs to the recipes of {found}; set that task, or drop {path}"
    reason = kind.lacks.get(feature.field)
    return None if reason is None else (feature.field, reason)


def cell(kind: type[Recipe], feature: Feature) -> str | None:
    """None where ``kind``'s recipe takes ``feature``; else why not and what to do."""
    found = refused(kind, feature)
    return None if found is None else found[1]


def clashes() -> list[tuple[Clash, list[str]]]:
    """Every refused pair of features, with the kinds of run it applies to (all the kinds
    that take both, for the table's; one kind, for a kind's own)."""
    kinds = recipe_kinds()
    found = []
    for clash in CLASHES:
        both = [
            task
            for task, kind in kinds.items()
            if refused(kind, FEATURE[clash.first]) is None
            and refused(kind, FEATURE[clash.second]) is None
        ]
        found.append((clash, both))
    for task, kind in kinds.items():
        found += [(clash, [task]) for clash in kind.clashes]
    return found


def _set(raw: dict[str, Any], path: str, value: Any) -> None:
    node = raw
    *above, last = path.split(".")
    for key in above:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[last] = copy.deepcopy(value)


def switched_on(kind: type[Recipe], *features: Feature) -> dict[str, Any]:
    """``kind``'s smallest recipe with ``features`` switched on (each one's overrides, or
    the kind's own for it, dotted paths set)."""
    result = copy.deepcopy(kind.example)
    for feature in features:
        overrides = kind.turn_on.get(feature.field) or feature.overrides(result)
        for path, value in overrides.items():
            _set(result, path, value)
    return result


def _matrix(kinds: dict[str, type[Recipe]]) -> list[str]:
    lines = [
        "| feature | what it is | " + " | ".join(f"`{task}`" for task in kinds) + " |",
        "| --- | --- | " + " | ".join("---" for _ in kinds) + " |",
    ]
    for feature in FEATURES:
        marks = ["yes" if refused(kind, feature) is None else "no" for kind in kinds.values()]
        lines.append(f"| `{feature.field}` | {feature.about} | " + " | ".join(marks) + " |")
    return lines


def support_matrix() -> str:
    """The support matrix as Markdown: the task × feature table, what each "no" says, the
    pairs of features that do not combine, and the smallest recipe of each kind."""
    kinds = recipe_kinds()
    lines = [
        "# Support matrix",
        "",
        "What combines with what, generated from the table the recipe schema enforces"
        " (`distill.recipes.support` and each kind of run's recipe), so it cannot drift from"
        " what `distill run` accepts. Every refusal below is written the same way, before"
        " anything trains:",
        "",
        "    `<field>` does not combine with `<field>`: <why>; <what to do>",
        "",
        "## Kinds of run × features",
        "",
        *_matrix(kinds),
        "",
        "## Why not",
        "",
    ]
    for task, kind in kinds.items():
        refused = [(f, cell(kind, f)) for f in FEATURES if cell(kind, f) is not None]
        lines += [f"### `task: {task}`", ""]
        lines += [f"- `{feature.field}`: {reason}" for feature, reason in refused]
        lines.append("")
    lines += [
        "## Features that do not combine",
        "",
        "| feature | does not combine with | in | why; what to do |",
        "| --- | --- | --- | --- |",
    ]
    for clash, tasks in clashes():
        where = ", ".join(f"`{task}`" for task in tasks) or "(no kind takes both)"
        lines.append(f"| `{clash.first}` | `{clash.second}` | {where} | {clash.reason} |")
    lines += ["", "## The smallest recipe of each kind", ""]
    lines.append(
        "Each one is valid as written (the tests switch every feature on in it, one by one,"
        " and check that each `yes` above is accepted and each `no` refused)."
    )
    for task, kind in kinds.items():
        text = yaml.safe_dump(kind.example, sort_keys=False, default_flow_style=None)
        lines += ["", f"### `task: {task}`", "", "```yaml", text.rstrip(), "```"]
    return "\n".join(lines).rstrip("\n") + "\n"
