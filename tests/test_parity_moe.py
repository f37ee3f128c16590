"""Parity with transformers for the mixture-of-experts families (Mixtral, Qwen3-MoE, DeepSeek-V2/V3).

As tests/test_parity.py: a tiny config per family with every special feature switched on, the
transformers model built with eager attention, every weight perturbed (and DeepSeek-V3's router
bias `e_score_correction_bias` set non-zero), saved with transformers' `save_pretrained` (hub
layout: one tensor per expert, Mixtral's block_sparse_moe / w1 w2 w3), loaded through
`olm_edu.hf.from_pretrained`, and the logits compared in float32 at 1e-5.

What bites where: several experts and top-k > 1 everywhere; Mixtral: GQA, head_dim != hidden/heads,
a sliding window shorter than the sequence; Qwen3-MoE: QK-norm, attention bias, YaRN, a dense
first layer (mlp_only_layers), renormalised top-k; DeepSeek-V2: MLA without a query latent,
group-limited greedy routing, shared experts, routed scaling, a dense first layer, YaRN with the
mscale correction, attention and MLP biases; DeepSeek-V3: MLA with a query latent, sigmoid
routing with a non-zero selection bias, groups scored by their top-2, renormalisation, routed
scaling, shared experts, a dense first layer, YaRN with mscale; DeepSeek-V3 "half": the
non-interleaved RoPE layout, no query latent, v_head_dim = qk_nope_head_dim, tied embeddings.
"""

from __future__ import annotations

import functools
import tempfile

import pytest
import torch

transformers = pytest.importorskip("transformers")

from olm_edu.analysis import count_params  # noqa: E402
from olm_edu.generate import generate  # noqa: E402
from olm_edu.hf import from_pretrained, mtp_from_hf_state_dict, save_pretrained, to_hf_state_dict  # noqa: E402
from olm_edu.models.build import (  # noqa: E402
    MultiTokenPrediction,
    set_attention_implementation,
    set_mla_mode,
    set_moe_implementation,
)
from olm_edu.models.hf_config import from_hf_config  # noqa: E402
from tests.test_parity import TOLERANCE, perturb_, random_ids  # noqa: E402

SEQ_LEN = 12
YARN_MSCALE = {
    "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "mscale": 1.0, "mscale_all_dim": 0.8,
    "beta_fast": 32, "beta_slow": 1,
}  # fmt: skip
_DEEPSEEK = dict(
    hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=4, kv_lora_rank=24, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12,
    n_routed_experts=8, num_experts_per_tok=3, first_k_dense_replace=1, max_position_embeddings=64,
    rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
)  # fmt: skip

TINY_CONFIGS = {
    "mixtral": dict(
        model_type="mixtral", vocab_size=97, hidden_size=64, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, max_position_embeddings=64, rms_norm_eps=1e-5,
        rope_theta=1e6, sliding_window=5, num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False,
    ),
    "qwen3_moe": dict(
        model_type="qwen3_moe", vocab_size=101, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=24, max_position_embeddings=64,
        rms_norm_eps=1e-6, rope_theta=1e6, num_experts=8, num_experts_per_tok=3, norm_topk_prob=True,
        mlp_only_layers=[0], attention_bias=True, tie_word_embeddings=True,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    ),
    "deepseek_v2": dict(
        _DEEPSEEK, model_type="deepseek_v2", vocab_size=103, q_lora_rank=None, n_shared_experts=2,
        topk_method="group_limited_greedy", n_group=4, topk_group=2, routed_scaling_factor=2.0,
        attention_bias=True, mlp_bias=True, rope_scaling=YARN_MSCALE,
    ),
    "deepseek_v3": dict(
        _DEEPSEEK, model_type="deepseek_v3", vocab_size=107, q_lora_rank=32, n_shared_experts=1, n_group=4,
        topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5, rope_scaling=YARN_MSCALE, rope_interleave=True,
    ),
    "deepseek_v3_half": dict(
        _DEEPSEEK, model_type="deepseek_v3", vocab_size=109, num_hidden_layers=2, q_lora_rank=None, v_head_dim=16,
        n_routed_experts=4, n_shared_experts=2, num_experts_per_tok=2, first_k_dense_replace=0, n_group=1,
        topk_group=1, norm_topk_prob=False, routed_scaling_factor=1.0, rope_interleave=False, tie_word_embeddings=True,
    ),
}
VARIANTS = list(TINY_CONFIGS)
MLA_VARIANTS = [variant for variant in VARIANTS if variant.startswith("deepseek")]
# transformers' load_balancing_loss_func re-derives plain softmax top-k routing from the logits
SOFTMAX_TOP_K_VARIANTS = ["mixtral", "qwen3_moe"]


