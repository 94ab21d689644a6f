"""Ensembles of teachers (mean, weighted, confidence, routing), the EMA teacher, and the
DINO / BYOL self-distillation losses."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import distill
from distill import Objective, Term, losses, teachers
from distill.batch import as_batch
from distill.losses.selfsup import DINOCenter, byol, dino


def linear(seed: int, d_in: int = 6, d_out: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 8), nn.ReLU(), nn.Linear(8, d_out))


def test_mean_and_weighted_ensembles_mix_probabilities_at_the_temperature():
    members = [linear(0), linear(1), linear(2)]
    x = torch.randn(5, 6)
    with torch.no_grad():
        probs = [torch.softmax(m(x) / 2.0, -1) for m in members]
    mean = teachers.Ensemble(members, temperature=2.0)(as_batch(x)).logits
    torch.testing.assert_close(torch.softmax(mean / 2.0, -1), sum(probs) / 3)
    weighted = teachers.Ensemble(members, "weighted", weights=[2, 1, 1], temperature=2.0)
    expected = 0.5 * probs[0] + 0.25 * probs[1] + 0.25 * probs[2]
    torch.testing.assert_close(torch.softmax(weighted(as_batch(x)).logits / 2.0, -1), expected)


def test_confidence_weighting_favours_the_surer_teacher_per_example():
    sure, unsure = nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)
    sure.weight.data = 5 * torch.eye(3)
    unsure.weight.data = 0.1 * torch.eye(3).flip(0)
    x = torch.eye(3)
    out = teachers.Ensemble([sure, unsure], "confidence")(as_batch(x)).logits
    p = [torch.softmax(x @ m.weight.T, -1) for m in (sure, unsure)]
    h = torch.stack([-(q * q.log()).sum(-1) for q in p])
    w = torch.softmax(-h, 0)
    torch.testing.assert_close(torch.softmax(out, -1), w[0, :, None] * p[0] + w[1, :, None] * p[1])
    assert (w[0] > w[1]).all()


def test_routing_sends_each_example_to_its_teacher_only():
    members = {"a": linear(0), "b": linear(1)}
    seen = {name: [] for name in members}
    for name, m in members.items():
        m[0].register_forward_hook(lambda mod, inp, out, name=name: seen[name].append(inp[0]))
    x = torch.randn(6, 6)
    domain = torch.tensor([0, 1, 1, 0, 1, 0])
    out = teachers.Ensemble(members, "route")(as_batch({"input": x, "domain": domain}))
    torch.testing.assert_close(seen["a"][0], x[domain == 0])
    torch.testing.assert_close(seen["b"][0], x[domain == 1])
    with torch.no_grad():
        torch.testing.assert_close(out.logits[domain == 1], members["b"](x[domain == 1]))
    with pytest.raises(ValueError, match="needs a 'domain' entry"):
        teachers.Ensemble(members, "route")(as_batch(x))
    with pytest.raises(ValueError, match=r"domain values must lie in 0\.\.1"):
        teachers.Ensemble(members, "route")(as_batch({"input": x, "domain": domain + 1}))


def test_ensemble_features_come_back_per_member_and_a_student_learns():
    members = {"wide": linear(0), "other": linear(1)}
    ensemble = teachers.Ensemble(members, temperature=2.0)
    x = torch.randn(64, 6)
    student = linear(5)
    objective = Objective(
        kd=Term(losses.kl, temperature=2.0),
        hint=Term(losses.hint, weight=0.1, student="1", teacher="wide/1"),
    )
    history = []

    class Record(distill.Callback):
        def on_step_end(self, distiller, step, logs):
            history.append(logs["loss/kd"])

    distill.Distiller(
        student, ensemble, objective, lr=1e-2, progress=False, select_metric=None,
        callbacks=[Record()],
    ).fit(DataLoader(TensorDataset(x), batch_size=16), max_steps=40)  # fmt: skip
    assert sum(history[-4:]) < 0.5 * sum(history[:4])
    with pytest.raises(KeyError, match="'<member>/<module path>'"):
        ensemble.add_taps(["missing/1"])


def test_ema_momentum_schedule_and_update():
    assert teachers.ema_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert teachers.ema_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert teachers.ema_momentum(100, 100, 0.996) == pytest.approx(1.0)
    student = linear(0)
    ema = teachers.EMA(student, momentum=0.9, final_momentum=0.9)
    before = [p.clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema.after_step(1, 10)
    for old, new, s in zip(before, ema.model.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * s)
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_an_ema_teacher_follows_the_student_in_training():
    student = linear(0)
    ema = teachers.EMA(student, momentum=0.5)
    start = [p.clone() for p in ema.model.parameters()]
    x, y = torch.randn(64, 6), torch.randint(0, 4, (64,))
    objective = Objective(ce=Term(losses.cross_entropy), kd=Term(losses.kl, temperature=2.0))
    distill.Distiller(student, ema, objective, lr=1e-2, progress=False, select_metric=None).fit(
        DataLoader(TensorDataset(x, y), batch_size=16), max_steps=8
    )
    moved = sum(
        float((a - b).abs().sum()) for a, b in zip(start, ema.model.parameters(), strict=True)
    )
    gap = sum(
        float((a - b).detach().abs().sum())
        for a, b in zip(ema.model.parameters(), student.parameters(), strict=True)
    )
    assert moved > 0 and gap < moved  # it moved, and it is closer to the student than it was


def test_byol_is_two_minus_twice_the_cosine():
    s, t = torch.randn(5, 8), torch.randn(5, 8)
    expected = (2 - 2 * torch.nn.functional.cosine_similarity(s, t)).mean()
    torch.testing.assert_close(byol(s, t), expected)
    assert float(byol(t, t)) == pytest.approx(0.0, abs=1e-6)
    # two views: each student view against the other teacher view
    s2, t2 = torch.randn(5, 8), torch.randn(5, 8)
    torch.testing.assert_close(byol([s, s2], [t, t2]), (byol(s, t2) + byol(s2, t)) / 2)


def test_dino_centering_keeps_the_teachers_mean_output_near_uniform():
    """Without labels: a student and its EMA teacher on random inputs. The centre, a running
    mean of the teacher's outputs, is subtracted before sharpening, so no output dimension
    takes over the teacher's average distribution."""
    dim = 16
    student = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, dim))
    with torch.no_grad():
        student[2].bias[0] = 5.0  # start with one dimension far ahead
    ema = teachers.EMA(student, momentum=0.9)
    loss = DINOCenter(dim, momentum=0.9)
    x = torch.randn(512, 10)
    distill.Distiller(
        student, ema, Objective(dino=Term(loss)), lr=1e-3, progress=False, select_metric=None
    ).fit(DataLoader(TensorDataset(x), batch_size=64, shuffle=True), max_steps=80)
    with torch.no_grad():
        logits = ema.model(x)
    centred = torch.softmax((logits - loss.center) / loss.teacher_temperature, -1).mean(0)
    uncentred = torch.softmax(logits / loss.teacher_temperature, -1).mean(0)
    entropy = float(-(centred * centred.log()).sum())
    assert entropy > 0.8 * math.log(dim)
    assert float(uncentred.max()) > 2 * float(centred.max())  # the centre is what does it
    assert float(dino(logits, logits, center=loss.center)) > 0


