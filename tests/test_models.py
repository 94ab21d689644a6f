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
