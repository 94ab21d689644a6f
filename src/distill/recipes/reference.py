"""The recipe reference: a Markdown page generated from the ``Recipe`` schema, a section per
pydantic model a recipe can hold (breadth-first from the top: the shared recipe, then each
kind of run's own fields), each with a table of its fields (type, default, description,
constraints), so the page cannot drift from the schema."""

from __future__ import annotations

import html
import inspect
import re
import types
import unicodedata
from collections import deque
from pathlib import PurePath
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from distill.recipes.kinds import default_task, recipe_kinds
from distill.recipes.schema import Recipe
from distill.recipes.specs import ScheduleSpec

__all__ = ["recipe_reference", "slug"]

ROOT = "recipe"
MAPPED = ".&lt;name&gt;"  # a mapping's values: ``<name>`` escaped, or Markdown reads a tag
MANY = 12  # a Literal with more values is written "one of N names: ..."
LONG = 48  # defaults longer than this are cut
BOUNDS = dict(ge="≥", gt=">", le="≤", lt="<", min_length="length ≥", max_length="length ≤")
SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", Any: "any"}
Headings = dict[type[BaseModel], str]
# models used by several fields as values, named for what they are rather than for the first
# field that reaches them
NAMED: Headings = {ScheduleSpec: "schedule"}


def slug(heading: str) -> str:
    """The anchor MkDocs (Python-Markdown's ``toc``) gives ``heading``: entities unescaped,
    accents dropped, lowercased, characters other than word characters, spaces and hyphens
    removed, and each run of spaces and hyphens turned into one hyphen."""
    text = unicodedata.normalize("NFKD", html.unescape(heading))
    text = re.sub(r"[^\w\s-]", "", text.encode("ascii", "ignore").decode("ascii"))
    return re.sub(r"[-\s]+", "-", text.strip().lower())


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _models(annotation: Any) -> list[tuple[type[BaseModel], str]]:
    """The models inside a field's type, each with the path suffix that reaches it: ``[]``
    for a list's items, ``.<name>`` for a mapping's values."""
    if _is_model(annotation):
        return [(annotation, "")]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (list, tuple, set, frozenset):
        return [(model, "[]" + rest) for arg in args for model, rest in _models(arg)]
    if origin is dict:
        return [(model, MAPPED + rest) for model, rest in _models(args[1])]
    return [found for arg in args for found in _models(arg)]  # unions, Annotated, Literal


def own_fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """A model's fields; for a kind of run's recipe, those it adds to or narrows in the
    shared ``Recipe``."""
    if not (issubclass(model, Recipe) and model is not Recipe):
        return dict(model.model_fields)
    shared = Recipe.model_fields
    return {
        name: field
        for name, field in model.model_fields.items()
        if name not in shared or field.annotation != shared[name].annotation
    }


def _roots() -> list[tuple[type[BaseModel], str, bool]]:
    kinds = [(kind, f"{ROOT}, task: {task}", False) for task, kind in recipe_kinds().items()]
    return [(Recipe, ROOT, False), *kinds]


def _sections() -> Headings:
    """Every model reachable from ``Recipe`` and each kind of run's recipe, breadth-first,
    with its heading: the first path that reaches it, plus its class name where one path
    holds several models."""
    headings: Headings = {}
    roots = {model for model, _, _ in _roots()}
    queue: deque[tuple[type[BaseModel], str, bool]] = deque(_roots())
    while queue:
        model, path, shared = queue.popleft()
        if model in headings:
            continue
        heading = NAMED.get(model) or (f"{path} ({model.__name__})" if shared else path)
        if slug(heading) in {slug(h) for h in headings.values()}:
            heading = f"{path} ({model.__name__})"
        headings[model] = heading
        prefix = "" if model in roots else f"{path}."
        for name, field in own_fields(model).items():
            found = _models(field.annotation)
            for sub, suffix in found:
                alike = sum(other == suffix for _, other in found) > 1
                queue.append((sub, f"{prefix}{name}{suffix}", alike))
    return headings