def test_mutual_learning_loss_matches_its_formula():
    z = torch.randn(3, 5, 4)
    y = torch.randint(0, 4, (5,))
    value = losses.mutual_learning(z, y, temperature=2.0, kd_weight=0.5)
    expected = 0.0
    for k in range(3):
        expected += losses.cross_entropy(z[k], y)
        others = [j for j in range(3) if j != k]
        expected += 0.5 * sum(losses.kl(z[k], z[j], temperature=2.0) for j in others) / 2
    torch.testing.assert_close(value, expected)


def test_mutual_learning_updates_every_peer_and_they_agree_more(digits):
    train, test = digits
    flat = TensorDataset(train.tensors[0].flatten(1), train.tensors[1])
    x_test = test.tensors[0].flatten(1)

    def peer(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))

    def fit(student, objective):
        distill.Distiller(
            student, None, objective, lr=3e-3, progress=False, select_metric=None
        ).fit(DataLoader(flat, batch_size=64, shuffle=True), epochs=6)

    cohort = distill.Cohort([peer(1), peer(2)])
    before = [p.clone() for p in cohort.parameters()]
    fit(cohort, distill.mutual_objective(temperature=2.0))
    changed = [not torch.equal(a, b) for a, b in zip(before, cohort.parameters(), strict=True)]
    assert all(changed)  # every weight of both peers moved
    alone = [peer(1), peer(2)]
    for model in alone:
        fit(model, Objective(ce=Term(losses.cross_entropy)))

    def disagreement(a, b):
        with torch.no_grad():
            return float(losses.kl(a(x_test), b(x_test), temperature=2.0))

    assert disagreement(*cohort.peers) < 0.7 * disagreement(*alone)
    with pytest.raises(ValueError, match="at least 2 peers"):
        distill.Cohort([peer(0)])


