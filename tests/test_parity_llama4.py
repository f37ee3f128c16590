"""Parity with transformers for Llama 4's language model (`llama4_text`, Llama4ForCausalLM).

As tests/test_parity_moe.py: tiny configs with every feature switched on, the transformers model
built with eager attention, every weight perturbed, saved with transformers' `save_pretrained`,
loaded through `olm_edu.hf.from_pretrained`, and the logits compared in float32 at 1e-5.

What bites where ("all"): 4 layers covering the four combinations of RoPE / NoPE and MoE / dense
(no_rope_layers = [1, 0, 1, 0], moe_layers = [1, 2]); chunks of 5 positions on the RoPE layers,
shorter than the 13-token sequence; the L2 QK-norm on the RoPE layers; temperature tuning on the
NoPE layers with floor_scale = 3, so it changes the queries from position 2 on; 4 experts, top-2;
a shared expert; dense layers wider than the experts (intermediate_size_mlp); head_dim != hidden /
heads; GQA; attention bias; llama3 RoPE scaling. "scout": the release's shape in miniature: every
layer MoE with top-1 routing, NoPE every 4th layer from no_rope_layer_interval, no attention bias.
"""

from __future__ import annotations

import functools
import tempfile

import pytest
import torch

transformers = pytest.importorskip("transformers")

from olm_edu.analysis import count_params, flops_per_token, kv_cache_bytes  # noqa: E402
from olm_edu.generate import generate  # noqa: E402
from olm_edu.hf import from_pretrained, save_pretrained, to_hf_state_dict  # noqa: E402
from olm_edu.models import build  # noqa: E402
from olm_edu.models.build import set_attention_implementation, set_moe_implementation  # noqa: E402
from olm_edu.models.hf_config import from_hf_config, to_hf_config  # noqa: E402
from tests.test_parity import TOLERANCE, perturb_, random_ids  # noqa: E402

SEQ_LEN = 13
LLAMA3_SCALING = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8,
}  # fmt: skip
TINY_CONFIGS = {
    "all": dict(
        model_type="llama4_text", vocab_size=97, hidden_size=32, intermediate_size=24, intermediate_size_mlp=40,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_parameters={"rope_theta": 500000.0, **LLAMA3_SCALING}, no_rope_layers=[1, 0, 1, 0],
        moe_layers=[1, 2], num_local_experts=4, num_experts_per_tok=2, attention_chunk_size=5, use_qk_norm=True,
        attn_temperature_tuning=True, floor_scale=3, attn_scale=0.5, attention_bias=True, tie_word_embeddings=False,
        eos_token_id=None,  # greedy generation must not stop early in transformers
    ),
    "scout": dict(
        model_type="llama4_text", vocab_size=89, hidden_size=32, intermediate_size=16, intermediate_size_mlp=48,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1, head_dim=8, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_theta=500000.0, num_local_experts=3, num_experts_per_tok=1, attention_chunk_size=4,
        floor_scale=2, attn_scale=0.1, tie_word_embeddings=False, eos_token_id=None,
    ),
}
VARIANTS = list(TINY_CONFIGS)


def reference_model(variant: str, seed: int = 0):
    """The transformers model of `variant`, every weight perturbed away from its init."""
    config = transformers.AutoConfig.for_model(**TINY_CONFIGS[variant])
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


def test_explicit_and_sdpa_attention_and_both_expert_loops_agree(pair):
    variant, reference, ours = pair
    ids = random_ids(reference.config.vocab_size, length=SEQ_LEN, seed=2)
    with torch.no_grad():
        expected = reference(ids).logits
        for attention in ("explicit", "sdpa"):
            for experts in ("loop", "batched"):
                set_attention_implementation(ours, attention), set_moe_implementation(ours, experts)
                error = max_error(ours(ids), expected)
                assert error <= TOLERANCE, f"{variant}: {attention}/{experts} differs by {error:.2e}"
    set_attention_implementation(ours, "sdpa"), set_moe_implementation(ours, "loop")


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_decoding_equals_full_forward_across_chunk_boundaries(variant):
    reference, ours = loaded(variant)
    ids = random_ids(reference.config.vocab_size, length=SEQ_LEN + 4, seed=3)
    chunk = ours.config.attention_chunk_size
    with torch.no_grad():
        full = ours(ids)
        cache = ours.new_cache()
        steps = [ours(ids[:, :7], cache=cache)]  # a prompt longer than a chunk, then one token at a time
        for t in range(7, ids.shape[1]):
            steps.append(ours(ids[:, t : t + 1], cache=cache))
            chunked = [i for i in range(ours.config.num_layers) if ours.config.layer_type(i) == "chunked_attention"]
            # a chunked layer holds only the current chunk's keys: positions t // chunk * chunk .. t
            assert all(cache.cached_length(i) == t % chunk + 1 for i in chunked)
    assert max_error(torch.cat(steps, dim=1), full) <= TOLERANCE
    assert cache.nbytes() == kv_cache_bytes(ours.config, ids.shape[1], dtype=torch.float32, batch_size=2)


