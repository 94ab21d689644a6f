"""Language-model recipes end to end on tiny models built from configs: the shipped
llm_token_kd and distilbert recipes with their models swapped for tiny ones, masked-LM
data, and the errors a wrong LM recipe gets."""

import json
import re
from pathlib import Path

import pytest
import torch
import transformers
from typer.testing import CliRunner

from distill import Objective, Term, cli, losses
from distill.data.text import MaskedBlocks
from distill.objective import LossInputs
from distill.recipes import RecipeError, load_recipe, validate_recipe
from distill.runs import run_recipe

ROOT = Path(__file__).parent.parent
TINY = {
    "llama": "{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 4, "
    "num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 64}",
    "bert": "{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 4, "
    "num_attention_heads: 4, max_position_embeddings: 64}",
}


def tiny_text(text_file, tokenizer_dir):
    """The overrides that make a language recipe read the tests' text in blocks of 32 of
    the tiny WordPiece tokenizer's tokens."""
    return [
        f"data.source={text_file}",
        f"data.tokenizer=hf:{tokenizer_dir}",
        "data.seq_len=32",
        "data.batch_size=8",
        "data.val_blocks=8",
        "data.test_blocks=8",
    ]


def tiny_overrides(kind, text_file, tokenizer_dir, tmp_path):
    return [
        f"teacher.model=hf-config:{kind}",
        f"teacher.args={TINY[kind]}",
        "teacher.train={max_steps: 30, lr: 0.003, select_metric: loss}",
        *tiny_text(text_file, tokenizer_dir),
        "train.max_steps=20",
        "train.lr=0.003",
        "train.warmup_steps=0",
        "train.eval_every=10",
        "output.latency_repeats=2",
        f"output.dir={tmp_path}",
    ]


def tiny_token_kd_recipe(text_file, tokenizer_dir, tmp_path, *extra):
    """recipes/llm_token_kd.yaml with tiny Llamas: the teacher trained, the student 2 of
    its 4 layers; ``extra`` overrides more."""
    overrides = [
        *tiny_overrides("llama", text_file, tokenizer_dir, tmp_path),
        "student.args.keep=2",
    ]
    return load_recipe(ROOT / "recipes" / "llm_token_kd.yaml", [*overrides, *extra])


