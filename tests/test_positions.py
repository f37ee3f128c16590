"""olm_edu.nn.positions against transformers 5.x as the independent reference.

Tolerances: RoPE frequencies and attention factors to 1e-6 relative (float32 round-off of the
same formula); cos/sin and rotated q/k to 1e-6 absolute (same float32 operations); the complex-
number reference to 1e-5 (complex multiplication rounds differently); ALiBi slopes to 1e-6
relative; relative-position scores to 1e-3 of their scale (angles of ~1000 rad in float32).
"""

import math
import subprocess
import sys

import pytest
import torch
from transformers import GlmConfig, GPTNeoXConfig, LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.bloom.modeling_bloom import build_alibi_tensor
from transformers.models.glm.modeling_glm import apply_rotary_pos_emb as glm_apply_rotary
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding
from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb as neox_apply_rotary
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama_apply_rotary

from olm_edu.nn.positions import (
    LearnedPositions,
    RotaryEmbedding,
    SinusoidalPositions,
    alibi_bias,
    alibi_slopes,
    apply_rotary,
    half_to_interleaved_permutation,
    interleaved_to_half_permutation,
    rope_parameters,
    rotate_half,
    rotate_interleaved,
    sinusoidal_table,
    validate_rope_scaling,
)


# --------------------------------------------------------------------------------------------
# transformers references
# --------------------------------------------------------------------------------------------


def llama_config(head_dim, theta, scaling, max_pos, partial=None):
    """A tiny LlamaConfig carrying the rope settings in transformers 5's `rope_parameters`."""
    params = dict(scaling or {})
    params["rope_theta"] = theta
    if partial is not None:
        params["partial_rotary_factor"] = partial
    return LlamaConfig(
        hidden_size=2 * head_dim,
        num_attention_heads=2,
        head_dim=head_dim,
        max_position_embeddings=max_pos,
        rope_parameters=params,
    )


def hf_inv_freq(config, seq_len=None):
    """transformers' frequencies: ROPE_INIT_FUNCTIONS, or the models' default rope ("default"
    is not in ROPE_INIT_FUNCTIONS; GPT-NeoX's version honours partial_rotary_factor)."""
    rope_type = config.rope_parameters["rope_type"]
    if rope_type == "default":
        return GPTNeoXRotaryEmbedding.compute_default_rope_parameters(config)
    return ROPE_INIT_FUNCTIONS[rope_type](config, None, seq_len=seq_len)


