"""A served teacher against a real local server process (tests/prompt_logprob_server.py,
vLLM's protocol over a tiny Llama): its top-k equals the local model's, a slow or failing
server is retried and then named, a killed one loses nothing already cached, and the
errors a misconfigured server gets."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import transformers

from distill import teachers
from distill.batch import as_batch
from distill.cache import CacheReader, Layout, build_cache
from distill.data import WithExampleId
from distill.data.text import PackedText, pydoc_records
from distill.errors import ServedTeacherError
from distill.outputs import topk_of
from tests.text_models import tiny_llama

SERVER = Path(__file__).parent / "prompt_logprob_server.py"


class Server:
    """The test server as a process; ``control`` changes its behaviour."""

    def __init__(
        self, model_dir: Path, port: int = 0, max_logprobs: int = 20, api_key: str | None = None
    ) -> None:
        command = [sys.executable, str(SERVER), str(model_dir), "--port", str(port)]
        command += ["--max-logprobs", str(max_logprobs)]
        command += ["--api-key", api_key] if api_key else []
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        assert line.startswith("listening on "), line
        self.port = int(line.split()[-1])
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.root}/v1"

    def control(self, **settings) -> dict:
        return requests.post(f"{self.root}/control", json=settings, timeout=10).json()

    def counters(self) -> dict:
        return requests.get(f"{self.root}/control", timeout=10).json()

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture(scope="module")
def served_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A 2-layer Llama over the WordPiece tokenizer, saved with it: what the server serves."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    folder = tmp_path_factory.mktemp("served") / "tiny-teacher"
    tiny_llama(seed=3, vocab=len(tokenizer), max_position_embeddings=256).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def server(served_dir):
    process = Server(served_dir)
    yield process
    process.stop()


@pytest.fixture
def reset(server):
    server.control(delay=0.0, fail_next=0, exit_after=None, prompt_logprobs=True, tokenize=True)
    return server


@pytest.fixture(scope="module")
def rows(tokenizer_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    return WithExampleId(PackedText(pydoc_records()[:6], tokenizer, 24))


def local_topk(served_dir, batch, k):
    model = transformers.AutoModelForCausalLM.from_pretrained(served_dir).eval()
    with torch.inference_mode():
        logits = model(input_ids=batch.kwargs["input_ids"]).logits
    return topk_of(logits, k), torch.log_softmax(logits.float(), -1)


def assert_top_k_of(ids, logprobs, log_p, atol=1e-5):
    """``ids`` and ``logprobs`` are a top-k of the full log-probabilities ``log_p``: each id's
    log-probability as given, distinct ids, none below the k-th best (up to ``atol``: near
    ties may be ordered differently by a batched and an unbatched forward)."""
    ids, logprobs = torch.as_tensor(ids).long(), torch.as_tensor(logprobs).float()
    torch.testing.assert_close(log_p.gather(-1, ids), logprobs, atol=atol, rtol=0)
    kth = log_p.topk(ids.shape[-1], dim=-1).values[..., -1:]
    assert (logprobs >= kth - atol).all()
    assert (ids.sort(-1).values.diff(dim=-1) > 0).all()


@pytest.mark.e2e
def test_served_top_k_equals_the_local_models(reset, served_dir, tokenizer_dir, rows):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    teacher = teachers.Served(
        reset.url, top_k=8, tokenizer=tokenizer, rows_per_request=2, concurrency=3
    )
    info = teacher.check()
    assert info["model"] == "tiny-teacher" and info["tokenizer_checked"]
    batch = as_batch(torch.utils.data.default_collate([rows[i] for i in range(7)]))
    scores = teacher.score(batch)
    expected, log_p = local_topk(served_dir, batch, 8)
    assert_top_k_of(scores.topk.ids, scores.topk.logprobs, log_p)  # 7 rows, 4 requests
    torch.testing.assert_close(scores.topk.logprobs, expected.logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(scores.topk.tail, expected.tail, atol=1e-4, rtol=0)
    labels = batch.labels
    own = log_p.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(scores.next_logprobs, own, atol=1e-5, rtol=0)
    metrics = teacher.measure([batch])
    assert metrics["examples"] == labels.numel()
    assert metrics["loss"] == pytest.approx(float(-own.double().mean()), abs=1e-5)


@pytest.mark.e2e
def test_padded_rows_send_only_their_tokens(reset, served_dir, rows):
    teacher = teachers.Served(reset.url, top_k=4)
    batch = as_batch(torch.utils.data.default_collate([rows[0], rows[1]]))
    mask = torch.ones_like(batch.kwargs["input_ids"])
    mask[1, 10:] = 0
    batch.kwargs["attention_mask"] = mask
    padded = teacher.score(batch).topk
    whole = teacher.score(as_batch(torch.utils.data.default_collate([rows[1]]))).topk
    assert torch.equal(padded.ids[1, :9], whole.ids[0, :9])  # the prefix's answers
    torch.testing.assert_close(padded.logprobs[1, :9], whole.logprobs[0, :9])
    assert torch.isfinite(padded.logprobs[1, 10:]).all()  # padding: a harmless row
    mask[0] = 0  # a row of padding only is not sent
    sent = teacher.requests_sent
    empty = teacher.score(batch).topk
    assert teacher.requests_sent == sent + 1 and torch.isfinite(empty.logprobs[0]).all()
    assert torch.equal(empty.ids[1], padded.ids[1])


@pytest.mark.e2e
def test_a_failing_server_is_retried_and_a_slow_one_named(reset, rows):
    batch = as_batch(torch.utils.data.default_collate([rows[0]]))
    reset.control(fail_next=2)
    teacher = teachers.Served(reset.url, top_k=4, retries=3, backoff=0.01)
    teacher.score(batch)  # two 503s, then an answer
    assert teacher.requests_sent == 3
    reset.control(delay=1.0)
    slow = teachers.Served(reset.url, top_k=4, timeout=0.2, retries=1, backoff=0.01)
    with pytest.raises(ServedTeacherError, match=r"no answer after 2 tries \(no answer within"):
        slow(batch)


@pytest.mark.e2e
def test_server_refusals_are_one_line_errors(reset, tokenizer_dir, rows):
    batch = as_batch(torch.utils.data.default_collate([rows[0]]))
    with pytest.raises(ServedTeacherError, match=r"top_k 64 is above the server's limit of 20"):
        teachers.Served(reset.url, top_k=64).score(batch)
    reset.control(prompt_logprobs=False)
    with pytest.raises(ServedTeacherError, match="holds no prompt_logprobs"):
        teachers.Served(reset.url, top_k=4).check()
    reset.control(prompt_logprobs=True)
    with pytest.raises(ServedTeacherError, match=r"serves \['tiny-teacher'\], not 'other'"):
        teachers.Served(reset.url, model="other").check()
    other = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    other.backend_tokenizer.add_tokens(["quick brown"])  # the probe text splits otherwise
    with pytest.raises(ServedTeacherError, match="tokenizer differs from the student's"):
        teachers.Served(reset.url, tokenizer=other).check()
    reset.control(tokenize=False)  # no /tokenize: the check says it could not compare
    same = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    assert teachers.Served(reset.url, tokenizer=same).check()["tokenizer_checked"] is False
    with pytest.raises(ServedTeacherError, match="HTTP 400: Token id 400 is out of vocabulary"):
        teachers.Served(reset.url, tokenizer=other).check()  # its probe reaches the server
    with pytest.raises(ServedTeacherError, match="cannot connect"):
        teachers.Served("http://127.0.0.1:9/v1", retries=0).check()


@pytest.mark.e2e
def test_a_killed_server_loses_nothing_from_the_cache(served_dir, rows, tmp_path):
    """The server dies after a few requests: the build stops with the server named, the
    finished shards stay; against a restarted server the rerun writes only the rest, and
    the cache equals one built from the local model."""
    layout = Layout(
        kind="topk", num_examples=len(rows), shard_size=4, k=6, vocab_size=400,
        logprob_dtype="float32",
    )  # fmt: skip
    server = Server(served_dir)
    try:
        server.control(exit_after=3)
        teacher = teachers.Served(server.url, top_k=6, retries=1, backoff=0.01)
        with pytest.raises(ServedTeacherError, match=f"served teacher {server.url}"):
            build_cache(teacher, rows, tmp_path / "cache", layout, batch_size=4, progress=False)
    finally:
        server.stop()
    done = sorted((tmp_path / "cache").glob("shard-*.json"))
    assert len(done) == 3  # one request per shard: three answered before the server died
    stamps = {p: p.stat().st_mtime_ns for p in done}
    again = Server(served_dir, port=server.port)
    try:
        teacher = teachers.Served(again.url, top_k=6)
        result = build_cache(
            teacher, rows, tmp_path / "cache", layout, batch_size=4, progress=False
        )
    finally:
        again.stop()
    assert result["written_shards"] == list(range(3, layout.num_shards))
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    model = transformers.AutoModelForCausalLM.from_pretrained(served_dir).eval()
    build_cache(teachers.Module(model), rows, tmp_path / "local", layout, progress=False)
    served, local = CacheReader(tmp_path / "cache"), CacheReader(tmp_path / "local")
    everything = np.arange(len(rows))
    a, b = served.rows(everything), local.rows(everything)
    assert (a["input_hash"] == b["input_hash"]).all()
    inputs = torch.stack([rows[i]["input_ids"] for i in everything])
    with torch.inference_mode():
        log_p = torch.log_softmax(model(input_ids=inputs).logits.float(), -1)
    assert_top_k_of(a["ids"].astype(np.int64), a["logprobs"], log_p)
    np.testing.assert_allclose(a["logprobs"], b["logprobs"], atol=1e-5)
    np.testing.assert_allclose(a["tail"], b["tail"], atol=1e-4)


def served_overrides(server, text_file, tokenizer_dir, tmp_path):
    from tests.test_language_recipes import TINY, tiny_text

    return [
        f"teacher.model=served:{server.url}",
        "teacher.args={model: tiny-teacher, retries: 1}",
        f"student.args={TINY['llama']}",
        *tiny_text(text_file, tokenizer_dir),
        "data.max_train_blocks=40",
        "cache.top_k=8",
        "cache.shard_size=20",
        "train.max_steps=8",
        "train.warmup_steps=0",
        "train.eval_every=4",
        "output.latency_repeats=2",
        f"output.dir={tmp_path}",
    ]


@pytest.mark.e2e
def test_the_served_teacher_recipe_caches_then_trains(
    reset, served_dir, text_file, tokenizer_dir, tmp_path
):
    """`distill cache` fills the cache from the server, `distill run` trains from it; the
    teacher's row is measured by the server and equals the local model's perplexity; without
    a cache the student learns from the server live."""
    from typer.testing import CliRunner

    from distill import Distiller, cli
    from distill.recipes import load_recipe
    from distill.runs import run_recipe
    from distill.runs.task import loader
    from distill.runs.tasks.language.data import prepare_text
    from distill.runs.tasks.language.models import tokenizer_for

    recipe_file = Path(__file__).parent.parent / "recipes" / "llm_served_teacher.yaml"
    overrides = served_overrides(reset, text_file, tokenizer_dir, tmp_path)
    args = ["cache", str(recipe_file), *[f"--set={o}" for o in overrides], "--json"]
    built = CliRunner().invoke(cli.app, args)
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout)["manifest"]["k"] == 8
    asked = reset.counters()["completions"]

    messages = []
    recipe = load_recipe(recipe_file, overrides)
    summary = run_recipe(recipe, progress=False, log=messages.append)
    assert any("complete, reused" in m for m in messages)
    assert any("learns from the teacher cache" in m for m in messages)
    teacher, student = summary["models"]["teacher"], summary["models"]["student"]
    data = prepare_text(recipe, tokenizer_for(recipe))
    model = transformers.AutoModelForCausalLM.from_pretrained(served_dir).eval()
    local = Distiller(model, progress=False).evaluate(loader(data.test, recipe, False))
    assert teacher["perplexity"] == pytest.approx(math.exp(local["loss"]), rel=1e-4)
    assert teacher["accuracy"] == pytest.approx(local["accuracy"], abs=0.02)  # near ties
    assert teacher["parameters"] is None and "teacher_agreement" in student
    assert math.isfinite(student["kl_to_teacher"])  # measured against the server
    # the training steps read the cache; the server answered only the evaluations
    test_and_val = 4 * (len(data.test) + 2 * len(data.val))  # at most 4 evaluations each
    assert reset.counters()["completions"] - asked <= test_and_val
    assert "| — |" in (tmp_path / recipe.name / "report.md").read_text()

    live = load_recipe(recipe_file, [*overrides, "cache=null", f"output.dir={tmp_path / 'live'}"])
    messages.clear()
    summary = run_recipe(live, progress=False, log=messages.append)
    assert not any("teacher cache" in m for m in messages)
    assert math.isfinite(summary["models"]["student"]["kl_to_teacher"])


def test_served_members_are_refused_where_they_are_not_built():
    from distill.recipes import RecipeError, load_recipe
    from tests.test_language_recipes import ROOT

    def member(domain: str, **args: object) -> str:
        return f"{{model: 'served:http://h/v1', domain: {domain}, args: {json.dumps(args)}}}"

    base = [
        "data={dataset: text, format: chat, tokenizer: 'hf:tok', domain_column: topic}",
        "student.model=hf:s",
        "objective={kd: {loss: lm_head_kd, temperature: 1.0}}",
    ]
    for members, extra, message in [
        (f"[{member('a', top_k=5)}, {member('b')}]", [], "every member answers the same top-k"),
        (f"[{member('a')}, {member('b')}]", ["generate={prompts: p.jsonl}"], "`generate` does"),
        (f"[{member('a')}, {member('b', batch=3)}]", [], "teacher.members[1].args: a served"),
        (f"[{member('a')}, {member('b')}]", ["objective.kd.temperature=2.0"],
         "does not combine with `teacher.members[0].model: served`"),
    ]:  # fmt: skip
        teacher = f"teacher={{model: ensemble, combine: route, members: {members}}}"
        with pytest.raises(RecipeError, match=re.escape(message)):
            load_recipe(ROOT / "recipes" / "llm_token_kd.yaml", [*base, teacher, *extra])


@pytest.mark.parametrize(
    "change, message",
    [
        (
            "student.model=teacher",
            "`teacher.model: served` does not combine with `student.model: teacher`",
        ),
        (
            "objective.kd.temperature=2.0",
            "`objective.kd.temperature` does not combine with `teacher.model: served`",
        ),
        ("teacher.args={model: x, batch: 3}", "teacher.args: a served teacher takes"),
        ("teacher.model=served:gpu-host:8000", "served:<http(s) url of the API>"),
        ("teacher.args={model: x, top_k: 5}", "cache.top_k: a served teacher answers"),
        ("teacher.args={api_key: sk-1}", "teacher.args.api_key: a key is never written"),
        ("teacher.args={api_key_env: 'not a name'}", "the name of an environment variable"),
    ],
)
def test_served_recipe_errors_name_the_field(change, message):
    from distill.recipes import RecipeError, load_recipe

    recipe_file = Path(__file__).parent.parent / "recipes" / "llm_served_teacher.yaml"
    with pytest.raises(RecipeError, match=re.escape(message)):
        load_recipe(recipe_file, [change])


@pytest.mark.e2e
def test_an_api_key_comes_from_the_environment_variable_the_recipe_names(
    served_dir, text_file, tokenizer_dir, tmp_path, monkeypatch
):
    """As an authenticated vLLM server needs: the recipe names the variable, the key goes
    in the Authorization header, and it is written nowhere in the run."""
    from distill.errors import RecipeError
    from distill.recipes import load_recipe
    from distill.runs import run_recipe
    from distill.runs.tasks.language.models import served_teacher, tokenizer_for

    key = "sk-test-4f9a2c"
    secured = Server(served_dir, api_key=key)
    try:
        recipe_file = Path(__file__).parent.parent / "recipes" / "llm_served_teacher.yaml"
        overrides = served_overrides(secured, text_file, tokenizer_dir, tmp_path)
        overrides += ["teacher.args={model: tiny-teacher, retries: 0, api_key_env: SERVE_KEY}"]
        recipe = load_recipe(recipe_file, [*overrides, "cache=null", "train.max_steps=2"])
        tokenizer = tokenizer_for(recipe)
        monkeypatch.delenv("SERVE_KEY", raising=False)
        with pytest.raises(RecipeError, match="environment variable SERVE_KEY is not set"):
            served_teacher(recipe, tokenizer, lambda m: None)
        monkeypatch.setenv("SERVE_KEY", "sk-wrong")
        with pytest.raises(ServedTeacherError, match=r"HTTP 401.*refused the API key sent"):
            served_teacher(recipe, tokenizer, lambda m: None)
        without = load_recipe(recipe_file, [*overrides[:-1], "teacher.args={retries: 0}"])
        with pytest.raises(ServedTeacherError, match="the server wants an API key"):
            served_teacher(without, tokenizer, lambda m: None)

        monkeypatch.setenv("SERVE_KEY", key)
        summary = run_recipe(recipe, progress=False, log=lambda m: None)
        assert math.isfinite(summary["models"]["student"]["kl_to_teacher"])
        written = [p for p in (tmp_path / recipe.name).rglob("*") if p.is_file()]
        assert any(p.name == "recipe.yaml" for p in written)
        assert not [p for p in written if key.encode() in p.read_bytes()]
    finally:
        secured.stop()


@pytest.mark.e2e
def test_routed_served_members_are_each_asked_only_about_their_rows(tmp_path):
    """A routed teacher whose members are on two servers: `distill cache` asks each server
    only about the rows routed to it (each member's cache in its own folder); the run reads
    the caches, and the teacher row is measured by the servers, per domain too."""
    from distill.recipes import load_recipe
    from distill.runs import run_recipe
    from distill.runs.commands import cache_command
    from distill.runs.table import task_for
    from tests.test_language_recipes import ROOT, routed_chats

    overrides = routed_chats(tmp_path)
    servers = [Server(tmp_path / name) for name in ("first", "second")]
    try:
        members = ", ".join(
            f"{{model: 'served:{server.url}', domain: {domain}, args: {{retries: 1}}}}"
            for server, domain in zip(servers, ("maths", "safety"), strict=True)
        )
        recipe = load_recipe(
            ROOT / "recipes" / "llm_token_kd.yaml",
            [
                *overrides,
                f"teacher={{model: ensemble, combine: route, members: [{members}]}}",
                "cache={top_k: 8}",
                "objective={kd: {loss: lm_head_kd, temperature: 1.0}}",
                "baseline=false",
            ],
        )
        built = cache_command(recipe, progress=False, log=lambda m: None)
        task = task_for(recipe)
        task.prepare(False, lambda m: None)
        domains = [int(task.cache_rows()[i]["domain"]) for i in range(len(task.cache_rows()))]
        asked = [server.counters()["prompts"] for server in servers]
        rows = [domains.count(0), domains.count(1)]
        assert asked == [n + 1 for n in rows]  # its own rows, and the probe that checks it
        assert {m: b["manifest"]["num_examples"] for m, b in built["members"].items()} == {
            "maths": rows[0],
            "safety": rows[1],
        }
        summary = run_recipe(recipe, progress=False, log=lambda m: None)
        teacher, student = summary["models"]["teacher"], summary["models"]["student"]
        assert teacher["parameters"] is None and 1.0 < teacher["perplexity"] < 1000
        from distill import Distiller
        from distill.runs.task import loader

        for name, folder in (("maths", "first"), ("safety", "second")):  # each by its server
            model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / folder).eval()
            rows = loader(task.data.test_by_domain[name], recipe, False)
            local = Distiller(model, progress=False).evaluate(rows)
            assert teacher[f"perplexity_{name}"] == pytest.approx(math.exp(local["loss"]), rel=1e-4)
        assert math.isfinite(student["kl_to_teacher"]) and "teacher_agreement_maths" in student
        from distill.doctor.run import diagnose

        checked = diagnose(recipe, tmp_path / "doctor", sample=8, progress=False, log=print)
        mass = next(f for f in checked["findings"] if f["check"] == "top_k_mass")
        assert mass["verdict"] in ("ok", "warning", "problem") and "served" in mass["summary"]
        before = [server.counters()["prompts"] for server in servers]
        live = recipe.model_copy(update={"cache": None, "name": "live"})
        summary = run_recipe(live, progress=False, log=lambda m: None)  # the servers teach
        assert math.isfinite(summary["models"]["student"]["kl_to_teacher"])
        assert all(
            server.counters()["prompts"] > n for server, n in zip(servers, before, strict=True)
        )
    finally:
        for server in servers:
            server.stop()
