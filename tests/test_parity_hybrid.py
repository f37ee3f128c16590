"""Parity with transformers for the hybrid linear/full-attention families (Qwen3-Next, Qwen3.5, Kimi Linear).

As tests/test_parity_moe.py: a tiny config per family with every special feature on, the
transformers model built with eager attention, every parameter perturbed (A_log, dt_bias, conv
weights, gates and norms included) and every buffer randomised (Kimi's router bias), saved with
transformers' `save_pretrained`, loaded through `olm_edu.hf.from_pretrained`, logits compared in
float32 on a sequence longer than transformers' chunk (64), so its chunked path runs several
chunks, and ours runs with a chunk size that does not divide the sequence.

Tolerances. Every layer, given the same input (transformers' own hidden states), matches at
1e-5 of the residual stream's largest entry. The logits of the whole model match at 1e-4, not 1e-5: these randomised hybrids amplify
float32 rounding (a relative 1e-7 change of the embeddings moves their logits by ~3e-5,
`test_the_randomised_model_amplifies_float32_rounding`): a linear-attention head whose output is
a small difference of large terms is scaled up by the gated RMSNorm, so two correct float32
computations that only order their sums differently (chunked vs recurrent, chunks of 16 vs 64)
already differ by ~1e-5 at the logits. The mixer itself is checked at 1e-5 against transformers'
functions in tests/test_linear_attention.py.

What bites where: Qwen3-Next: linear and full layers mixed (not the default 3:1 pattern), grouped
value heads (value heads = 2 x key heads), key and value head widths that differ, partial
rotary (0.5), the sigmoid output gate, zero-centred norms (QK-norm included), attention bias,
GQA, several experts with top-k 3, renormalised top-k, the gated shared expert of another width,
a dense layer (mlp_only_layers). Qwen3.5 (dense): a full first layer, the multimodal RoPE
(mrope_section, interleaved) with partial rotary, tied embeddings. Qwen3.5-MoE: experts on every
layer (always renormalised), the gated shared expert. Kimi Linear: per-channel decay (KDA) with
low-rank decay and gate projections, a convolution of 3, latent attention without RoPE and
without a query latent, v_head_dim != qk_nope_head_dim, sigmoid routing with a non-zero
selection bias, groups by top-2 sum, renormalisation, routed scaling, a shared expert, a dense
first layer.
"""

from __future__ import annotations

import functools
import json
import tempfile

import pytest
import torch

transformers = pytest.importorskip("transformers")

from olm_edu.analysis import count_params, kv_cache_bytes, state_bytes  # noqa: E402
from olm_edu.generate import generate  # noqa: E402
from olm_edu.hf import from_pretrained, save_pretrained, to_hf_state_dict  # noqa: E402
from olm_edu.models.build import set_linear_attention_implementation, set_moe_implementation  # noqa: E402
from olm_edu.models.hf_config import from_hf_config, to_hf_config  # noqa: E402
from olm_edu.models.presets import CONFIG_DIR, preset  # noqa: E402
from olm_edu.nn.blocks import Context  # noqa: E402
from olm_edu.nn.linear_attention import LinearAttention  # noqa: E402
from tests.test_parity import TOLERANCE, perturb_, random_ids  # noqa: E402

SEQ_LEN = 70  # > 64, transformers' chunk
LOGITS_TOLERANCE = 1e-4  # see the module doc: the model amplifies float32 rounding
OUR_CHUNK = 16  # does not divide SEQ_LEN: the last chunk is short
_QWEN_HYBRID = dict(
    vocab_size=101, hidden_size=48, intermediate_size=72, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=10000.0,
    partial_rotary_factor=0.5, attention_bias=True,
    layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=12,
    linear_conv_kernel_dim=4, tie_word_embeddings=False,
)  # fmt: skip

# Qwen3.5's multimodal RoPE: frequencies split among (time, height, width) positions, equal for text
_MROPE = {
    "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 1],
    "mrope_interleaved": True,
}  # fmt: skip