def assert_rope_matches(head_dim, theta, scaling, max_pos, partial=None):
    rotary_dim = int(head_dim * (partial or 1.0))
    ours, our_factor = rope_parameters(rotary_dim, theta, scaling, max_pos)
    theirs, their_factor = hf_inv_freq(llama_config(head_dim, theta, scaling, max_pos, partial))
    assert ours.dtype == torch.float32 and ours.shape == (rotary_dim // 2,)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    assert our_factor == pytest.approx(their_factor, rel=1e-6)


CASES = {
    "default": [
        (64, 10000.0, None, 2048, None),
        (128, 500000.0, {"rope_type": "default"}, 8192, None),
        (32, 1e6, None, 4096, 0.5),
        (80, 10000.0, None, 2048, 0.25),
    ],
    "linear": [
        (64, 10000.0, {"rope_type": "linear", "factor": 2.0}, 2048, None),
        (128, 1e6, {"rope_type": "linear", "factor": 4.5}, 4096, None),
        (64, 10000.0, {"rope_type": "linear", "factor": 8.0}, 2048, 0.5),
    ],
    "dynamic": [
        (64, 10000.0, {"rope_type": "dynamic", "factor": 2.0}, 2048, None),
        (128, 500000.0, {"rope_type": "dynamic", "factor": 4.0}, 4096, None),
        (64, 10000.0, {"rope_type": "dynamic", "factor": 3.0}, 1024, 0.5),
    ],
    "yarn": [
        (64, 10000.0, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048}, 8192, None),
        # Qwen2.5-style: no original length, it defaults to max_position_embeddings
        (128, 1e6, {"rope_type": "yarn", "factor": 4.0}, 32768, None),
        # DeepSeek-V3 style: mscale and mscale_all_dim both set
        (64, 10000.0, {"rope_type": "yarn", "factor": 40.0, "beta_fast": 32.0, "beta_slow": 1.0,
                       "mscale": 1.0, "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096}, 163840, None),
        (64, 10000.0, {"rope_type": "yarn", "factor": 40.0, "mscale": 0.707, "mscale_all_dim": 1.0,
                       "original_max_position_embeddings": 4096}, 163840, None),
        # mscale alone is ignored (both are needed), as in transformers
        (64, 10000.0, {"rope_type": "yarn", "factor": 16.0, "mscale": 0.5,
                       "original_max_position_embeddings": 1024}, 16384, None),
        # factor None: implied by the two lengths
        (64, 10000.0, {"rope_type": "yarn", "factor": None, "original_max_position_embeddings": 1024}, 6144, None),
        # original length > 2 pi theta: the correction range runs past the last pair
        (64, 10000.0, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 131072}, 524288, None),
        (64, 50000.0, {"rope_type": "yarn", "factor": 8.0, "beta_fast": 16.0, "beta_slow": 2.0, "truncate": False,
                       "original_max_position_embeddings": 2048}, 16384, None),
        (96, 10000.0, {"rope_type": "yarn", "factor": 4.0, "attention_factor": 1.5,
                       "original_max_position_embeddings": 2048}, 8192, None),
        (64, 10000.0, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048}, 8192, 0.5),
    ],
    "llama3": [
        # Llama 3.1 8B
        (128, 500000.0, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192}, 131072, None),
        # Llama 3.2 1B
        (64, 500000.0, {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192}, 131072, None),
        (64, 10000.0, {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0,
                       "original_max_position_embeddings": 1024}, 4096, None),
        (64, 10000.0, {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
         512, None),
        (128, 500000.0, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192}, 131072, 0.5),

        # Llama 4 Scout: equal factors, no smooth band
        (128, 500000.0, {"rope_type": "llama3", "factor": 16.0, "low_freq_factor": 1.0, "high_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192}, 10485760, None),
    ],
}


@pytest.mark.parametrize(
    "head_dim, theta, scaling, max_pos, partial",
    [case for cases in CASES.values() for case in cases],
    ids=[f"{name}-{i}" for name, cases in CASES.items() for i in range(len(cases))],
)
def test_rope_parameters_match_transformers(head_dim, theta, scaling, max_pos, partial):
    assert_rope_matches(head_dim, theta, scaling, max_pos, partial)


@pytest.mark.parametrize("seq_len", [1000, 2048, 2049, 5000, 100_000])
def test_dynamic_ntk_frequencies_for_a_longer_sequence_match_transformers(seq_len):
    scaling = {"rope_type": "dynamic", "factor": 2.0}
    ours, _ = rope_parameters(64, 10000.0, scaling, 2048, seq_len=seq_len)
    theirs, _ = hf_inv_freq(llama_config(64, 10000.0, scaling, 2048), seq_len=torch.tensor(seq_len))
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    plain, _ = rope_parameters(64, 10000.0, None, 2048)
    assert torch.equal(ours, plain) == (seq_len <= 2048)


def test_scaling_variants_really_change_the_frequencies():
    plain, _ = rope_parameters(64, 10000.0, None, 2048)
    for name, cases in CASES.items():
        if name in ("default", "dynamic"):
            continue
        for head_dim, theta, scaling, max_pos, partial in cases:
            rotary_dim = int(head_dim * (partial or 1.0))
            scaled, _ = rope_parameters(rotary_dim, theta, scaling, max_pos)
            unscaled, _ = rope_parameters(rotary_dim, theta, None, max_pos)
            assert not torch.allclose(scaled, unscaled), (name, scaling)


def test_legacy_config_json_rope_scaling_maps_to_the_same_frequencies():
    """A real config.json keeps `rope_theta` and `rope_scaling` (with "type" or "rope_type")
    at the top level; transformers 5 folds both into `config.rope_parameters`."""
    configs = [
        {"rope_theta": 1e6, "max_position_embeddings": 32768, "head_dim": 128,
         "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}},
        {"rope_theta": 500000.0, "max_position_embeddings": 131072, "head_dim": 128,
         "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 8192, "rope_type": "llama3"}},
        {"rope_theta": 10000.0, "max_position_embeddings": 4096, "head_dim": 64,
         "rope_scaling": {"type": "linear", "factor": 2.0}},
    ]
    for raw in configs:
        config = LlamaConfig.from_dict({"hidden_size": 2 * raw["head_dim"], "num_attention_heads": 2, **raw})
        assert config.rope_parameters["rope_theta"] == raw["rope_theta"]
        ours, our_factor = rope_parameters(
            raw["head_dim"], raw["rope_theta"], raw["rope_scaling"], raw["max_position_embeddings"]
        )
        theirs, their_factor = hf_inv_freq(config)
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
        assert our_factor == pytest.approx(their_factor, rel=1e-6)


# --------------------------------------------------------------------------------------------
# cos / sin
# --------------------------------------------------------------------------------------------


def hf_cos_sin(rotary, positions):
    """Run a transformers rotary embedding on (B, T) position ids."""
    dummy = torch.zeros(1, dtype=torch.float32)
    return rotary(dummy, positions)


ROTARY_CASES = [
    (64, 10000.0, None, 2048),
    (64, 10000.0, {"rope_type": "linear", "factor": 4.0}, 2048),
    (128, 500000.0, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192}, 131072),
    (64, 10000.0, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048}, 8192),
    (64, 10000.0, {"rope_type": "yarn", "factor": 40.0, "mscale": 0.707, "mscale_all_dim": 1.0,
                   "original_max_position_embeddings": 4096}, 163840),
    (64, 10000.0, {"rope_type": "dynamic", "factor": 2.0}, 2048),
]


@pytest.mark.parametrize("head_dim, theta, scaling, max_pos", ROTARY_CASES)
def test_rotary_cos_sin_match_llama(head_dim, theta, scaling, max_pos):
    ours = RotaryEmbedding(head_dim, theta, scaling, max_pos)
    theirs = LlamaRotaryEmbedding(llama_config(head_dim, theta, scaling, max_pos))
    positions = torch.stack([torch.arange(100), torch.randint(0, 3000, (100,))])  # (2, 100)
    cos, sin = ours(positions)
    ref_cos, ref_sin = hf_cos_sin(theirs, positions)
    assert cos.shape == (2, 100, head_dim)
    torch.testing.assert_close(cos, ref_cos, rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, ref_sin, rtol=0, atol=1e-6)
    one_row, _ = ours(positions[1])  # (T,) positions give (T, rotary_dim)
    torch.testing.assert_close(one_row, ref_cos[1], rtol=0, atol=1e-6)


def test_rotary_cos_sin_carry_the_yarn_attention_factor_and_dtype():
    scaling = {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 1024}
    cos, sin = RotaryEmbedding(64, 10000.0, scaling, 16384)(torch.arange(4), dtype=torch.bfloat16)
    assert cos.dtype == sin.dtype == torch.bfloat16
    expected = 0.1 * math.log(16.0) + 1.0
    assert cos[0].float() == pytest.approx(torch.full((64,), expected), rel=1e-2)


def test_dynamic_ntk_growth_is_remembered_and_reset_like_transformers():
    scaling = {"rope_type": "dynamic", "factor": 2.0}
    ours = RotaryEmbedding(32, 10000.0, scaling, max_seq_len=64)
    theirs = LlamaRotaryEmbedding(llama_config(32, 10000.0, scaling, 64))
    # short, longer (grow), between (remembered), exactly the max (remembered), short (reset),
    # longer again, batched
    for length in (32, 100, 80, 64, 20, 70, 150):
        positions = torch.arange(length)[None]
        cos, sin = ours(positions)
        ref_cos, ref_sin = hf_cos_sin(theirs, positions)
        torch.testing.assert_close(cos, ref_cos, rtol=0, atol=1e-6, msg=f"length {length}")
        torch.testing.assert_close(sin, ref_sin, rtol=0, atol=1e-6, msg=f"length {length}")
    batch = torch.stack([torch.arange(40), torch.arange(160, 200)])
    torch.testing.assert_close(ours(batch)[0], hf_cos_sin(theirs, batch)[0], rtol=0, atol=1e-6)

    # the memory matters: after seeing 100 positions, 80 positions use the 100-position base
    fresh = RotaryEmbedding(32, 10000.0, scaling, max_seq_len=64)
    fresh(torch.arange(100))
    remembered, _ = fresh(torch.arange(80))
    stretched_for_80, _ = RotaryEmbedding(32, 10000.0, scaling, max_seq_len=64)(torch.arange(80))
    assert not torch.allclose(remembered, stretched_for_80)
    reset, _ = fresh(torch.arange(10))
    plain, _ = RotaryEmbedding(32, 10000.0, None, max_seq_len=64)(torch.arange(10))
    assert torch.equal(reset, plain)


@pytest.mark.parametrize("scaling", [None, {"rope_type": "linear", "factor": 2.0}])
def test_partial_rotary_cos_sin_match_gpt_neox(scaling):
    params = dict(scaling or {}, rope_theta=10000.0, partial_rotary_factor=0.25)
    config = GPTNeoXConfig(hidden_size=256, num_attention_heads=4, rope_parameters=params)
    theirs = GPTNeoXRotaryEmbedding(config)
    ours = RotaryEmbedding(16, 10000.0, scaling, config.max_position_embeddings)
    positions = torch.arange(50)[None]
    cos, sin = ours(positions)
    ref_cos, ref_sin = hf_cos_sin(theirs, positions)
    assert cos.shape == ref_cos.shape == (1, 50, 16)
    torch.testing.assert_close(cos, ref_cos, rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, ref_sin, rtol=0, atol=1e-6)


def test_interleaved_layout_repeats_each_frequency_twice():
    rotary = RotaryEmbedding(8, layout="interleaved")
    cos, _ = rotary(torch.tensor([3]))
    angles = 3 * rotary.inv_freq
    torch.testing.assert_close(cos[0], angles.repeat_interleave(2).cos())
    half_cos, _ = RotaryEmbedding(8, layout="half")(torch.tensor([3]))
    torch.testing.assert_close(half_cos[0], torch.cat([angles, angles]).cos())


# --------------------------------------------------------------------------------------------
# applying the rotation
# --------------------------------------------------------------------------------------------


def test_rotate_half_and_rotate_interleaved_on_a_small_vector():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert rotate_half(x).tolist() == [-3.0, -4.0, 1.0, 2.0]
    assert rotate_interleaved(x).tolist() == [-2.0, 1.0, -4.0, 3.0]


def test_apply_rotary_half_matches_llama():
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 10, 32), torch.randn(2, 4, 10, 32)
    positions = torch.stack([torch.arange(10), torch.arange(5, 15)])
    cos, sin = RotaryEmbedding(32)(positions)
    ref_q, ref_k = llama_apply_rotary(q, k, cos, sin)
    torch.testing.assert_close(apply_rotary(q, cos, sin), ref_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(apply_rotary(k, cos, sin), ref_k, rtol=0, atol=1e-6)
    # cos/sin without a batch dim broadcast over the batch
    cos0, sin0 = RotaryEmbedding(32)(torch.arange(10))
    torch.testing.assert_close(apply_rotary(q, cos0, sin0), llama_apply_rotary(q, k, cos0[None], sin0[None])[0])


def complex_rope(x, positions, inv_freq):
    """Meta's original RoPE: pairs (x[2i], x[2i+1]) as complex numbers times e^(j t f_i)."""
    angles = positions[:, None].float() * inv_freq[None, :]  # (T, d/2)
    rotation = torch.polar(torch.ones_like(angles), angles)
    as_complex = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (B, H, T, d/2)
    return torch.view_as_real(as_complex * rotation).flatten(-2)


def test_apply_rotary_interleaved_matches_complex_multiplication():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 12, 16)
    positions = torch.arange(100, 112)
    rotary = RotaryEmbedding(16, theta=500000.0, layout="interleaved")
    cos, sin = rotary(positions)
    expected = complex_rope(x, positions, rotary.inv_freq)
    torch.testing.assert_close(apply_rotary(x, cos, sin, layout="interleaved"), expected, rtol=0, atol=1e-5)
    # and it is a different function from the half layout on the same numbers
    half_cos, half_sin = RotaryEmbedding(16, theta=500000.0)(positions)
    assert not torch.allclose(apply_rotary(x, half_cos, half_sin), expected, atol=1e-3)


