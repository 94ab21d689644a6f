"""Verified teacher answers (rejection sampling): reading final answers, comparing them,
choosing among a prompt's correct samples, and a generated dataset with several samples
per prompt, verified, resumed and reported in its provenance."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distill import cli
from distill.methods.generated_data import generate_dataset, partial_path, read_generations
from distill.methods.generation import GenerationSettings, load_prompts
from distill.methods.verify import Sample, VerifySpec, answer_verifier, final_answer, select
from distill.recipes import RecipeError, load_recipe
from distill.runs.tasks.language.generate import ensure_generated
from distill.training.checkpoint import save_weights
from tests.test_generate import PROMPTS, ROOT, tiny_llama
from tests.text_models import chat_tokenizer


@pytest.mark.parametrize(
    "text, rule, found",
    [
        ("3 apples and 4 pears make 7", "last_number", "7"),
        ("so the total is 1,250.5 dollars.", "last_number", "1,250.5"),
        ("no number here", "last_number", None),
        (r"we get \boxed{12} and then \boxed{ 13 }", "boxed", "13"),
        ("Reasoning... Answer: forty two", "marker", "forty two"),
        ("step one\nstep two\n  the end  \n", "last_line", "the end"),
    ],
)
def test_final_answer_rules(text, rule, found):
    assert final_answer(text, VerifySpec(answer_from=rule)) == found


def test_the_verifier_compares_numbers_within_tolerance_or_text_folded():
    numeric = answer_verifier(VerifySpec(tolerance=0.01))
    assert numeric("so it is 1,250.004", {"answer": 1250})
    assert not numeric("so it is 1,250.5", {"answer": "1250"})
    assert not numeric("no idea", {"answer": 3})
    text = answer_verifier(VerifySpec(answer_from="marker", numeric=False))
    assert text("... answer:  Paris ", {"answer": "paris"})
    assert not text("... answer: Lyon", {"answer": "paris"})


def test_select_keeps_the_best_every_or_the_shortest_correct_sample():
    samples = [
        Sample(0, "long correct one", -0.9, True),
        Sample(1, "wrong", -0.1, False),
        Sample(2, "short ok", -0.5, True),
        Sample(3, "also right", -0.5, True),
    ]
    assert [s.index for s in select(samples, "best")] == [2]  # highest log-prob, earliest tie
    assert [s.index for s in select(samples, "all_correct")] == [0, 2, 3]
    assert [s.index for s in select(samples, "shortest_correct")] == [2]
    assert select([Sample(0, "x", 0.0, False)], "best") == []


def test_several_samples_are_verified_kept_and_resumed(tmp_path, monkeypatch):
    """Three samples per prompt, a Python verifier; the rows kept follow ``keep``; a killed
    run resumes without sampling again; the provenance counts what was let through."""
    tokenizer, model = chat_tokenizer(), tiny_llama(seed=3)
    settings = GenerationSettings(max_new_tokens=4, temperature=1.0, batch_size=4, samples=3)

    def verifier(text, prompt):  # a user's own check: the answer names a word of the prompt
        return any(word in text.split() for word in prompt["messages"][-1]["content"].split())

    def run(out, keep="all_correct", **options):
        return generate_dataset(
            model, tokenizer, PROMPTS, settings, tmp_path / out, {"teacher": "tiny"},
            progress=False, log=lambda m: None, verifier=verifier, keep=keep, **options,
        )  # fmt: skip

    everything = generate_dataset(
        model, tokenizer, PROMPTS, settings, tmp_path / "all.jsonl", {"teacher": "tiny"},
        progress=False, log=lambda m: None,
    )  # fmt: skip
    rows, meta = read_generations(everything)
    assert [r["id"] for r in rows] == [f"{p['id']}/{k}" for p in PROMPTS for k in range(3)]
    assert "verification" not in meta
    answers = {r["id"]: r["messages"][-1]["content"] for r in rows}
    by_prompt = {p["id"]: p for p in PROMPTS}
    right = {i for i, a in answers.items() if verifier(a, by_prompt[int(i.split("/")[0])])}
    assert 0 < len(right) < len(answers)  # the tiny teacher is sometimes right

    kept, meta = read_generations(run("correct.jsonl"))
    assert {r["id"] for r in kept} == right  # the same samples: same seed, same batches
    check = meta["verification"]
    assert check["samples"] == 12 and check["correct_samples"] == len(right)
    assert check["kept_rows"] == len(right) and check["keep"] == "all_correct"
    assert check["prompts_solved"] == len({i.split("/")[0] for i in right})
    best, _ = read_generations(run("best.jsonl", keep="best"))
    assert len(best) == check["prompts_solved"] and {r["id"] for r in best} <= right

    calls, real = [], model.generate

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", killed)
    with pytest.raises(KeyboardInterrupt):
        run("resumed.jsonl")
    assert len(partial_path(tmp_path / "resumed.jsonl").read_text().splitlines()) == 1 + 4
    monkeypatch.setattr(model, "generate", real)
    resumed, _ = read_generations(run("resumed.jsonl"))
    assert len(resumed) >= 1 and all(r["id"] in answers for r in resumed)


def test_generate_with_verify_from_a_recipe(tmp_path):
    tokenizer = chat_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tok")
    save_weights(tiny_llama(seed=5), tmp_path / "teacher.safetensors")
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": i, "messages": p["messages"], "answer": "yes"} for i, p in enumerate(PROMPTS)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_prompts(prompts)[0]["answer"] == "yes"
    tiny = (
        "{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, "
        "num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 64}"
    )
    overrides = [
        "teacher.model=hf-config:llama", f"teacher.args={tiny}",
        f"teacher.checkpoint={tmp_path / 'teacher.safetensors'}",
        f"data.tokenizer=hf:{tmp_path / 'tok'}", f"generate.prompts={prompts}",
        f"generate.out={tmp_path / 'generated.jsonl'}", "generate.max_new_tokens=4",
        "generate.temperature=1.0", "generate.samples=4",
        "generate.verify={answer_from: whole, numeric: false, keep: shortest_correct}",
    ]  # fmt: skip
    recipe = Path(ROOT) / "recipes" / "llm_seqkd.yaml"
    args = ["generate", str(recipe), *[f"--set={o}" for o in overrides], "--json"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    provenance = json.loads(result.stdout)["provenance"]
    assert provenance["verification"]["answer_from"] == "whole"
    assert provenance["verification"]["samples"] == 16

    # distill run reuses the answers with the same settings (a batch size does not matter)
    # and refuses them, naming each field, when a setting that shaped them changed
    def prepare(*changes):
        ensure_generated(load_recipe(recipe, [*overrides, *changes]), False, lambda line: None)

    written = (tmp_path / "generated.jsonl").stat().st_mtime_ns
    prepare("generate.batch_size=2")
    assert (tmp_path / "generated.jsonl").stat().st_mtime_ns == written  # not answered again
    with pytest.raises(RecipeError, match=r"generate.temperature 1.0 there, 0.7 here"):
        prepare("generate.temperature=0.7")
    with pytest.raises(RecipeError, match=r"generate.verify.keep 'shortest_correct' there, 'best'"):
        prepare("generate.verify.keep=best")
    with pytest.raises(RecipeError, match=r"generate.verify 'set' there, None here"):
        prepare("generate.verify=null")
    bad = tmp_path / "no_answers.jsonl"
    bad.write_text(json.dumps({"prompt": "a dog"}) + "\n")
    args = [a.replace(str(prompts), str(bad)) for a in args]
    refused = CliRunner().invoke(cli.app, args)
    assert refused.exit_code == 2 and "generate.verify: prompts [0]" in refused.output
    greedy = CliRunner().invoke(cli.app, [*args[:-1], "--set=generate.temperature=0"])
    assert greedy.exit_code == 2 and "samples > 1 needs temperature > 0" in greedy.output
