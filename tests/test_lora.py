"""LoRA students (student.peft, the peft package): only the adapters train and are
checkpointed, PEFT loads the saved adapters, the saved student is merged, and a target
module that does not exist names the closest ones."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open

from distill.errors import DistillError
from distill.models.lora import (
    ADAPTER_DIR,
    add_adapters,
    has_adapters,
    merge_adapters,
    save_adapter,
)
from distill.recipes import RecipeError, load_recipe
from distill.runs import run_recipe
from distill.training import checkpoint as ckpt

from .test_language_recipes import tiny_token_kd_recipe
from .text_models import tiny_llama

ROOT = Path(__file__).parent.parent
IDS = torch.tensor([[3, 7, 8, 9, 10, 11, 12, 2]])


def trained_adapters(model):
    """Adapters as training leaves them: B no longer zero."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    return model


def test_adapters_start_as_the_identity_and_only_they_train():
    base = tiny_llama()
    adapted = add_adapters(copy.deepcopy(base), r=4, alpha=8, dropout=0.0,
                           target_modules=["q_proj", "v_proj"])  # fmt: skip
    trainable = [name for name, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert len(trainable) == 2 * 2 * 2  # A and B, on q and v, in 2 layers
    with torch.no_grad():  # B starts at zero: the adapted model is the base model
        torch.testing.assert_close(adapted(input_ids=IDS).logits, base(input_ids=IDS).logits)


def test_peft_loads_the_saved_adapters_and_merging_keeps_the_outputs(tmp_path):
    base = tiny_llama()
    adapted = trained_adapters(
        add_adapters(copy.deepcopy(base), r=4, alpha=8, dropout=0.0, target_modules=["q_proj"])
    )
    with torch.no_grad():
        expected = adapted(input_ids=IDS).logits
        assert not torch.allclose(expected, base(input_ids=IDS).logits)
    folder = save_adapter(adapted, tmp_path / "adapter", "hf-config:llama")
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), folder)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=IDS).logits, expected)
        merged = merge_adapters(adapted)
        assert not has_adapters(merged)
        assert type(merged.model.layers[0].self_attn.q_proj) is torch.nn.Linear
        torch.testing.assert_close(merged(input_ids=IDS).logits, expected, atol=1e-5, rtol=1e-5)


