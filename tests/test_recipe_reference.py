"""The recipe reference generated from the schema: every section model and every field is
there, links land on headings, and types, defaults and constraints are written out."""

from __future__ import annotations

import html
import re
from typing import get_args

import pytest
from pydantic import BaseModel

from distill.losses.registry import RECIPE_LOSSES
from distill.recipes import Recipe
from distill.recipes.kinds import recipe_kinds
from distill.recipes.reference import recipe_reference
from distill.recipes.search_spec import Candidate
from distill.recipes.specs import CompressStage, LoraSpec, ScheduleSpec, TermSpec
from distill.runs.tasks.language.recipe import TextDataSpec
from distill.runs.tasks.private.recipe import PateSpec

TEXT = recipe_reference()
ROW = re.compile(r"^\| `(\w+)` \|")


def cells(line: str) -> list[str]:
    """A table row's cells, split on the pipes that are not escaped."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]


def sections(text: str) -> dict[str, dict[str, list[str]]]:
    """heading -> field name -> [type, default, description], read from the Markdown."""
    found: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = line[3:]
            assert current not in found, f"heading {current!r} appears twice"
            found[current] = {}
        elif current is not None and ROW.match(line):
            name, *rest = cells(line)
            found[current][name.strip("`")] = rest
    return found


SECTIONS = sections(TEXT)


KINDS = recipe_kinds()


def fields_of(model: type[BaseModel]) -> list[str]:
    """A model's fields as its section lists them: a kind of run's recipe lists those it
    adds to the shared ``Recipe`` or narrows."""
    if model in KINDS.values():
        shared = Recipe.model_fields
        return [
            name
            for name, field in model.model_fields.items()
            if name not in shared or field.annotation != shared[name].annotation
        ]
    return list(model.model_fields)


def reachable(*roots: type[BaseModel]) -> list[type[BaseModel]]:
    """Every model inside the roots' field types, at any depth (written here, independently
    of the module under test)."""
    seen: list[type[BaseModel]] = []

    def visit(annotation: object) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation not in seen:
                seen.append(annotation)
                for name in fields_of(annotation):
                    visit(annotation.model_fields[name].annotation)
            return
        for arg in get_args(annotation):
            visit(arg)

    for root in roots:
        visit(root)
    return seen


def toc_slug(heading: str) -> str:
    """Python-Markdown's default ``toc`` slugify, after entities are unescaped."""
    text = re.sub(r"[^\w\s-]", "", html.unescape(heading)).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def test_every_section_model_has_a_section_with_every_field_in_order():
    models = reachable(Recipe, *KINDS.values())
    assert len(models) > 20  # the walk went deep: data, teacher, ..., search.budget
    assert len(SECTIONS) == len(models)
    tables = [list(fields) for fields in SECTIONS.values()]
    for model in models:
        assert fields_of(model) in tables, f"{model.__name__}: no section lists its fields"
    for task, kind in KINDS.items():
        assert list(SECTIONS[f"recipe, task: {task}"]) == fields_of(kind)


def test_sections_sit_at_their_paths():
    assert next(iter(SECTIONS)) == "recipe"
    assert list(SECTIONS["recipe"]) == list(Recipe.model_fields)
    where = {
        "objective.&lt;name&gt;": TermSpec,
        "compress[]": CompressStage,
        "search.candidates[]": Candidate,
        "student.peft": LoraSpec,
        "data (TextDataSpec)": TextDataSpec,
        "pate": PateSpec,
    }
    for heading, model in where.items():
        assert list(SECTIONS[heading]) == list(model.model_fields), heading
    assert list(SECTIONS["schedule"]) == list(ScheduleSpec.model_fields)  # named, not a path
    assert "[schedule](#schedule)" in TEXT  # weight and temperature link to it
    paths = [heading for heading in list(SECTIONS)[1:] if heading != "schedule"]
    depths = [depth(heading) for heading in paths]
    assert depths == sorted(depths) and depths[0] == 1 < depths[-1]  # breadth-first


def depth(heading: str) -> int:
    """How many field names a heading's path has: ``objective.<name>.weight`` has 2."""
    path = heading.split(" (")[0].replace("&lt;name&gt;", "").replace("[]", "")
    return len([part for part in path.split(".") if part])


