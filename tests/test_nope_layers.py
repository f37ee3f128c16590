"""NoPE layers (`nope_layers`): layers of a RoPE model whose attention has no positional encoding."""

from __future__ import annotations

import pytest
import torch

from olm_edu.models import ModelConfig, build, render_diff
from olm_edu.models.hf_config import to_hf_config

ROPE = ModelConfig(
    vocab_size=61, max_seq_len=32, embed_dim=32, num_layers=3, num_heads=4, hidden_dim=64, family="llama",
    norm="rmsnorm", norm_bias=False, position="rope", ffn="glu", activation="silu", ffn_bias=False,
    qkv_bias=False, attn_out_bias=False, tie_embeddings=False,
)  # fmt: skip


def test_only_the_listed_layers_lose_their_rotation():
    model = build(ROPE.replace(nope_layers=[1]))
    rotated = [layer.attn.attention.rotary is not None for layer in model.layers]
    assert rotated == [True, False, True]
    assert model.config.nope_layers == (1,)  # a list from JSON is kept as a tuple


def test_a_nope_layer_is_blind_to_the_order_of_the_earlier_tokens():
    """One causal attention layer with no positional signal sees its past as a set: reversing
    the tokens before the last one leaves the last logits unchanged. The same layer with RoPE
    does not."""
    tokens = torch.randint(0, 61, (1, 9), generator=torch.Generator().manual_seed(0))
    reversed_past = torch.cat([tokens[:, :-1].flip(1), tokens[:, -1:]], dim=1)
    one_layer = ROPE.replace(num_layers=1)
    nope, rope = build(one_layer.replace(nope_layers=(0,))).eval(), build(one_layer).eval()
    torch.manual_seed(0)
    for weight in nope.parameters():  # sharp attention, so that order would show if it counted
        weight.data.normal_(0.0, 0.5)
    rope.load_state_dict(nope.state_dict())
    torch.testing.assert_close(nope(tokens)[:, -1], nope(reversed_past)[:, -1], rtol=1e-5, atol=1e-5)
    assert (rope(tokens)[:, -1] - rope(reversed_past)[:, -1]).abs().max() > 1e-2


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(nope_layers=(3,)), r"nope_layers entry 3 must be a layer index in \[0, num_layers=3\)"),
        (dict(nope_layers=(2, 0)), "must be sorted, without repeats"),
        (dict(nope_layers=(1,), position="learned"), "nope_layers is set but position='learned'"),
    ],
)
def test_bad_nope_layers_are_refused_by_name(changes, message):
    with pytest.raises(ValueError, match=message):
        ROPE.replace(**changes)


def test_no_nope_layer_is_spelled_none():
    assert ROPE.replace(nope_layers=()) == ROPE


def test_a_family_without_nope_layers_refuses_to_write_them():
    with pytest.raises(ValueError, match="cannot express nope_layers"):
        to_hf_config(ROPE.replace(nope_layers=(1,)))


def test_render_diff_names_the_knob():
    assert "nope_layers" in render_diff(ROPE, ROPE.replace(nope_layers=(1,)))
