"""Parity with transformers for the 2025 families: gpt-oss, Gemma 3, OLMo 2/3, SmolLM3.

As tests/test_parity_moe.py: a tiny config per family with every special feature switched on,
the transformers model built with eager attention, every weight perturbed (sinks, router and
expert biases, norms away from their init), saved with transformers' `save_pretrained`, loaded
through `olm_edu.hf.from_pretrained`, and the logits compared in float32 at 1e-5.

What bites where. gpt-oss: attention sinks, a window (5) shorter than the sequence on alternating
layers, attention biases, YaRN, 4 experts with top-2, router bias, expert biases, a clamp limit
(1.0) small enough that the perturbed activations hit it, the interleaved gate/up layout.
Gemma 3: sliding and full layers mixed, a RoPE per layer type (local base 1,000, global base
100,000 with linear scaling), per-head QK-norm with the (1 + w) RMSNorm, query_pre_attn_scalar
!= head_dim, sandwich norms, attention bias, tied embeddings, and the final soft-cap switched on
(the published models leave it None; the attention soft-cap, which transformers' Gemma3 never
applies, is refused). OLMo 2: norms after the sub-layers inside the branch, QK-norm over the whole
projection width with GQA (so the q and k norms differ in width), linear RoPE scaling, attention
bias. OLMo 3: the same plus its default 3:1 sliding/full schedule with a window of 5, YaRN on the
full layers only. SmolLM3: NoPE on every second layer (no_rope_layer_interval=2), windows on
(then the NoPE layers slide, by transformers' default), attention and MLP biases, tied embeddings.
"""

from __future__ import annotations

import copy
import functools
import tempfile

import pytest
import torch

transformers = pytest.importorskip("transformers")

from olm_edu.analysis import count_params, kv_cache_bytes  # noqa: E402
from olm_edu.generate import generate  # noqa: E402
from olm_edu.hf import from_pretrained, save_pretrained, to_hf_state_dict  # noqa: E402
from olm_edu.models.build import build, set_attention_implementation, set_moe_implementation  # noqa: E402
from olm_edu.models.hf_config import from_hf_config, to_hf_config  # noqa: E402
from tests.test_parity import TOLERANCE, perturb_, random_ids  # noqa: E402

SEQ_LEN = 12
YARN = {
    "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "beta_fast": 32.0, "beta_slow": 1.0,
    "truncate": False,
}  # fmt: skip

TINY_CONFIGS = {
    "gpt_oss": dict(
        model_type="gpt_oss", vocab_size=97, hidden_size=32, intermediate_size=16, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=12, num_local_experts=4, num_experts_per_tok=2,
        sliding_window=5, max_position_embeddings=64, swiglu_limit=1.0, rms_norm_eps=1e-5,
        rope_parameters={**YARN, "rope_theta": 10_000.0}, tie_word_embeddings=False,
    ),
    "gemma3_text": dict(
        model_type="gemma3_text", vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, sliding_window=5,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=100_000.0, rope_local_base_freq=1_000.0,
        rope_scaling={"rope_type": "linear", "factor": 2.0}, final_logit_softcapping=15.0, attention_bias=True, tie_word_embeddings=True,
    ),
    "olmo2": dict(
        model_type="olmo2", vocab_size=103, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6,
        rope_theta=10_000.0, rope_scaling={"rope_type": "linear", "factor": 2.0}, attention_bias=True,
        tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
    ),
    "olmo3": dict(
        model_type="olmo3", vocab_size=107, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, sliding_window=5,
        rope_parameters={"full_attention": {**YARN, "rope_theta": 50_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 50_000.0}},
        tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
    ),
    "smollm3": dict(
        model_type="smollm3", vocab_size=109, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6,
        rope_theta=20_000.0, rope_scaling={"rope_type": "linear", "factor": 2.0}, no_rope_layer_interval=2,
        use_sliding_window=True, sliding_window=5, attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    ),
}
VARIANTS = list(TINY_CONFIGS)


def tiny(variant: str) -> dict:
    """A fresh copy of a tiny config.json (transformers writes into the nested RoPE dicts it is given)."""
    return copy.deepcopy(TINY_CONFIGS[variant])


def reference_model(variant: str, seed: int = 0):
    """The transformers model of `variant`, every parameter perturbed away from its init."""
    config = transformers.AutoConfig.for_model(**tiny(variant))
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    perturb_(model, seed)
    return model.eval()


