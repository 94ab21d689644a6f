"""`distill search`: the recipe's search space, budgets measured before training, a tiny
Optuna study end to end (then the chosen student distilled fully), a killed search resumed,
an LLM student searched by depth and MLP width, and the one-line errors of a bad space."""

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import transformers
from torch import nn
from typer.testing import CliRunner

from distill import cli
from distill.measure import forward_memory_bytes
from distill.recipes import RecipeError, load_recipe
from distill.recipes.search_spec import Candidate
from distill.runs.search import space as search_space
from distill.runs.search.holdout import split_holdout
from distill.runs.search.report import pareto_front
from distill.training.state import lower_is_better
from tests.test_language_recipes import tiny_overrides

ROOT = Path(__file__).parents[1]
MNIST1D = ROOT / "recipes" / "mnist1d_kd.yaml"
SPACE = (
    "search={candidates: ["
    "{model: zoo:mlp, args: {hidden: {layers: [1, 2], low: 8, high: 64, log: true}, "
    "pool: {choices: [1, 2]}}}, "
    "{model: zoo:cnn, args: {channels: {layers: [1, 1], low: 4, high: 8}, hidden: 16, "
    "kernel: {choices: [3, 5]}}}], "
    "trials: 3, train: {max_steps: 8}, evaluations: 2, seeds: [0, 1]}"
)
TINY = [
    "teacher.train.max_steps=6",
    "train.max_steps=10",
    "output.latency_repeats=3",
    SPACE,
]


