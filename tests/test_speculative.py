"""Students as speculative-decoding drafts: the acceptance rate α in evaluations, assisted
generation timed against the target alone (greedy output unchanged, tokens per target
pass counted), and `distill eval --speculative` on a recipe run with tiny models."""

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from distill import Distiller, cli, teachers
from distill.methods.speculative import assisted_generation
from distill.training.evaluation import distribution_overlap
from tests.text_models import tiny_llama


def test_distribution_overlap_is_one_minus_total_variation():
    student, teacher = torch.randn(2, 3, 11), torch.randn(2, 3, 13)  # a padded teacher head
    p = torch.softmax(teacher[..., :11], -1)
    q = torch.softmax(student, -1)
    tvd = 0.5 * (p - q).abs().sum(-1)
    torch.testing.assert_close(distribution_overlap(student, teacher), 1 - tvd)


def test_an_identical_draft_is_always_accepted_and_a_random_one_rarely():
    target = tiny_llama(seed=1, vocab=64, max_position_embeddings=128).eval()
    same, other = copy.deepcopy(target), tiny_llama(seed=2, vocab=64).eval()
    prompts = [torch.randint(0, 64, (8,)) for _ in range(3)]
    exact = assisted_generation(target, same, prompts, new_tokens=20, draft_tokens=4)
    assert exact["greedy"]["tokens_per_target_call"] == 5.0  # 4 drafted + 1 from the target
    assert exact["greedy"]["target_calls_alone"] == 60 and exact["greedy"]["same_text"] == 1.0
    poor = assisted_generation(target, other, prompts, new_tokens=20, draft_tokens=4)
    assert poor["greedy"]["same_text"] == 1.0  # the output is the target's, whatever the draft
    assert 1.0 <= poor["greedy"]["tokens_per_target_call"] < 2.0
    rows = [{"input_ids": p, "labels": torch.roll(p, -1)} for p in prompts]
    loader = torch.utils.data.DataLoader(rows, batch_size=3)
    alpha = Distiller(same, teachers.Module(target), progress=False).evaluate(loader)
    assert alpha["acceptance"] == pytest.approx(1.0)
    lower = Distiller(other, teachers.Module(target), progress=False).evaluate(loader)
    assert lower["acceptance"] < 1.0


@pytest.mark.e2e
def test_the_draft_recipe_runs_and_eval_speculative_times_both_rows(
    text_file, tokenizer_dir, tmp_path
):
    from tests.test_language_recipes import ROOT, tiny_overrides

    overrides = [
        *tiny_overrides("llama", text_file, tokenizer_dir, tmp_path),
        "student.args.keep=2",
    ]
    recipe = ROOT / "recipes" / "llm_draft.yaml"
    run = CliRunner().invoke(cli.app, ["run", str(recipe), *[f"--set={o}" for o in overrides]])
    assert run.exit_code == 0, run.output
    run_dir = tmp_path / "llm_draft"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0 < summary["models"]["student"]["acceptance"] <= 1
    for row in ("student", "baseline"):
        args = ["eval", str(run_dir), "--speculative", "--row", row, "--prompts", "2"]
        args += ["--new-tokens", "8", "--prompt-tokens", "8", "--draft-tokens", "3", "--json"]
        result = CliRunner().invoke(cli.app, args)
        assert result.exit_code == 0, result.output
        measured = json.loads(result.stdout)
        assert measured["greedy_same_text"] == 1.0 and 0 < measured["acceptance"] <= 1
        assert 1.0 <= measured["greedy_tokens_per_target_call"] <= 4.0
        assert measured["greedy_target_calls_alone"] == 2 * 8
    assert (run_dir / "baseline" / "speculative.json").is_file()
    refused = CliRunner().invoke(cli.app, ["eval", str(run_dir), "--speculative", "--row", "x"])
    assert refused.exit_code == 2 and "--row: one of student, baseline" in refused.output