@functools.cache
def loaded(variant: str):
    """(transformers model, olm_edu model loaded from transformers' saved checkpoint), built once."""
    reference = reference_model(variant)
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
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


def test_explicit_and_sdpa_attention_and_both_expert_paths_agree(pair):
    """SDPA has no sink: ours appends a zero key whose mask entry is the sink (see attend)."""
    variant, reference, ours = pair
    ids = random_ids(reference.config.vocab_size, seed=2)
    with torch.no_grad():
        expected = ours(ids)
        for attention in ("explicit", "sdpa"):
            for experts in ("loop", "batched"):
                set_attention_implementation(ours, attention), set_moe_implementation(ours, experts)
                error = max_error(ours(ids), expected)
                assert error <= TOLERANCE, f"{variant}: {attention}/{experts} differs by {error:.2e}"
    set_attention_implementation(ours, "sdpa"), set_moe_implementation(ours, "loop")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("implementation", ["explicit", "sdpa"])
def test_cached_decoding_equals_full_forward(variant, implementation):
    reference, ours = loaded(variant)
    ids = random_ids(reference.config.vocab_size, length=SEQ_LEN + 4, seed=3)
    set_attention_implementation(ours, implementation)
    try:
        with torch.no_grad():
            full = ours(ids)
            cache = ours.new_cache()
            steps = [ours(ids[:, :5], cache=cache)]  # a prompt, then one token at a time
            steps += [ours(ids[:, t : t + 1], cache=cache) for t in range(5, ids.shape[1])]
    finally:
        set_attention_implementation(ours, "sdpa")
    assert max_error(torch.cat(steps, dim=1), full) <= TOLERANCE
    cfg = ours.config
    for layer in range(cfg.num_layers):  # sliding layers keep at most the window
        expected = ids.shape[1] if cfg.layer_type(layer) == "full_attention" else cfg.sliding_window
        assert cache.cached_length(layer) == expected
    assert cache.nbytes() == kv_cache_bytes(cfg, ids.shape[1], torch.float32, batch_size=ids.shape[0])


def test_cached_generation_matches_transformers_generate(pair):
    variant, reference, ours = pair
    prompt = random_ids(reference.config.vocab_size, length=4, batch=1, seed=5)
    with torch.no_grad():
        mask = torch.ones_like(prompt)
        expected = reference.generate(prompt, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
        got = generate(ours, prompt, 10, temperature=0.0)
    assert torch.equal(got, expected)


def test_weights_written_back_load_into_transformers_unchanged(pair, tmp_path):
    variant, reference, ours = pair
    save_pretrained(ours, tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = random_ids(reference.config.vocab_size, seed=4)
    with torch.no_grad():
        assert max_error(reloaded(ids).logits, reference(ids).logits) <= TOLERANCE
    memory, expected = to_hf_state_dict(ours), reference.state_dict()
    assert set(memory) <= set(expected) and set(expected) - set(memory) <= {"lm_head.weight"}
    assert all(torch.equal(memory[name], expected[name]) for name in memory)


@pytest.mark.parametrize("variant", VARIANTS)
def test_config_round_trips_and_transformers_reads_the_same_architecture(variant):
    cfg = from_hf_config(tiny(variant), name=variant)
    assert from_hf_config(to_hf_config(cfg), name=variant) == cfg
    ours = transformers.AutoConfig.for_model(**to_hf_config(cfg)).to_dict()
    theirs = transformers.AutoConfig.for_model(**tiny(variant)).to_dict()
    ignored = {"_name_or_path", "architectures", "transformers_version", "dtype", "output_router_logits", "pad_token_id",
               "eos_token_id", "bos_token_id"}  # fmt: skip
    assert {k: v for k, v in ours.items() if k not in ignored} == {k: v for k, v in theirs.items() if k not in ignored}


@pytest.mark.parametrize("variant", VARIANTS)
def test_count_params_equals_the_transformers_model(variant):
    reference = reference_model(variant)
    count = count_params(from_hf_config(tiny(variant)))
    assert count.total == sum(p.numel() for p in reference.parameters())
    assert count.total == build(from_hf_config(tiny(variant))).num_parameters()


# -- gpt-oss ------------------------------------------------------------------------------------


def test_gpt_oss_special_features_bite():
    """The sinks, the clamp and the window each change the logits of the tiny model."""
    reference, ours = loaded("gpt_oss")
    cfg = ours.config
    assert cfg.sliding_window < SEQ_LEN and set(cfg.layer_types) == {"sliding_attention", "full_attention"}
    assert cfg.experts_per_token < cfg.num_experts and cfg.router_bias and cfg.expert_bias
    ids = random_ids(cfg.vocab_size, seed=6)
    with torch.no_grad():
        expected = ours(ids)
        for change in ({"attention_sinks": False}, {"swiglu_limit": 1e4}, {"sliding_window": None, "layer_types": None}):
            other = build(cfg.replace(**change))
            other.load_state_dict(ours.state_dict(), strict=False)
            assert max_error(other(ids), expected) > 1e-3, f"{change} should change the logits"


def test_gpt_oss_sink_softmax_is_transformers_eager_attention():
    """Our `attend` with sinks against transformers' gpt-oss eager attention, masked rows included."""
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

    from olm_edu.nn.attention import attend, attention_mask

    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 7, 8, generator=generator) for _ in range(3))
    sinks = 2 * torch.randn(4, generator=generator)
    positions = torch.arange(7)
    allowed = attention_mask(positions, positions, causal=True, window=3)
    module = torch.nn.Module()
    module.num_key_value_groups, module.sinks, module.training = 1, sinks, False
    additive = torch.zeros(7, 7).masked_fill(~allowed, float("-inf"))[None, None]
    expected, _ = eager_attention_forward(module, q, k, v, additive, scaling=0.3)
    for implementation in ("explicit", "sdpa"):
        got = attend(q, k, v, allowed, scale=0.3, implementation=implementation, sinks=sinks)
        assert max_error(got.transpose(1, 2), expected) <= 1e-6