def distill_search(run_dir, cache, *extra, kill_at=None):
    """`distill search` on MNIST-1D with the teacher store ``cache``: in this process
    (typer's runner), or with ``kill_at=n`` in a subprocess SIGKILLed when it has written
    its n-th checkpoint (as a crash or an out-of-memory kill would). (exit code, stderr)"""
    args = ["search", str(MNIST1D), *[f"--set={o}" for o in TINY], "--out", str(run_dir), "-q"]
    env = {"DISTILL_CACHE": str(cache), "DISTILL_PLOTS": "1"}
    if kill_at is None:
        result = CliRunner().invoke(cli.app, [*args, *extra], env=env)
        return result.exit_code, result.output
    command = [sys.executable, str(ROOT / "tests" / "kill_run.py"), "written", str(kill_at)]
    done = subprocess.run(
        [*command, *args, *extra], env={**os.environ, **env}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    return done.returncode, done.stderr


def search_summary(tmp_path, overrides):
    """`distill search` on MNIST-1D with ``overrides``, in ``tmp_path``: its JSON summary."""
    result = CliRunner().invoke(
        cli.app,
        ["search", str(MNIST1D), *[f"--set={o}" for o in overrides], "--out",
         str(tmp_path / "run"), "--json", "-q"],
        env={"DISTILL_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    code, errors = distill_search(root / "run", root / "cache", "--jobs", "2")  # 2 at once
    assert code == 0, errors[-3000:]
    return root


@pytest.mark.e2e
def test_a_tiny_search_scores_trials_and_distils_the_chosen_student_fully(searched):
    run = searched / "run"
    summary = json.loads((run / "search.json").read_text())
    trials = summary["trials"]
    assert len(trials) == 3 and {t["state"] for t in trials} <= {"complete", "pruned"}
    for t in trials:  # each trial measured before it trained, and its overrides recorded
        assert t["parameters"] > 0 and t["latency_ms"] > 0 and t["memory_mb"] > 0
        assert t["overrides"][0] == f"student.model={t['student']['model']}"
    # a new study starts from each family's cheapest corner, which fits any budget that
    # lets the family in: even a few trials find a student
    corners = [
        {"model": "zoo:mlp", "args": {"hidden": [8], "pool": 1}},
        {"model": "zoo:cnn", "args": {"channels": [4], "hidden": 16, "kernel": 3}},
    ]
    assert sorted([t["student"] for t in trials[:2]], key=str) == sorted(corners, key=str)
    chosen = summary["chosen"]
    complete = [t for t in trials if t["state"] == "complete"]
    assert chosen["value"] == max(t["value"] for t in complete)
    assert chosen["number"] in summary["pareto"]
    final = summary["final"]
    assert set(final) == {"hand_picked", "searched"}
    for row in final.values():
        per_seed = row["accuracy_per_seed"]
        assert len(per_seed) == 2 and row["accuracy"] == pytest.approx(sum(per_seed) / 2)
        assert row["accuracy_std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2**0.5)
        assert row["latency_ms"] > 0
    assert final["searched"]["student"] == chosen["student"]
    # each full run is a distill run of its own, trained with the recipe's budget
    folder = run / "final" / "searched" / "seed_1"
    assert json.loads((folder / "summary.json").read_text())["steps"] == 10
    assert (run / "pareto.png").stat().st_size > 0
    report = (run / "search.md").read_text()
    assert "## Pareto front" in report and "--set student.model=" in report


@pytest.mark.e2e
def test_a_killed_search_rerun_continues_where_it_stopped(tmp_path):
    # the teacher first (its checkpoints are not counted), then kill at the fourth checkpoint
    # the trials write (each writes at steps 4, 8 and 8 again at its end): the first trial
    # is finished, the second one is in the middle
    cache = tmp_path / "cache"
    teach = ["teacher", str(MNIST1D), "-q", *[f"--set={o}" for o in TINY]]
    assert CliRunner().invoke(cli.app, teach, env={"DISTILL_CACHE": str(cache)}).exit_code == 0
    killed, _ = distill_search(tmp_path / "run", cache, kill_at=4)
    assert killed == -9
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    (name,) = optuna.get_all_study_names(storage)
    states = [t.state.name for t in optuna.load_study(study_name=name, storage=storage).trials]
    assert "RUNNING" in states and len(states) == 2
    code, errors = distill_search(tmp_path / "run", cache)
    assert code == 0, errors[-3000:]
    study = optuna.load_study(study_name=name, storage=storage)
    scored = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(scored) == 3  # three trials in all, the interrupted one drawn again
    interrupted = next(t for t in study.trials if t.state.name == "FAIL")
    assert any(t.params == interrupted.params for t in scored)
    summary = json.loads((tmp_path / "run" / "search.json").read_text())
    assert set(summary["final"]) == {"hand_picked", "searched"}


def test_a_budget_no_candidate_meets_fails_before_training(tmp_path):
    result = CliRunner().invoke(
        cli.app,
        ["search", str(MNIST1D), *[f"--set={o}" for o in TINY], "--set=search.budget.parameters=10",
         "--out", str(tmp_path / "run"), "-q"],
        env={"DISTILL_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert result.exit_code == 2
    assert "search.budget: no candidate's cheapest corner meets parameters <= 10" in result.output
    assert "smallest" in result.output
    assert not (tmp_path / "cache" / "teachers").exists()  # before the teacher trained
    assert not (tmp_path / "run" / "trials").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("search.candidates=[]", "search.candidates: List should have at least 1 item"),
        (
            "search.candidates.0.args.hidden={low: 64, high: 8}",
            "search.candidates.0.args: hidden: low 64 is above high 8",
        ),
        (
            "search.candidates.0.args.hidden={choices: [8], low: 1, high: 2}",
            "give either choices or low/high",
        ),
        (
            "search.candidates.0.args.hidden={lo: 16, high: 64}",
            "hidden: unknown range key 'lo' (did you mean 'low'?)",
        ),
        (
            "search.candidates.0.args.hidden={lo: 16, hi: 64}",
            "'lo' (did you mean 'low'?), 'hi' (did you mean 'high'?)",
        ),
        ("search.budget.latency=1", "search.budget.latency: unknown field"),
        ("search.train={lr: -1}", "search.train.lr: Input should be greater than 0"),
        ("generations=2", "`search` does not combine with `generations`: student search trains"),
        ("search.metric=heldout_kl_to_teacher", "set search.holdout (e.g. 5000)"),
    ],
)
def test_a_bad_search_section_names_the_field(override, message):
    with pytest.raises(RecipeError) as error:
        load_recipe(MNIST1D, [SPACE, override])
    assert message in str(error.value)


def test_an_unknown_architecture_field_fails_naming_the_candidate(tmp_path):
    result = CliRunner().invoke(
        cli.app,
        ["search", str(MNIST1D), *[f"--set={o}" for o in TINY],
         "--set=search.candidates.1.args.stages={choices: [1, 2]}", "--out", str(tmp_path / "r")],
        env={"DISTILL_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert result.exit_code == 2
    assert "search.candidates.1: zoo:cnn" in result.output and "stages" in result.output


def test_a_budget_measured_from_the_student_allows_for_timing_noise():
    """The limit is the upper quartile of five timings of the recipe's student plus the
    margin; a candidate over a timed limit is timed again and judged by its median, one
    over an untimed limit (parameters) is not."""
    rounds = [{"latency_ms": t, "parameters": 100.0} for t in (1.0, 1.4, 1.1, 1.2, 1.3)]
    wanted = {"latency_ms": "student", "parameters": "student", "memory_mb": 2.0}
    limits, said = search_space.budget_limits(wanted, rounds, margin=0.05)
    assert limits == pytest.approx({"latency_ms": 1.3 * 1.05, "parameters": 100, "memory_mb": 2})
    assert "1 to 1.4 over 5 timings" in said[0] and "upper quartile + 5% margin" in said[0]
    timings = iter([1.2, 2.0, 1.3, 1.1])  # a busy moment, then the candidate's own speed

    def again():
        return {"latency_ms": next(timings), "parameters": 90.0, "memory_mb": 1.0}

    busy = {"latency_ms": 3.0, "parameters": 90.0, "memory_mb": 1.0}
    settled = search_space.settled(busy, limits, again)
    assert settled["latency_ms"] == 1.3  # the median of 3.0, 1.2, 2.0, 1.3, 1.1
    assert not search_space.over_budget(settled, limits)
    too_big = {"latency_ms": 3.0, "parameters": 120.0, "memory_mb": 1.0}
    assert search_space.settled(too_big, limits, again) is too_big  # not timed again
    assert search_space.over_budget(too_big, limits) == [
        "latency_ms 3 > 1.365",
        "parameters 120 > 100",
    ]


@pytest.mark.e2e
def test_queued_trials_run_once_each_even_with_two_jobs(tmp_path):
    """Two threads may pop the same queued trial from SQLite (then Optuna raises "Cannot
    tell a COMPLETE trial", in about 1 of 4 such studies here): queued trials run one at a
    time first, the rest with two jobs."""
    from distill.runs.search.study import optimize

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    queued = [1.0, 2.0, 3.0, 4.0]
    for k in range(12):
        study = optuna.create_study(storage=f"sqlite:///{tmp_path / f'{k}.db'}")
        for x in queued:
            study.enqueue_trial({"x": x})
        optimize(study, lambda trial: trial.suggest_float("x", 0, 10), 6, jobs=2, timeout=None)
        values = [t.params["x"] for t in study.trials if t.state.name == "COMPLETE"]
        assert len(values) == 6 and all(values.count(x) == 1 for x in queued), values


def test_suggested_candidates_stay_in_their_space():
    candidate = Candidate.model_validate(
        {"model": "zoo:mlp", "args": {
            "hidden": {"layers": [1, 3], "low": 8, "high": 64, "log": True},
            "pool": {"choices": [1, 2]}, "dropout": {"low": 0.0, "high": 0.5},
            "widths": {"choices": [[4, 4], [8]]}, "fixed": 3,
        }}
    )  # fmt: skip
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        student = search_space.suggest(study.ask(), [candidate], ["zoo:mlp"])
        args = student["args"]
        assert 1 <= len(args["hidden"]) <= 3 and all(8 <= w <= 64 for w in args["hidden"])
        assert all(isinstance(w, int) for w in args["hidden"])
        assert args["pool"] in (1, 2) and 0.0 <= args["dropout"] <= 0.5
        assert args["widths"] in ([4, 4], [8]) and args["fixed"] == 3
    smallest = search_space.smallest(candidate)["args"]
    assert smallest["hidden"] == [8] and smallest["pool"] == 1 and smallest["dropout"] == 0.0


def test_forward_memory_counts_weights_and_the_peak_of_live_tensors():
    model = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 10))
    weights = 4 * sum(p.numel() for p in model.parameters())
    # the first layer's output and the ReLU's are alive together: 2 × 1024 floats
    assert forward_memory_bytes(model, torch.randn(784)) == weights + 2 * 4 * 1024
    wide = nn.Sequential(nn.Linear(784, 4096), nn.ReLU(), nn.Linear(4096, 10))
    assert (
        forward_memory_bytes(wide, torch.randn(784))
        == 4 * sum(p.numel() for p in wide.parameters()) + 2 * 4 * 4096
    )


def test_the_pareto_front_keeps_the_trials_nothing_beats_on_both():
    rows = [
        {"number": 0, "state": "complete", "value": 0.80, "latency_ms": 1.0},
        {"number": 1, "state": "complete", "value": 0.85, "latency_ms": 2.0},
        {"number": 2, "state": "complete", "value": 0.82, "latency_ms": 2.5},  # beaten by 1
        {"number": 3, "state": "complete", "value": 0.90, "latency_ms": 3.0},
        {"number": 4, "state": "pruned", "value": 0.99, "latency_ms": 0.5},  # not trained
    ]
    assert pareto_front(rows, "accuracy") == [0, 1, 3]
    assert pareto_front(rows, "loss") == [0]  # lower is better: the fastest is also best


@pytest.mark.e2e
def test_an_llm_student_is_searched_by_depth_and_three_widths(text_file, tokenizer_dir, tmp_path):
    overrides = [
        *tiny_overrides("llama", text_file, tokenizer_dir, tmp_path),
        "search={candidates: [{model: teacher, args: {keep: {low: 1, high: 3}, "
        "width: {choices: [0.5, 1.0]}, heads: {choices: [0.5, 1.0]}, "
        "hidden: {choices: [0.5, 1.0]}}}], trials: 3, train: {max_steps: 4}, compare: false}",
    ]
    result = CliRunner().invoke(
        cli.app,
        ["search", str(ROOT / "recipes" / "llm_token_kd.yaml"), "-q", "--json",
         *[f"--set={o}" for o in overrides]],
        env={"DISTILL_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["metric"] == "loss"
    trials = summary["trials"]
    assert len(trials) == 3
    for t in trials:
        args = t["student"]["args"]
        assert 1 <= args["keep"] <= 3 and args["width"] in (0.5, 1.0)
    # fewer layers and narrower MLPs, fewer parameters
    by_size = sorted(
        trials, key=lambda t: (t["student"]["args"]["keep"], t["student"]["args"]["width"])
    )
    assert by_size[0]["parameters"] <= by_size[-1]["parameters"]
    assert set(summary["final"]) == {"searched"}
    student = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "llm_token_kd-search" / "final" / "searched" / "seed_0" / "student"
    )
    chosen = summary["chosen"]["student"]["args"]
    assert student.config.num_hidden_layers == chosen["keep"]
    assert student.config.intermediate_size == round(64 * chosen["width"])
    assert student.config.num_attention_heads == round(4 * chosen["heads"])  # 2 per group
    assert student.config.hidden_size == round(32 * chosen["hidden"])


@pytest.mark.e2e
def test_nsga2_with_shared_storage_timeout_and_an_onnx_budget(tmp_path):
    """The other options, together: NSGA-II (metric and latency), a study in a storage URL
    (the path several machines take: heartbeats, stale trials retried), a timeout, and ONNX
    Runtime latency, float and int8, measured for the budget (which refuses --jobs: the
    exporter changes global torch state while other trials train)."""
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    args = ["search", str(MNIST1D), *[f"--set={o}" for o in TINY], "--set=search.sampler=nsga2",
            "--set=search.population=2", "--set=search.budget.onnx_latency_ms=1000",
            "--set=search.budget.onnx_int8_latency_ms=1000",
            "--set=search.compare=false", "--set=search.seeds=[0]", "--storage", storage,
            "--timeout", "600", "--trials", "4", "--out", str(tmp_path / "run"),
            "--json"]  # fmt: skip
    env = {"DISTILL_CACHE": str(tmp_path / "cache")}
    refused = CliRunner().invoke(cli.app, [*args, "--jobs", "2"], env=env)
    assert refused.exit_code == 2 and "needs --jobs 1" in refused.output
    result = CliRunner().invoke(cli.app, args, env=env)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["sampler"] == "nsga2"
    assert summary["budget"] == {"onnx_latency_ms": 1000.0, "onnx_int8_latency_ms": 1000.0}
    assert len(summary["trials"]) == 4
    assert all(t["onnx_latency_ms"] > 0 for t in summary["trials"])
    assert all(t["onnx_int8_latency_ms"] > 0 for t in summary["trials"])
    assert summary["final"]["searched"]["onnx_int8_latency_ms"] > 0  # the full run's too
    report = (tmp_path / "run" / "search.md").read_text()
    assert report.count("ONNX Runtime int8 ms / example") == 4  # budget, full runs, tables
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert not (tmp_path / "run" / "study.db").exists()  # the study lives in the storage


@pytest.mark.parametrize(
    ("pruner", "kind"),
    [("median", "MedianPruner"), ("halving", "SuccessiveHalvingPruner"),
     ("hyperband", "HyperbandPruner"), ("none", "NopPruner")],
)  # fmt: skip
def test_each_pruner_has_the_trials_validations_as_its_rungs(pruner, kind):
    from distill.runs.search.study import make_pruner

    spec = load_recipe(MNIST1D, [SPACE, f"search.pruner={pruner}"]).search
    made = make_pruner(spec, steps=40)
    assert type(made).__name__ == kind
    if pruner == "halving":
        assert made._min_resource == 20  # 40 steps, 2 validations: the first rung at 20
    if pruner == "hyperband":
        assert (made._min_resource, made._max_resource) == (20, 40)


@pytest.mark.e2e
def test_candidates_that_cannot_be_built_are_pruned_and_hyperband_stops_trials(tmp_path):
    """A point of the space that does not exist (here an input pooled below what three
    halvings need) is pruned with its reason, not a crash; the other trials report their
    validations to Hyperband."""
    space = (
        "search={candidates: [{model: zoo:cnn, args: {channels: [4, 4, 4], hidden: 8, "
        "pool: {choices: [1, 2, 8]}}}], sampler: random, trials: 6, pruner: hyperband, "
        "train: {max_steps: 8}, evaluations: 2, seeds: [0], compare: false}"
    )
    overrides = [*TINY[:-1], space]
    trials = search_summary(tmp_path, overrides)["trials"]
    pools = [t["student"]["args"]["pool"] for t in trials]
    assert 8 in pools and {1, 2} & set(pools)  # 40 / 8 = 5 samples: too few for 3 halvings
    for trial in trials:
        if trial["student"]["args"]["pool"] == 8:
            assert trial["state"] == "pruned" and "cannot be built" in trial["stopped"]
            assert "too small" in trial["stopped"]
        else:
            assert "cannot be built" not in (trial.get("stopped") or "")


def test_held_out_rows_lose_their_labels_and_stay_out_of_the_trials():
    rows = [(torch.full((3,), float(i)), i % 2) for i in range(10)]
    kept, held = split_holdout(rows, 4)
    assert len(kept) == 6 and len(held) == 4
    seen = {float(kept[i][0][0]) for i in range(6)} | {float(held[i][0][0]) for i in range(4)}
    assert seen == set(map(float, range(10)))  # every row once, on one side
    assert all(len(held[i]) == 1 for i in range(4))  # inputs only
    texts = [{"input_ids": torch.arange(4), "labels": torch.arange(4)} for _ in range(5)]
    assert set(split_holdout(texts, 2)[1][0]) == {"input_ids"}
    assert split_holdout(rows, 0) == (rows, None)
    with pytest.raises(ValueError, match=r"search\.holdout 10 leaves no training rows"):
        split_holdout(rows, 10)
    assert lower_is_better("heldout_kl_to_teacher")
    assert not lower_is_better("heldout_teacher_agreement")


@pytest.mark.e2e
def test_trials_scored_by_the_teacher_on_held_out_inputs(tmp_path):
    overrides = [*TINY, "search.holdout=64", "search.metric=heldout_kl_to_teacher",
                 "search.compare=false", "search.seeds=[0]"]  # fmt: skip
    summary = search_summary(tmp_path, overrides)
    trained = [t for t in summary["trials"] if t["state"] == "complete"]
    assert trained and summary["metric"] == "heldout_kl_to_teacher"
    for trial in trained:
        assert trial["value"] == trial["heldout_kl_to_teacher"] > 0
        assert 0 <= trial["heldout_teacher_agreement"] <= 1
    best = min(trained, key=lambda t: (t["value"], t["latency_ms"]))  # lower KL, then faster
    assert summary["chosen"]["number"] == best["number"]