def test_partial_rotary_leaves_the_tail_untouched_and_matches_gpt_neox():
    torch.manual_seed(2)
    q, k = torch.randn(1, 4, 20, 64), torch.randn(1, 4, 20, 64)
    config = GPTNeoXConfig(hidden_size=256, num_attention_heads=4)  # rotary_pct 0.25 -> 16 dims
    positions = torch.arange(20)[None]
    ref_cos, ref_sin = hf_cos_sin(GPTNeoXRotaryEmbedding(config), positions)
    cos, sin = RotaryEmbedding(16, max_seq_len=config.max_position_embeddings)(positions)
    ours = apply_rotary(q, cos, sin)
    ref_q, _ = neox_apply_rotary(q, k, ref_cos, ref_sin)
    torch.testing.assert_close(ours, ref_q, rtol=0, atol=1e-6)
    assert torch.equal(ours[..., 16:], q[..., 16:])
    assert not torch.allclose(ours[..., 1:, :16], q[..., 1:, :16])


def test_partial_interleaved_rotary_matches_glm():
    """GLM rotates adjacent pairs of the first half of each head."""
    torch.manual_seed(3)
    q, k = torch.randn(2, 2, 9, 32), torch.randn(2, 2, 9, 32)
    config = GlmConfig(hidden_size=64, num_attention_heads=2, head_dim=32, num_key_value_heads=2)
    positions = torch.stack([torch.arange(9), torch.arange(30, 39)])
    # GLM's rotary embedding hands out half-layout cos/sin and re-lays them inside apply
    half_cos, half_sin = RotaryEmbedding(16, layout="half")(positions)
    ref_q, ref_k = glm_apply_rotary(q, k, half_cos, half_sin)
    cos, sin = RotaryEmbedding(16, layout="interleaved", max_seq_len=config.max_position_embeddings)(positions)
    torch.testing.assert_close(apply_rotary(q, cos, sin, layout="interleaved"), ref_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(apply_rotary(k, cos, sin, layout="interleaved"), ref_k, rtol=0, atol=1e-6)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize(
    "scaling", [None, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}]
)
def test_rotated_scores_depend_only_on_the_offset(layout, scaling):
    torch.manual_seed(4)
    q, k = torch.randn(1, 1, 1, 64, dtype=torch.float32), torch.randn(1, 1, 1, 64)
    rotary = RotaryEmbedding(64, scaling=scaling, max_seq_len=4096, layout=layout)

    def score(m, n):
        cos_m, sin_m = rotary(torch.tensor([m]))
        cos_n, sin_n = rotary(torch.tensor([n]))
        return (apply_rotary(q, cos_m, sin_m, layout) * apply_rotary(k, cos_n, sin_n, layout)).sum().item()

    scale = q.norm().item() * k.norm().item()
    for offset in (0, 3, 50):
        reference = score(offset, 0)
        for start in (7, 300, 1000):
            assert score(start + offset, start) == pytest.approx(reference, abs=1e-3 * scale)
    assert abs(score(3, 0) - score(4, 0)) > 1e-3 * scale


