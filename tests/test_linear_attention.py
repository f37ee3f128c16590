"""The linear-attention mixer (olm_edu.nn.linear_attention) against transformers' torch fallbacks,
and its two computations (recurrent, chunked) against each other."""

from __future__ import annotations

import pytest
import torch

from olm_edu.nn import KVCache
from olm_edu.nn.blocks import Context
from olm_edu.nn.linear_attention import (
    GatedRMSNorm,
    LinearAttention,
    chunked_delta_rule,
    l2_normalize,
    recurrent_delta_rule,
)

qwen3_next = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")
kimi = pytest.importorskip("transformers.models.kimi_linear.modeling_kimi_linear")


def _inputs(batch=2, heads=3, length=11, key_dim=8, value_dim=6, per_channel=False, seed=0):
    """Random normalised q, k, v, log-decays in a wide range (some near 0, some strong), beta in (0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    q = l2_normalize(torch.randn(batch, heads, length, key_dim, generator=gen)) * key_dim**-0.5
    k = l2_normalize(torch.randn(batch, heads, length, key_dim, generator=gen))
    v = torch.randn(batch, heads, length, value_dim, generator=gen)
    shape = (batch, heads, length, key_dim) if per_channel else (batch, heads, length)
    g = -torch.rand(shape, generator=gen) * 3.0
    beta = torch.rand(batch, heads, length, generator=gen)
    state = torch.randn(batch, heads, key_dim, value_dim, generator=gen)
    return q, k, v, g, beta, state


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_head", "per_channel"])
@pytest.mark.parametrize("length,chunk", [(11, 4), (16, 4), (5, 8), (13, 1), (1, 4)])
def test_chunked_form_equals_recurrent_form(per_channel, length, chunk):
    q, k, v, g, beta, state = _inputs(length=length, per_channel=per_channel)
    for initial in (None, state):
        out_r, state_r = recurrent_delta_rule(q, k, v, g, beta, initial)
        out_c, state_c = chunked_delta_rule(q, k, v, g, beta, initial, chunk_size=chunk)
        torch.testing.assert_close(out_c, out_r, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(state_c, state_r, atol=1e-5, rtol=1e-5)


def test_delta_rule_with_beta_one_overwrites_the_association():
    """Online least squares: after writing (k, v) with beta = 1, the memory returns exactly v for k."""
    q, k, v, g, beta, state = _inputs(length=1)
    out, new_state = recurrent_delta_rule(k, k, v, torch.zeros_like(g), torch.ones_like(beta), state)
    torch.testing.assert_close(out, v, atol=1e-5, rtol=1e-5)  # q = k: the read returns the written value
    # plain linear attention (S + k v^T, no correction) would return v plus what S held for k
    plain = (state * k[:, :, 0, :, None]).sum(-2)[:, :, None] + v
    assert not torch.allclose(plain, v, atol=1e-3)


def _hf_layout(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).contiguous()  # (B, H, T, ...) -> transformers' (B, T, H, ...)


@pytest.mark.parametrize("length", [13, 20])
def test_per_head_delta_rule_matches_transformers_qwen3_next(length):
    q, k, v, g, beta, state = _inputs(length=length, key_dim=8, value_dim=8)
    raw_q, raw_k = torch.randn_like(q), torch.randn_like(k)  # transformers normalises and scales itself
    ours_q, ours_k = l2_normalize(raw_q) * q.shape[-1] ** -0.5, l2_normalize(raw_k)
    hf_args = [_hf_layout(t) for t in (raw_q, raw_k, v)]
    expected_c, expected_state = qwen3_next.torch_chunk_gated_delta_rule(
        *hf_args, g=_hf_layout(g), beta=_hf_layout(beta), chunk_size=4, initial_state=state.clone(),
        output_final_state=True, use_qk_l2norm_in_kernel=True,
    )  # fmt: skip
    expected_r, expected_state_r = qwen3_next.torch_recurrent_gated_delta_rule(
        *hf_args, g=_hf_layout(g), beta=_hf_layout(beta), initial_state=state.clone(),
        output_final_state=True, use_qk_l2norm_in_kernel=True,
    )  # fmt: skip
    out_c, state_c = chunked_delta_rule(ours_q, ours_k, v, g, beta, state, chunk_size=4)
    out_r, state_r = recurrent_delta_rule(ours_q, ours_k, v, g, beta, state)
    torch.testing.assert_close(_hf_layout(out_c), expected_c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state_c, expected_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_hf_layout(out_r), expected_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state_r, expected_state_r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("length", [13, 20])
def test_per_channel_delta_rule_matches_transformers_kimi(length):
    q, k, v, g, beta, state = _inputs(length=length, key_dim=8, value_dim=8, per_channel=True)
    raw_q, raw_k = torch.randn_like(q), torch.randn_like(k)
    ours_q, ours_k = l2_normalize(raw_q) * q.shape[-1] ** -0.5, l2_normalize(raw_k)
    hf_args = [_hf_layout(t) for t in (raw_q, raw_k, v)]
    expected_c, expected_state = kimi.chunk_kimi_delta_attention(
        *hf_args, g=_hf_layout(g), beta=_hf_layout(beta), chunk_size=4, initial_state=state.clone(),
        output_final_state=True, use_qk_l2norm_in_kernel=True,
    )  # fmt: skip
    expected_r, expected_state_r = kimi.recurrent_kimi_delta_attention(
        *hf_args, g=_hf_layout(g), beta=_hf_layout(beta), initial_state=state.clone(),
        output_final_state=True, use_qk_l2norm_in_kernel=True,
    )  # fmt: skip
    out_c, state_c = chunked_delta_rule(ours_q, ours_k, v, g, beta, state, chunk_size=4)
    out_r, state_r = recurrent_delta_rule(ours_q, ours_k, v, g, beta, state)
    torch.testing.assert_close(_hf_layout(out_c), expected_c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state_c, expected_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_hf_layout(out_r), expected_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state_r, expected_state_r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("activation,reference", [("silu", qwen3_next.Qwen3NextRMSNormGated), ("sigmoid", kimi.KimiLinearRMSNormGated)])
def test_gated_rmsnorm_matches_transformers(activation, reference):
    ours, theirs = GatedRMSNorm(6, 1e-5, activation), reference(6, eps=1e-5)
    with torch.no_grad():
        ours.weight.normal_()
        theirs.weight.copy_(ours.weight)
    x, gate = torch.randn(4, 3, 6), torch.randn(4, 3, 6)
    torch.testing.assert_close(ours(x, gate), theirs(x, gate), atol=1e-6, rtol=1e-6)


def _randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    return module


@pytest.mark.parametrize("decay,low_rank", [("per_head", False), ("per_channel", True)])
def test_recurrent_and_chunked_modules_agree_and_the_cache_continues_them(decay, low_rank):
    torch.manual_seed(0)
    mixer = _randomised(
        LinearAttention(16, 2, 4, 6, 5, decay=decay, low_rank=low_rank, gate_activation="silu", chunk_size=4)
    )
    x = torch.randn(2, 11, 16)
    chunked = mixer(x)
    mixer.implementation = "recurrent"
    recurrent = mixer(x)
    torch.testing.assert_close(chunked, recurrent, atol=1e-5, rtol=1e-5)
    mixer.implementation = "chunked"
    cache = KVCache(1)
    prefill = mixer(x[:, :7], Context(torch.arange(7), cache))
    steps = [mixer(x[:, t : t + 1], Context(torch.tensor([t]), cache)) for t in range(7, 11)]
    torch.testing.assert_close(torch.cat([prefill, *steps], dim=1), chunked, atol=1e-5, rtol=1e-5)
    conv_state, state = cache.get_state(0)
    assert conv_state.shape == (2, 2 * 2 * 6 + 4 * 5, 3) and state.shape == (2, 4, 6, 5)
    assert cache.nbytes() == 4 * mixer.state_numel(batch_size=2)


def test_bad_options_name_the_option():
    with pytest.raises(ValueError, match="decay="):
        LinearAttention(8, 2, decay="per_token")
    with pytest.raises(ValueError, match="num_value_heads=3"):
        LinearAttention(8, 2, 3)
    with pytest.raises(ValueError, match="chunk_size=0"):
        LinearAttention(8, 2, chunk_size=0)
    with pytest.raises(ValueError, match="implementation="):
        LinearAttention(8, 2).implementation = "parallel"