@pytest.mark.e2e
def test_llm_token_kd_recipe_runs_with_tiny_models(text_file, tokenizer_dir, tmp_path):
    recipe = tiny_token_kd_recipe(text_file, tokenizer_dir, tmp_path)
    summary = run_recipe(recipe, progress=False, log=lambda m: None)
    models = summary["models"]
    assert set(models) == {"teacher", "baseline", "student"}
    for m in models.values():
        assert 1.0 < m["perplexity"] < 400  # better than uniform over the 400 tokens
    assert models["student"]["parameters"] < models["teacher"]["parameters"]
    # token KD brings the student closer to its teacher than labels alone do (top-1
    # agreement can saturate with a teacher this small, so the KL is what is compared)
    assert models["student"]["kl_to_teacher"] < models["baseline"]["kl_to_teacher"]
    assert models["student"]["teacher_agreement"] > 0.5  # the tiny teacher's top tokens
    run_dir = tmp_path / "llm_token_kd"
    report = (run_dir / "report.md").read_text()
    assert "test perplexity" in report and "agreement with teacher" in report
    # the student is a Hugging Face model again, with its tokenizer
    student = transformers.AutoModelForCausalLM.from_pretrained(run_dir / "student")
    tokenizer = transformers.AutoTokenizer.from_pretrained(run_dir / "student")
    assert student.config.num_hidden_layers == 2
    ids = tokenizer("the with statement", return_tensors="pt")["input_ids"]
    assert student(input_ids=ids).logits.shape[-1] == len(tokenizer)

    # distill eval measures the saved student again, on the same test rows
    result = CliRunner().invoke(cli.app, ["eval", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["perplexity"] == pytest.approx(
        models["student"]["perplexity"], rel=1e-4
    )

    # a second run reuses the teacher trained for the first
    messages = []
    run_recipe(
        recipe.model_copy(update={"baseline": False}),
        out_dir=tmp_path / "again",
        progress=False,
        log=messages.append,
    )
    assert any("reused from the cache" in m for m in messages)


@pytest.mark.e2e
def test_distilbert_recipe_runs_with_tiny_models(text_file, tokenizer_dir, tmp_path):
    recipe = load_recipe(
        ROOT / "recipes" / "distilbert.yaml",
        tiny_overrides("bert", text_file, tokenizer_dir, tmp_path),
    )
    assert {n: (t.loss, t.weight) for n, t in recipe.objective.items()} == {
        "kd": ("kl", 5.0),
        "mlm": ("cross_entropy", 2.0),
        "cos": ("cosine_embedding", 1.0),
    }
    # distill teacher trains and caches the teacher; the run then reuses it
    overrides = [f"--set={o}" for o in tiny_overrides("bert", text_file, tokenizer_dir, tmp_path)]
    result = CliRunner().invoke(
        cli.app, ["teacher", str(ROOT / "recipes" / "distilbert.yaml"), *overrides, "--json"]
    )
    assert result.exit_code == 0, result.output
    trained = json.loads(result.stdout)
    assert 1.0 < trained["val"]["perplexity"] < 400
    messages = []
    summary = run_recipe(recipe, progress=False, log=messages.append)
    assert any("reused from the cache" in m for m in messages)
    models = summary["models"]
    for m in models.values():
        assert 1.0 < m["perplexity"] < 400
    student = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "distilbert" / "student")
    assert student.config.num_hidden_layers == 2  # every other layer of 4
    metrics = (tmp_path / "distilbert" / "metrics.jsonl").read_text()
    assert '"loss/kd"' in metrics and '"loss/mlm"' in metrics and '"loss/cos"' in metrics
    assert models["student"]["kl_to_teacher"] < models["baseline"]["kl_to_teacher"]


def test_masked_blocks_follow_bert_masking(tokenizer_dir, text_file):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    data = MaskedBlocks([{"text": text_file.read_text()}], tokenizer, seq_len=64, seed=3)
    rows = [data[i] for i in range(len(data))]
    ids = torch.stack([r["input_ids"] for r in rows])
    labels = torch.stack([r["labels"] for r in rows])
    assert (ids[:, 0] == tokenizer.cls_token_id).all() and (
        ids[:, -1] == tokenizer.sep_token_id
    ).all()
    chosen = labels != -100
    assert not chosen[:, [0, -1]].any()
    share = chosen[:, 1:-1].float().mean()
    assert 0.13 < share < 0.17
    masked = (ids == tokenizer.mask_token_id) & chosen
    assert 0.75 < masked.sum() / chosen.sum() < 0.85
    kept = (ids == labels) & chosen
    assert 0.06 < kept.sum() / chosen.sum() < 0.14  # 10% kept (plus random hits)
    assert torch.equal(data[5]["input_ids"], rows[5]["input_ids"])  # fixed per row


def test_rows_labelled_restricts_a_loss_to_labelled_rows():
    s, t = torch.randn(2, 6, 11), torch.randn(2, 6, 11)
    labels = torch.tensor([[-100, 3, -100, -100, 5, -100], [1, -100, -100, -100, -100, 2]])
    term = Term(losses.kl, temperature=2.0, rows="labelled")
    value = Objective(kd=term)(LossInputs(student_logits=s, teacher_logits=t, labels=labels)).total
    expected = losses.kl(s, t, temperature=2.0, mask=labels != -100)
    torch.testing.assert_close(value, expected)
    with pytest.raises(TypeError, match="needs a loss that takes a mask"):
        Term(losses.attention_transfer, rows="labelled", student="a", teacher="b")


def base_lm_recipe(**changes):
    recipe = {
        "name": "x",
        "task": "causal_lm",
        "data": {"dataset": "text"},
        "teacher": {"model": "hf-config:llama"},
        "student": {"model": "teacher", "args": {"keep": 1}},
        "objective": {"kd": {"loss": "lm_head_kd"}},
        "train": {"max_steps": 1},
    }
    recipe.update(changes)
    return recipe


def test_language_model_recipe_errors_name_the_field():
    with pytest.raises(RecipeError, match=r"data\.dataset: Input should be 'text'"):
        validate_recipe(base_lm_recipe(data={"dataset": "mnist1d"}))
    with pytest.raises(RecipeError, match=r"data\.dataset: Input should be 'fashion_mnist'"):
        validate_recipe(base_lm_recipe(task="classification"))
    with pytest.raises(RecipeError, match="copies teacher layers, but no teacher is set"):
        validate_recipe(base_lm_recipe(teacher=None))
    with pytest.raises(RecipeError, match=r"data.seq_len"):
        validate_recipe(base_lm_recipe(data={"dataset": "text", "seq_len": 2}))
    from distill.recipes.load import build_term
    from distill.recipes.schema import TermSpec

    with pytest.raises(RecipeError, match=r"objective\.kd: lm_head_kd reads two language models"):
        build_term("kd", TermSpec(loss="lm_head_kd"), 10)


@pytest.mark.e2e
def test_lm_recipe_with_missing_text_or_bad_student_args(tmp_path, tokenizer_dir):
    recipe = validate_recipe(
        base_lm_recipe(
            data={"dataset": "text", "source": str(tmp_path / "none.txt"),
                  "tokenizer": f"hf:{tokenizer_dir}"},
            teacher={"model": "hf-config:llama", "train": {"max_steps": 1}},
        )
    )  # fmt: skip
    with pytest.raises(RecipeError, match=r"data\.source"):
        run_recipe(recipe, out_dir=tmp_path / "run", progress=False, log=lambda m: None)


@pytest.mark.e2e
def test_cached_kd_recipe_builds_resumes_and_trains_from_the_cache(
    text_file, tokenizer_dir, tmp_path
):
    """`distill cache` by two workers, then `distill run` trains against the cache; a
    cache read with another sequence length is refused with what differs."""
    overrides = [
        *tiny_overrides("llama", text_file, tokenizer_dir, tmp_path),
        "student.args.keep=2",
        "cache.top_k=16",
        "cache.shard_size=20",
        "baseline=false",
    ]
    recipe_file = ROOT / "recipes" / "llm_cached_kd.yaml"
    args = ["cache", str(recipe_file), *[f"--set={o}" for o in overrides], "--json"]
    first = CliRunner().invoke(cli.app, [*args, "--worker", "0", "--workers", "2"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["manifest"] is None  # the other worker's shards are missing
    second = CliRunner().invoke(cli.app, [*args, "--worker", "1", "--workers", "2"])
    manifest = json.loads(second.stdout)["manifest"]
    assert manifest["k"] == 16 and manifest["bytes_per_token"] == 16 * (2 + 2) + 2

    messages = []
    recipe = load_recipe(recipe_file, overrides)
    summary = run_recipe(recipe, progress=False, log=messages.append)
    assert any("complete, reused" in m for m in messages)
    assert any("learns from the teacher cache" in m for m in messages)
    student = summary["models"]["student"]
    assert 1.0 < student["perplexity"] < 400 and student["teacher_agreement"] > 0

    changed = [f"--set={o}" for o in [*overrides, "data.seq_len=24"]]
    # into another run directory, the run reads the same cache, which was built otherwise
    other = CliRunner().invoke(
        cli.app, ["run", str(recipe_file), *changed, "--out", str(tmp_path / "other")]
    )
    assert other.exit_code == 2
    assert "seq_len" in other.output and "delete the folder" in other.output
    # into the same run directory, the run of the first recipe is not continued
    same = CliRunner().invoke(cli.app, ["run", str(recipe_file), *changed])
    assert same.exit_code == 2 and "data.seq_len: 32 -> 24" in same.output


@pytest.mark.e2e
def test_a_recipe_with_train_compile_compiles_its_models_and_lm_head_chunks(
    text_file, tokenizer_dir, tmp_path
):
    from distill.losses import tokens
    from distill.runs import run_recipe

    from .test_compile import compiled_graphs

    torch._dynamo.reset()
    tokens._compiled.cache_clear()
    recipe = tiny_token_kd_recipe(
        text_file, tokenizer_dir, tmp_path, "baseline=false", "train.max_steps=6",
        "train.eval_every=3", "train.compile=true", "train.compile_backend=aot_eager",
    )  # fmt: skip
    summary = run_recipe(recipe, progress=False, log=lambda m: None)
    assert 1.0 < summary["models"]["student"]["perplexity"] < 400
    assert compiled_graphs() > 0
    assert tokens._compiled.cache_info().currsize == 1  # the chunk body, compiled once


ONE_LAYER_STUDENT = (
    "student={model: 'hf-config:llama', args: {hidden_size: 32, intermediate_size: 64, "
    "num_hidden_layers: 1, num_attention_heads: 4, num_key_value_heads: 2, "
    "max_position_embeddings: 64}}"
)


def domain_field(i: int) -> dict[str, str]:
    """Row ``i``'s domain field: 'maths' or 'safety', none for every third row."""
    return {"domain": "maths" if i % 2 else "safety"} if i % 3 else {}


def routed_teacher(first: Path, second: Path) -> str:
    """The override of a teacher routing 'maths' rows to ``first``, 'safety' to ``second``."""
    return (
        f"teacher={{model: ensemble, combine: route, members: [{{model: 'hf:{first}', "
        f"domain: maths}}, {{model: 'hf:{second}', domain: safety}}]}}"
    )


def ensemble_lm_recipe(text_file, tokenizer_dir, tmp_path, *extra):
    """Two tiny Llama teachers (2 and 3 layers, each fine-tuned on the text and stored),
    mixed token by token, teaching a 1-layer Llama with full-logit KL."""
    member = (
        "{{model: 'hf-config:llama', args: {{hidden_size: 32, intermediate_size: 64, "
        "num_hidden_layers: {layers}, num_attention_heads: 4, num_key_value_heads: 2, "
        "max_position_embeddings: 64}}, train: {{max_steps: 20, lr: 0.003}}}}"
    )
    members = ", ".join(member.format(layers=n) for n in (2, 3))
    overrides = [
        *tiny_text(text_file, tokenizer_dir),
        f"teacher={{model: ensemble, combine: mean, members: [{members}]}}",
        ONE_LAYER_STUDENT,
        "objective={kd: {loss: kl, temperature: 1.0}}",
        "train={max_steps: 20, lr: 0.003, warmup_steps: 0, eval_every: 10, select_metric: loss}",
        "output.latency_repeats=2",
        f"output.dir={tmp_path}",
        *extra,
    ]
    return load_recipe(ROOT / "recipes" / "llm_token_kd.yaml", overrides)


@pytest.mark.e2e
def test_a_mixture_of_language_model_teachers_teaches_a_student(
    text_file, tokenizer_dir, tmp_path, isolated_cache
):
    """teacher.model: ensemble for a causal LM: each member is fine-tuned and stored on its
    own, the teacher row is their token-by-token mixture (its parameters both members'),
    and the student learns from the mixture: closer to it than the label-only student."""
    recipe = ensemble_lm_recipe(text_file, tokenizer_dir, tmp_path)
    summary = run_recipe(recipe, progress=False, log=lambda m: None)
    models = summary["models"]
    assert set(models) == {"teacher", "baseline", "student"}
    assert 1.0 < models["teacher"]["perplexity"] < 400
    assert models["student"]["kl_to_teacher"] < models["baseline"]["kl_to_teacher"]
    from distill.runs.table import task_for
    from distill.runs.tasks.language.report import domain_figures

    assert domain_figures(tmp_path, summary) == {}  # a mixture has no domains to draw

    task = task_for(recipe)
    task.prepare(False, lambda m: None)
    said: list[str] = []
    mixed, info = task.teacher(False, said.append)  # both members from the store now
    assert len(info["members"]) == 2
    assert sum("reused from the cache" in line for line in said) == 2
    first, second = mixed.members
    ids = torch.randint(0, 400, (2, 16))
    with torch.no_grad():
        expected = torch.log(
            (first(input_ids=ids).logits.softmax(-1) + second(input_ids=ids).logits.softmax(-1)) / 2
        )
        assert torch.allclose(mixed(input_ids=ids), expected, atol=1e-5)
    assert models["teacher"]["parameters"] == sum(
        p.numel() for m in (first, second) for p in m.parameters()
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            "teacher={model: ensemble, combine: route, members: [{model: 'hf:a', domain: a}, "
            "{model: 'hf:b', domain: b}]}",
            "teacher.combine: route sends each chat row to the member named by one of its",
        ),
        ("objective={kd: {loss: lm_head_kd}}", "`objective.kd` does not combine with"),
        ("generate={prompts: p.jsonl}", "`generate` does not combine with `teacher.combine: mean`"),
        ("teacher.tokenizer=hf:other", "`teacher.tokenizer` does not combine with `teacher.model"),
        (
            "teacher={model: ensemble, members: [{model: 'hf:a'}, {model: 'served:http://x'}]}",
            "teacher.members[1]: served members answer their top-k, which is not mixed",
        ),
        ("cache={top_k: 8}", "`cache` does not combine with `teacher.combine: mean`"),
    ],
)
def test_a_language_model_mixture_is_refused_where_it_is_not_built(
    text_file, tokenizer_dir, tmp_path, change, message
):
    with pytest.raises(RecipeError, match=re.escape(message)):
        ensemble_lm_recipe(text_file, tokenizer_dir, tmp_path, change)


def routed_chats(tmp_path: Path) -> list[str]:
    """Overrides for 40 chat rows routed by their domain field to two tiny teachers ('maths'
    to the first, 'safety' to the second, whose tokenizer has another chat template), a
    1-layer student, 4 steps of full-logit KL."""
    from .text_models import WORDS, chat_tokenizer, tiny_llama

    chat_tokenizer().save_pretrained(tmp_path / "tok")
    for seed, name in ((1, "first"), (2, "second")):
        tiny_llama(seed).save_pretrained(tmp_path / name)
    chat_tokenizer().save_pretrained(tmp_path / "first")  # the data's own
    other = chat_tokenizer()  # the second member was tuned with another chat template
    other.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}"
    other.save_pretrained(tmp_path / "second")
    generator = torch.Generator().manual_seed(0)
    with (tmp_path / "chats.jsonl").open("w") as out:
        for i in range(40):
            words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (6,), generator=generator)]
            row = {"messages": [{"role": "user", "content": " ".join(words[:3])},
                                {"role": "assistant", "content": " ".join(words[3:])}]}  # fmt: skip
            out.write(json.dumps(row | domain_field(i)) + "\n")
    first, second = tmp_path / "first", tmp_path / "second"
    overrides = [
        f"data={{dataset: text, source: {tmp_path / 'chats.jsonl'}, format: chat, "
        f"tokenizer: 'hf:{tmp_path / 'tok'}', seq_len: 16, val_blocks: 4, test_blocks: 8, "
        "domain_column: domain, default_domain: safety}",
        routed_teacher(first, second),
        ONE_LAYER_STUDENT,
        "objective={kd: {loss: kl, temperature: 1.0}}",
        "train={max_steps: 4, lr: 0.003, warmup_steps: 0, select_metric: loss}",
        "output.latency_repeats=1",
        f"output.dir={tmp_path / 'runs'}",
    ]
    return overrides