# --------------------------------------------------------------------------------------------
# layout conversion of q/k weights
# --------------------------------------------------------------------------------------------


def attention_scores(w_q, w_k, x, num_heads, head_dim, rotary_dim, layout):
    """(H, T, T) pre-softmax scores of rotated q and k projections of x (T, E)."""
    T = x.shape[0]
    q = (x @ w_q.T).view(T, num_heads, head_dim).transpose(0, 1)[None]  # (1, H, T, hd)
    k = (x @ w_k.T).view(T, num_heads, head_dim).transpose(0, 1)[None]
    cos, sin = RotaryEmbedding(rotary_dim, layout=layout)(torch.arange(T))
    return (apply_rotary(q, cos, sin, layout) @ apply_rotary(k, cos, sin, layout).transpose(-1, -2))[0]


def permute_rows(weight, permutation, num_heads):
    head_dim = permutation.numel()
    return weight.view(num_heads, head_dim, -1)[:, permutation].reshape(num_heads * head_dim, -1)


@pytest.mark.parametrize("rotary_dim", [16, 8])
def test_permuted_half_layout_weights_give_the_interleaved_scores(rotary_dim):
    torch.manual_seed(5)
    num_heads, head_dim, embed_dim = 3, 16, 24
    w_q, w_k = torch.randn(num_heads * head_dim, embed_dim), torch.randn(num_heads * head_dim, embed_dim)
    x = torch.randn(7, embed_dim)
    to_half = interleaved_to_half_permutation(head_dim, rotary_dim)
    interleaved = attention_scores(w_q, w_k, x, num_heads, head_dim, rotary_dim, "interleaved")
    half = attention_scores(
        permute_rows(w_q, to_half, num_heads), permute_rows(w_k, to_half, num_heads),
        x, num_heads, head_dim, rotary_dim, "half",
    )
    torch.testing.assert_close(half, interleaved, rtol=1e-5, atol=1e-4)
    unpermuted = attention_scores(w_q, w_k, x, num_heads, head_dim, rotary_dim, "half")
    assert not torch.allclose(unpermuted, interleaved, atol=1e-2)

    # the other direction, and the two permutations undo each other
    to_interleaved = half_to_interleaved_permutation(head_dim, rotary_dim)
    assert torch.equal(to_half[to_interleaved], torch.arange(head_dim))
    back = permute_rows(permute_rows(w_q, to_half, num_heads), to_interleaved, num_heads)
    assert torch.equal(back, w_q)


