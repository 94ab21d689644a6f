"""The teacher store's key: what shapes a teacher changes it, nothing else does, and fields
added to the recipe later leave earlier keys alone."""

from distill.recipes import apply_overrides, validate_recipe
from distill.runs.store import teacher_cache_dir

from .test_recipes import GOOD


def test_teacher_cache_key_follows_what_shapes_the_teacher(isolated_cache):
    base = teacher_cache_dir(validate_recipe(GOOD))
    same = teacher_cache_dir(validate_recipe(apply_overrides(GOOD, ["train.epochs=9"])))
    assert same == base  # student settings do not change the teacher
    for change in (
        "teacher.train.epochs=3",
        "seed=1",
        "data.split_seed=2",
        "teacher.args.hidden=7",
    ):
        assert teacher_cache_dir(validate_recipe(apply_overrides(GOOD, [change]))) != base
    assert str(base).startswith(str(isolated_cache))


def test_new_unset_recipe_fields_keep_the_teacher_store_keys_of_earlier_versions():
    """A field added to the recipe (teacher.tokenizer, data.synthetic, ...) must not move
    every stored teacher to a new key when it is unset: earlier runs' teachers are reused.
    The pinned name is the demo recipe's key since the store began."""
    from pathlib import Path

    from distill.recipes import load_recipe

    recipe = load_recipe(Path(__file__).parent.parent / "recipes" / "fashion_mnist_kd.yaml")
    assert teacher_cache_dir(recipe).name == "zoo_cnn-f08dbfd2ab7a3497"