TINY_RUN = [
    "train.epochs=1",
    "train.max_steps=6",
    "output.latency_repeats=2",
]
TINY_TEACHER = ["teacher.train.epochs=1", "teacher.train.max_steps=6"]
ROOT = __import__("pathlib").Path(__file__).parents[1]


def run_shipped(name, overrides, tmp_path):
    from distill.recipes import load_recipe
    from distill.runs import run_recipe

    recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml", overrides)
    return run_recipe(recipe, out_dir=tmp_path / name, progress=False, log=lambda m: None)


@pytest.mark.e2e
def test_teacher_assistant_chain_runs_end_to_end(tmp_path):
    summary = run_shipped("mnist1d_takd", TINY_RUN + TINY_TEACHER, tmp_path)
    assert list(summary["models"]) == ["teacher", "baseline", "assistant", "student"]
    assert (tmp_path / "mnist1d_takd" / "assistant" / "student.safetensors").exists()
    sizes = {k: m["parameters"] for k, m in summary["models"].items()}
    assert sizes["teacher"] > sizes["assistant"] > sizes["student"] == sizes["baseline"]
    report = (tmp_path / "mnist1d_takd" / "report.md").read_text()
    assert "| assistant |" in report


@pytest.mark.e2e
def test_born_again_generations_each_teach_the_next(tmp_path):
    summary = run_shipped(
        "mnist1d_born_again", [*TINY_RUN, *TINY_TEACHER, "generations=3"], tmp_path
    )
    assert [k for k in summary["models"] if k.startswith("generation")] == [
        "generation_1",
        "generation_2",
    ]
    assert (tmp_path / "mnist1d_born_again" / "generation_2" / "student.safetensors").exists()


@pytest.mark.e2e
def test_mutual_learning_recipe_saves_and_reports_every_peer(tmp_path):
    summary = run_shipped("mnist1d_mutual", [*TINY_RUN, "peers=3"], tmp_path)
    models = summary["models"]
    assert {"student", "peer_1", "peer_2", "baseline"} <= set(models) and "teacher" not in models
    for k in range(3):
        assert (tmp_path / "mnist1d_mutual" / "peers" / f"peer_{k}.safetensors").exists()
    assert 0 < models["student"]["cohort_accuracy"] <= 1


def test_mutual_learning_needs_peers_and_its_term_together():
    from distill.recipes import RecipeError, load_recipe

    with pytest.raises(RecipeError, match="mutual learning needs peers >= 2"):
        load_recipe(ROOT / "recipes" / "mnist1d_mutual.yaml", ["peers=1"])
    with pytest.raises(RecipeError, match="does not combine"):
        load_recipe(ROOT / "recipes" / "mnist1d_mutual.yaml", ["generations=2"])


def test_ensemble_model_equals_the_ensemble_teacher():
    members = [linear(0), linear(1)]
    x = torch.randn(7, 6)
    for combine in ("mean", "confidence"):
        model = teachers.EnsembleModel(members, combine, temperature=3.0)
        with torch.no_grad():
            expected = teachers.Ensemble(members, combine, temperature=3.0)(as_batch(x)).logits
            torch.testing.assert_close(model(x), expected)


