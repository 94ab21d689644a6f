import pytest
import torch

from distill.models import ZOO, build_model, count_parameters

# parameter counts published with the CIFAR-100 KD benchmark (Tian et al., ICLR 2020)
PUBLISHED_MILLIONS = {
    "resnet8x4": 1.23, "resnet32x4": 7.43, "resnet20": 0.28, "resnet56": 0.86,
    "wrn_16_2": 0.70, "wrn_40_2": 2.26, "vgg8": 3.96, "vgg13": 9.46,
}  # fmt: skip


@pytest.mark.parametrize("name", PUBLISHED_MILLIONS)
def test_cifar_models_match_published_sizes(name):
    model = build_model(f"zoo:{name}", 100, (3, 32, 32))
    assert count_parameters(model) / 1e6 == pytest.approx(PUBLISHED_MILLIONS[name], abs=0.01)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_small_models_on_both_input_kinds():
    for shape in [(1, 28, 28), (1, 40)]:
        for name in ("mlp", "cnn"):
            model = build_model(f"zoo:{name}", 10, shape)
            assert model(torch.randn(3, *shape)).shape == (3, 10)


def test_the_cnn_family_searches_depth_separable_convolutions_and_resolution():
    """Each of the CNN's search dimensions changes the network as it says, and the default
    network keeps its weight names (teachers stored before still load)."""
    x = torch.randn(2, 1, 28, 28)
    plain = build_model("zoo:cnn", 10, (1, 28, 28), {"channels": [8, 16], "hidden": 32})
    assert [k for k in plain.state_dict() if k.endswith("weight")][:2] == [
        "block1.0.weight", "block1.1.weight"]  # fmt: skip
    deeper = build_model("zoo:cnn", 10, (1, 28, 28), {"channels": [8, 16], "depth": [1, 3]})
    convs = lambda m: [c for c in m.modules() if isinstance(c, torch.nn.Conv2d)]  # noqa: E731
    assert len(convs(deeper)) == 4 and deeper(x).shape == (2, 10)
    separable = build_model("zoo:cnn", 10, (1, 28, 28), {"channels": [8, 16], "hidden": 32,
                                                         "separable": True})  # fmt: skip
    depthwise = [c for c in convs(separable) if c.groups > 1]
    assert [c.groups for c in depthwise] == [8] and depthwise[0].kernel_size == (3, 3)
    assert count_parameters(separable) < count_parameters(plain)
    low = build_model("zoo:cnn", 10, (1, 28, 28), {"channels": [8, 16], "hidden": 0, "pool": 2})
    assert low.fc.in_features == 16 * 3 * 3 and low(x).shape == (2, 10)  # 28 -> 14 -> 7 -> 3
    signal = build_model("zoo:cnn", 10, (1, 40), {"depth": 2, "separable": True, "pool": 2})
    assert signal(torch.randn(2, 1, 40)).shape == (2, 10)
    with pytest.raises(TypeError, match="too small"):  # 28 / 4 = 7 pixels, 3 halvings
        build_model("zoo:cnn", 10, (1, 28, 28), {"channels": [4, 4, 4], "pool": 4})
    with pytest.raises(TypeError, match="one per stage"):
        build_model("zoo:cnn", 10, (1, 28, 28), {"channels": [4, 4], "depth": [1, 2, 3]})


def test_bad_model_specs_are_clear():
    with pytest.raises(ValueError, match="zoo, torchvision, timm, hf"):
        build_model("resnet8", 10, (3, 32, 32))
    with pytest.raises(ValueError, match="resnet8x4"):
        build_model("zoo:resnet8x5", 10, (3, 32, 32))
    with pytest.raises(TypeError, match="zoo:mlp"):
        build_model("zoo:mlp", 10, (1, 40), {"width": 3})
    with pytest.raises(ValueError, match="CIFAR"):
        build_model("zoo:resnet20", 10, (1, 28, 28))
    assert "mlp" in ZOO


def fake_package(root, name, body, version=None, requires=()):
    """A package ``name`` whose import runs ``body``, with pip's metadata if ``version``."""
    (root / name).mkdir()
    (root / name / "__init__.py").write_text(body)
    if version is not None:
        info = root / f"{name}-{version}.dist-info"
        info.mkdir()
        lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
        lines += [f"Requires-Dist: {r}" for r in requires]
        (info / "METADATA").write_text("\n".join(lines) + "\n")


@pytest.fixture
def packages(tmp_path, monkeypatch):
    """A folder first on sys.path, for packages that stand in for installed ones."""
    import sys

    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("torchvision", "timm"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path


BROKEN_TORCHVISION = 'raise RuntimeError("operator torchvision::nms does not exist")\n'


def test_a_torchvision_built_for_another_torch_is_named_with_both_versions(packages):
    """What PyPI's torchvision does beside the CPU torch wheel: the import fails in its
    compiled operators. timm, which imports it, says the same instead of "pip install timm"."""
    from distill.errors import MissingDependency

    fake_package(packages, "torchvision", BROKEN_TORCHVISION, "0.29.1", ["torch (>=2.14.0)"])
    fake_package(packages, "timm", "import torchvision\n", "1.0.31", ["torchvision"])
    for spec in ("torchvision:resnet18", "timm:resnet18"):
        with pytest.raises(MissingDependency) as error:
            build_model(spec, 10, (3, 32, 32))
        message = str(error.value)
        assert f"model {spec!r} needs torchvision" in message
        assert f"torchvision 0.29.1 does not load beside torch {torch.__version__}" in message
        assert "operator torchvision::nms does not exist" in message
        assert "built for torch (>=2.14.0)" in message and "matching pair" in message
        assert "pip install timm" not in message
    assert "(through timm)" in message


def test_timm_without_torchvision_says_torchvision_is_missing(packages):
    from distill.errors import MissingDependency

    fake_package(packages, "timm", "import torchvision\n", "1.0.31", ["torchvision"])
    with pytest.raises(
        MissingDependency, match=r"needs torchvision \(through timm\), which is not"
    ):
        build_model("timm:resnet18", 10, (3, 32, 32))


def test_no_extra_installs_a_torchvision_that_would_replace_torch():
    """torchvision (and timm, which needs it) pin the torch release they were built for; an
    extra listing them would make pip swap an installed CPU torch for another build."""
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    listed = {
        requirement.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip()
        for extra in project["project"]["optional-dependencies"].values()
        for requirement in extra
    }
    assert not listed & {"torchvision", "timm", "open-clip-torch"}, listed