def test_a_member_that_does_not_exist_is_named(text_file, tokenizer_dir, tmp_path):
    from distill.runs.table import task_for

    missing = tmp_path / "no-such-teacher"
    recipe = ensemble_lm_recipe(
        text_file, tokenizer_dir, tmp_path,
        f"teacher.members=[{{model: 'hf:{missing}'}}, {{model: 'hf:{missing}'}}]",
    )  # fmt: skip
    task = task_for(recipe)
    task.prepare(False, lambda m: None)
    with pytest.raises(RecipeError, match=re.escape(f"teacher.members[0].model hf:{missing}")):
        task.teacher(False, lambda m: None)


@pytest.mark.e2e
def test_routed_language_model_teachers_each_answer_their_domains_rows(tmp_path):
    """teacher.combine: route for chat rows: each row goes to the member its
    data.domain_column field names (a row without one to data.default_domain); the teacher
    answers every row with that member's logits alone, and a student trains from them."""
    from distill.batch import as_batch
    from distill.runs.table import task_for

    overrides = routed_chats(tmp_path)
    recipe = load_recipe(ROOT / "recipes" / "llm_token_kd.yaml", overrides)
    summary = run_recipe(recipe, progress=False, log=lambda m: None)
    assert set(summary["models"]) == {"teacher", "baseline", "student"}
    on_policy = load_recipe(  # the student's own answers, scored by each row's member
        ROOT / "recipes" / "llm_token_kd.yaml",
        [*overrides, "name=on_policy", "baseline=false", "on_policy={lam: 1.0, max_new_tokens: 4}"],
    )
    sampled = run_recipe(on_policy, progress=False, log=lambda m: None)["models"]["student"]
    assert sampled["on_policy_batches"] > 0 and 1.0 < sampled["perplexity"] < 100
    taught = summary["teacher_rows"]  # provenance: training rows per member
    assert set(taught) == {"maths", "safety"} and min(taught.values()) > 0
    assert sum(taught.values()) == 40 - 4 - 8  # every training row, once
    from distill.training.checkpoint import latest_checkpoint

    written = latest_checkpoint(tmp_path / "runs" / recipe.name)  # each checkpoint too
    assert json.loads((written / "state.json").read_text())["provenance"] == {
        "teacher_rows": taught
    }
    from distill.runs.tasks.language.report import domain_figures

    drawn = domain_figures(tmp_path / "runs" / recipe.name, summary)["domains"][0]
    assert drawn.stat().st_size > 10_000  # each model's perplexity on each member's rows
    task = task_for(recipe)
    data = task.prepare(False, lambda m: None)
    tested = {name: len(rows) for name, rows in data.test_by_domain.items()}
    assert sum(tested.values()) == 8
    student = summary["models"]["student"]  # measured on each member's test rows
    for name, count in tested.items():
        if count:
            assert 1.0 < student[f"perplexity_{name}"] < 100
            assert 0.0 <= student[f"teacher_agreement_{name}"] <= 1.0
    routed, _ = task.teacher(False, lambda m: None)
    rows = [data.test[i] for i in range(8)]
    batch = as_batch({k: torch.stack([r[k] for r in rows]) for k in rows[0]})
    assert set(batch.meta["domain"].tolist()) <= {0, 1}
    from distill.doctor.run import diagnose

    checked = diagnose(recipe, tmp_path / "doctor", sample=8, progress=False, log=lambda m: None)
    template = next(f for f in checked["findings"] if f["check"] == "chat_template")
    assert template["verdict"] == "problem"  # the members are checked against the data
    assert "teacher.members[1]" in template["summary"]
    assert "teacher.members[0]" not in template["summary"]
    members = next(f for f in checked["findings"] if f["check"] == "members")
    assert set(members["measurements"]["off_top_share"]) == {"maths", "safety"}
    with torch.no_grad():
        answers = batch.run(routed)
        for n, member in enumerate(batch.meta["domain"].tolist()):
            alone = routed.members[member](
                input_ids=batch.kwargs["input_ids"][n : n + 1],
                attention_mask=batch.kwargs["attention_mask"][n : n + 1],
            ).logits[0]
            assert torch.allclose(answers[n], alone, atol=1e-5)