@pytest.mark.e2e
def test_ensemble_recipe_trains_and_caches_each_member(isolated_cache, tmp_path):
    from distill.recipes import RecipeError, load_recipe, validate_recipe

    recipe = load_recipe(ROOT / "recipes" / "mnist1d_ensemble.yaml", [*TINY_RUN])
    raw_members = [m.model_copy(update={"train": m.train.model_copy(update={"max_steps": 6})})
                   for m in recipe.teacher.members]  # fmt: skip
    recipe = recipe.model_copy(
        update={"teacher": recipe.teacher.model_copy(update={"members": raw_members})}
    )
    from distill.runs import run_recipe

    summary = run_recipe(recipe, out_dir=tmp_path / "ens", progress=False, log=lambda m: None)
    teacher = summary["models"]["teacher"]
    assert teacher["parameters"] > summary["models"]["student"]["parameters"]
    cached = sorted(p.name for p in (isolated_cache / "teachers").iterdir())
    assert len(cached) == 2 and all(name.startswith("zoo_cnn-") for name in cached)
    with pytest.raises(RecipeError, match="give members exactly when model is ensemble"):
        validate_recipe({**recipe.model_dump(mode="json"), "teacher": {"model": "ensemble"}})


@pytest.mark.e2e
def test_mean_teacher_recipe_reports_its_ema_teacher(tmp_path):
    summary = run_shipped("mnist1d_mean_teacher", TINY_RUN, tmp_path)
    assert "teacher" not in summary["models"] and "ema_teacher" in summary["models"]
    assert 0 < summary["models"]["ema_teacher"]["accuracy"] <= 1


def test_resume_restores_the_ema_teacher(tmp_path):
    import signal

    x, y = torch.randn(96, 6), torch.randint(0, 4, (96,))
    data = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)

    class CtrlC(distill.Callback):
        def on_step_end(self, distiller, step, logs):
            if step == 4:
                signal.raise_signal(signal.SIGINT)

    def run(run_dir, callbacks=()):
        student = linear(3)
        objective = Objective(ce=Term(losses.cross_entropy), kd=Term(losses.kl, temperature=2.0))
        distiller = distill.Distiller(
            student, teachers.EMA(student, momentum=0.8), objective, lr=1e-2, seed=0,
            progress=False, select_metric=None, run_dir=run_dir, callbacks=callbacks,
        )  # fmt: skip
        return distiller

    full = run(tmp_path / "full")
    full.fit(data, epochs=2)
    cut = run(tmp_path / "cut", [CtrlC()])
    with pytest.raises(KeyboardInterrupt):
        cut.fit(data, epochs=2)
    resumed = run(tmp_path / "cut")
    resumed.fit(data, epochs=2, resume=True)
    for a, b in zip(
        full.teacher.model.parameters(), resumed.teacher.model.parameters(), strict=True
    ):
        assert torch.equal(a, b)
    for a, b in zip(full.student.parameters(), resumed.student.parameters(), strict=True):
        assert torch.equal(a, b)


def test_routed_ensemble_model_answers_each_example_with_its_domains_member():
    members = [linear(0), linear(1)]
    x, domain = torch.randn(7, 6), torch.tensor([1, 0, 0, 1, 1, 0, 1])
    model = teachers.EnsembleModel(members, "route")
    batch = as_batch((x, torch.zeros(7, dtype=torch.long), {"domain": domain}))
    with torch.no_grad():
        out = batch.run(model)  # Batch.run hands the batch's domains to the forward
        expected = teachers.Ensemble(members, "route")(batch).logits
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(out[domain == 0], members[0](x[domain == 0]))
    with pytest.raises(ValueError, match="needs domain="):
        model(x)
    with pytest.raises(TypeError, match="metadata"):
        as_batch((x, torch.zeros(7), {"colour": domain}))


class TopKAnswers(teachers.Teacher):
    """A stand-in for a cached or served member: the top-k of a fixed linear map, counting
    the examples it is asked about."""

    def __init__(self, seed: int, temperature: float = 1.0) -> None:
        self.model, self.temperature, self.asked = linear(seed), temperature, 0

    def __call__(self, batch, logits=True):
        from distill.outputs import TeacherOutput, topk_of

        self.asked += batch.size()
        return TeacherOutput(None, topk=topk_of(batch.run(self.model), 2, self.temperature))


