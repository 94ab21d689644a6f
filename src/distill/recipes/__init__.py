"""Recipes: YAML files validated by a typed schema."""

from distill.errors import RecipeError
from distill.recipes.load import (
    apply_overrides,
    build_objective,
    dump_recipe,
    load_recipe,
    validate_recipe,
)
from distill.recipes.schema import (
    CompressStage,
    DataSpec,
    ModelSpec,
    Recipe,
    TeacherSpec,
    TermSpec,
    TrainSpec,
)

__all__ = [
    "CompressStage",
    "DataSpec",
    "ModelSpec",
    "Recipe",
    "RecipeError",
    "TeacherSpec",
    "TermSpec",
    "TrainSpec",
    "apply_overrides",
    "build_objective",
    "dump_recipe",
    "load_recipe",
    "validate_recipe",
]