TINY_CONFIGS = {
    "qwen3_next": dict(
        _QWEN_HYBRID, model_type="qwen3_next", num_experts=6, num_experts_per_tok=3, moe_intermediate_size=24,
        shared_expert_intermediate_size=40, norm_topk_prob=True, mlp_only_layers=[2], decoder_sparse_step=1,
    ),
    "qwen3_5_text": dict(
        {k: v for k, v in _QWEN_HYBRID.items() if k not in ("rope_theta", "partial_rotary_factor")},
        model_type="qwen3_5_text", attention_bias=False, tie_word_embeddings=True,
        layer_types=["full_attention", "linear_attention", "linear_attention", "full_attention"],
        rope_parameters=_MROPE,
    ),
    "qwen3_5_moe_text": dict(
        {k: v for k, v in _QWEN_HYBRID.items() if k not in ("rope_theta", "partial_rotary_factor", "intermediate_size")},
        model_type="qwen3_5_moe_text", num_experts=6, num_experts_per_tok=2, moe_intermediate_size=24,
        shared_expert_intermediate_size=32, rope_parameters=_MROPE,
    ),
    "kimi_linear": dict(
        model_type="kimi_linear", vocab_size=103, hidden_size=48, intermediate_size=72, moe_intermediate_size=24,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=20, q_lora_rank=None,
        qk_nope_head_dim=12, qk_rope_head_dim=6, v_head_dim=10, rms_norm_eps=1e-5, num_experts=8,
        num_experts_per_token=3, num_shared_experts=1, moe_renormalize=True, num_expert_group=4, topk_group=2,
        routed_scaling_factor=2.0, first_k_dense_replace=1, tie_word_embeddings=False,
        linear_attn_config={"full_attn_layers": [2, 4], "kda_layers": [1, 3], "num_heads": 3, "head_dim": 8,
                            "short_conv_kernel_size": 3},
        pad_token_id=None, bos_token_id=None, eos_token_id=None,
    ),
}
VARIANTS = list(TINY_CONFIGS)


def reference_model(variant: str, seed: int = 0):
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
        reference.save_pretrained(folder)
        ours = from_pretrained(folder)
    for module in ours.modules():
        if isinstance(module, LinearAttention):
            module.chunk_size = OUR_CHUNK
    return reference, ours


@pytest.fixture(params=VARIANTS)
def pair(request):
    return (request.param, *loaded(request.param))


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_every_layer_matches_transformers_given_the_same_input(pair):
    variant, reference, ours = pair
    ids = random_ids(reference.config.vocab_size, length=SEQ_LEN)
    with torch.no_grad():
        out = reference(ids, output_hidden_states=True)
        hidden = out.hidden_states  # the embeddings, then each layer's output (the last after the final norm)
        context = Context(torch.arange(SEQ_LEN))
        assert max_error(ours.embed(ids), hidden[0]) == 0
        last = ours.config.num_layers - 1
        for index, layer in enumerate(ours.layers):
            got = layer(hidden[index], context)
            if index == last:
                got = ours.norm(got)
            # relative to the residual stream's scale (|h| grows to ~20 here; 1e-5 of the largest entry)
            error = max_error(got, hidden[index + 1]) / max(1.0, hidden[index + 1].abs().max().item())
            assert error <= TOLERANCE, f"{variant}: layer {index} differs by {error:.2e} (relative)"
        assert max_error(ours.head(hidden[-1]), out.logits) <= TOLERANCE


def test_logits_match_transformers(pair):
    variant, reference, ours = pair
    ids = random_ids(reference.config.vocab_size, length=SEQ_LEN)
    with torch.no_grad():
        error = max_error(ours(ids), reference(ids).logits)
    assert error <= LOGITS_TOLERANCE, f"{variant}: max |Δlogits| = {error:.2e}"


def test_the_randomised_model_amplifies_float32_rounding():
    """Why the logits tolerance is 1e-4: transformers' own model, its embeddings changed by a
    relative 1e-7 (float32 rounding), moves its logits by more than 1e-5."""
    reference, _ = loaded(VARIANTS[0])
    ids = random_ids(reference.config.vocab_size, length=SEQ_LEN)
    embeddings = reference.get_input_embeddings()
    with torch.no_grad():
        before = reference(ids).logits
        saved = embeddings.weight.clone()
        noise = torch.randn(saved.shape, generator=torch.Generator().manual_seed(0))
        embeddings.weight.mul_(1 + 1e-7 * noise)
        after = reference(ids).logits
        embeddings.weight.copy_(saved)
    assert max_error(after, before) > TOLERANCE


def test_recurrent_and_chunked_linear_attention_give_the_same_logits(pair):
    variant, reference, ours = pair
    ids = random_ids(reference.config.vocab_size, length=23, seed=2)
    with torch.no_grad():
        chunked = ours(ids)
        recurrent = set_linear_attention_implementation(ours, "recurrent")(ids)
        set_linear_attention_implementation(ours, "chunked")
        batched = set_moe_implementation(ours, "batched")(ids) if ours.config.num_experts else chunked
        set_moe_implementation(ours, "loop")
    assert max_error(recurrent, chunked) <= LOGITS_TOLERANCE  # two orders of float32 sums (see the module doc)
    assert max_error(batched, chunked) <= TOLERANCE