def test_a_routed_ensemble_of_top_k_members_answers_each_row_with_its_members_top_k():
    """Cached or served members answer a top-k: routed, each runs once on its own rows and
    the rows' ids, log-probabilities and tails are assembled; members that answer at other
    temperatures, or some with logits, are refused."""
    from distill.outputs import topk_of

    members = [TopKAnswers(0), TopKAnswers(1)]
    x, domain = torch.randn(7, 6), torch.tensor([1, 0, 0, 1, 1, 0, 1])
    batch = as_batch((x, torch.zeros(7, dtype=torch.long), {"domain": domain}))
    with torch.no_grad():
        read = teachers.Ensemble(members, "route")(batch).topk
        assert [m.asked for m in members] == [3, 4]
        for n, index in enumerate(domain.tolist()):
            alone = topk_of(members[index].model(x[n : n + 1]), 2)
            assert torch.equal(read.ids[n], alone.ids[0])
            torch.testing.assert_close(read.logprobs[n], alone.logprobs[0])
            torch.testing.assert_close(read.tail[n], alone.tail[0])
        for other in (TopKAnswers(1, temperature=2.0), linear(1)):
            with pytest.raises(ValueError, match="must answer alike"):
                teachers.Ensemble([members[0], other], "route")(batch)


def test_domains_follow_examples_through_splits_and_hidden_labels():
    from distill.data import WithDomain, class_to_domain, domain_subset, labeled_split

    assert class_to_domain({"a": [0, 2], "b": [1]}, 3) == [0, 1, 0]
    for bad, message in [
        ({"a": [0], "b": [0, 1, 2]}, "class 0 is in both a and b"),
        ({"a": [0, 1]}, r"classes \[2\] are in no domain"),
        ({"a": [0, 1, 2, 3]}, "class 3 is not among the 3 classes"),
    ]:
        with pytest.raises(ValueError, match=message):
            class_to_domain(bad, 3)
    y = torch.arange(30) % 3
    data = WithDomain(TensorDataset(torch.randn(30, 2), y), [0, 1, 0])
    _, _, transfer = labeled_split(data, 6, 0.5, seed=0)
    for i in range(len(transfer)):
        meta = transfer[i][2]
        original = transfer.dataset.dataset[transfer.dataset.indices[i]][1]
        assert meta["domain"] == [0, 1, 0][int(original)]
    hidden = [transfer[i] for i in range(len(transfer)) if transfer[i][1] == -100]
    assert hidden, "the transfer set hides most labels, the domain stays"
    ones = domain_subset(data, 1)
    assert len(ones) == 10 and all(data[i][1] == 1 for i in ones.indices)


@pytest.mark.e2e
def test_routed_recipe_trains_each_member_on_its_domain_only(tmp_path, isolated_cache):
    """What is trained is the point: a store of its own (another test may have trained
    the same members already)."""
    from distill.recipes import RecipeError, load_recipe, validate_recipe
    from distill.runs import run_recipe

    recipe = load_recipe(ROOT / "recipes" / "mnist1d_routed.yaml", [*TINY_RUN])
    members = [m.model_copy(update={"train": m.train.model_copy(update={"max_steps": 6})})
               for m in reversed(recipe.teacher.members)]  # fmt: skip
    recipe = recipe.model_copy(
        update={"teacher": recipe.teacher.model_copy(update={"members": members})}
    )
    lines: list[str] = []
    summary = run_recipe(recipe, out_dir=tmp_path / "routed", progress=False, log=lines.append)
    trained = [line for line in lines if line.startswith("training the teacher")]
    assert [line.split()[-1] for line in trained] == ["low", "high"]  # domain order, not listed
    counts = [int(line.split(" on ")[1].split()[0].replace(",", "")) for line in trained]
    assert sum(counts) == 3600 and min(counts) > 1500  # the 3,600 training labels, split
    assert 0.1 < summary["models"]["teacher"]["accuracy"] <= 1
    assert summary["models"]["teacher"]["latency_ms"] > 0
    for overrides, message in [
        (["data.domains=null"], "combine: route needs data.domains"),
        (["data.domains={low: [0, 1, 2, 3, 4], mid: [5, 6], high: [7, 8, 9]}"], "no member"),
    ]:
        with pytest.raises(RecipeError, match=message):
            load_recipe(ROOT / "recipes" / "mnist1d_routed.yaml", overrides)
    raw = recipe.model_dump(mode="json")
    for combine, domains, message in [
        ("mean", ["middle", "high"], r"members\[0\].domain 'middle' is not one of data.domains"),
        ("route", ["low", "low"], "a different domain on every member"),
    ]:
        raw["teacher"]["combine"] = combine
        for member, domain in zip(raw["teacher"]["members"], domains, strict=True):
            member["domain"] = domain
        with pytest.raises(RecipeError, match=message):
            validate_recipe(raw)