@pytest.mark.e2e
def test_a_routed_teachers_members_are_cached_apart_each_on_its_own_rows(tmp_path):
    """cache: with a routed teacher: each member's top-k lands in its own folder, built on
    the rows routed to it only; a row read back is its own member's live answer; the student
    learns from the caches; a second build reuses both."""
    from distill.batch import as_batch
    from distill.cache import read_manifest
    from distill.outputs import topk_of
    from distill.runs.commands import cache_command
    from distill.runs.stages.cache import cache_as_teacher, member_dir
    from distill.runs.table import task_for

    overrides = [
        *routed_chats(tmp_path),
        "cache={top_k: 8, logprob_dtype: float32}",
        "objective={kd: {loss: lm_head_kd, temperature: 1.0}}",
        "baseline=false",
    ]
    recipe = load_recipe(ROOT / "recipes" / "llm_token_kd.yaml", overrides)
    summary = run_recipe(recipe, progress=False, log=lambda m: None)
    assert 1.0 < summary["models"]["student"]["perplexity"] < 100
    task = task_for(recipe)
    task.prepare(False, lambda m: None)
    teacher, _ = task.teacher(False, lambda m: None)
    members = task.cache_members(teacher)
    stored = {m.name: read_manifest(member_dir(recipe, m.name))["num_examples"] for m in members}
    domains = [int(task.cache_rows()[i]["domain"]) for i in range(len(task.cache_rows()))]
    assert stored == {"maths": domains.count(0), "safety": domains.count(1)}
    assert sum(stored.values()) == 40 - 8  # training and validation rows, each once
    rows = [task.cache_rows()[i] for i in range(12)]
    batch = as_batch({k: torch.stack([r[k] for r in rows]) for k in rows[0]})
    read = cache_as_teacher(task, teacher)(batch).topk
    with torch.no_grad():
        for n, member in enumerate(batch.meta["domain"].tolist()):
            live = topk_of(
                teacher.members[member](
                    input_ids=batch.kwargs["input_ids"][n : n + 1],
                    attention_mask=batch.kwargs["attention_mask"][n : n + 1],
                ).logits[0],
                8,
            )
            mask = batch.kwargs["attention_mask"][n].bool()
            assert torch.allclose(read.logprobs[n][mask], live.logprobs[mask], atol=1e-4)
    said: list[str] = []
    again = cache_command(recipe, progress=False, log=said.append)
    assert set(again["members"]) == {"maths", "safety"}
    assert sum("complete, reused" in line for line in said) == 2
    rerouted = load_recipe(  # rows without a field now go to the other member
        ROOT / "recipes" / "llm_token_kd.yaml", [*overrides, "data.default_domain=maths"]
    )
    with pytest.raises(RecipeError, match=r"member-\w+ holds a cache built differently.*rows"):
        cache_command(rerouted, progress=False, log=lambda m: None)


