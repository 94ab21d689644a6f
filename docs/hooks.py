"""MkDocs hook: the recipe reference page is generated from the pydantic schema at build
time (``distill.recipes.reference``), so it cannot drift from the code."""

from __future__ import annotations

from typing import Any

MARKER = "<!-- recipe-reference -->"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if MARKER not in markdown:
        return markdown
    from distill.recipes.reference import recipe_reference

    return markdown.replace(MARKER, recipe_reference())
