"""Students trained without the training data, end to end on tiny budgets (real digits
images in Fashion-MNIST's file format): a data-free recipe (DeepInversion transfer set)
and a 10-teacher PATE recipe with its ε checked."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.data import Mixed
from distill.doctor.run import diagnose
from distill.errors import RecipeError
from distill.methods.pate import pate_epsilon
from distill.methods.synthetic import SyntheticSet
from distill.paths import CHECKSUMS_FILE
from distill.recipes import load_recipe
from distill.runs import run_recipe
from distill.runs.tasks.classify.data import prepare_data

RECIPES = Path(__file__).parent.parent / "recipes"
DATA_FREE = [
    "data.labeled=300",
    "data.batch_size=32",
    "data.synthetic.examples=64",
    "data.synthetic.batch_size=32",
    "data.synthetic.steps=5",
    "teacher.args.channels=[8,16]",
    "teacher.train.max_steps=10",
    "train.max_steps=6",
    "output.latency_repeats=3",
]
PATE = [
    "data.batch_size=32",
    "pate.teachers=10",
    "pate.public=300",
    "pate.queries=120",
    "pate.sigma=2",
    "pate.threshold=5",
    "pate.sigma_threshold=2",
    "teacher.args.hidden=16",
    "teacher.train.epochs=2",
    "train.max_steps=6",
    "output.latency_repeats=3",
]


@pytest.fixture
def fashion(digits_as_fashion, isolated_cache):
    """Recipes read 'Fashion-MNIST' (the digits IDX files); the private cache folder."""
    return isolated_cache


@pytest.mark.e2e
def test_a_data_free_run_distils_on_synthetic_inputs_only_and_reuses_them(fashion, tmp_path):
    recipe = load_recipe(RECIPES / "fashion_mnist_data_free.yaml", DATA_FREE)
    lines = []
    summary = run_recipe(recipe, out_dir=tmp_path / "run", progress=False, log=lines.append)
    assert set(summary["models"]) == {"teacher", "baseline", "student"}
    models = summary["models"]  # on synthetic inputs alone, the student heads for its teacher
    assert models["student"]["kl_to_teacher"] < models["baseline"]["kl_to_teacher"]
    assert "sees no training images, only 64 inputs synthesised" in summary["regime"]
    (data_line,) = [line for line in lines if line.startswith("data: ")]  # the console's
    assert "sees no training images" in data_line and "transfer set" not in data_line
    (folder,) = (fashion / "synthetic").iterdir()
    synthetic = SyntheticSet(folder)  # checksums verified
    assert len(synthetic) == 64 and synthetic.inputs.shape[1:] == (1, 28, 28)
    assert synthetic.provenance["settings"]["steps"] == 5
    assert synthetic.provenance["teacher"] in folder.name
    assert any("by DeepInversion, 5 steps per batch of 32" in line for line in lines)

    # the same teacher and settings in another run: the stored inputs, not new ones
    stamp = {p.name: p.stat().st_mtime_ns for p in folder.glob("batch_*")}
    run_recipe(recipe, out_dir=tmp_path / "again", progress=False, log=lines.append)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("batch_*")} == stamp


GENERATOR = [
    "data.labeled=300",
    "data.batch_size=32",
    "data.synthetic.examples=64",
    "data.synthetic.batch_size=32",
    "data.synthetic.generator.rounds_per_batch=2",
    "data.synthetic.generator.width=4",
    "teacher.args.channels=[8,16]",
    "teacher.train.max_steps=10",
    "train.max_steps=6",
    "output.latency_repeats=3",
]


@pytest.mark.e2e
def test_a_generator_run_starts_the_student_from_the_one_beside_the_generator(fashion, tmp_path):
    still = ["train.lr=1e-30"]  # the distilled student's weights stay where they start
    recipe = load_recipe(RECIPES / "fashion_mnist_data_free_generator.yaml", [*GENERATOR, *still])
    lines = []
    summary = run_recipe(recipe, out_dir=tmp_path / "run", progress=False, log=lines.append)
    assert "by a generator, 4 rounds of 32, 2 kept" in "\n".join(lines)
    assert summary["synthesis"]["method"] == "generator" and summary["synthesis"]["examples"] == 64
    assert summary["synthesis"]["seconds_this_run"] > 0
    assert any("starts from the one that learned beside the generator" in line for line in lines)
    (folder,) = (fashion / "synthetic").iterdir()
    made = SyntheticSet(folder)
    assert len(made) == 64 and made.provenance["method"] == "generator"
    student = load_file(str(tmp_path / "run" / "student.safetensors"))
    assert made.student_weights is not None and student.keys() == made.student_weights.keys()
    for name, weights in made.student_weights.items():
        torch.testing.assert_close(student[name], weights)
    # warm_start: false learns from the same stored inputs (its key leaves it out), fresh
    cold = load_recipe(
        RECIPES / "fashion_mnist_data_free_generator.yaml",
        [*GENERATOR, "data.synthetic.generator.warm_start=false"],
    )
    lines.clear()
    run_recipe(cold, out_dir=tmp_path / "cold", progress=False, log=lines.append)
    assert [p.name for p in (fashion / "synthetic").iterdir()] == [folder.name]
    assert not any("starts from" in line for line in lines)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("data.synthetic.steps=5", "steps is DeepInversion's; method: generator takes"),
        ("data.synthetic.generator.disagreement=l2", "data.synthetic.generator.disagreement"),
    ],
)
def test_bad_generator_settings_fail_naming_the_field(change, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(RECIPES / "fashion_mnist_data_free_generator.yaml", [change])
    with pytest.raises(RecipeError, match="generator: is for method: generator"):
        load_recipe(RECIPES / "fashion_mnist_data_free.yaml", ["data.synthetic.generator={}"])


def test_a_data_free_recipe_rejects_a_teacher_without_batchnorm_before_training(fashion, tmp_path):
    recipe = load_recipe(
        RECIPES / "fashion_mnist_data_free.yaml", [*DATA_FREE, "teacher.model=zoo:mlp",
                                                   "teacher.args={hidden: 32}"],
    )  # fmt: skip
    with pytest.raises(RecipeError, match=r"teacher.model zoo:mlp: DeepInversion .* no BatchNorm"):
        run_recipe(recipe, out_dir=tmp_path / "run", progress=False, log=lambda line: None)
    assert not (fashion / "teachers").exists()  # nothing trained


def test_data_free_refuses_label_terms_and_a_cache():
    refused = r"`objective.ce` does not combine with `data.synthetic`: the synthetic transfer set"
    with pytest.raises(RecipeError, match=refused):
        load_recipe(
            RECIPES / "fashion_mnist_data_free.yaml", ["objective.ce={loss: cross_entropy}"]
        )
    with pytest.raises(RecipeError, match=r"`data.synthetic` does not combine with `cache`"):
        load_recipe(RECIPES / "fashion_mnist_data_free.yaml", ["cache={}"])


@pytest.mark.e2e
def test_a_pate_run_trains_partition_teachers_answers_noisily_and_reports_epsilon(
    fashion, tmp_path
):
    recipe = load_recipe(RECIPES / "fashion_mnist_pate.yaml", PATE)
    lines = []
    summary = run_recipe(recipe, out_dir=tmp_path / "run", progress=False, log=lines.append)
    assert set(summary["models"]) == {"teacher", "student"}  # the teacher: the plain vote
    privacy = summary["privacy"]
    assert privacy["queries"] == 120 and 0 < privacy["answered"] <= 120
    # the ε of the answered GNMax queries plus the threshold check on all 120 queries
    assert privacy["epsilon"] == pytest.approx(
        pate_epsilon(privacy["answered"], 2.0, 1e-5, queries=120, sigma_threshold=2.0)[0]
    )
    assert privacy["epsilon"] > pate_epsilon(privacy["answered"], 2.0, 1e-5)[0]
    # the data-dependent analysis of the same votes: never above the bound, named apart
    assert 0 < privacy["epsilon_data_dependent"] <= privacy["epsilon"] + 1e-9
    # the noisy answers are right far more often than chance (10 classes)
    assert privacy["answer_accuracy"] > 0.3
    report = (tmp_path / "run" / "report.md").read_text()
    assert f"Privacy: ({privacy['epsilon']:.2f}, 1e-05)-DP" in report
    assert "partitioned among 10 teachers" in report and "Not protected: the public" in report
    assert "The data-dependent analysis of these votes" in report
    assert "| teachers' plain vote (10, no noise) |" in report
    assert "none was selected on validation" in report
    stores = sorted((fashion / "teachers").iterdir())
    assert len(stores) == 10  # one store entry per partition

    # a rerun draws no new noise: it reuses the teachers and the answers
    again = run_recipe(recipe, out_dir=tmp_path / "again", progress=False, log=lines.append)
    assert again["privacy"] == privacy
    assert any("answers reused" in line for line in lines)
    assert any("trained 0 teachers, reused 10" in line for line in lines)
    (answers,) = (fashion / "pate").iterdir()
    assert json.loads((answers / CHECKSUMS_FILE).read_text())  # checksummed
    assert "counts" not in (answers / "answers.safetensors").read_bytes().decode("latin-1")


@pytest.mark.e2e
def test_a_pate_student_learns_the_unanswered_public_inputs_from_its_mean_teacher(
    fashion, tmp_path
):
    changes = [*PATE, "pate.unanswered=mean_teacher", "objective.consistency={loss: kl}"]
    recipe = load_recipe(RECIPES / "fashion_mnist_pate.yaml", changes)
    lines = []
    summary = run_recipe(recipe, out_dir=tmp_path / "run", progress=False, log=lines.append)
    answered = summary["privacy"]["answered"]
    (said,) = [line for line in lines if "from its own moving average" in line]
    assert f"learns {answered:,} answers, and all 300 public inputs" in said
    # the moving average is measured beside the student; the answers' ε is unchanged
    assert set(summary["models"]) == {"teacher", "student", "ema_teacher"}
    plain = run_recipe(
        load_recipe(RECIPES / "fashion_mnist_pate.yaml", PATE),
        out_dir=tmp_path / "plain", progress=False, log=lines.append,
    )  # fmt: skip
    assert plain["privacy"] == summary["privacy"]  # the same answers, reused from the cache
    assert any("answers reused" in line for line in lines)


def test_pate_student_rows_are_the_answers_then_every_other_public_input():
    import torch
    from torch.utils.data import TensorDataset

    from distill.runs.tasks.private.rows import Answered

    public = TensorDataset(torch.arange(6.0), torch.zeros(6, dtype=torch.long))
    labels = torch.tensor([3, -1, 7, -1])  # four queries, two answered; rows 4, 5 not asked
    assert [tuple(map(int, row)) for row in Answered(public, labels)] == [(0, 3), (2, 7)]
    rows = [tuple(map(int, row)) for row in Answered(public, labels, unanswered=True)]
    assert rows == [(0, 3), (2, 7), (1, -100), (3, -100), (4, -100), (5, -100)]


def test_pate_data_split_keeps_public_rows_out_of_every_partition(fashion):
    recipe = load_recipe(RECIPES / "fashion_mnist_pate.yaml", PATE)
    data = prepare_data(recipe)
    public = set(data.public.indices)
    private = set(data.teacher_train.indices)
    assert len(public) == 300 and not public & private
    assert data.public.dataset is data.teacher_train.dataset


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("pate.teachers=5000", "pate.teachers 5,000 is more than the 1,050 private rows"),
        ("pate.public=5000", "pate.public 5,000 leaves no private rows"),
    ],
)
def test_pate_partitions_larger_than_the_data_fail_before_training(
    fashion, tmp_path, change, message
):
    recipe = load_recipe(RECIPES / "fashion_mnist_pate.yaml", [*PATE, change])
    with pytest.raises(RecipeError, match=message):
        run_recipe(recipe, out_dir=tmp_path / "run", progress=False, log=lambda line: None)
    assert not (fashion / "teachers").exists()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ("pate.sigma=0", "pate.sigma"),
        ("pate.sigma=-1", "pate.sigma"),
        ("pate.delta=0", "pate.delta"),
        ("pate.delta=1", "pate.delta"),
        ("pate.sigma_threshold=null", "both threshold and sigma_threshold"),
        ("teacher.train.select_metric=accuracy", "teacher.train.select_metric"),
        ("train.select_metric=accuracy", r"`train.select_metric` does not combine with `pate`"),
        ("pate.threshold=300", "threshold 300 exceeds the 250 teachers"),
        ("pate.queries=20000", "queries 20000 exceeds the public pool"),
        ("data.labeled=2000", "`pate` does not combine with `data.labeled`"),
        ("objective.kd={loss: kl}", "`objective.kd` does not combine with `pate`"),
        ("pate.unanswered=mean_teacher", "pate.unanswered: mean_teacher: no objective term"),
        ("pate.unanswered=everything", "pate.unanswered"),
        ("pate.ema_momentum=2", "pate.ema_momentum"),
    ],
)
def test_bad_pate_settings_are_one_line_errors_naming_the_field(change, field):
    with pytest.raises(RecipeError, match=field) as error:
        load_recipe(RECIPES / "fashion_mnist_pate.yaml", [change])
    assert len(str(error.value).strip().splitlines()) <= 2  # the file, then the field


@pytest.mark.e2e
def test_doctor_checks_the_shift_between_synthetic_and_test_inputs(fashion, tmp_path):
    recipe = load_recipe(RECIPES / "fashion_mnist_data_free.yaml", DATA_FREE)
    result = diagnose(
        recipe, tmp_path / "doctor", sample=64, probe_steps=5, progress=False,
        log=lambda line: None,
    )  # fmt: skip
    shift = next(f for f in result["findings"] if f["check"] == "data_shift")
    assert 0.5 <= shift["measurements"]["domain_auc"] <= 1.0
    assert "the student's 64 synthetic inputs" in (tmp_path / "doctor" / "doctor.md").read_text()
    rows = prepare_data(recipe)
    assert not isinstance(rows.student_train, Mixed)  # prepared data: real rows until then