def test_gpt_oss_checkpoint_layout_interleaves_gate_and_up():
    """transformers' gate_up_proj (E, d, 2F): gate = even columns, up = odd ones."""
    reference, ours = loaded("gpt_oss")
    fused = reference.model.layers[0].mlp.experts.gate_up_proj  # (E, d, 2F)
    experts = ours.layers[0].ffn.mlp.experts
    assert torch.equal(experts.gate_proj, fused[..., 0::2].transpose(1, 2))
    assert torch.equal(experts.up_proj, fused[..., 1::2].transpose(1, 2))


def test_gpt_oss_refusals_name_the_key():
    config_json = tiny("gpt_oss")
    with pytest.raises(ValueError, match="swiglu_limit"):
        from_hf_config({**config_json, "swiglu_limit": None})
    with pytest.raises(ValueError, match="sliding_window"):
        from_hf_config({**config_json, "sliding_window": None})
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        from_hf_config({**config_json, "rope_parameters": {**YARN, "rope_theta": 1e4, "partial_rotary_factor": 0.5}})
    cfg = from_hf_config(config_json)
    for knob, value in [("attention_sinks", False), ("router_bias", False), ("qk_norm", True), ("norm_placement", "sandwich")]:
        with pytest.raises(ValueError, match=knob):
            to_hf_config(cfg.replace(**{knob: value}))


def test_gpt_oss_default_rope_is_transformers_yarn():
    """A config.json without RoPE keys gets GptOssConfig's YaRN (factor 32), not plain RoPE."""
    config_json = {k: v for k, v in tiny("gpt_oss").items() if k != "rope_parameters"}
    cfg = from_hf_config(config_json)
    theirs = transformers.AutoConfig.for_model(**config_json).rope_parameters
    assert cfg.rope_theta == theirs["rope_theta"] == 150_000.0
    assert cfg.rope_scaling == {k: v for k, v in theirs.items() if k != "rope_theta"}


# -- Gemma 3 ------------------------------------------------------------------------------------


def test_gemma3_special_features_bite():
    """The local RoPE base, the sliding layers and the QK-norm weights each change the logits."""
    reference, ours = loaded("gemma3_text")
    cfg = ours.config
    assert cfg.rope_theta_local == 1_000.0 and cfg.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert cfg.sliding_window < SEQ_LEN and cfg.query_pre_attn_scalar != cfg.head_size
    ids = random_ids(cfg.vocab_size, seed=6)
    with torch.no_grad():
        expected = ours(ids)
        for change in ({"rope_theta_local": None}, {"sliding_window": None, "layer_types": None}):
            other = build(cfg.replace(**change))
            other.load_state_dict(ours.state_dict())
            assert max_error(other(ids), expected) > 1e-3, f"{change} should change the logits"
        state = ours.state_dict()
        state["layers.0.attn.attention.q_norm.weight"] = torch.zeros_like(state["layers.0.attn.attention.q_norm.weight"])
        other = build(cfg)
        other.load_state_dict(state)
        assert max_error(other(ids), expected) > 1e-3