def test_cached_generation_matches_transformers_cached_generation(pair):
    variant, reference, ours = pair
    prompt = random_ids(reference.config.vocab_size, length=3, batch=1, seed=5)
    with torch.no_grad():
        mask = torch.ones_like(prompt)  # (without it transformers infers a mask from pad_token_id)
        expected = reference.generate(prompt, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
        got = generate(ours, prompt, 12, temperature=0.0)
    assert torch.equal(got, expected)


def test_weights_written_back_load_into_transformers_unchanged(pair, tmp_path):
    variant, reference, ours = pair
    save_pretrained(ours, tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = random_ids(reference.config.vocab_size, seed=4)
    with torch.no_grad():
        assert max_error(reloaded(ids).logits, reference(ids).logits) <= TOLERANCE
    memory = to_hf_state_dict(ours)
    expected = reference.state_dict()
    assert set(memory) == set(expected)
    assert all(torch.equal(memory[name], expected[name]) for name in memory)


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_count_is_transformers_count(variant):
    reference, ours = loaded(variant)
    counted = count_params(ours.config)
    assert counted.total == sum(p.numel() for p in reference.parameters())
    # active: every non-expert parameter, plus top-k of the routed experts on each MoE layer
    experts = [m for name, m in reference.named_modules() if name.endswith("feed_forward.experts")]
    routed = sum(p.numel() for m in experts for p in m.parameters())
    top_k, num_experts = reference.config.num_experts_per_tok, reference.config.num_local_experts
    assert counted.active == counted.total - routed + routed * top_k // num_experts


def test_the_tiny_configs_switch_every_feature_on():
    """The "all" config exercises what it claims, read through from_hf_config."""
    cfg = from_hf_config(TINY_CONFIGS["all"])
    assert cfg.nope_layers == (1, 3) and cfg.first_dense_layers == 1 and cfg.dense_layers == (3,)
    assert cfg.layer_types == ("chunked_attention", "full_attention", "chunked_attention", "full_attention")
    assert cfg.attention_chunk_size < SEQ_LEN and cfg.qk_l2_norm and cfg.attn_temperature_tuning
    assert cfg.attn_temperature_floor < SEQ_LEN and 1 < cfg.experts_per_token < cfg.num_experts
    assert cfg.expert_hidden_dim != cfg.hidden_dim and cfg.rope_layout == "interleaved"
    scout = from_hf_config(TINY_CONFIGS["scout"])
    assert scout.nope_layers == (3,) and scout.dense_layers == () and scout.experts_per_token == 1


@pytest.mark.parametrize(
    "knob, value",
    [
        ("attention_chunk_size", None),  # with layer_types full, the chunked layers become full
        ("qk_l2_norm", False),
        ("attn_temperature_tuning", False),
        ("router_weighting", "output"),
        ("nope_layers", None),
        ("rope_layout", "half"),
    ],
)
def test_each_llama4_knob_changes_the_logits(knob, value):
    """Switching any one of Llama 4's knobs off moves the logits far beyond the tolerance: each
    is needed for the parity above."""
    _, ours = loaded("all")
    changes = {knob: value}
    if knob == "attention_chunk_size":
        changes["layer_types"] = None
    variant = build(ours.config.replace(**changes))
    variant.load_state_dict(ours.state_dict())
    ids = random_ids(ours.config.vocab_size, length=SEQ_LEN, seed=7)
    with torch.no_grad():
        assert max_error(variant.eval()(ids), ours(ids)) > 1e-3


def test_config_round_trips_through_config_json():
    for variant in VARIANTS:
        cfg = from_hf_config(TINY_CONFIGS[variant])
        assert from_hf_config(to_hf_config(cfg)) == cfg


def test_the_multimodal_wrapper_config_is_read_through_its_text_config():
    text = {key: value for key, value in TINY_CONFIGS["all"].items() if key != "model_type"}
    wrapped = {"model_type": "llama4", "text_config": text, "vision_config": {"hidden_size": 8}}
    cfg = from_hf_config(wrapped)
    assert cfg.family == "llama4_text" and "text_config" in cfg.notes["text_config"]
    assert cfg == from_hf_config(TINY_CONFIGS["all"]).replace(notes=cfg.notes)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(no_rope_layers=[1, 0]), "no_rope_layers has 2 entries; it needs one per layer"),
        (dict(no_rope_layer_interval=0, no_rope_layers=None), "no_rope_layer_interval=0 must be a positive int"),
        (dict(interleave_moe_layer_step=0, moe_layers=None), "interleave_moe_layer_step=0 must be a positive int"),
        (dict(layer_types=["sliding_attention"] * 4), "layer_types entry 'sliding_attention' is not one of"),
        (dict(layer_types=["chunked_attention"] * 4, attention_chunk_size=None), "attention_chunk_size is None"),
        (dict(hidden_act="tanh"), "hidden_act='tanh' is not one of"),
        (dict(floor_scale=0), "attn_temperature_floor=0 must be a positive int"),
    ],
)
def test_config_keys_that_cannot_be_read_are_refused_by_name(changes, message):
    with pytest.raises(ValueError, match=message):
        from_hf_config(dict(TINY_CONFIGS["all"], **changes))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(rope_layout="half"), "cannot express rope_layout='half'"),
        (dict(router_weighting="output"), "cannot express router_weighting='output'"),
        (dict(router_renormalize=True), "cannot express router_renormalize=True"),
        (dict(qk_norm=True), "cannot express qk_norm=True"),
        (dict(attn_out_bias=False), "one attention_bias switches q, k, v and o together"),
    ],
)
def test_knobs_llama4_cannot_express_are_refused_when_writing(changes, message):
    cfg = from_hf_config(TINY_CONFIGS["all"]).replace(**changes)
    with pytest.raises(ValueError, match=message):
        to_hf_config(cfg)