def _value(value: Any, nested: bool = False) -> str:
    """A default or a Literal value as a recipe would write it (YAML-like)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        quoted = not value or (nested and re.search(r"[\s,:\[\]{}#]", value))
        return f'"{value}"' if quoted else value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return "[" + ", ".join(_value(v, True) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{_value(k, True)}: {_value(v, True)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    return repr(value) if isinstance(value, float) else str(value)


def _group(annotation: Any, headings: Headings) -> str:
    text = _type(annotation, headings)
    return f"({text})" if " or " in text or " | " in text else text


def _type(annotation: Any, headings: Headings) -> str:
    """A field's type in words: Literal values, ``or null``, lists, mappings, and a link to
    the section of a nested model."""
    if annotation is type(None):
        return "null"
    if _is_model(annotation):
        return f"[{headings[annotation]}](#{slug(headings[annotation])})"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        values = [f"`{_value(v)}`" for v in args]
        if len(values) > MANY:
            return f"one of {len(values)} names: " + ", ".join(values)
        return " | ".join(values)
    if origin in (Union, types.UnionType):
        rest = [arg for arg in args if arg is not type(None)]
        text = " or ".join(_type(arg, headings) for arg in rest)
        if len(rest) == len(args):
            return text
        return f"{text}, or null" if " of " in text else f"{text} or null"
    if origin is Annotated:
        return _type(args[0], headings)
    if origin in (list, set, frozenset) or (origin is tuple and args[-1:] == (Ellipsis,)):
        return f"list of {_group(args[0], headings)}"
    if origin is tuple:
        return "[" + ", ".join(_type(arg, headings) for arg in args) + "]"
    if origin is dict:
        return f"map of {_type(args[0], headings)} to {_group(args[1], headings)}"
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return "path"
    return SCALARS.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default(field: FieldInfo) -> str:
    """``required``, or the default (a ``default_factory`` called), cut when long."""
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_defaults=True)
        if not value:
            return "its fields' defaults"
    text = _value(value)
    if len(text) <= LONG:
        return f"`{text}`"
    count = f" ({len(value)} items)" if isinstance(value, (list, tuple, dict)) else ""
    return f"`{text[: LONG - 1]}…`{count}"


def _description(field: FieldInfo) -> str:
    """The field's description, then its constraints (bounds, lengths, pattern)."""
    limits = []
    for item in field.metadata:
        for attr, sign in BOUNDS.items():
            if getattr(item, attr, None) is not None:
                limits.append(f"{sign} {_value(getattr(item, attr))}")
        if getattr(item, "pattern", None):
            limits.append(f"matches `{item.pattern}`")
    text = field.description or ""
    if limits:
        text = f"{text} ({', '.join(limits)})" if text else ", ".join(limits)
    return text


def _prose(text: str) -> str:
    """``double`` backticks made single, and a ``<`` that could open a tag escaped outside
    code spans (Markdown would take ``<name>`` for HTML and hide it)."""
    parts = re.split(r"(`[^`]*`)", re.sub(r"``(.+?)``", r"`\1`", text, flags=re.S))
    tag = re.compile(r"<(?=[A-Za-z/!?])")
    return "".join(p if p.startswith("`") else tag.sub("&lt;", p) for p in parts)


def _section(model: type[BaseModel], headings: Headings) -> list[str]:
    """A model's heading, docstring (its own, not inherited) and table of fields."""
    lines = [f"## {headings[model]}", ""]
    doc = model.__dict__.get("__doc__")
    if doc:
        lines += [_prose(inspect.cleandoc(doc)), ""]
    fields = own_fields(model)
    if not fields:
        return lines
    lines += ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    for name, field in fields.items():
        default = _default(field)
        if model is Recipe and name == "task":  # left out: the first kind of run
            default = f"`{default_task()}`"
        cells = [f"`{name}`", _type(field.annotation, headings), default]
        cells.append(_prose(_description(field)))
        cells = [cell.replace("|", r"\|").replace("\n", " ") for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def recipe_reference() -> str:
    """The recipe reference as Markdown: an intro, then a section per model reachable from
    ``Recipe`` (breadth-first), each model once, at the first path that reaches it."""
    headings = _sections()
    fields = sum(len(own_fields(model)) for model in headings)
    package = Recipe.__module__.rpartition(".")[0]
    lines = [
        "# Recipe reference",
        "",
        f"Every field below, with its type and default, comes from `{package}.{Recipe.__name__}`,"
        f" the schema every recipe is validated against: {len(headings)} sections, {fields}"
        f" fields, from the top level (`{ROOT}`) down: first what every recipe holds, then"
        " what each kind of run (`task`) adds to it or narrows. What combines with what is"
        " the [support matrix](support-matrix.md). A section used in several places is"
        " described once and linked; `required` fields have no default.",
        "",
    ]
    for model in headings:
        lines += _section(model, headings)
    return "\n".join(lines).rstrip("\n") + "\n"