def test_gemma3_refusals_name_the_key():
    config_json = tiny("gemma3_text")
    for key, value in [("use_bidirectional_attention", True), ("attn_logit_softcapping", 50.0)]:
        with pytest.raises(ValueError, match=key):
            from_hf_config({**config_json, key: value})
    with pytest.raises(ValueError, match="attn_logit_softcap"):
        to_hf_config(from_hf_config(config_json).replace(attn_logit_softcap=50.0))


def test_gemma3_multimodal_config_is_read_through_its_text_config():
    """A gemma3 wrapper (as Gemma 3 4B/12B/27B publish it): the language model, with the text
    class's defaults for what text_config leaves out, as transformers fills them in."""
    text = {k: v for k, v in tiny("gemma3_text").items() if k not in ("model_type", "vocab_size", "layer_types")}
    text["num_hidden_layers"] = 7  # the default pattern: layer 5 full, the others sliding
    wrapper = {"model_type": "gemma3", "text_config": text, "vision_config": {"model_type": "siglip_vision_model"}}
    cfg = from_hf_config(wrapper, name="tiny")
    assert "text_config" in cfg.notes["text_config"]
    filled = transformers.AutoConfig.for_model(**wrapper).get_text_config().to_dict()
    assert cfg == from_hf_config(filled, name="tiny")
    assert cfg.vocab_size == 262_208 and [cfg.layer_type(i) for i in (4, 5)] == ["sliding_attention", "full_attention"]


# -- every family --------------------------------------------------------------------------------

MINIMAL = {  # the sizes only: every other key takes the family's default
    "gpt_oss": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4),
    "gemma3_text": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_hidden_layers=7),
    "olmo2": dict(num_attention_heads=4, pad_token_id=0, eos_token_id=1),
    "olmo3": dict(num_attention_heads=4, num_hidden_layers=8, pad_token_id=0, eos_token_id=1),
    "smollm3": dict(num_attention_heads=4, num_hidden_layers=8, pad_token_id=0, bos_token_id=1, eos_token_id=2),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_from_hf_config_fills_missing_keys_with_the_transformers_defaults(variant):
    minimal = {"model_type": tiny(variant)["model_type"], "vocab_size": 96, "hidden_size": 32,
               "intermediate_size": 48, **MINIMAL[variant]}  # fmt: skip
    filled_by_transformers = transformers.AutoConfig.for_model(**minimal).to_dict()
    assert from_hf_config(minimal, name="t") == from_hf_config(filled_by_transformers, name="t")


# -- OLMo 2 and OLMo 3 ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["olmo2", "olmo3"])
def test_olmo_special_features_bite(variant):
    """Where the norm sits, how wide the QK-norm is, and (OLMo 3) the windows each change the logits."""
    reference, ours = loaded(variant)
    cfg = ours.config
    assert cfg.norm_placement == "post_sublayer" and cfg.qk_norm_scope == "projection" and cfg.kv_heads < cfg.num_heads
    assert "input_layernorm" not in str(list(reference.state_dict()))  # no norm before the sub-layers
    ids = random_ids(cfg.vocab_size, seed=6)
    state = ours.state_dict()
    with torch.no_grad():
        expected = ours(ids)
        changes = [{"norm_placement": "sandwich"}]
        if variant == "olmo3":
            assert cfg.sliding_window < SEQ_LEN and cfg.rope_theta_local == cfg.rope_theta and cfg.rope_scaling_local is None
            changes += [{"sliding_window": None, "layer_types": None, "rope_theta_local": None}, {"rope_theta_local": None}]
        for change in changes:
            other = build(cfg.replace(**change))
            other.load_state_dict(state, strict=False)
            assert max_error(other(ids), expected) > 1e-3, f"{change} should change the logits"
        # the q norm's weight is one per projection column (num_heads * head_dim), not one per head dimension
        assert state["layers.0.attn.attention.q_norm.weight"].shape == (cfg.num_heads * cfg.head_size,)
        assert state["layers.0.attn.attention.k_norm.weight"].shape == (cfg.kv_heads * cfg.head_size,)


