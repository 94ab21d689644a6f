"""One folder per kind of run: its data, models, metrics, report sections and its recipe.
Only the task tables name them: ``RECIPES`` here (each kind's recipe, the union on
``task`` that ``recipes.kinds`` validates against; the first is the default) and
``runs.table`` (each kind's ``Task``)."""

from __future__ import annotations

from distill.recipes.schema import Recipe
from distill.runs.tasks.classify.recipe import ClassificationRecipe
from distill.runs.tasks.clip.recipe import ClipRecipe
from distill.runs.tasks.diffusion.recipe import DiffusionRecipe
from distill.runs.tasks.language.recipe import CausalLMRecipe, MaskedLMRecipe
from distill.runs.tasks.selfsup.recipe import SelfSupervisedRecipe

RECIPES: dict[str, type[Recipe]] = {
    kind.model_fields["task"].annotation.__args__[0]: kind  # type: ignore[union-attr]
    for kind in (
        ClassificationRecipe,
        CausalLMRecipe,
        MaskedLMRecipe,
        ClipRecipe,
        DiffusionRecipe,
        SelfSupervisedRecipe,
    )
}
