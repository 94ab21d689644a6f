"""Caption templates, captioned images and CLIP's learned-scale contrastive training."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import distill
from distill import Objective, Term
from distill.data.captions import CaptionedImages, class_captions, class_prompts
from distill.methods.clip import LearnedScaleContrastive
from distill.models.clip import ZeroShotClassifier

from .models import mlp


def test_templates_write_each_caption_once_per_class():
    captions, classes = class_captions(
        ["Cat", "Dog"], [["a small pet", "a furry animal"], ["a loyal pet"]],
        ["a photo of a {name}", "{description}", "a {name}: {description}"],
    )  # fmt: skip
    assert captions[:5] == [
        "a photo of a cat", "a small pet", "a furry animal",
        "a cat: a small pet", "a cat: a furry animal",
    ]  # fmt: skip
    assert classes == [0] * 5 + [1] * 3
    with pytest.raises(ValueError, match="2 class names but 1"):
        class_captions(["Cat", "Dog"], [["x"]], ["{name}"])


def test_each_image_keeps_one_caption_of_its_own_class():
    images = TensorDataset(torch.randn(40, 3), torch.arange(40) % 2)
    embeddings = torch.eye(4)
    captioned = CaptionedImages(images, embeddings, [0, 0, 1, 1], seed=3)
    again = CaptionedImages(images, embeddings, [0, 0, 1, 1], seed=3)
    for i in range(40):
        _, label, meta = captioned[i]
        index = int(meta["text"].argmax())
        assert [0, 0, 1, 1][index] == int(label)
        assert torch.equal(meta["text"], again[i][2]["text"])  # fixed per image
    assert len({int(captioned[i][2]["text"].argmax()) for i in range(0, 40, 2)}) == 2
    with pytest.raises(ValueError, match="class 1 has no caption"):
        CaptionedImages(images, embeddings[:2], [0, 0])


def test_class_prompts_are_the_mean_of_each_class_prompt():
    def embed(texts):
        return torch.tensor([[float(len(t)), 1.0] for t in texts])

    prompts = class_prompts(embed, ["a", "bb"], [["x"], ["y"]], ["{name}", "{name}{description}"])
    assert prompts.shape == (2, 2)


def test_a_contrastive_image_tower_learns_its_captions_and_its_scale():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=g)
    labels = torch.arange(400) % 4
    images = TensorDataset(centres[labels] + 0.3 * torch.randn(400, 8, generator=g), labels)
    texts = torch.nn.functional.normalize(torch.randn(4, 6, generator=g), dim=-1)
    data = CaptionedImages(images, texts, [0, 1, 2, 3])
    torch.manual_seed(0)
    model = ZeroShotClassifier(mlp(8, 16, 6), texts, logit_scale=10.0)
    loss = LearnedScaleContrastive(initial_scale=10.0)
    distill.Distiller(
        model, None, Objective(clip=Term(loss, student="encoder")), lr=1e-2, progress=False,
        select_metric=None,
    ).fit(DataLoader(data, batch_size=50, shuffle=True), epochs=8)  # fmt: skip
    accuracy = distill.Distiller(model, progress=False).evaluate(DataLoader(images, 100))
    assert accuracy["accuracy"] > 0.9  # zero-shot through the captions' embeddings
    assert loss.scale != pytest.approx(10.0)  # the scale was trained too


def test_unpaired_texts_come_from_every_class():
    images = TensorDataset(torch.randn(200, 3), torch.zeros(200, dtype=torch.long))
    unpaired = CaptionedImages(images, torch.eye(4), [0, 1, 2, 3], paired=False)
    assert {int(unpaired[i][2]["text"].argmax()) for i in range(200)} == {0, 1, 2, 3}