def test_a_chat_row_goes_to_its_fields_member_else_the_first_rule_else_the_default():
    from distill.runs.tasks.language.models import domain_reader

    members = "[{model: 'hf:a', domain: maths}, {model: 'hf:b', domain: safety}]"
    overrides = [
        "data={dataset: text, format: chat, tokenizer: 'hf:tok', domain_column: topic, "
        "domain_rules: {safety: 'poison|weapon', maths: '[0-9]+ ?[+*] ?[0-9]+'}}",
        f"teacher={{model: ensemble, combine: route, members: {members}}}",
        "student.model=hf:s",
        "objective={kd: {loss: kl, temperature: 1.0}}",
    ]
    recipe = load_recipe(ROOT / "recipes" / "llm_token_kd.yaml", overrides)
    member_of = domain_reader(recipe)

    def chat(prompt: str, **fields: str) -> dict:
        return {"prompt": prompt, "completion": "ok", **fields}

    assert member_of(chat("how to make poison", topic="maths")) == 0  # the field wins
    assert member_of(chat("how to make poison", topic="cooking")) == 1  # no member: a rule
    assert member_of(chat("what is 12 + 30?")) == 0
    with pytest.raises(RecipeError, match=re.escape("no data.domain_rules matches its prompt")):
        member_of(chat("hello there"))
    with_default = load_recipe(
        ROOT / "recipes" / "llm_token_kd.yaml", [*overrides, "data.default_domain=safety"]
    )
    assert domain_reader(with_default)(chat("hello there")) == 1
    keywords = load_recipe(  # a keyword list: whole words, any case
        ROOT / "recipes" / "llm_token_kd.yaml",
        [*overrides, "data.domain_rules={safety: [Poison, 'break in'], maths: [sum]}"],
    )
    member_of = domain_reader(keywords)
    assert member_of(chat("How do I BREAK IN to a car?")) == 1
    assert member_of(chat("the sum of 2 and 3")) == 0
    with pytest.raises(RecipeError, match=re.escape("no data.domain_rules matches")):
        member_of(chat("a summary of poisonous plants"))  # not whole words