def reference_model(variant: str, seed: int = 0):
    """The transformers model of `variant`, every weight perturbed, the V3 router bias non-zero."""
    config = transformers.AutoConfig.for_model(**TINY_CONFIGS[variant])
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    perturb_(model, seed)
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.copy_(0.3 * torch.randn(buffer.shape, generator=generator))
    return model.eval()


@functools.cache
def loaded(variant: str):
    """(transformers model, olm_edu model loaded from transformers' saved checkpoint), built once."""
    reference = reference_model(variant)
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)  # the hub layout: one tensor per expert
        return reference, from_pretrained(folder)


@pytest.fixture(params=VARIANTS)
def pair(request):
    return (request.param, *loaded(request.param))


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_logits_match_transformers(pair):
    variant, reference, ours = pair
    ids = random_ids(reference.config.vocab_size, length=SEQ_LEN)
    with torch.no_grad():
        error = max_error(ours(ids), reference(ids).logits)
    assert error <= TOLERANCE, f"{variant}: max |Δlogits| = {error:.2e}"


def test_every_implementation_gives_the_same_logits(pair):
    """explicit vs SDPA attention, loop vs batched experts, naive vs absorbed vs expanded MLA."""
    variant, reference, ours = pair
    ids = random_ids(reference.config.vocab_size, seed=2)
    modes = ("naive", "absorbed", "expanded") if ours.config.attention == "mla" else ("naive",)
    with torch.no_grad():
        expected = ours(ids)
        for attention in ("explicit", "sdpa"):
            for experts in ("loop", "batched"):
                for mode in modes:
                    set_attention_implementation(ours, attention), set_moe_implementation(ours, experts)
                    set_mla_mode(ours, mode)
                    error = max_error(ours(ids), expected)
                    assert error <= TOLERANCE, f"{variant}: {attention}/{experts}/{mode} differs by {error:.2e}"
    set_attention_implementation(ours, "sdpa"), set_moe_implementation(ours, "loop"), set_mla_mode(ours, "naive")


DECODING = [(variant, "naive") for variant in VARIANTS] + [
    (variant, mode) for variant in MLA_VARIANTS for mode in ("absorbed", "expanded")
]


@pytest.mark.parametrize("variant, mode", DECODING)
def test_cached_decoding_equals_full_forward(variant, mode):
    reference, ours = loaded(variant)
    ids = random_ids(reference.config.vocab_size, length=SEQ_LEN + 4, seed=3)
    set_mla_mode(ours, mode)
    try:
        with torch.no_grad():
            full = ours(ids)
            cache = ours.new_cache()
            steps = [ours(ids[:, :5], cache=cache)]  # a prompt, then one token at a time
            steps += [ours(ids[:, t : t + 1], cache=cache) for t in range(5, ids.shape[1])]
    finally:
        set_mla_mode(ours, "naive")
    assert max_error(torch.cat(steps, dim=1), full) <= TOLERANCE
    if ours.config.attention == "mla" and mode != "expanded":  # the cache holds latents, not keys and values
        cfg = ours.config
        assert cache.keys[0].shape == (2, 1, ids.shape[1], cfg.kv_latent_dim)
        assert cache.values[0].shape == (2, 1, ids.shape[1], cfg.rope_head_dim)


