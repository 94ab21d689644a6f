"""``task: diffusion`` end to end on a tiny budget: a small class-conditional UNet trained
on digits images (in Fashion-MNIST's format), two rounds of progressive distillation
(4 → 2 → 1 steps) as stages of the run, the domain classifier's metrics, a rerun that
reuses every stage, and recipes that cannot work named in one line."""

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from distill import cli
from distill.errors import RecipeError
from distill.recipes import validate_recipe
from distill.recipes.load import load_recipe, read_yaml
from distill.runs import run_recipe
from distill.runs.commands import eval_command, sample_command

pytest.importorskip("diffusers", reason="pip install 'distill[diffusion]' (CI installs it)")

RECIPE = "recipes/fashion_mnist_progressive.yaml"


def tiny(digits_idx_dir, out, *more):
    return load_recipe(
        RECIPE,
        [
            f"data.path={digits_idx_dir}",
            "teacher.args={block_out_channels: [16, 32], down_block_types: [DownBlock2D, "
            "DownBlock2D], up_block_types: [UpBlock2D, UpBlock2D], layers_per_block: 1, "
            "norm_num_groups: 8}",
            "teacher.train.max_steps=20",
            "diffusion.steps=4",
            "diffusion.samples=20",
            "diffusion.classifier_epochs=1",
            "train.max_steps=3",
            f"output.dir={out}",
            "output.latency_repeats=2",
            *more,
        ],
    )


@pytest.mark.e2e
def test_progressive_rounds_run_as_stages_and_are_measured(digits_idx_dir, tmp_path, plots):
    lines = []
    summary = run_recipe(tiny(digits_idx_dir, tmp_path), progress=False, log=lines.append)
    assert summary["task"] == "diffusion" and summary["rounds"] == [4, 2, 1]
    models = summary["models"]
    assert set(models) == {"teacher", "round_2", "student"}
    sampler_steps = [models[k]["sampler_steps"] for k in ("teacher", "round_2", "student")]
    assert sampler_steps == [4.0, 2.0, 1.0]
    assert set(models["teacher"]["ddim"]) == {"2", "1"}  # its own DDIM, not distilled
    for row in [models["round_2"], models["student"], *models["teacher"]["ddim"].values()]:
        assert row["fid"] > 0 and row["seconds_per_image"] > 0  # measured, not a default
    # a sampler distilled for 3 steps from a 20-step teacher is further from the data
    assert models["student"]["fid"] > models["teacher"]["fid"]
    assert models["student"]["steps"] == models["round_2"]["steps"] == 3  # optimizer steps
    assert any("progressive distillation 4 → 2 steps" in line for line in lines)
    run_dir = tmp_path / "fashion_mnist_progressive"
    assert (run_dir / "round_2" / "student.safetensors").exists()
    report = (run_dir / "report.md").read_text()
    assert "| teacher, DDIM (not distilled) | 2 |" in report and "FID (domain classifier)" in report
    assert "round_2/samples.png" in report and (run_dir / "samples.png").exists()
    with Image.open(run_dir / "plots" / "fid_vs_steps.png") as plot:
        assert plot.size[0] > 300
    page = (run_dir / "report.html").read_text()
    assert "<style>" in page and page.count('class="pixels"') == 2  # both students' grids

    again = []
    rerun = run_recipe(tiny(digits_idx_dir, tmp_path), progress=False, log=again.append)
    assert sum("finished by an earlier run, reused" in line for line in again) == 2
    assert rerun["models"]["student"]["fid"] == models["student"]["fid"]
    metrics, line = eval_command(run_dir)
    assert metrics["fid"] == pytest.approx(models["student"]["fid"])
    assert "1-step sampler" in line

    # distill sample: a grid from any stage, in any number of steps, one class per column
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(
        cli.app, ["sample", str(run_dir), "--model", "round_2", "--n", "20", "--out", str(out),
                  "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"] == 2
    with Image.open(out) as grid:
        # 10 classes per row, 32 pixels and a border, each pixel 3 × 3 (at least 900 wide)
        assert grid.size == (3 * 10 * 34, 3 * 2 * 34)
    default = sample_command(run_dir, count=10)
    assert default["steps"] == 1 and Path(default["path"]).exists()
    with pytest.raises(RecipeError, match="no model 'round_7'"):
        sample_command(run_dir, model="round_7")


@pytest.mark.e2e
def test_guidance_is_baked_into_the_first_round_only(digits_idx_dir, tmp_path):
    from distill.runs.table import task_for

    recipe = tiny(digits_idx_dir, tmp_path, "diffusion.guidance=1.5")
    task = task_for(recipe)
    task.prepare(False, lambda line: None)
    teacher, _ = task.teacher(False, lambda line: None)
    first = task.stage_lesson(teacher, "round_2", 1)
    assert first.answers.denoiser.guidance == 1.5 and teacher.guidance == 0.0
    student = task.build_student(recipe.student, teacher)
    assert int(student.sampler_steps) == 2 and student.guidance == 0.0
    second = task.stage_lesson(student, "student", 1)
    assert second.answers.denoiser.guidance == 0.0 and second.answers.steps == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"diffusion": {"steps": 48, "to_steps": 1}}, "does not halve down to to_steps 1"),
        ({"student": {"model": "zoo:cnn"}}, "starts each student as a copy of its teacher"),
        ({"baseline": True}, "set baseline: false"),
        ({"objective": {"kd": {"loss": "kl"}}}, "one term \\{loss: progressive_distillation\\}"),
        ({"diffusion": None}, "diffusion: required field is missing"),
        ({"teacher": {"model": "diffusers:unet2d"}}, "starts with random weights; give train"),
    ],
)
def test_recipes_that_cannot_distil_a_sampler_fail_naming_the_field(changes, message):
    raw = {**read_yaml(RECIPE), **changes}
    if raw.get("diffusion") is None:
        raw.pop("diffusion")
    with pytest.raises(RecipeError, match=message):
        validate_recipe(raw)