def test_interleaved_to_half_is_the_meta_to_hf_llama_permutation():
    """Meta-to-HF conversion: view(heads, head_dim // 2, 2, E).transpose(1, 2).reshape(...)."""
    num_heads, head_dim, embed_dim = 4, 8, 5
    w = torch.randn(num_heads * head_dim, embed_dim)
    meta_to_hf = w.view(num_heads, head_dim // 2, 2, embed_dim).transpose(1, 2).reshape(-1, embed_dim)
    assert torch.equal(permute_rows(w, interleaved_to_half_permutation(head_dim), num_heads), meta_to_hf)
    assert half_to_interleaved_permutation(6).tolist() == [0, 3, 1, 4, 2, 5]
    assert interleaved_to_half_permutation(6).tolist() == [0, 2, 4, 1, 3, 5]


# --------------------------------------------------------------------------------------------
# ALiBi
# --------------------------------------------------------------------------------------------


def bloom_slopes(num_heads):
    """BLOOM's alibi is slope * key position; read the slopes off position 1."""
    alibi = build_alibi_tensor(torch.ones(1, 4, dtype=torch.long), num_heads, torch.float32)  # (H, 1, 4)
    return alibi[:, 0, 1]


@pytest.mark.parametrize("num_heads", [1, 6, 8, 12, 16, 20])
def test_alibi_slopes_match_bloom(num_heads):
    torch.testing.assert_close(alibi_slopes(num_heads), bloom_slopes(num_heads), rtol=1e-6, atol=0)


def test_alibi_slopes_for_eight_heads_are_powers_of_one_half():
    assert alibi_slopes(8).tolist() == [2.0**-h for h in range(1, 9)]


def test_alibi_bias_sign_shape_and_softmax_match_bloom():
    slopes = alibi_slopes(4)
    bias = alibi_bias(slopes, torch.arange(5), torch.arange(5))
    assert bias.shape == (4, 5, 5)
    assert torch.equal(torch.diagonal(bias, dim1=1, dim2=2), torch.zeros(4, 5))
    assert bias[0, 4, 0].item() == pytest.approx(-slopes[0].item() * 4)
    assert (bias.tril(-1)[bias.tril(-1) != 0] < 0).all()  # past keys are penalised

    # BLOOM adds slope * key_position instead: equal up to a per-query constant, same softmax
    scores = torch.randn(4, 5, 5)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    bloom = build_alibi_tensor(torch.ones(1, 5, dtype=torch.long), 4, torch.float32)  # (H, 1, 5)
    ours = (scores + bias).masked_fill(~causal, float("-inf")).softmax(-1)
    theirs = (scores + bloom).masked_fill(~causal, float("-inf")).softmax(-1)
    torch.testing.assert_close(ours, theirs)

    decoding = alibi_bias(slopes, torch.tensor([4]), torch.arange(5))  # one new query, with a cache
    torch.testing.assert_close(decoding, bias[:, 4:5])


# --------------------------------------------------------------------------------------------
# absolute tables
# --------------------------------------------------------------------------------------------


def test_sinusoidal_table_matches_the_formula():
    max_seq_len, embed_dim = 50, 12
    table = sinusoidal_table(max_seq_len, embed_dim)
    expected = torch.tensor(
        [
            [
                (math.sin if dim % 2 == 0 else math.cos)(pos / 10000 ** ((dim - dim % 2) / embed_dim))
                for dim in range(embed_dim)
            ]
            for pos in range(max_seq_len)
        ]
    )
    assert table.dtype == torch.float32
    torch.testing.assert_close(table, expected, rtol=0, atol=1e-6)


def test_sinusoidal_positions_use_a_non_persistent_buffer():
    module = SinusoidalPositions(32, 8)
    assert module.state_dict() == {}
    torch.testing.assert_close(module(torch.tensor([[3, 4]])), sinusoidal_table(32, 8)[[3, 4]][None])


def test_learned_positions_look_up_rows():
    module = LearnedPositions(16, 8)
    assert module.weight.shape == (16, 8) and isinstance(module.weight, torch.nn.Parameter)
    assert torch.equal(module(torch.arange(3)), module.weight[:3])
    assert module(torch.zeros(2, 5, dtype=torch.long)).shape == (2, 5, 8)


@pytest.mark.parametrize("table_class, name", [(LearnedPositions, "learned"), (SinusoidalPositions, "sinusoidal")])
def test_position_tables_refuse_sequences_that_are_too_long(table_class, name):
    module = table_class(1024, 8)
    module(torch.arange(1024))
    with pytest.raises(ValueError, match=f"position 1024 is beyond max_seq_len=1024 of the {name}"):
        module(torch.arange(1025))
    with pytest.raises(ValueError, match="position -1 is negative"):
        module(torch.tensor([-1, 0]))


def test_sinusoidal_table_refuses_odd_embed_dim():
    with pytest.raises(ValueError, match="embed_dim=7"):
        sinusoidal_table(10, 7)


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scaling, message",
    [
        ({"rope_type": "longrope", "factor": 2.0},
         r"unknown rope_type='longrope'.*default, linear, dynamic, yarn, llama3"),
        ({"rope_type": "linear"}, r"missing key\(s\) \['factor'\]"),
        ({"rope_type": "llama3", "factor": 8.0}, r"missing key\(s\) \['high_freq_factor', 'low_freq_factor'\]"),
        ({"rope_type": "linear", "factor": 2.0, "facter": 3.0}, r"unknown key\(s\) \['facter'\].*allowed"),
        ({"rope_type": "linear", "factor": -2.0}, r"factor=-2.0"),
        ({"rope_type": "linear", "type": "dynamic", "factor": 2.0}, r"must agree"),
        ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0}, "high_freq_factor"),
        ({"rope_type": "yarn", "factor": 4.0, "truncate": "yes"}, "truncate"),
        ("linear", "must be a dict"),
    ],
)
def test_validate_rope_scaling_names_the_problem(scaling, message):
    with pytest.raises(ValueError, match=message):
        validate_rope_scaling(scaling)


