import pytest
import torch
from torch import nn

from distill import TapError, Taps, teachers
from distill.batch import as_batch

from .models import TinyResNet


def test_taps_capture_outputs_and_inputs_of_a_torchvision_style_model():
    model = TinyResNet().eval()
    x = torch.randn(2, 1, 8, 8)
    with Taps(model, ["layer2", "layer3.0.bn2", "fc:input"]) as taps:
        logits = model(x)
        features = taps.pop()
    assert features["layer2"].shape == (2, 16, 4, 4)
    assert features["layer3.0.bn2"].shape == (2, 32, 2, 2)
    assert features["fc:input"].shape == (2, 32)
    torch.testing.assert_close(model.fc(features["fc:input"]), logits)
    # hooks are gone after the context: the model is untouched
    assert not model.layer2._forward_hooks and not model.fc._forward_pre_hooks


def test_unknown_tap_path_lists_the_closest_paths():
    with pytest.raises(TapError) as info:
        Taps(TinyResNet(), ["layer_3"])
    message = str(info.value)
    assert "layer_3" in message and "layer3" in message


def test_tap_that_did_not_fire_is_an_error():
    model = nn.ModuleDict({"used": nn.Linear(2, 2), "unused": nn.Linear(2, 2)})
    taps = Taps(model, ["unused"])
    model["used"](torch.randn(1, 2))
    with pytest.raises(RuntimeError, match="did not fire"):
        taps.pop()


def test_taps_keep_student_gradients():
    model = TinyResNet()
    taps = Taps(model, ["layer1"])
    model(torch.randn(2, 1, 8, 8))
    feature = taps.pop()["layer1"]
    feature.sum().backward()
    assert model.conv1.weight.grad is not None


def test_teacher_module_is_frozen_and_returns_logits_and_features():
    model = TinyResNet().train()
    teacher = teachers.Module(model, taps=["layer3"])
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    x = torch.randn(4, 1, 8, 8)
    out = teacher(as_batch((x, torch.zeros(4, dtype=torch.long))))
    assert out.logits.shape == (4, 10) and out.features["layer3"].shape == (4, 32, 2, 2)
    assert not out.logits.requires_grad and not out.logits.is_inference()
    # its outputs can be saved for backward by a student's loss graph
    student_logits = torch.randn(4, 10, requires_grad=True)
    (student_logits * out.logits).sum().backward()
    # running the teacher leaves BatchNorm statistics alone
    before = model.bn1.running_mean.clone()
    teacher(as_batch(x * 5 + 3))
    torch.testing.assert_close(model.bn1.running_mean, before)


def test_teacher_autocast_runs_in_bfloat16():
    teacher = teachers.Module(nn.Linear(4, 3), autocast_dtype=torch.bfloat16)
    out = teacher(as_batch(torch.randn(2, 4)))
    assert out.logits.dtype == torch.bfloat16


def test_batch_reading():
    x, y = torch.randn(3, 2), torch.tensor([0, 1, 2])
    assert as_batch((x, y)).rows() == 3
    token_batch = as_batch(
        {
            "input_ids": torch.zeros(2, 4, dtype=torch.long),
            "labels": torch.tensor([[1, 2, -100, -100], [3, 4, 5, -100]]),
        }
    )
    assert token_batch.rows() == 5 and "input_ids" in token_batch.kwargs
    with pytest.raises(TypeError, match="cannot read a batch"):
        as_batch((x, y, y, y))


def test_a_teacher_needs_only_call_and_a_model_is_refused_with_the_fix():
    """``teachers.Teacher`` gives the engine's defaults (no taps, no state, nothing after a
    step); a bare ``nn.Module`` as the teacher is an error that says how to wrap it."""
    import pytest
    from torch import nn

    from distill import Distiller, teachers
    from distill.outputs import TeacherOutput

    class Constant(teachers.Teacher):
        def __call__(self, batch, logits=True):
            return TeacherOutput(logits=torch.zeros(batch.size(), 3))

    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    student = nn.Linear(4, 3)
    result = Distiller(student, Constant(), lr=0.1, progress=False).fit(loader, max_steps=2)
    assert result.steps == 2
    assert Constant().state_module is None and Constant().fixed_temperature is None
    with pytest.raises(ValueError, match="no model to tap"):
        Constant().add_taps(["layer1"])
    with pytest.raises(TypeError, match=r"teachers\.Module\(model\)"):
        Distiller(student, nn.Linear(4, 3))