def test_olmo3_reads_the_published_style_rope_as_transformers_does():
    """From rope_theta + rope_scaling, Olmo3Config gives the sliding layers its default base
    (500,000) whatever rope_theta is; ours reproduces that, and rope_parameters as written."""
    legacy = {k: v for k, v in tiny("olmo3").items() if k != "rope_parameters"}
    legacy.update(rope_theta=10_000.0, rope_scaling={"rope_type": "linear", "factor": 2.0})
    theirs = transformers.AutoConfig.for_model(**copy.deepcopy(legacy)).rope_parameters
    cfg = from_hf_config(legacy)
    assert (cfg.rope_theta, cfg.rope_scaling) == (10_000.0, {"rope_type": "linear", "factor": 2.0})
    assert cfg.rope_theta_local == theirs["sliding_attention"]["rope_theta"] == 500_000.0
    assert cfg.rope_scaling_local is None and theirs["sliding_attention"]["rope_type"] == "default"
    assert from_hf_config(transformers.AutoConfig.for_model(**copy.deepcopy(legacy)).to_dict()) == cfg


# -- SmolLM3 -------------------------------------------------------------------------------------


def test_smollm3_special_features_bite():
    """NoPE layers (every second one here) and their windows change the logits."""
    reference, ours = loaded("smollm3")
    cfg = ours.config
    assert cfg.nope_layers == (1, 3) and cfg.layer_types == ("full_attention", "sliding_attention") * 2
    assert [layer.self_attn.use_rope for layer in reference.model.layers] == [1, 0, 1, 0]
    ids = random_ids(cfg.vocab_size, seed=6)
    with torch.no_grad():
        expected = ours(ids)
        for change in ({"nope_layers": None}, {"sliding_window": None, "layer_types": None}):
            other = build(cfg.replace(**change))
            other.load_state_dict(ours.state_dict())
            assert max_error(other(ids), expected) > 1e-3, f"{change} should change the logits"


def test_smollm3_refusals_name_the_key():
    config_json = tiny("smollm3")
    with pytest.raises(ValueError, match="use_sliding_window"):
        from_hf_config({**config_json, "use_sliding_window": False, "layer_types": ["sliding_attention"] * 4})
    with pytest.raises(ValueError, match="no_rope_layers"):
        from_hf_config({**config_json, "no_rope_layers": [1, 0]})
    with pytest.raises(ValueError, match="qk_norm"):
        to_hf_config(from_hf_config(config_json).replace(qk_norm=True))


def test_every_family_refuses_what_its_class_cannot_express():
    """Each family's to_hf_config names the knob its transformers class hard-codes."""
    for variant, (knob, value) in {
        "gpt_oss": ("norm_placement", "post_sublayer"), "gemma3_text": ("qk_norm", False),
        "olmo2": ("norm_placement", "pre"), "olmo3": ("qk_norm_scope", "head"), "smollm3": ("attention_sinks", True),
    }.items():  # fmt: skip
        with pytest.raises(ValueError, match=knob):
            to_hf_config(from_hf_config(tiny(variant)).replace(**{knob: value}))


def test_presets_of_the_2025_families_carry_the_published_facts():
    from olm_edu.models.presets import preset

    oss = preset("gpt-oss-20b")
    assert (oss.num_experts, oss.experts_per_token, oss.sliding_window, oss.swiglu_limit) == (32, 4, 128, 7.0)
    assert oss.attention_sinks and oss.router_bias and oss.expert_bias and oss.rope_scaling["factor"] == 32.0
    assert [oss.layer_type(i) for i in range(3)] == ["sliding_attention", "full_attention", "sliding_attention"]
    assert (preset("gpt-oss-120b").num_layers, preset("gpt-oss-120b").num_experts) == (36, 128)
    g1, g27 = preset("gemma-3-1b"), preset("gemma-3-27b")
    assert (g1.sliding_window, g1.rope_theta, g1.rope_theta_local, g1.rope_scaling) == (512, 1e6, 1e4, None)
    assert [g1.layer_type(i) for i in range(6)] == ["sliding_attention"] * 5 + ["full_attention"]
    assert g27.rope_scaling == {"rope_type": "linear", "factor": 8.0} and g27.rope_scaling_local is None
    assert (g27.query_pre_attn_scalar, g27.head_size, g27.vocab_size) == (168, 128, 262_208)
    olmo = preset("Olmo-3-7B")
    assert (olmo.norm_placement, olmo.qk_norm_scope, olmo.sliding_window) == ("post_sublayer", "projection", 4096)
    assert olmo.rope_scaling["rope_type"] == "yarn" and (olmo.rope_theta_local, olmo.rope_scaling_local) == (5e5, None)
    smol = preset("SmolLM3-3B")
    assert smol.nope_layers == tuple(range(3, 36, 4)) and smol.sliding_window is None and smol.tie_embeddings