def test_validate_rope_scaling_accepts_legacy_type_and_config_keys():
    assert validate_rope_scaling(None) == "default"
    assert validate_rope_scaling({"type": "dynamic", "factor": 2.0}) == "dynamic"
    assert validate_rope_scaling({"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}) == "yarn"
    legacy, _ = rope_parameters(64, 10000.0, {"type": "linear", "factor": 2.0}, 2048)
    modern, _ = rope_parameters(64, 10000.0, {"rope_type": "linear", "factor": 2.0}, 2048)
    assert torch.equal(legacy, modern)


def test_rope_argument_errors():
    with pytest.raises(ValueError, match="rotary_dim=7"):
        rope_parameters(7, 10000.0, None, 2048)
    with pytest.raises(ValueError, match="rope_theta"):
        rope_parameters(64, 10000.0, {"rope_type": "default", "rope_theta": 500000.0}, 2048)
    with pytest.raises(ValueError, match="layout='complex'.*half.*interleaved"):
        RotaryEmbedding(64, layout="complex")
    with pytest.raises(ValueError, match="layout='complex'"):
        apply_rotary(torch.zeros(1, 1, 2, 8), torch.zeros(2, 8), torch.zeros(2, 8), layout="complex")
    with pytest.raises(ValueError, match="rotary_dim=16"):
        apply_rotary(torch.zeros(1, 1, 2, 8), torch.zeros(2, 16), torch.zeros(2, 16))


def test_importing_positions_does_not_import_transformers():
    code = "import sys, olm_edu.nn.positions; sys.exit(int('transformers' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