def test_scout_preset_counts_are_transformers_counts_on_the_meta_device():
    """Llama 4 Scout's language model: total and active parameters against Llama4ForCausalLM
    built from the published text_config on the meta device (nothing allocated)."""
    from olm_edu.models import preset
    from olm_edu.models.presets import CONFIG_DIR

    published = transformers.AutoConfig.from_pretrained(CONFIG_DIR / "Llama-4-Scout-17B-16E.json").get_text_config()
    with torch.device("meta"):
        reference = transformers.Llama4ForCausalLM(published)
    total = sum(p.numel() for p in reference.parameters())
    routed = sum(p.numel() for name, p in reference.named_parameters() if ".feed_forward.experts." in name)
    counted = count_params(preset("Llama-4-Scout-17B-16E"))
    assert counted.total == total == 107_769_861_120
    assert counted.active == total - routed + routed // published.num_local_experts  # top-1 of 16
    assert round(counted.active / 1e9) == 17  # the "17B" of the name: active, input embedding included


def test_render_diff_from_llama_3_to_llama_4_is_the_list_of_llama_4_knobs():
    from olm_edu.models import preset, render_diff

    text = render_diff(preset("Llama-3.1-8B"), preset("Llama-4-Scout-17B-16E"))
    for knob in ("rope_layout", "nope_layers", "attention_chunk_size", "layer_types", "qk_l2_norm",
                 "attn_temperature_tuning", "num_experts", "num_shared_experts", "router_weighting", "router_scoring"):
        assert knob in text
    assert "[chunked, chunked, chunked, full] x 12" in text


def test_a_chunked_layer_caches_at_most_its_chunk():
    from olm_edu.models import preset

    scout = preset("Llama-4-Scout-17B-16E")
    per_token_layer = 2 * scout.kv_heads * scout.head_size * 2  # k and v, bf16
    # 36 chunked layers hold positions 131072 - 8192 .. 131071 at most; 12 NoPE layers hold all
    assert kv_cache_bytes(scout, 131_072) == per_token_layer * (36 * 8192 + 12 * 131_072)
    assert kv_cache_bytes(scout, 8193) == per_token_layer * (36 * 1 + 12 * 8193)  # a new chunk has begun
    scores = flops_per_token(scout, 131_072)["attention_scores"]
    assert scores == 2 * 2 * scout.num_heads * scout.head_size * (36 * 8192 + 12 * 131_072)  # q.k and the sum of v