def test_cached_decoding_equals_full_forward_and_linear_state_stays_constant(pair):
    variant, reference, ours = pair
    ids = random_ids(reference.config.vocab_size, length=24, seed=3)
    with torch.no_grad():
        full = ours(ids)
        cache = ours.new_cache()
        steps = [ours(ids[:, :19], cache=cache)]  # a prompt longer than our chunk, then one token at a time
        sizes = []
        for t in range(19, ids.shape[1]):
            steps.append(ours(ids[:, t : t + 1], cache=cache))
            sizes.append(sum(t.numel() for state in cache.states if state is not None for t in state))
    assert max_error(torch.cat(steps, dim=1), full) <= LOGITS_TOLERANCE  # recurrent steps vs chunks
    cfg = ours.config
    linear = [i for i in range(cfg.num_layers) if cfg.layer_type(i) == "linear_attention"]
    full_layers = [i for i in range(cfg.num_layers) if cfg.layer_type(i) == "full_attention"]
    assert linear and full_layers and len(set(sizes)) == 1  # the linear layers' state does not grow
    assert all(cache.states[i] is not None and cache.keys[i] is None for i in linear)
    assert all(cache.cached_length(i) == ids.shape[1] for i in full_layers)


def test_cached_generation_matches_transformers(pair):
    variant, reference, ours = pair
    prompt = random_ids(reference.config.vocab_size, length=5, batch=1, seed=5)
    with torch.no_grad():
        mask = torch.ones_like(prompt)
        expected = reference.generate(prompt, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
        got = generate(ours, prompt, 8, temperature=0.0)
    assert torch.equal(got, expected)


def test_weights_written_back_load_into_transformers_unchanged(pair, tmp_path):
    variant, reference, ours = pair
    save_pretrained(ours, tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = random_ids(reference.config.vocab_size, seed=4)
    with torch.no_grad():
        assert max_error(reloaded(ids).logits, reference(ids).logits) == 0  # the same weights, the same code
    memory = to_hf_state_dict(ours)
    expected = reference.state_dict()
    tied = {"lm_head.weight"} if ours.config.tie_embeddings else set()  # a tied head is not written twice
    assert set(memory) == set(expected) - tied
    assert all(torch.equal(memory[name], expected[name]) for name in memory)


def test_config_round_trips(pair):
    variant, reference, ours = pair
    assert from_hf_config(to_hf_config(ours.config)) == ours.config
    assert from_hf_config(reference.config, name=ours.config.name) == ours.config  # a transformers config reads the same


@pytest.mark.parametrize("variant,wrapper", [("qwen3_5_text", "qwen3_5"), ("qwen3_5_moe_text", "qwen3_5_moe")])
def test_qwen3_5_reads_through_the_published_wrapper_config(variant, wrapper):
    """The releases' config.json wraps the language model in text_config (with a vision_config)."""
    text = dict(TINY_CONFIGS[variant])
    wrapped = {"model_type": wrapper, "text_config": text, "vision_config": {"depth": 2}, "tie_word_embeddings": False}
    direct = from_hf_config(text, name="x")
    through = from_hf_config(wrapped, name="x")
    assert through == direct and through.family == variant


def test_special_features_bite():
    """The tiny configs exercise what they claim: layers mixed, grouped value heads, gates on."""
    cfg = from_hf_config(TINY_CONFIGS["qwen3_next"])
    assert cfg.layer_types == ("linear_attention", "full_attention", "linear_attention", "full_attention")
    assert cfg.linear_num_value_heads == 2 * cfg.linear_num_key_heads and cfg.linear_value_head_dim != cfg.linear_key_head_dim
    assert cfg.partial_rotary_factor == 0.5 and cfg.attn_output_gate and cfg.qk_norm
    assert cfg.dense_layers == (2,) and cfg.experts_per_token < cfg.num_experts
    assert cfg.shared_expert_gate and cfg.shared_expert_hidden_dim != cfg.expert_hidden_dim


def test_kimi_features_bite():
    cfg = from_hf_config(TINY_CONFIGS["kimi_linear"])
    assert cfg.layer_types == ("linear_attention", "full_attention", "linear_attention", "full_attention")
    assert cfg.attention == "mla" and cfg.position == "none" and cfg.q_latent_dim is None
    assert cfg.value_head_size != cfg.head_size and cfg.linear_attention == "kimi_delta" and cfg.linear_conv_kernel == 3
    assert cfg.router_selection_bias and cfg.expert_groups == 4 and cfg.groups_per_token == 2
    assert cfg.first_dense_layers == 1 and cfg.num_shared_experts == 1 and cfg.routed_scaling_factor == 2.0
    _, ours = loaded("kimi_linear")
    mixer = ours.layers[0].attn.attention
    assert mixer.decay == "per_channel" and mixer.dt_bias.shape == (3 * 8,) and mixer.A_log.shape == (3,)
    assert ours.layers[1].attn.attention.rotary is None  # the latent attention is not rotated
    router = ours.layers[1].ffn.mlp.router
    assert router.selection_bias.abs().min() > 0  # the randomised buffer arrived


# -- counts and state sizes -----------------------------------------------------------------------

HYBRID_PRESETS = ["Qwen3-Next-80B-A3B-Instruct", "Qwen3.5-9B", "Qwen3.5-35B-A3B", "Kimi-Linear-48B-A3B-Instruct"]


def _unused_expert_params(model: torch.nn.Module, top_k: int) -> int:
    """What one token does not touch in transformers' model: the routed experts it does not choose."""
    unused = 0
    for name, module in model.named_modules():
        if name.endswith("mlp.experts"):
            per_expert = sum(p.numel() for p in module.parameters()) // module.num_experts
            unused += (module.num_experts - top_k) * per_expert
    return unused


def test_count_params_matches_transformers_on_the_tiny_models(pair):
    variant, reference, ours = pair
    counted = count_params(ours.config)
    assert counted.total == sum(p.numel() for p in reference.parameters()) == ours.num_parameters()
    top_k = ours.config.experts_per_token or 0
    assert counted.active == counted.total - _unused_expert_params(reference, top_k)


@pytest.mark.parametrize("name", HYBRID_PRESETS)
def test_count_params_of_the_published_hybrids_matches_transformers_on_meta(name):
    cfg = preset(name)
    data = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    config = transformers.AutoConfig.for_model(**data.get("text_config", data))
    with torch.device("meta"):
        reference = transformers.AutoModelForCausalLM.from_config(config)
    counted = count_params(cfg)
    assert counted.total == sum(p.numel() for p in reference.parameters())
    assert counted.active == counted.total - _unused_expert_params(reference, cfg.experts_per_token or 0)


def test_state_bytes_is_what_the_cache_holds_and_only_full_layers_grow(pair):
    variant, reference, ours = pair
    cfg = ours.config
    ids = random_ids(cfg.vocab_size, length=9, seed=7)
    with torch.no_grad():
        cache = ours.new_cache()
        ours(ids, cache=cache)
    measured = cache.nbytes()  # the tensors it holds (float32 model: keys, latents, states)
    assert measured == state_bytes(cfg, 9, dtype=torch.float32, batch_size=2)
    linear = state_bytes(cfg, 1, batch_size=1) - kv_cache_bytes(cfg, 1)
    assert linear > 0 and linear == state_bytes(cfg, 1000) - kv_cache_bytes(cfg, 1000)  # a constant
    assert state_bytes(cfg, 2000) - state_bytes(cfg, 1000) == kv_cache_bytes(cfg, 1000)  # full layers grow


def test_hybrid_state_is_far_smaller_than_a_full_attention_cache_at_long_context():
    cfg = preset("Qwen3-Next-80B-A3B-Instruct")
    all_full = cfg.replace(layer_types=None, linear_num_key_heads=None, linear_num_value_heads=None,
                           linear_key_head_dim=None, linear_value_head_dim=None)  # fmt: skip
    ratio = state_bytes(all_full, 262_144) / state_bytes(cfg, 262_144)
    assert 3.5 < ratio < 4  # 12 of 48 layers keep keys and values; the 36 linear ones a few MB


def test_families_without_linear_attention_refuse_the_hybrid_knobs():
    cfg = from_hf_config(TINY_CONFIGS["qwen3_next"])
    with pytest.raises(ValueError, match="layer_types"):
        to_hf_config(cfg.replace(family="qwen3_moe", qk_norm=True, norm="rmsnorm", partial_rotary_factor=1.0,
                                 attn_output_gate=False, shared_expert_gate=False, shared_expert_hidden_dim=None,
                                 dense_layers=()))  # fmt: skip
    with pytest.raises(ValueError, match="family='kimi_linear' cannot express"):
        to_hf_config(from_hf_config(TINY_CONFIGS["qwen3_5_text"]).replace(family="kimi_linear"))
    with pytest.raises(ValueError, match="linear_attention"):
        to_hf_config(cfg.replace(family="qwen3_5_text", linear_attention="kimi_delta", num_experts=0,
                                 experts_per_token=None, expert_hidden_dim=None, shared_expert_hidden_dim=None,
                                 shared_expert_gate=False, dense_layers=(), router_renormalize=False))  # fmt: skip