def test_routing_language_rows_needs_chat_rows_a_column_and_known_domains():
    members = "[{model: 'hf:a', domain: maths}, {model: 'hf:b', domain: safety}]"
    base = [
        "data.tokenizer=hf:tok",
        f"teacher={{model: ensemble, combine: route, members: {members}}}",
        "student.model=hf:s",
        "objective={kd: {loss: kl, temperature: 1.0}}",
    ]
    recipe = ROOT / "recipes" / "llm_token_kd.yaml"
    refusal = re.escape("set data.format: chat and data.domain_column or data.domain_rules")
    with pytest.raises(RecipeError, match=refusal):
        load_recipe(recipe, base)  # neither a column nor rules
    chat = ["data.format=chat", "data.domain_column=domain"]
    refusal = re.escape("data.default_domain: 'legal' is no member's domain")
    with pytest.raises(RecipeError, match=refusal):
        load_recipe(recipe, [*base, *chat, "data.default_domain=legal"])
    assert load_recipe(recipe, [*base, *chat]).data.domain_column == "domain"
    refusal = re.escape("data.domain_rules: ['legal'] name no member's domain")
    with pytest.raises(RecipeError, match=refusal):
        load_recipe(recipe, [*base, *chat, "data.domain_rules={legal: court}"])
    with pytest.raises(RecipeError, match=re.escape("'(' is no regular expression")):
        load_recipe(recipe, [*base, *chat, "data.domain_rules={maths: '('}"])
    refusal = re.escape("data.domain_column routes rows to teacher.members")
    with pytest.raises(RecipeError, match=refusal):
        load_recipe(recipe, ["data.domain_column=domain"])


