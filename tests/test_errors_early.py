"""A bad recipe or input fails in seconds with one line naming the field or file, before
anything trains, and leaves no run directory behind; a bug keeps its traceback."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from distill import cli
from distill.recipes import RecipeError, load_recipe

ROOT = Path(__file__).parents[1]
RECIPE = ROOT / "recipes" / "mnist1d_kd.yaml"
runner = CliRunner()


def run(tmp_path, *overrides, recipe=RECIPE):
    sets = [f"--set={o}" for o in ["teacher.train.max_steps=2", "train.max_steps=2", *overrides]]
    return runner.invoke(cli.app, ["run", str(recipe), *sets, "--out", str(tmp_path / "run")])


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["student.args.hidden_size=3"], "student.model zoo:mlp: zoo:mlp args"),
        (["objective.hint={loss: hint, student: nowhere, teacher: fc}"], "student.model zoo:mlp"),
        (["objective.kd.temperature=0"], "objective.kd: temperature must be > 0"),
        (["objective.kd.options={skew: 2}"], "objective.kd: Term(kl): unknown option"),
        (["name=.."], "name: String should match pattern"),
        (["teacher.checkpoint=/nowhere/teacher.safetensors"], "does not exist"),
    ],
)
def test_a_bad_recipe_fails_before_any_training(overrides, message, tmp_path, isolated_cache):
    result = run(tmp_path, *overrides)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()  # no run directory left behind
    assert not list((isolated_cache / "teachers").glob("*/teacher.json"))  # no teacher trained


def test_out_pointing_at_a_file_is_one_line(tmp_path, isolated_cache):
    (tmp_path / "run").write_text("not a folder")
    result = run(tmp_path)
    assert result.exit_code == 2 and "is a file; give --out" in result.output


def test_damaged_inputs_name_their_file(tmp_path, isolated_cache, digits_idx_dir):
    binary = tmp_path / "recipe.yaml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(RecipeError, match=r"recipe\.yaml: not a text file"):
        load_recipe(binary)

    # a truncated Fashion-MNIST file, given as data.path: one line naming it
    folder = tmp_path / "fashion"
    folder.mkdir()
    for path in digits_idx_dir.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    damaged = folder / "train-images-idx3-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:200])
    recipe = ROOT / "recipes" / "fashion_mnist_kd.yaml"
    result = run(tmp_path, f"data.path={folder}", recipe=recipe)
    assert result.exit_code == 2, result.output
    assert f"{damaged}: damaged" in result.output and "Traceback" not in result.output

    # an explicit data.path without the files is an error, not the system copy
    result = run(tmp_path, f"data.path={tmp_path / 'empty'}", recipe=recipe)
    assert result.exit_code == 2 and "does not hold the Fashion-MNIST files" in result.output


def test_list_items_can_be_set():
    recipe = load_recipe(
        ROOT / "recipes" / "mnist1d_ensemble.yaml", ["teacher.members.1.args.hidden=32"]
    )
    assert recipe.teacher.members[1].args["hidden"] == 32
    with pytest.raises(RecipeError, match="is a list of 2"):
        load_recipe(ROOT / "recipes" / "mnist1d_ensemble.yaml", ["teacher.members.2.model=zoo:mlp"])


def test_hf_models_do_not_run_remote_code():
    from distill.errors import ModelError
    from distill.models import build_model

    with pytest.raises(ModelError, match="does not run code shipped with a model"):
        build_model("hf:someone/model", 10, (1, 28, 28), {"trust_remote_code": True})


def test_a_classifier_head_is_replaced_for_the_data_classes():
    import torch

    from distill.models import replace_head

    from .models import TinyResNet

    model = replace_head(TinyResNet(num_classes=1000), 7)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 7) and model.fc.out_features == 7
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 1000, 1))
    assert replace_head(conv, 5)[1].out_channels == 5


def test_real_torchvision_classifiers_get_a_head_for_the_data_classes():
    """Runs where torchvision is installed (not in CI: its PyPI wheels need another torch);
    the architectures ImageNet weights come with, given a head for 10 classes."""
    import torch

    torchvision = pytest.importorskip("torchvision")
    from distill.models import replace_head

    for name, side in [("resnet18", 64), ("mobilenet_v3_small", 64), ("vgg11", 64),
                       ("squeezenet1_0", 64), ("efficientnet_b0", 64), ("vit_b_16", 224),
                       ("convnext_tiny", 64), ("densenet121", 64), ("swin_t", 224)]:  # fmt: skip
        model = replace_head(torchvision.models.get_model(name, weights=None), 10).eval()
        with torch.no_grad():
            assert model(torch.randn(2, 3, side, side)).shape == (2, 10), name


def test_a_garbage_cache_manifest_names_itself(tmp_path):
    from distill.cache import read_manifest
    from distill.errors import CacheError

    (tmp_path / "manifest.json").write_text("garbage{")
    with pytest.raises(CacheError, match=r"manifest\.json: not valid JSON"):
        read_manifest(tmp_path)