@pytest.mark.e2e
def test_consistency_distillation_is_one_student_sampled_in_one_two_or_four_steps(
    digits_idx_dir, tmp_path
):
    recipe = tiny(
        digits_idx_dir, tmp_path, "diffusion.method=consistency", "diffusion.steps=8",
        "objective={cd: {loss: consistency_distillation, options: {huber_c: 0.03}}}",
    )  # fmt: skip
    summary = run_recipe(recipe, progress=False, log=lambda line: None)
    models = summary["models"]
    assert summary["method"] == "consistency" and set(models) == {"teacher", "student"}
    student = models["student"]
    assert student["sampler_steps"] == 1.0 and set(student["multistep"]) == {"2", "4"}
    assert set(models["teacher"]["ddim"]) == {"4", "2", "1"}  # the teacher's DDIM, compared
    assert all(row["fid"] > 0 for row in student["multistep"].values())
    assert student["fid"] > models["teacher"]["fid"]  # 3 steps of training: not the teacher
    drawn = sample_command(tmp_path / "fashion_mnist_progressive", count=10, steps=2)
    assert drawn["steps"] == 2 and Path(drawn["path"]).exists()
    with pytest.raises(RecipeError, match="method consistency trains with one term"):
        validate_recipe({**read_yaml(RECIPE), "diffusion": {"method": "consistency"}})


@pytest.mark.e2e
def test_a_diffusion_recipe_runs_under_accelerate_launch(digits_idx_dir, tmp_path):
    """`accelerate launch --num_processes 2 -m distill run` (gloo on this CPU): the teacher,
    the domain classifier and the round (2 → 1 steps; the rounds themselves are tested in
    one process above) train in two processes; one summary and report."""
    import os
    import subprocess
    import sys

    from .test_distributed import free_port

    recipe = tiny(digits_idx_dir, tmp_path)
    overrides = [
        f"data.path={digits_idx_dir}", "diffusion.steps=2", "diffusion.samples=10",
        "diffusion.classifier_epochs=1", "teacher.train.max_steps=2", "train.max_steps=1",
        f"output.dir={tmp_path}", "output.latency_repeats=1",
        "teacher.args={block_out_channels: [16, 32], down_block_types: [DownBlock2D, "
        "DownBlock2D], up_block_types: [UpBlock2D, UpBlock2D], layers_per_block: 1, "
        "norm_num_groups: 8}",
    ]  # fmt: skip
    env = {**os.environ, "DISTILL_CACHE": str(tmp_path / "cache")}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2",
        f"--main_process_port={free_port()}", "-m", "distill", "run", RECIPE, "--quiet",
        *[f"--set={o}" for o in overrides],
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / recipe.name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["models"]) == {"teacher", "student"}
    assert summary["models"]["student"]["sampler_steps"] == 1.0
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(set(lines)) == len(lines)  # one process logged
    assert (run_dir / "report.md").exists()


def save_text_conditional_pipeline(folder):
    """A pipeline folder as diffusers and transformers write it: a tiny UNet2DConditionModel
    (v-prediction), its scheduler, a tiny CLIP text encoder and a tokenizer."""
    import diffusers
    import torch
    import transformers

    from .text_models import VOCAB, chat_tokenizer

    torch.manual_seed(0)
    diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
        norm_num_groups=8, cross_attention_dim=16, attention_head_dim=4,
    ).save_pretrained(folder / "unet")  # fmt: skip
    diffusers.DDIMScheduler(prediction_type="v_prediction").save_pretrained(folder / "scheduler")
    transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=32, pad_token_id=1, eos_token_id=2,
    )).save_pretrained(folder / "text_encoder")  # fmt: skip
    chat_tokenizer().save_pretrained(folder / "tokenizer")
    return folder


@pytest.mark.e2e
def test_a_text_conditional_teacher_reads_each_class_as_its_prompt(digits_idx_dir, tmp_path):
    import torch

    from distill.runs.table import task_for

    folder = save_text_conditional_pipeline(tmp_path / "pipe")
    recipe = tiny(
        digits_idx_dir, tmp_path, f"teacher={{model: 'hf-diffusers:{folder}'}}",
        "diffusion.image_size=8", "diffusion.classifier={channels: [8, 16], hidden: 16}",
    )  # fmt: skip
    task = task_for(recipe)
    task.prepare(False, lambda line: None)
    teacher, _ = task.teacher(False, lambda line: None)
    assert teacher.conditioning.shape[:1] == (11,)  # ten class prompts, then the empty one
    z, tau = torch.randn(2, 1, 8, 8), torch.tensor([500.0, 500.0])
    # a class's prompt and the empty prompt (the null class) condition differently; this
    # test tokenizer knows few words, so the class names themselves may read alike
    sandal, empty = teacher(z, tau, torch.tensor([5, 5])), teacher(z, tau, torch.tensor([5, 10]))
    assert torch.equal(sandal[0], empty[0]) and not torch.equal(sandal[1], empty[1])
    summary = run_recipe(recipe, progress=False, log=lambda line: None)
    assert set(summary["models"]) == {"teacher", "round_2", "student"}
    assert summary["models"]["student"]["sampler_steps"] == 1.0
