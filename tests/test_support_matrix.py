"""The support matrix against the schema: each kind of run's smallest recipe is valid, each
"yes" cell is accepted when its feature is switched on in it, each "no" cell is refused with
the one phrasing, and each pair of features that does not combine is refused naming both."""

from __future__ import annotations

import pytest

from distill.errors import RecipeError
from distill.recipes import validate_recipe
from distill.recipes.kinds import recipe_kinds
from distill.recipes.matrix import cell, clashes, refused, support_matrix, switched_on
from distill.recipes.support import FEATURE, FEATURES, refusal

KINDS = recipe_kinds()
CELLS = [(task, feature) for task in KINDS for feature in FEATURES]
PAGE = support_matrix()


def test_the_one_phrasing():
    assert (
        str(refusal("a.b", "c", "why; do this")) == "`a.b` does not combine with `c`: why; do this"
    )


@pytest.mark.parametrize("task", list(KINDS))
def test_the_smallest_recipe_of_each_kind_is_valid(task):
    recipe = validate_recipe(KINDS[task].example)
    assert recipe.task == task and type(recipe) is KINDS[task]


@pytest.mark.parametrize(("task", "feature"), CELLS, ids=[f"{t}-{f.field}" for t, f in CELLS])
def test_each_cell_is_what_the_schema_does(task, feature):
    kind = KINDS[task]
    raw = switched_on(kind, feature)
    found = refused(kind, feature)
    if found is None:
        recipe = validate_recipe(raw)
        assert feature.present(recipe), f"{feature.field} is not on in {raw}"
        return
    field, reason = found
    with pytest.raises(RecipeError) as error:
        validate_recipe(raw)
    assert str(refusal(field, f"task: {task}", reason)) in str(error.value)


def test_the_matrix_has_yes_and_no_in_every_column():
    for task, kind in KINDS.items():
        marks = {refused(kind, feature) is None for feature in FEATURES}
        assert marks == {True, False}, task


@pytest.mark.parametrize(
    ("clash", "tasks"), clashes(), ids=[f"{c.first}-{c.second}" for c, _ in clashes()]
)
def test_each_pair_that_does_not_combine_is_refused_naming_both(clash, tasks):
    assert tasks, f"no kind of run takes both {clash.first} and {clash.second}: a dead entry"
    kind = KINDS[tasks[0]]
    raw = switched_on(kind, FEATURE[clash.first], FEATURE[clash.second])
    with pytest.raises(RecipeError) as error:
        validate_recipe(raw)
    assert f"`{clash.first}` does not combine with `{clash.second}`: {clash.reason}" in str(
        error.value
    )


def test_the_page_shows_every_kind_feature_and_refusal():
    for task in KINDS:
        assert f"`{task}`" in PAGE and f"### `task: {task}`" in PAGE
    for feature in FEATURES:
        assert f"| `{feature.field}` |" in PAGE
    for kind in KINDS.values():
        for feature in FEATURES:
            reason = cell(kind, feature)
            if reason is not None:
                assert f"- `{feature.field}`: {reason}" in PAGE
    rows = [line for line in PAGE.splitlines() if line.startswith("| `")]
    assert len(rows) == len(FEATURES) + len(clashes())