def test_internal_links_point_at_headings():
    anchors = {toc_slug(h) for h in SECTIONS}
    links = re.findall(r"\]\(#([^)]+)\)", TEXT)
    assert len(links) >= 20
    assert set(links) <= anchors, set(links) - anchors
    assert "[teacher](#teacher)" in SECTIONS["teacher"]["members"][0]  # documented once


def test_links_resolve_when_rendered_by_python_markdown():
    markdown = pytest.importorskip("markdown")
    rendered = markdown.markdown(TEXT, extensions=["toc", "tables"])
    ids = set(re.findall(r'<h2 id="([^"]+)"', rendered))
    assert len(ids) == len(SECTIONS)
    hrefs = set(re.findall(r'href="#([^"]+)"', rendered))
    assert hrefs and hrefs <= ids, hrefs - ids
    assert "objective.&lt;name&gt;" in rendered  # shown, not swallowed as an HTML tag
    assert rendered.count("<table>") == len([s for s in SECTIONS.values() if s])


def test_every_table_row_has_four_cells():
    rows = [line for line in TEXT.splitlines() if line.startswith("| `")]
    assert len(rows) == sum(len(fields) for fields in SECTIONS.values())
    for row in rows:
        assert len(cells(row)) == 4, row


def test_required_fields_and_defaults():
    recipe = SECTIONS["recipe"]
    assert recipe["name"][1] == "required"
    assert recipe["student"][1] == "required"
    assert recipe["seed"][1] == "`0`"
    assert recipe["teacher"][1] == "`null`"
    assert recipe["compress"][1] == "`[]`"  # default_factory called
    assert SECTIONS["pate"]["teachers"][1] == "required"
    assert SECTIONS["pate"]["delta"][1] == "`1e-05`"
    assert "image: image" in SECTIONS["data (DataSpec)"]["columns"][1]


def test_literal_types_list_their_values():
    loss = SECTIONS["objective.&lt;name&gt;"]["loss"][0]
    assert "`kl`" in loss
    assert all(f"`{name}`" in loss for name in RECIPE_LOSSES)
    for name in KINDS:
        assert SECTIONS[f"recipe, task: {name}"]["task"][0] == f"`{name}`"
    assert SECTIONS["recipe"]["task"][1] == f"`{next(iter(KINDS))}`"  # when left out
    assert SECTIONS["objective.&lt;name&gt;"]["rows"][0] == r"`all` \| `labelled`"


def test_types_and_constraints_are_written_out():
    recipe = SECTIONS["recipe"]
    assert recipe["teacher"][0] == "[teacher](#teacher) or null"
    assert recipe["data"][0] == "[data](#data)"  # narrowed by each kind of run
    language = SECTIONS["recipe, task: causal_lm"]["data"][0]
    assert language == "[data (TextDataSpec)](#data-textdataspec)"
    assert recipe["objective"][0].startswith("map of string to [objective.&lt;name&gt;](#")
    assert SECTIONS["recipe, task: classification"]["generations"][2].endswith("(≥ 1)")
    assert "matches `^[A-Za-z0-9_-]" in recipe["name"][2]
    assert SECTIONS["student.peft"]["target_modules"][2].endswith("(length ≥ 1)")
    assert SECTIONS["compress[]"]["sparsity"][2] == "prune: the share of weights zeroed (> 0, < 1)"


def test_every_field_is_described():
    blank = [
        f"{section}.{name}"
        for section, fields in SECTIONS.items()
        for name, cells in fields.items()
        if not cells[2].strip()
    ]
    assert not blank, f"fields without a description (Field(description=...)): {blank}"


def test_docstrings_are_cleaned():
    schedule = next(h for h, fields in SECTIONS.items() if list(fields)[:2] == ["kind", "value"])
    body = TEXT.split(f"## {schedule}\n", 1)[1].split("\n## ", 1)[0]
    assert body.startswith("\nA value that changes over training: `{kind: warmup")
    assert "``" not in TEXT


def test_output_is_deterministic():
    assert recipe_reference() == TEXT