def test_a_multimodal_checkpoint_loads_its_language_model():
    """A Llama4ForConditionalGeneration folder (the published releases' layout: config.json with a
    text_config, weights under language_model.) loads as the text model; the vision tower is skipped."""
    text = {key: value for key, value in TINY_CONFIGS["all"].items() if key != "model_type"}
    vision = dict(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vision_output_dim=16,
        image_size=28, patch_size=14, projector_input_dim=16, projector_output_dim=32,
    )  # fmt: skip
    reference = transformers.Llama4ForConditionalGeneration(transformers.Llama4Config(text_config=text, vision_config=vision))
    perturb_(reference.eval(), seed=1)
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
        ours = from_pretrained(folder)
    ids = random_ids(text["vocab_size"], length=SEQ_LEN)
    with torch.no_grad():
        assert max_error(ours(ids), reference(input_ids=ids).logits) <= TOLERANCE


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(attention_chunk_size=0), "attention_chunk_size=0 must be a positive int"),
        (dict(layer_types=("chunked_attention", "full_attention")), "attention_chunk_size is None"),
        (dict(attention_chunk_size=4, layer_types=("full_attention",) * 2), "no layer_types entry is chunked_attention"),
        (dict(attention_chunk_size=4, sliding_window=8), "say in layer_types which layers slide"),
        (dict(qk_l2_norm=True, position="learned"), "qk_l2_norm=True normalises the rotated queries"),
        (dict(attn_temperature_floor=0), "attn_temperature_floor=0 must be a positive int"),
        (dict(num_experts=4, experts_per_token=1, dense_layers=(2,)), r"dense_layers entry 2 must be a layer index"),
        (dict(num_experts=4, experts_per_token=1, dense_layers=(1, 1)), r"dense_layers=\(1, 1\) must be sorted"),
        (dict(num_experts=4, experts_per_token=1, router_weighting="both"), "router_weighting='both' is not one of"),
        (dict(dense_layers=(1,)), "dense_layers=.* is a mixture-of-experts knob, but num_experts=0"),
    ],
)
def test_llama4_knobs_are_validated_by_name(changes, message):
    from olm_edu.models import ModelConfig

    base = ModelConfig(vocab_size=32, max_seq_len=16, embed_dim=16, num_layers=2, num_heads=2, hidden_dim=32,
                       position="rope", norm="rmsnorm", norm_bias=False)  # fmt: skip
    with pytest.raises(ValueError, match=message):
        base.replace(**changes)


@pytest.mark.parametrize(
    "changes",
    [
        dict(moe_layers=[]),  # every layer dense: intermediate_size_mlp wide
        dict(moe_layers=None, interleave_moe_layer_step=2),  # Maverick's pattern: layers 1, 3
        dict(use_qk_norm=False, attn_temperature_tuning=False, attention_chunk_size=None),  # plain NoPE + RoPE
    ],
    ids=["all_dense", "step_2", "features_off"],
)
def test_other_layer_patterns_match_transformers_and_round_trip(changes, tmp_path):
    config_json = dict(TINY_CONFIGS["all"], **changes)
    cfg = from_hf_config(config_json)
    assert from_hf_config(to_hf_config(cfg)) == cfg
    reference = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**config_json), attn_implementation="eager"
    )
    perturb_(reference, seed=2)
    reference.eval().save_pretrained(tmp_path)
    ids = random_ids(config_json["vocab_size"], length=SEQ_LEN)
    with torch.no_grad():
        assert max_error(from_pretrained(tmp_path)(ids), reference(ids).logits) <= TOLERANCE


def test_missing_keys_take_the_transformers_defaults():
    """DEFAULTS of the family module are Llama4TextConfig's: a minimal config.json reads the same
    as the dict transformers fills in from it."""
    minimal = {"model_type": "llama4_text", "vocab_size": 96, "hidden_size": 64, "num_hidden_layers": 8,
               "num_attention_heads": 8, "num_key_value_heads": 2}  # fmt: skip
    filled = transformers.AutoConfig.for_model(**minimal).to_dict()
    assert from_hf_config(minimal, name="t") == from_hf_config(filled, name="t")