def test_random_crops_keep_the_input_size_and_a_full_crop_is_the_input():
    from distill.data.views import MultiCrop, random_crop_resized

    image, signal = torch.rand(1, 12, 12), torch.rand(1, 40)
    torch.testing.assert_close(random_crop_resized(image, (1.0, 1.0)), image)
    torch.testing.assert_close(random_crop_resized(signal, (1.0, 1.0)), signal)
    assert random_crop_resized(image, (0.1, 0.2)).shape == image.shape
    assert not torch.equal(random_crop_resized(signal, (0.2, 0.3)), signal)
    item = MultiCrop(TensorDataset(torch.rand(3, 1, 12, 12), torch.arange(3)), 2, 3)[1]
    assert item["views"].shape == (5, 1, 12, 12) and int(item["labels"]) == 1
    with pytest.raises(ValueError, match="crop scale"):
        random_crop_resized(image, (0.0, 0.5))


def small_cnn(seed: int, out_dim: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, out_dim),
    )  # fmt: skip


def test_multi_view_student_sees_every_view_and_its_teacher_the_global_ones():
    from distill.methods.dino import MultiView

    model = MultiView(small_cnn(0, 5), global_views=2)
    views = torch.rand(4, 6, 1, 8, 8)
    out = model(views=views)
    assert out.shape == (6, 4, 5)
    torch.testing.assert_close(out[3], model.model(views[:, 3]))
    assert model.eval()(views=views).shape == (2, 4, 5)
    torch.testing.assert_close(model(views[:, 0]), model.model(views[:, 0]))


def dino_run(digits, run_dir=None, callbacks=(), steps=60, resume=None):
    from distill.data.views import MultiCrop
    from distill.methods.dino import MultiView, dino_objective

    torch.manual_seed(0)
    train, _ = digits
    crops = MultiCrop(train, global_views=2, local_views=2, local_scale=(0.2, 0.5))
    student = MultiView(small_cnn(0, 16), global_views=2)
    objective = dino_objective(out_dim=16, global_views=2)
    distiller = distill.Distiller(
        student, teachers.EMA(student, momentum=0.9), objective, lr=2e-3, seed=0,
        progress=False, select_metric=None, run_dir=run_dir, callbacks=callbacks,
        checkpoint_every=2,
    )  # fmt: skip
    distiller.fit(DataLoader(crops, batch_size=64, shuffle=True), max_steps=steps, resume=resume)
    return distiller, objective.terms["dino"].loss


class Logs(distill.Callback):
    def __init__(self):
        self.rows = []

    def on_step_end(self, distiller, step, logs):
        self.rows.append(dict(logs))


def test_dino_with_multi_crop_trains_through_the_engine_without_collapse(digits):
    logs = Logs()
    distiller, dino_loss = dino_run(digits, callbacks=[logs])
    x = digits[1].tensors[0]
    with torch.no_grad():
        teacher = distiller.teacher.model.eval()(x)
    target = torch.softmax((teacher - dino_loss.center) / dino_loss.teacher_temperature, -1)
    mean = target.mean(0)
    assert float(-(mean * mean.log()).sum()) > 0.6 * math.log(16)  # centring: no dimension wins
    assert target.argmax(-1).unique().numel() >= 4  # sharpening: examples are told apart
    assert float(dino_loss.center.abs().sum()) > 0
    values = [row["loss/dino"] for row in logs.rows]
    assert len(values) == 60 and all(math.isfinite(v) for v in values)


def test_resume_restores_the_dino_centre(digits, tmp_path):
    import signal

    class CtrlC(distill.Callback):
        def on_step_end(self, distiller, step, logs):
            if step == 5:
                signal.raise_signal(signal.SIGINT)

    full, full_loss = dino_run(digits, tmp_path / "full", steps=10)
    with pytest.raises(KeyboardInterrupt):
        dino_run(digits, tmp_path / "cut", [CtrlC()], steps=10)
    saved = sorted((tmp_path / "cut" / "checkpoints").glob("step_*"))[-1]
    assert (saved / "loss_state.safetensors").exists()
    resumed, resumed_loss = dino_run(digits, tmp_path / "cut", steps=10, resume=True)
    assert torch.equal(full_loss.center, resumed_loss.center)
    for a, b in zip(full.student.parameters(), resumed.student.parameters(), strict=True):
        assert torch.equal(a, b)