def test_checkpoints_of_an_adapted_model_hold_only_the_adapters(tmp_path):
    adapted = trained_adapters(
        add_adapters(tiny_llama(), r=2, alpha=4, dropout=0.0, target_modules=["v_proj"])
    )
    ckpt.save_weights(adapted, tmp_path / "student.safetensors")
    with safe_open(tmp_path / "student.safetensors", "pt") as f:
        names = list(f.keys())
    assert names and all("lora_" in name for name in names)
    fresh = add_adapters(tiny_llama(), r=2, alpha=4, dropout=0.0, target_modules=["v_proj"])
    ckpt.load_weights(fresh, tmp_path / "student.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=IDS).logits, adapted(input_ids=IDS).logits)
    with pytest.raises(ckpt.CheckpointError, match="do not fit"):  # a plain model's file
        ckpt.save_weights(tiny_llama(), tmp_path / "plain.safetensors")
        ckpt.load_weights(fresh, tmp_path / "plain.safetensors")


def test_a_target_module_that_does_not_exist_names_the_closest():
    with pytest.raises(DistillError, match=r"no module named 'qproj'.*closest names: q_proj"):
        add_adapters(tiny_llama(), r=2, alpha=4, dropout=0.0, target_modules=["qproj"])


@pytest.mark.e2e
def test_a_lora_student_recipe_trains_only_its_adapters_and_saves_it_merged(
    text_file, tokenizer_dir, tmp_path
):
    import transformers

    recipe = tiny_token_kd_recipe(
        text_file, tokenizer_dir, tmp_path,
        "student.peft={r: 4, alpha: 8, target_modules: [q_proj, v_proj]}",
    )  # fmt: skip
    summary = run_recipe(recipe, progress=False, log=lambda m: None)
    run_dir = tmp_path / "llm_token_kd"
    models = summary["models"]
    assert models["student"]["kl_to_teacher"] < models["baseline"]["kl_to_teacher"]
    assert models["student"]["parameters"] == models["baseline"]["parameters"]
    # training checkpoints: adapters only; the run's student file: merged, plain names
    for folder in (run_dir, run_dir / "baseline"):
        last = ckpt.latest_checkpoint(folder)
        with safe_open(last / ckpt.STUDENT_FILE, "pt") as f:
            assert all("lora_" in name for name in f.keys())  # noqa: SIM118
    weights = {}
    for folder in (run_dir, run_dir / "baseline"):
        with safe_open(folder / ckpt.STUDENT_FILE, "pt") as f:
            assert not any("lora_" in name or "base_layer" in name for name in f.keys())  # noqa: SIM118
            weights[folder.name] = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    student, baseline = weights["llm_token_kd"], weights["baseline"]
    # the frozen weights are the same in both students; the adapted ones moved apart
    frozen = "model.layers.0.mlp.up_proj.weight"
    adapted = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(student[frozen], baseline[frozen])
    assert not torch.allclose(student[adapted], baseline[adapted])
    assert (run_dir / ADAPTER_DIR / "adapter_config.json").exists()
    hf = transformers.AutoModelForCausalLM.from_pretrained(run_dir / "student")
    torch.testing.assert_close(hf.state_dict()[adapted], student[adapted])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("generations=2", "`student.peft` does not combine with `generations`"),
        ("search={candidates: [{model: zoo:cnn}]}", "`student.peft` .* with `search`"),
    ],
)
def test_lora_refuses_what_it_is_not_built_for(change, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(
            ROOT / "recipes" / "fashion_mnist_kd.yaml",
            ["student.peft={target_modules: [fc]}", change],
        )


def digits_lora_recipe(digits_idx_dir, tmp_path, targets):
    return load_recipe(
        ROOT / "recipes" / "fashion_mnist_kd.yaml",
        [f"data.path={digits_idx_dir}", "data.labeled=null", "teacher.train.max_steps=10",
         "train.epochs=null", "train.max_steps=6", f"output.dir={tmp_path}",
         "output.latency_repeats=1", f"student.peft={{r: 2, target_modules: {targets}}}"],
    )  # fmt: skip


@pytest.mark.e2e
def test_a_lora_classifier_keeps_its_other_layers_frozen(digits_idx_dir, tmp_path):
    run_recipe(digits_lora_recipe(digits_idx_dir, tmp_path, "[fc]"), progress=False,
               log=lambda m: None)  # fmt: skip
    run_dir = tmp_path / "fashion_mnist_kd"
    weights = {}
    for folder in (run_dir, run_dir / "baseline"):
        with safe_open(folder / ckpt.STUDENT_FILE, "pt") as f:
            weights[folder.name] = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    student, baseline = weights["fashion_mnist_kd"], weights["baseline"]
    # the MLP's hidden layer stays as built (the same seed for both students); fc trains
    torch.testing.assert_close(student["hidden.0.0.weight"], baseline["hidden.0.0.weight"])
    assert not torch.allclose(student["fc.weight"], baseline["fc.weight"])


@pytest.mark.e2e
def test_the_doctor_probes_a_lora_student_through_its_adapters(digits_idx_dir, tmp_path):
    """The capacity probe trains what the run will train: the adapters, not the frozen
    weights (the student is built with student.peft's adapters)."""
    from distill.doctor.run import diagnose

    recipe = digits_lora_recipe(digits_idx_dir, tmp_path, "[fc]")
    result = diagnose(recipe, tmp_path / "doctor", sample=200, probe_steps=5, progress=False,
                      log=lambda m: None)  # fmt: skip
    gap = next(f for f in result["findings"] if f["check"] == "capacity_gap")
    # the student's fc is Linear(64, 10): rank-2 adapters A (2 x 64) and B (10 x 2)
    assert gap["measurements"]["trained_parameters"] == 2 * 64 + 10 * 2
    assert "148 of them trained, LoRA" in gap["summary"]


def test_a_missing_target_module_fails_before_any_training(digits_idx_dir, tmp_path):
    recipe = digits_lora_recipe(digits_idx_dir, tmp_path, "[fc2]")
    with pytest.raises(RecipeError, match=r"no module named 'fc2'.*closest names: fc"):
        run_recipe(recipe, progress=False, log=lambda m: None)
    assert not (tmp_path / "cache" / "teachers").exists()  # no teacher was trained