@pytest.mark.e2e
def test_the_doctor_examines_a_mixture_of_language_model_teachers(
    text_file, tokenizer_dir, tmp_path, isolated_cache
):
    from distill.doctor.run import diagnose

    recipe = ensemble_lm_recipe(text_file, tokenizer_dir, tmp_path)
    checked = diagnose(recipe, tmp_path / "doctor", sample=16, progress=False, log=lambda s: None)
    found = {f["check"]: f for f in checked["findings"]}
    assert found["vocabulary"]["verdict"] == "ok"


def test_a_confidence_mixture_weighs_language_model_members_token_by_token():
    """combine: confidence on (rows, tokens, vocabulary) logits: at each token the surer
    member counts more, so where one member is certain the mixture follows it."""
    from distill.teachers import EnsembleModel

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, input_ids):
            return self.logits

    sure = torch.zeros(1, 2, 5)
    sure[0, 0, 3] = 20.0  # certain of token 3 at the first position, unsure at the second
    unsure = torch.zeros(1, 2, 5)
    unsure[0, 1, 1] = 20.0  # the other way round
    mixed = EnsembleModel([Fixed(sure), Fixed(unsure)], "confidence")(torch.zeros(1, 2))
    assert mixed.shape == (1, 2, 5)
    assert mixed[0, 0].argmax() == 3 and mixed[0, 1].argmax() == 1
    mean = EnsembleModel([Fixed(sure), Fixed(unsure)], "mean")(torch.zeros(1, 2))
    for position, token in ((0, 3), (1, 1)):  # above the plain mean (0.6) at both tokens
        assert mixed[0, position].softmax(-1)[token] > mean[0, position].softmax(-1)[token] + 0.2


