"""Recipe validation: good recipes load, bad fields are named with the allowed values."""

from pathlib import Path

import pytest

from distill.recipes import RecipeError, apply_overrides, build_objective, load_recipe
from distill.recipes.load import validate_recipe

ROOT = Path(__file__).parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml")) + sorted(
    (ROOT / "src/distill/recipes").glob("*.yaml")
)

GOOD = {
    "name": "tiny",
    "data": {"dataset": "mnist1d", "labeled": 100},
    "teacher": {"model": "zoo:cnn", "train": {"epochs": 1}},
    "student": {"model": "zoo:mlp", "args": {"hidden": 16}},
    "objective": {
        "ce": {"loss": "cross_entropy", "weight": 0.1},
        "kd": {"loss": "kl", "weight": 0.9, "temperature": 4.0},
        "dkd": {
            "loss": "dkd",
            "weight": {"kind": "warmup", "value": 1.0, "epochs": 2},
            "temperature": 4.0,
            "options": {"nckd_weight": 8.0},
        },
    },
    "train": {"epochs": 2, "lr": 0.01},
}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    if recipe.task == "classification":  # LM objectives need the models: test_language_recipes
        build_objective(recipe.objective, steps_per_epoch=10)  # terms and options are valid


def test_good_recipe_and_its_schedule():
    recipe = validate_recipe(GOOD)
    objective = build_objective(recipe.objective, steps_per_epoch=50)
    warmup = objective.terms["dkd"].weight
    assert warmup(50, 1000) == 0.5 and warmup(200, 1000) == 1.0
    assert objective.terms["dkd"].options == {"nckd_weight": 8.0}


@pytest.mark.parametrize(
    "change,expected",
    [
        ({"objective": {"kd": {"loss": "kll"}}}, ["objective.kd.loss", "'kl'", "'dkd'", "kll"]),
        ({"data": {"dataset": "mnist"}}, ["data.dataset", "'fashion_mnist'", "'mnist1d'"]),
        ({"train": {"epochs": 1, "learning_rate": 0.1}}, ["train.learning_rate", "unknown field"]),
        ({"train": {"lr": 0.1}}, ["train", "epochs or max_steps"]),
        ({"train": {"epochs": 1, "mixed_precision": "fp8"}}, ["train.mixed_precision", "'bf16'"]),
        (
            {"objective": {"kd": {"loss": "kl", "weight": "high"}}},
            ["objective.kd.weight", "schedule"],
        ),
        (
            {"objective": {"kd": {"loss": "kl", "weight": {"kind": "warmup", "value": 1}}}},
            ["objective.kd.weight", "steps or epochs"],
        ),
        ({"teacher": None}, ["read the teacher"]),
        ({"name": "has space"}, ["name"]),
    ],
)
def test_bad_fields_name_the_field_and_the_allowed_values(change, expected):
    raw = {**GOOD, **change}
    with pytest.raises(RecipeError) as info:
        validate_recipe(raw, "bad.yaml")
    message = str(info.value)
    assert message.startswith("bad.yaml")
    for part in expected:
        assert part in message, message


def test_unknown_loss_option_names_the_term():
    raw = {**GOOD, "objective": {"kd": {"loss": "kl", "options": {"beta": 0.5}}}}
    recipe = validate_recipe(raw)
    with pytest.raises(RecipeError, match=r"objective\.kd: .*unknown option"):
        build_objective(recipe.objective, 10)


def test_overrides():
    raw = apply_overrides(GOOD, ["train.epochs=5", "objective.kd.temperature=2", "seed=3",
                                 "teacher.args.hidden=[32, 16]", "data.labeled=null"])  # fmt: skip
    recipe = validate_recipe(raw)
    assert recipe.train.epochs == 5 and recipe.objective["kd"].temperature == 2.0
    assert recipe.seed == 3 and recipe.teacher.args == {"hidden": [32, 16]}
    assert recipe.data.labeled is None
    assert GOOD["train"]["epochs"] == 2  # the original is untouched
    with pytest.raises(RecipeError, match=r"field\.path=value"):
        apply_overrides(GOOD, ["train.epochs"])
    with pytest.raises(RecipeError, match="name is a value"):
        apply_overrides(GOOD, ["name.first=x"])
    with pytest.raises(RecipeError, match=r"train\.epocs"):
        validate_recipe(apply_overrides(GOOD, ["train.epocs=3"]))


def test_yaml_never_executes_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(
        f"name: !!python/object/apply:os.system ['touch {marker}']\ndata: {{dataset: mnist1d}}\n"
    )
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(path)
    assert not marker.exists()


def test_missing_file_is_named(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
