"""MkDocs hook: the recipe reference page is generated from the pydantic schema at build
time (``distill.recipes.reference``), so it cannot drift from the code."""

from __future__ import annotations

from typing import Any

MARKER = "<!-- recipe-reference"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """A page that starts with the marker is replaced by the generated reference (the
    page's own text says how to read it without the site)."""
    if not markdown.startswith(MARKER):
        return markdown
    from distill.recipes.reference import recipe_reference

    return recipe_reference()
