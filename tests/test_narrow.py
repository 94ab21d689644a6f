"""Minitron-style width pruning (``models.narrow``): each axis keeps the units its
calibration activations rank highest, weights included, and the narrower model is the
original with the dropped units' contributions removed where that is exact (MLP neurons,
attention heads); hidden channels keep the embeddings tied and survive a save and load."""

import pytest
import torch
import transformers

from distill.models.narrow import narrow_heads, narrow_hidden, narrow_mlps, narrowed
from tests import text_models

VOCAB = 50


def tiny_llama(**config):
    return text_models.tiny_llama(0, VOCAB, tie_word_embeddings=True, **config).eval()


def calibration():
    return {"input_ids": torch.randint(VOCAB, (4, 12), generator=torch.Generator().manual_seed(1))}


IDS = torch.randint(VOCAB, (2, 10), generator=torch.Generator().manual_seed(2))


def captured_inputs(model, module_of, batch):
    """The input of ``module_of(layer)`` in every layer, on ``batch``."""
    seen = []
    handles = [
        module_of(layer).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        for layer in model.model.layers
    ]
    with torch.no_grad():
        model(**batch)
    for handle in handles:
        handle.remove()
    return seen


def test_mlp_width_keeps_the_most_active_neurons():
    model, reference = tiny_llama(), tiny_llama()
    entering = captured_inputs(reference, lambda layer: layer.mlp.down_proj, calibration())
    narrow_mlps(model, 0.5, calibration())
    assert model.config.intermediate_size == 32
    for layer, original, seen in zip(
        model.model.layers, reference.model.layers, entering, strict=True
    ):
        expected = seen.abs().flatten(0, -2).mean(0).topk(32).indices.sort().values
        assert torch.equal(layer.mlp.up_proj.weight, original.mlp.up_proj.weight[expected])
        dropped = sorted(set(range(64)) - set(expected.tolist()))
        with torch.no_grad():
            original.mlp.down_proj.weight[:, dropped] = 0
    with torch.no_grad():  # zeroing the dropped neurons' outputs changes nothing more
        assert torch.allclose(model(IDS).logits, reference(IDS).logits, atol=1e-5)
    with pytest.raises(ValueError, match="share of the MLP neurons"):
        narrow_mlps(model, 1.5, calibration())


def test_heads_keep_the_strongest_query_heads_of_each_key_value_group():
    """4 query heads in 2 key/value groups; keeping half leaves the stronger head of each
    group, and the model equals the original with the other heads' outputs zeroed."""
    model, reference = tiny_llama(), tiny_llama()
    heads, head_dim = 4, 8
    entering = captured_inputs(reference, lambda layer: layer.self_attn.o_proj, calibration())
    narrow_heads(model, 0.5, calibration())
    assert model.config.num_attention_heads == 2 and model.config.num_key_value_heads == 2
    for layer, original, seen in zip(
        model.model.layers, reference.model.layers, entering, strict=True
    ):
        norms = seen.unflatten(-1, (heads, head_dim)).norm(dim=-1).flatten(0, -2).mean(0)
        kept = [int(norms[0:2].argmax()), 2 + int(norms[2:4].argmax())]  # one per group
        assert layer.self_attn.q_proj.out_features == 16
        assert layer.self_attn.num_key_value_groups == 1
        rows = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in kept])
        assert torch.equal(layer.self_attn.q_proj.weight, original.self_attn.q_proj.weight[rows])
        dropped = sorted(set(range(32)) - set(rows.tolist()))
        with torch.no_grad():
            original.self_attn.o_proj.weight[:, dropped] = 0
    with torch.no_grad():
        assert torch.allclose(model(IDS).logits, reference(IDS).logits, atol=1e-5)


def test_hidden_channels_leave_every_matrix_keep_the_tie_and_reload(tmp_path):
    model, reference = tiny_llama(), tiny_llama()
    norms = [n for layer in reference.model.layers
             for n in (layer.input_layernorm, layer.post_attention_layernorm)]  # fmt: skip
    norms.append(reference.model.norm)
    outputs = []
    handles = [n.register_forward_hook(lambda _m, _a, out: outputs.append(out)) for n in norms]
    with torch.no_grad():
        reference(**calibration())
    for handle in handles:
        handle.remove()
    score = sum(out.abs().flatten(0, -2).mean(0) for out in outputs)
    expected = score.topk(16).indices.sort().values
    narrow_hidden(model, 0.5, calibration())
    assert model.config.hidden_size == 16 and model.config.head_dim == 8
    embed = model.model.embed_tokens.weight
    assert torch.equal(embed, reference.model.embed_tokens.weight[:, expected])
    assert model.lm_head.weight is embed  # still tied
    attention = model.model.layers[0].self_attn
    assert attention.q_proj.in_features == 16 and attention.o_proj.out_features == 16
    assert attention.q_proj.out_features == 32  # the heads are untouched
    assert model.model.layers[1].mlp.down_proj.out_features == 16
    with torch.no_grad():
        logits = model(IDS).logits
    assert logits.shape == (2, 10, VOCAB) and torch.isfinite(logits).all()
    model.save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(again(IDS).logits, logits, atol=1e-5)
    with torch.no_grad():  # keeping every channel keeps the model
        full = narrow_hidden(tiny_llama(), 1.0, calibration())(IDS).logits
        assert torch.allclose(full, reference(IDS).logits, atol=1e-5)


def test_other_blocks_are_refused_by_name():
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2)
    gpt2 = transformers.GPT2LMHeadModel(config)
    for narrow in (narrow_mlps, narrow_heads, narrow_hidden):
        with pytest.raises(ValueError, match="Llama-style"):
            narrow(gpt2, 0.5, calibration())


def test_narrowed_applies_the_axes_in_order_and_names_the_one_that_fails():
    model = narrowed(tiny_llama(), calibration(), width=0.5, heads=0.5, hidden=0.75)
    config = model.config
    assert (config.intermediate_size, config.num_attention_heads, config.hidden_size) == (32, 2, 24)
    with torch.no_grad():
        assert model(IDS).logits.shape == (2, 10, VOCAB)
    with pytest.raises(ValueError, match=r"^heads: heads \(the share"):
        narrowed(tiny_llama(), calibration(), heads=1.5)
