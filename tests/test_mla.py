"""Multi-head latent attention: the three computations agree, the cache holds latents, the
YaRN softmax correction is transformers', and the KV-cache arithmetic matches what is stored."""

from __future__ import annotations

import math

import pytest
import torch

from olm_edu.analysis import cache_width, kv_cache_bytes
from olm_edu.models import ModelConfig, build, preset
from olm_edu.models.build import set_mla_mode
from olm_edu.nn import Context, KVCache, LatentAttention, mla_softmax_scale

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "mscale": 1.0, "mscale_all_dim": 0.8}


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def latent_attention(q_latent_dim: int | None = 24, layout: str = "interleaved", **options) -> LatentAttention:
    torch.manual_seed(0)
    module = LatentAttention(
        32, 4, kv_latent_dim=16, rope_head_dim=8, head_dim=12, value_head_dim=10, q_latent_dim=q_latent_dim,
        rope_layout=layout, rope_scaling=YARN, max_seq_len=64, **options,
    )  # fmt: skip
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return module.eval()


def run(module: LatentAttention, x: torch.Tensor, mode: str, implementation: str = "explicit") -> torch.Tensor:
    module.mode, module.implementation = mode, implementation
    return module(x)


@pytest.mark.parametrize("q_latent_dim", [None, 24], ids=["no-query-latent", "query-latent"])
@pytest.mark.parametrize("layout", ["interleaved", "half"])
def test_absorbed_and_expanded_equal_the_naive_computation(q_latent_dim, layout):
    module = latent_attention(q_latent_dim, layout)
    x = randn(2, 9, 32)
    naive = run(module, x, "naive")
    for mode in ("absorbed", "expanded"):
        for implementation in ("explicit", "sdpa"):
            torch.testing.assert_close(run(module, x, mode, implementation), naive, rtol=1e-5, atol=1e-6)


def test_absorbed_scores_are_the_naive_scores_computed_in_latent_space():
    """q^C . (W_UK c) == (W_UK^T q^C) . c for every head: the identity the absorbed path uses."""
    module = latent_attention()
    key_weight, _ = module._up_weights()  # (H, d, d_c)
    q_content, latent = randn(4, 3, 12, seed=1), randn(5, 16, seed=2)  # (H, T, d), (T_k, d_c)
    k_content = torch.einsum("hdc,tc->htd", key_weight, latent)  # each head's expanded keys
    torch.testing.assert_close(q_content @ k_content.transpose(1, 2), (q_content @ key_weight) @ latent.T)


@pytest.mark.parametrize("mode", ["naive", "absorbed", "expanded"])
def test_cached_decoding_equals_the_full_forward_and_caches_the_latent(mode):
    module = latent_attention()
    module.mode = mode
    x = randn(2, 10, 32, seed=3)
    full = module(x)
    cache = KVCache(1)
    steps = [module(x[:, :4], Context(torch.arange(4), cache))]
    steps += [module(x[:, t : t + 1], Context(torch.tensor([t]), cache)) for t in range(4, 10)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-6)
    if mode == "expanded":
        assert cache.keys[0].shape == (2, 4, 10, 12 + 8) and cache.values[0].shape == (2, 4, 10, 10)
    else:
        assert cache.keys[0].shape == (2, 1, 10, 16) and cache.values[0].shape == (2, 1, 10, 8)


def test_the_future_does_not_change_the_past():
    module = latent_attention()
    x = randn(1, 8, 32, seed=4)
    changed = x.clone()
    changed[:, 5] += 1.0
    for mode in ("naive", "absorbed"):
        torch.testing.assert_close(run(module, x, mode)[:, :5], run(module, changed, mode)[:, :5])


def test_the_shared_rope_key_is_one_vector_for_all_heads():
    module = latent_attention()
    assert module.kv_down_proj.out_features == 16 + 8  # the latent and one rotated key, per token
    assert module.kv_up_proj.out_features == 4 * (12 + 10)  # every head's content key and value


@pytest.mark.parametrize(
    "scaling",
    [None, {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "mscale": 1.0,
            "mscale_all_dim": 1.0}, YARN, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}],
    ids=["plain", "deepseek-v3", "mscale-0.8", "no-mscale_all_dim"],
)  # fmt: skip
def test_softmax_scale_applies_transformers_yarn_mscale(scaling):
    pytest.importorskip("transformers")
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import yarn_apply_mscale

    expected = yarn_apply_mscale(scaling or {"rope_type": "default"}, 192**-0.5)
    assert mla_softmax_scale(192, scaling, 64) == pytest.approx(expected, rel=1e-12)
    if scaling and scaling.get("mscale_all_dim"):
        mscale = 0.1 * scaling["mscale_all_dim"] * math.log(scaling["factor"]) + 1
        assert mla_softmax_scale(192, scaling, 64) == pytest.approx(192**-0.5 * mscale**2)


# -- the KV cache: what MLA stores, against the arithmetic ----------------------------------------

TINY = ModelConfig(
    vocab_size=64, max_seq_len=64, embed_dim=32, num_layers=2, num_heads=4, hidden_dim=48, norm="rmsnorm",
    norm_bias=False, position="rope", ffn="glu", activation="silu", ffn_bias=False, qkv_bias=False,
    attn_out_bias=False, attention="mla", kv_latent_dim=16, rope_head_dim=8, head_dim=12, rope_layout="interleaved",
)  # fmt: skip


@pytest.mark.parametrize("mode", ["naive", "absorbed", "expanded"])
def test_kv_cache_bytes_is_what_the_cache_holds(mode):
    model = set_mla_mode(build(TINY), mode)
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.randint(0, 64, (3, 7)), cache=cache)
    latent = kv_cache_bytes(TINY, 7, torch.float32, batch_size=3)
    if mode == "expanded":  # every head's keys (d + d_R) and values (d_v)
        assert cache.nbytes() == 2 * 7 * 3 * 4 * TINY.num_heads * (TINY.qk_head_size + TINY.value_head_size)
    else:
        assert cache.nbytes() == latent == TINY.num_layers * 7 * 3 * 4 * (16 + 8)


def test_deepseek_v3_caches_576_numbers_a_token_per_layer():
    v3 = preset("DeepSeek-V3")
    assert cache_width(v3) == 512 + 64
    assert kv_cache_bytes(v3, 1) == 61 * 576 * 2  # 70,272 bytes a token in bf16
    expanded = 61 * 128 * (192 + 128) * 2  # the same heads' keys and values, uncompressed
    assert expanded / kv_cache_bytes(v3, 1) > 70
    assert kv_cache_bytes(v3, 32_768) < kv_cache_bytes(preset("Llama-3.1-8B"), 32_768)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(kv_latent_dim=None), "attention='mla' needs kv_latent_dim"),
        (dict(rope_head_dim=7), "rope_head_dim=7 must be even"),
        (dict(num_kv_heads=2), "num_kv_heads=2 must be None"),
        (dict(attention="standard"), "kv_latent_dim=16 is a knob of attention='mla'"),
        (dict(attention="latent"), r"attention='latent' is not one of \('standard', 'mla', 'compressed'\)"),
        (dict(qk_norm=True), "qk_norm=True is not supported with attention='mla'"),
    ],
)
def test_invalid_mla_configs_fail_naming_the_knob(changes, message):
    with pytest.raises(ValueError, match=message):
        TINY.replace(**changes)


def test_mla_mode_is_validated():
    with pytest.raises(ValueError, match=r"mode='fast' is not one of \('naive', 'absorbed', 'expanded'\)"):
        latent_attention().mode = "fast"
