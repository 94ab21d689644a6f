"""The CLIP distillation losses against float64 references written out element by element."""

import math

import pytest
import torch

from distill.losses import clip_affinity, clip_contrastive, clip_embedding, clip_relational


def embeddings(n=5, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(3)]


def unit(v):
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def similarities(images, texts, scale):
    a = [unit(r.tolist()) for r in images]
    b = [unit(r.tolist()) for r in texts]
    return [[scale * sum(x * y for x, y in zip(i, t, strict=True)) for t in b] for i in a]


def log_softmax(row):
    top = max(row)
    log_z = top + math.log(sum(math.exp(x - top) for x in row))
    return [x - log_z for x in row]


def transpose(m):
    return [list(col) for col in zip(*m, strict=True)]


def info_nce(s):
    rows = [-log_softmax(r)[i] for i, r in enumerate(s)]
    cols = [-log_softmax(r)[i] for i, r in enumerate(transpose(s))]
    return 0.5 * (sum(rows) / len(rows) + sum(cols) / len(cols))


def test_contrastive_is_symmetric_info_nce():
    student, _, text = embeddings()
    expected = info_nce(similarities(student, text, 20.0))
    got = clip_contrastive(student, text, logit_scale=20.0)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_embedding_cosine_and_mse_on_unit_vectors():
    student, teacher, _ = embeddings()
    cos = [sum(x * y for x, y in zip(unit(s.tolist()), unit(t.tolist()), strict=True))
           for s, t in zip(student, teacher, strict=True)]  # fmt: skip
    assert clip_embedding(student, teacher).item() == pytest.approx(
        sum(1 - c for c in cos) / len(cos), rel=1e-12
    )
    assert clip_embedding(student, teacher, kind="mse").item() == pytest.approx(
        sum(2 - 2 * c for c in cos) / len(cos), rel=1e-12
    )
    with pytest.raises(ValueError, match="kind"):
        clip_embedding(student, teacher, kind="l1")


def soft_ce(teacher_rows, student_rows):
    total = 0.0
    for t, s in zip(teacher_rows, student_rows, strict=True):
        p = [math.exp(x) for x in log_softmax(t)]
        total -= sum(pi * qi for pi, qi in zip(p, log_softmax(s), strict=True))
    return total / len(teacher_rows)


def kl_rows(teacher_rows, student_rows):
    total = 0.0
    for t, s in zip(teacher_rows, student_rows, strict=True):
        lt, ls = log_softmax(t), log_softmax(s)
        total += sum(math.exp(a) * (a - b) for a, b in zip(lt, ls, strict=True))
    return total / len(teacher_rows)


def test_relational_is_the_soft_cross_entropy_of_both_directions():
    student, teacher, text = embeddings()
    s, t = similarities(student, text, 10.0), similarities(teacher, text, 10.0)
    expected = 0.5 * (soft_ce(t, s) + soft_ce(transpose(t), transpose(s)))
    got = clip_relational(student, teacher, text, logit_scale=10.0)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_affinity_is_the_t_squared_kl_of_both_directions():
    student, teacher, text = embeddings()
    T = 2.0
    s = [[x / T for x in r] for r in similarities(student, text, 10.0)]
    t = [[x / T for x in r] for r in similarities(teacher, text, 10.0)]
    expected = T**2 * (kl_rows(t, s) + kl_rows(transpose(t), transpose(s)))
    got = clip_affinity(student, teacher, text, logit_scale=10.0, temperature=T)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_a_student_equal_to_its_teacher_gets_no_gradient_from_the_relational_losses():
    _, teacher, text = embeddings()
    for loss in (clip_relational, clip_affinity):
        student = teacher.clone().requires_grad_()
        loss(student, teacher, text, logit_scale=10.0).backward()
        assert student.grad.abs().max() < 1e-12
        # and the teacher's image embeddings are targets, not trained through the loss
        moving = teacher.clone().requires_grad_()
        assert not loss(student.detach(), moving, text, logit_scale=10.0).requires_grad


def test_widths_that_differ_name_the_projection():
    student, _, text = embeddings(d=4)
    with pytest.raises(ValueError, match="projection"):
        clip_contrastive(student, text[:, :3])
    with pytest.raises(ValueError, match="shape"):
        clip_relational(student, student[:, :3], text)


def test_contrastive_leaves_out_images_without_a_caption():
    student, _, text = embeddings(n=6)
    labels = torch.tensor([3, -100, 1, -100, 0, 2])
    kept = labels != -100
    expected = clip_contrastive(student[kept], text[kept], logit_scale=5.0)
    assert clip_contrastive(student, text, labels, logit_scale=5.0) == expected
    nothing = torch.full((6,), -100)
    assert clip_contrastive(student, text, nothing).item() == 0.0
