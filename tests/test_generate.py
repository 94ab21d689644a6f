"""Sequence-level KD data (distill generate), and the generation and on-policy recipes end
to end, on tiny models (OnPolicy itself: tests/test_on_policy.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from distill import cli
from distill.batch import IGNORE_INDEX
from distill.data.text import ChatExamples
from distill.methods.generated_data import (
    generate_dataset,
    partial_path,
    read_generations,
    write_generations,
)
from distill.methods.generation import (
    GenerationSettings,
    generate_answers,
    generate_with_vllm,
    load_prompts,
    vllm_available,
)
from distill.recipes import load_recipe
from distill.runs import run_recipe
from distill.training.checkpoint import save_weights
from tests import text_models
from tests.text_models import EOS, PAD, chat_tokenizer

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def tokenizer():
    return chat_tokenizer()


def tiny_llama(seed=0):
    # sharp random logits: greedy answers are not all one token
    return text_models.tiny_llama(
        seed, pad_token_id=PAD, eos_token_id=EOS, initializer_range=0.5
    ).eval()


PROMPTS = [
    {"id": 0, "messages": [{"role": "user", "content": "what did the cat do"}]},
    {"id": 1, "messages": [{"role": "user", "content": "a dog"}]},
    {"id": 2, "messages": [{"role": "user", "content": "what is the answer the dog ran far"}]},
    {"id": 3, "messages": [{"role": "user", "content": "yes"}]},
]


def test_load_prompts_reads_jsonl_and_txt_and_names_bad_lines(tmp_path):
    good = tmp_path / "p.jsonl"
    rows = [
        {"prompt": "what did the cat do"},
        {"id": "x", "messages": [{"role": "user", "content": "a dog"}]},
        {"messages": [{"role": "user", "content": "yes"}, {"role": "assistant", "content": "no"}]},
    ]
    good.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = load_prompts(good)
    assert [p["id"] for p in prompts] == [0, "x", 2]
    assert prompts[2]["messages"] == [{"role": "user", "content": "yes"}]  # answer dropped
    text = tmp_path / "p.txt"
    text.write_text("the cat\n\na dog\n")
    assert [p["messages"][0]["content"] for p in load_prompts(text)] == ["the cat", "a dog"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "ok"}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: not valid JSON"):
        load_prompts(bad)
    bad.write_text(json.dumps({"text": "no prompt"}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: a row needs 'prompt'"):
        load_prompts(bad)
    bad.write_text(json.dumps({"messages": [{"role": "assistant", "content": "no"}]}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 1: 'messages' must end with a user"):
        load_prompts(bad)  # nothing is left to answer once the answer is dropped
    bad.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"messages": "the cat"}))
    with pytest.raises(ValueError, match=r"line 2: 'messages' must be a list"):
        load_prompts(bad)
    bad.write_text(
        json.dumps({"id": 1, "prompt": "a"}) + "\n\n" + json.dumps({"prompt": "b"}) + "\n"
    )  # the second row's id is its line index, 2: no clash
    assert [p["id"] for p in load_prompts(bad)] == [1, 2]
    bad.write_text(json.dumps({"id": 1, "prompt": "a"}) + "\n" + json.dumps({"prompt": "b"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: id 1 repeats line 1"):
        load_prompts(bad)
    assert len(load_prompts("pydoc")) > 50


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(tokenizer):
    model = tiny_llama()
    greedy = GenerationSettings(max_new_tokens=6, temperature=0, batch_size=3)
    batched = generate_answers(model, tokenizer, PROMPTS, greedy, progress=False)
    alone = [generate_answers(model, tokenizer, [p], greedy, progress=False)[0] for p in PROMPTS]
    assert batched == alone and any(batched)
    assert tokenizer.padding_side == "right"  # restored
    no_pad = chat_tokenizer()
    no_pad.pad_token = None  # as many LLM tokenizers: padding falls back to EOS
    assert generate_answers(model, no_pad, PROMPTS, greedy, progress=False) == batched
    assert no_pad.pad_token is None  # restored
    sampled = GenerationSettings(max_new_tokens=6, temperature=1.0, batch_size=2, seed=3)
    torch.manual_seed(123)
    first = generate_answers(model, tokenizer, PROMPTS, sampled, progress=False)
    after = torch.rand(1)
    assert first == generate_answers(model, tokenizer, PROMPTS, sampled, progress=False)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), after)  # the caller's RNG is left as it was


def test_answers_stop_at_any_end_token_of_the_generation_config(tokenizer):
    model = tiny_llama()
    greedy = GenerationSettings(max_new_tokens=6, temperature=0, batch_size=2)
    answers = generate_answers(model, tokenizer, PROMPTS, greedy, progress=False)
    words = answers[0].split()
    assert len(words) >= 2
    # a chat model ends its turn with a token of its own besides the tokenizer's EOS
    end_of_turn = tokenizer.convert_tokens_to_ids(words[1])
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, end_of_turn]
    stopped = generate_answers(model, tokenizer, PROMPTS[:1], greedy, progress=False)
    assert stopped == [words[0]]  # the end token and what would follow are not in the answer


def test_generated_dataset_round_trip_provenance_and_chat_rows(tmp_path, tokenizer):
    answers = ["yes", "it ran", "no\u2028\x85 the", ""]  # line separators inside a string
    path = write_generations(tmp_path / "gen.jsonl", PROMPTS, answers, {"teacher": "tiny"})
    rows, provenance = read_generations(path)
    assert provenance["teacher"] == "tiny" and provenance["count"] == 4
    assert provenance["empty_answers"] == 1 and len(provenance["sha256"]) == 64
    assert {"distill", "torch", "transformers"} <= set(provenance["versions"])
    assert [r["id"] for r in rows] == [0, 1, 2, 3]
    assert [r["messages"][-1]["content"] for r in rows] == answers
    assert rows[0]["messages"][:-1] == PROMPTS[0]["messages"]
    assert rows[1]["messages"][-1] == {"role": "assistant", "content": "it ran"}
    data = ChatExamples(rows, tokenizer, seq_len=24)
    row = data[1]
    answer = tokenizer("it ran <|end|>", add_special_tokens=False)["input_ids"]
    assert row["labels"][row["labels"] != IGNORE_INDEX].tolist() == answer
    path.write_text(path.read_text().replace("it ran", "it sat"))
    with pytest.raises(ValueError, match="changed since it was generated"):
        read_generations(path)


def test_a_killed_generation_resumes_without_answering_twice(tmp_path, tokenizer, monkeypatch):
    model = tiny_llama()
    settings = GenerationSettings(max_new_tokens=5, temperature=0, batch_size=2)

    def run(out, settings=settings, provenance=None):
        return generate_dataset(
            model,
            tokenizer,
            PROMPTS,
            settings,
            tmp_path / out,
            provenance or {"teacher": "tiny"},
            progress=False,
            log=lambda m: None,
        )

    whole = run("a.jsonl")
    calls = []
    real = model.generate

    def counted(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        if len(calls) == 2 and kill:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", counted)
    kill = True
    with pytest.raises(KeyboardInterrupt):
        run("b.jsonl")
    partial = partial_path(tmp_path / "b.jsonl")
    assert len(partial.read_text().splitlines()) == 1 + 2  # the run's header, one batch
    assert calls == [2, 2]
    calls.clear()
    kill = False
    resumed = run("b.jsonl")
    assert calls == [2]  # only the two prompts without an answer
    assert resumed.read_text() == whole.read_text()
    assert not partial.exists()

    # killed while writing a row: the cut-off row is answered again
    with pytest.raises(KeyboardInterrupt):
        kill, calls[:] = True, []
        run("c.jsonl")
    partial = partial_path(tmp_path / "c.jsonl")
    header, first, second = partial.read_text().splitlines()
    partial.write_text(f"{header}\n{first}\n{second[:9]}")
    kill, calls[:] = False, []
    assert run("c.jsonl").read_text() == whole.read_text() and calls == [2, 1]

    # a partial file from other settings, or with unknown prompts, is not resumed
    with pytest.raises(KeyboardInterrupt):
        kill, calls[:] = True, []
        run("d.jsonl")
    kill = False
    with pytest.raises(ValueError, match="other settings or teacher"):
        run("d.jsonl", settings.model_copy(update={"max_new_tokens": 4}))
    with pytest.raises(ValueError, match="other settings or teacher"):
        run("d.jsonl", provenance={"teacher": "another"})
    assert run("d.jsonl", settings.model_copy(update={"batch_size": 4})).exists()
    partial_path(resumed).write_text(json.dumps({"id": 99, "answer": "x"}) + "\n")
    with pytest.raises(ValueError, match="not in this prompt set"):
        run("b.jsonl")


def test_vllm_backend_without_vllm_says_how_to_install(tmp_path, tokenizer):
    if vllm_available():
        pytest.skip("vLLM is installed")
    settings = GenerationSettings(backend="vllm", max_new_tokens=2)
    with pytest.raises(ImportError, match="pip install vllm"):
        generate_dataset(
            tiny_llama(),
            tokenizer,
            PROMPTS,
            settings,
            tmp_path / "v.jsonl",
            {},
            model_id="some/model",
            progress=False,
            log=lambda m: None,
        )
    assert not partial_path(tmp_path / "v.jsonl").exists()
    with pytest.raises(ImportError, match="pip install vllm"):
        generate_with_vllm("some/model", PROMPTS, settings)


# -- recipes ---------------------------------------------------------------------------------


@pytest.mark.e2e
def test_generate_then_sequence_level_and_on_policy_recipes_run(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path / "tok")
    save_weights(tiny_llama(seed=5), tmp_path / "teacher.safetensors")
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": i, "messages": p["messages"]} for i, p in enumerate(PROMPTS * 6)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tiny = (
        "{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, "
        "num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 64}"
    )
    overrides = [
        "teacher.model=hf-config:llama",
        f"teacher.args={tiny}",
        f"teacher.checkpoint={tmp_path / 'teacher.safetensors'}",
        f"data.tokenizer=hf:{tmp_path / 'tok'}",
        "data.seq_len=24",
        "data.batch_size=4",
        "data.val_blocks=4",
        "data.test_blocks=4",
        f"generate.prompts={prompts}",
        f"generate.out={tmp_path / 'generated.jsonl'}",
        "generate.max_new_tokens=6",
        "train.max_steps=4",
        "train.eval_every=2",
        "output.latency_repeats=2",
        f"output.dir={tmp_path}",
        "student.model=hf-config:llama",
        f"student.args={tiny}",
    ]
    recipe_file = ROOT / "recipes" / "llm_seqkd.yaml"
    result = CliRunner().invoke(
        cli.app, ["generate", str(recipe_file), *[f"--set={o}" for o in overrides], "--json"]
    )
    assert result.exit_code == 0, result.output
    generated = json.loads(result.stdout)
    assert generated["rows"] == 24 and generated["provenance"]["teacher"] == "hf-config:llama"

    summary = run_recipe(load_recipe(recipe_file, overrides), progress=False, log=lambda m: None)
    assert summary["models"]["student"]["perplexity"] > 1

    on_policy_file = ROOT / "recipes" / "llm_on_policy.yaml"
    summary = run_recipe(load_recipe(on_policy_file, overrides), progress=False, log=lambda m: None)
    student = summary["models"]["student"]
    assert 0 < student["on_policy_batches"] <= summary["steps"]  # lam 0.5 of 4 steps, seeded
    assert student["on_policy_tokens"] > 0