def test_cached_decoding_matches_transformers_cached_generation(pair):
    variant, reference, ours = pair
    prompt = random_ids(reference.config.vocab_size, length=4, batch=1, seed=5)
    with torch.no_grad():
        mask = torch.ones_like(prompt)  # (without it transformers infers a mask from pad_token_id)
        expected = reference.generate(prompt, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
        got = generate(ours, prompt, 8, temperature=0.0)
    assert torch.equal(got, expected)


def test_weights_written_back_load_into_transformers_unchanged(pair, tmp_path):
    variant, reference, ours = pair
    save_pretrained(ours, tmp_path)  # hub layout
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = random_ids(reference.config.vocab_size, seed=4)
    with torch.no_grad():
        assert max_error(reloaded(ids).logits, reference(ids).logits) <= TOLERANCE
    memory = to_hf_state_dict(ours)  # transformers' in-memory layout: fused experts
    expected = reference.state_dict()
    assert set(memory) <= set(expected)
    assert all(torch.equal(memory[name], expected[name]) for name in memory)


@pytest.mark.parametrize("variant", SOFTMAX_TOP_K_VARIANTS)
def test_router_load_balancing_loss_is_transformers_for_one_layer(variant):
    """Our per-layer Switch loss equals transformers' load_balancing_loss_func given that layer's logits."""
    reference, ours = loaded(variant)
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    ids = random_ids(reference.config.vocab_size, seed=6)
    with torch.no_grad():
        ours(ids)
    for layer in ours.moe_layers():
        logits = layer.last_routing.logits
        expected = load_balancing_loss_func((logits,), ours.config.num_experts, ours.config.experts_per_token)
        assert abs(layer.load_balancing_loss().item() - expected.item()) <= 1e-6


def test_special_features_bite():
    """The tiny configs exercise what they claim: the V3 bias changes the choice, groups limit it,
    YaRN's mscale changes the softmax scale, windows cut, dense layers come first."""
    v3 = from_hf_config(TINY_CONFIGS["deepseek_v3"])
    assert v3.expert_groups > 1 and v3.groups_per_token < v3.expert_groups and v3.router_selection_bias
    assert v3.num_shared_experts and v3.first_dense_layers == 1 and v3.q_latent_dim is not None
    assert from_hf_config(TINY_CONFIGS["deepseek_v2"]).q_latent_dim is None
    assert from_hf_config(TINY_CONFIGS["mixtral"]).sliding_window < SEQ_LEN
    assert from_hf_config(TINY_CONFIGS["qwen3_moe"]).first_dense_layers == 1
    assert from_hf_config(TINY_CONFIGS["deepseek_v3_half"]).rope_layout == "half"

    reference = reference_model("deepseek_v3")
    attention = reference.model.layers[0].self_attn
    assert attention.scaling != attention.qk_head_dim**-0.5  # the mscale correction

    router = reference.model.layers[1].mlp.gate
    hidden = torch.randn(64, router.hidden_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with_bias = router(hidden)[2].sort(dim=-1).values
        bias = router.e_score_correction_bias.clone()
        router.e_score_correction_bias.zero_()
        without_bias = router(hidden)[2].sort(dim=-1).values
        router.e_score_correction_bias.copy_(bias)
        router.num_group = router.topk_group = 1  # switch the group limit off
        without_groups = router(hidden)[2].sort(dim=-1).values
    assert not torch.equal(with_bias, without_bias), "the selection bias must change some choices"
    assert not torch.equal(with_bias, without_groups), "the group limit must change some choices"


def test_multi_token_prediction_module_matches_transformers_mtp_model():
    """DeepSeek-V3's MTP module (not part of the main model): ours, loaded from the hub naming
    model.layers.{num_layers}.*, predicts the token after next as transformers' MtpModel does."""
    reference, ours = loaded("deepseek_v3")
    from transformers.modeling_layers import MtpModel

    theirs = MtpModel(reference, 1).eval()
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():  # set the module's own weights (embedding and head are the main model's)
        for name, parameter in theirs.named_parameters():
            if name.startswith("layers."):
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.copy_(1 + 0.3 * noise if "norm" in name else 0.15 * noise)
    layer = reference.config.num_hidden_layers  # DeepSeek-V3's files: model.layers.61.* after 61 layers
    hub_names = [  # transformers' MtpModel names -> the hub names of DeepSeek-V3's checkpoint, first match wins
        ("layers.0.mtp_block.", f"model.layers.{layer}."),
        ("layers.0.post_norm.", f"model.layers.{layer}.shared_head.norm."),
        ("layers.0.", f"model.layers.{layer}."),  # enorm, hnorm, eh_proj
    ]
    weights = {}
    for name, tensor in theirs.state_dict().items():
        for theirs_prefix, hub_prefix in hub_names:
            if name.startswith(theirs_prefix):
                weights[hub_prefix + name[len(theirs_prefix) :]] = tensor
                break
    mtp = MultiTokenPrediction(ours.config)
    mtp_from_hf_state_dict(mtp, weights, layer)

    ids = random_ids(reference.config.vocab_size, length=SEQ_LEN, seed=8)
    positions = torch.arange(1, SEQ_LEN)
    with torch.no_grad():
        hidden = reference(ids[:, :-1], output_hidden_states=True).hidden_states[-1]
        expected = theirs._project_to_logits(theirs.forward_layer(0, hidden, positions[None], None, input_ids=ids[:, 1:]))
        got = mtp(ours.hidden_states(ids[:, :-1]), ids[:, 1:], ours, positions)
    assert max_error(got, expected) <= TOLERANCE
    assert sum(p.numel() for p in mtp.parameters()) == count_params(ours.config).mtp
