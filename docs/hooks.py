"""MkDocs hook: the recipe reference and the support matrix are generated from the pydantic
schema at build time (``distill.recipes.reference``, ``distill.recipes.matrix``), so they
cannot drift from the code."""

from __future__ import annotations

from typing import Any

MARKER = "<!-- recipe-reference"
MATRIX = "<!-- support-matrix"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """A page that starts with a marker is replaced by the generated page (the page's own
    text says how to read it without the site)."""
    if markdown.startswith(MARKER):
        from distill.recipes.reference import recipe_reference

        return recipe_reference()
    if markdown.startswith(MATRIX):
        from distill.recipes.matrix import support_matrix

        return support_matrix()
    return markdown