@pytest.mark.e2e
def test_each_prompt_is_answered_by_its_own_member_and_the_rows_say_which(tmp_path):
    """Sequence-level KD with a routed teacher: `generate` answers each prompt with the
    member its field or the default names, writes each member's answers as its own
    (resumable) dataset, gathers them with each row's teacher, and a student trains on
    them, routed the same way."""
    from distill.methods.generated_data import read_generations
    from distill.runs.tasks.language.generate import generate_teacher_answers

    from .text_models import WORDS, chat_tokenizer, tiny_llama

    for seed, name in ((1, "first"), (2, "second")):
        tiny_llama(seed).save_pretrained(tmp_path / name)
        chat_tokenizer().save_pretrained(tmp_path / name)
    with (tmp_path / "prompts.jsonl").open("w") as out:
        for i in range(30):
            row = {"id": i, "prompt": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(4))}
            out.write(json.dumps(row | domain_field(i)) + "\n")
    first, second = tmp_path / "first", tmp_path / "second"
    recipe = load_recipe(
        ROOT / "recipes" / "llm_seqkd.yaml",
        [
            f"generate={{prompts: {tmp_path / 'prompts.jsonl'}, max_new_tokens: 4, "
            f"temperature: 0, batch_size: 8, out: {tmp_path / 'answers.jsonl'}}}",
            "data={dataset: text, source: generated, format: chat, seq_len: 24, val_blocks: 4, "
            f"test_blocks: 6, tokenizer: 'hf:{first}', domain_column: domain, "
            "default_domain: safety}",
            routed_teacher(first, second),
            ONE_LAYER_STUDENT,
            "objective={ce: {loss: cross_entropy, weight: 0.5}, kd: {loss: kl, weight: 0.5, "
            "temperature: 1.0}}",
            "train={max_steps: 3, lr: 0.003, warmup_steps: 0, select_metric: loss}",
            "output.latency_repeats=1",
            f"output.dir={tmp_path / 'runs'}",
        ],
    )
    written = generate_teacher_answers(recipe, progress=False, log=lambda m: None)
    rows, provenance = read_generations(written)
    expected = {i: domain_field(i).get("domain", "safety") for i in range(30)}  # or the default
    assert {row["id"]: row["teacher"] for row in rows} == expected
    assert all(row["domain"] == row["teacher"] for row in rows)  # routes training the same way
    assert provenance["members"] == {
        "maths": {"model": f"hf:{first}", "rows": 10},
        "safety": {"model": f"hf:{second}", "rows": 20},
    }
    for domain in ("maths", "safety"):  # each member's own dataset, with its provenance
        alone, meta = read_generations(tmp_path / f"answers.{domain}.jsonl")
        assert meta["teacher"] == f"hf:{first if domain == 'maths' else second}"
        assert len(alone) == provenance["members"][domain]["rows"]
    summary = run_recipe(recipe, progress=False, log=lambda m: None)
    assert summary["teacher_rows"]["maths"] > 0 and summary["teacher_rows"]["safety"] > 0
