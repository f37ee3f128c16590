"""Lesson 22's check references against independent implementations (olm_edu's mixer, transformers'
Qwen3-Next functions, the family tables), and its diagnoses distinct from the right answer."""

from __future__ import annotations

import json

import pytest
import torch

from olm_edu.checks import linear_attention as check
from olm_edu.models.presets import CONFIG_DIR, preset
from olm_edu.nn.linear_attention import LinearAttention, chunked_delta_rule, l2_normalize, recurrent_delta_rule

qwen3_next = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")


def _sequence(batch=2, heads=3, length=13, key_dim=8, value_dim=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    raw_q, raw_k = torch.randn(batch, heads, length, key_dim, generator=gen), torch.randn(batch, heads, length, key_dim, generator=gen)
    v = torch.randn(batch, heads, length, value_dim, generator=gen)
    g, beta = -torch.rand(batch, heads, length, generator=gen) * 2, torch.rand(batch, heads, length, generator=gen)
    return raw_q, raw_k, v, g, beta


def test_delta_rule_step_reference_run_token_by_token_equals_olm_edu_and_transformers():
    raw_q, raw_k, v, g, beta = _sequence()
    q, k = l2_normalize(raw_q) * raw_q.shape[-1] ** -0.5, l2_normalize(raw_k)
    ours, state = check.reference_chunked_delta_rule(q, k, v, g, beta)  # the step, token by token
    library, library_state = recurrent_delta_rule(q, k, v, g, beta)
    theirs, their_state = qwen3_next.torch_recurrent_gated_delta_rule(
        *(x.transpose(1, 2) for x in (raw_q, raw_k, v, g, beta)), initial_state=None, output_final_state=True,
        use_qk_l2norm_in_kernel=True,
    )  # fmt: skip
    torch.testing.assert_close(ours, library, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, library_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours, theirs.transpose(1, 2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, their_state, atol=1e-5, rtol=1e-5)


def test_chunked_reference_without_mistakes_equals_the_recurrence_and_each_mistake_differs():
    raw_q, raw_k, v, g, beta = (x.double() for x in _sequence(length=11))
    q, k = l2_normalize(raw_q) * raw_q.shape[-1] ** -0.5, l2_normalize(raw_k)
    expected_out, expected_state = check.reference_chunked_delta_rule(q, k, v, g, beta)
    out, state = check._chunked_variant(q, k, v, g, beta, 4)
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(state, expected_state)
    for mistake in ("carry_state", "keep_diagonal", "incoming_term", "decay_inside"):
        wrong, _ = check._chunked_variant(q, k, v, g, beta, 4, **{mistake: mistake == "keep_diagonal"})
        assert not torch.allclose(wrong, expected_out, atol=1e-3), mistake


def test_step_mistakes_all_differ_from_the_right_answer():
    gen = torch.Generator().manual_seed(1)
    state, v = torch.randn(1, 2, 6, 6, generator=gen, dtype=torch.float64), torch.randn(1, 2, 6, generator=gen, dtype=torch.float64)
    q, k = (l2_normalize(torch.randn(1, 2, 6, generator=gen, dtype=torch.float64)) for _ in range(2))
    g, beta = -torch.rand(1, 2, generator=gen, dtype=torch.float64), torch.rand(1, 2, generator=gen, dtype=torch.float64)
    right_out, right_state = check.reference_delta_rule_step(state, q, k, v, g, beta)
    for message, (out, new_state) in check._step_mistakes(state, q, k, v, g, beta, square=True).items():
        assert not (torch.allclose(out, right_out, atol=1e-4) and torch.allclose(new_state, right_state, atol=1e-4)), message


def test_log_decay_reference_equals_the_mixers_gate():
    mixer = LinearAttention(embed_dim=16, num_key_heads=2, num_value_heads=4, key_head_dim=4)
    with torch.no_grad():
        mixer.dt_bias.normal_()
        x = torch.randn(2, 5, 16)
        a = mixer.decay_proj(x)  # (B, T, H)
        torch.testing.assert_close(check.reference_log_decay(a, mixer.A_log, mixer.dt_bias).transpose(1, 2), mixer.log_decay(x))


@pytest.mark.parametrize(
    "name", ["Qwen3-Next-80B-A3B-Instruct", "Qwen3.5-9B", "Qwen3.5-35B-A3B", "Kimi-Linear-48B-A3B-Instruct"]
)
def test_layer_schedule_reference_reads_the_published_configs_as_the_family_tables_do(name):
    config = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    assert tuple(check.reference_layer_schedule(config)) == preset(name).layer_types


def test_operation_count_is_flat_for_the_chunked_form_and_grows_for_the_token_loop():
    def inputs(length):
        raw_q, raw_k, v, g, beta = _sequence(batch=1, heads=2, length=length)
        return l2_normalize(raw_q), l2_normalize(raw_k), v, g, beta

    def chunked(q, k, v, g, beta, chunk_size):
        return chunked_delta_rule(q, k, v, g, beta, None, chunk_size)

    def loop(q, k, v, g, beta, chunk_size):
        return recurrent_delta_rule(q, k, v, g, beta)

    assert check.count_tensor_operations(chunked, *inputs(64), 64) == check.count_tensor_operations(chunked, *inputs(16), 16)
    assert check.count_tensor_operations(loop, *inputs(64), 64) > 3 * check.count_tensor_operations(loop, *inputs(16), 16)
