"""Presets and config.json mapping: the published numbers, checked against transformers.

The independent reference is transformers itself: a model built from `to_hf_config(preset)` on
the meta device (no memory) must hold exactly the parameters `count_params` predicts, and the
config transformers reads from our dict must equal the one it reads from the published file.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from olm_edu.analysis import count_params
from olm_edu.models.config import ModelConfig
from olm_edu.models.diff import diff, diff_table, render_diff
from olm_edu.models.hf_config import SUPPORTED_FAMILIES, from_hf_config, to_hf_config
from olm_edu.models.presets import CONFIG_DIR, PRESETS, preset

FIXTURES = Path(__file__).parent / "fixtures" / "configs"
NAMES = list(PRESETS)

# Parameter counts of the published checkpoints (the totals the Hugging Face hub reports from
# their safetensors files; GPT-2's 124,439,808 is also nanoGPT's count). DeepSeek-V3's is the
# main model (the "671B"): its hub files add the multi-token-prediction module and FP8 scales.
PUBLISHED_TOTALS = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
    "Llama-3.1-8B": 8_030_261_248,
    "Llama-3.1-70B": 70_553_706_496,
    "Llama-3.1-405B": 405_853_388_800,
    "Llama-3.2-1B": 1_235_814_400,
    "Mistral-7B-v0.1": 7_241_732_096,
    "Qwen2.5-0.5B": 494_032_768,
    "Qwen2.5-7B": 7_615_616_512,
    "Qwen2.5-72B": 72_706_203_648,
    "Qwen3-0.6B": 596_049_920,
    "gemma-2-9b": 9_241_705_984,
    "Mixtral-8x7B-v0.1": 46_702_792_704,
    "Qwen3-30B-A3B": 30_532_122_624,
    "DeepSeek-V2-Lite": 15_706_484_224,
    "DeepSeek-V3": 671_026_404_352,
    # V3 plus 61 lightning indexers of 13,959,424 (no hub figure for the main model alone: the hub's
    # "685B" adds the MTP layer; this total is transformers' own meta-device count, see
    # tests/test_parity_deepseek_sparse.py)
    "DeepSeek-V3.2-Exp": 671_877_929_216,
    # DeepSeek-V4 (config.json written from the model cards and transformers' defaults, see
    # olm_edu/models/families/deepseek_v4.py): the cards say 284B and 1.6T; these totals are
    # transformers' own meta-device counts (tests/test_parity_deepseek_v4.py)
    "DeepSeek-V4-Flash": 284_332_230_231,
    "DeepSeek-V4-Pro": 1_572_973_188_067,
    # Part III. gpt-oss: the model cards' 20.91B and 116.83B (here from the transformers model
    # built on the meta device from the published config.json: the same number)
    "gpt-oss-20b": 20_914_757_184,
    "gpt-oss-120b": 116_829_156_672,
    # gemma-3-1b: Google's 999,885,952; gemma-3-27b: the language model of the multimodal
    # release (its text_config), 27.01B, transformers' meta-device count of Gemma3ForCausalLM
    "gemma-3-1b": 999_885_952,
    "gemma-3-27b": 27_009_346_304,
    # Olmo-3-1025-7B: 7.30B, transformers' meta-device count from the config.json
    "Olmo-3-7B": 7_298_011_136,
    # SmolLM3-3B: 3.08B, transformers' meta-device count from the config.json
    "SmolLM3-3B": 3_075_098_624,
    # the language model of the multimodal release (the hub's "109B" adds the vision encoder and
    # projector); no hub figure for the text part alone: transformers' meta-device count of
    # Llama4ForCausalLM, see tests/test_parity_llama4.py
    "Llama-4-Scout-17B-16E": 107_769_861_120,
    # The hybrids' totals are transformers 5.25's own meta-device counts of the config files (no
    # hub figure for the main model alone checked here: the hub pages count the MTP head too)
    "Qwen3-Next-80B-A3B-Instruct": 79_674_391_296,
    "Qwen3.5-9B": 8_953_803_264,
    "Qwen3.5-35B-A3B": 34_660_610_688,
    "Kimi-Linear-48B-A3B-Instruct": 49_122_675_072,
}

# transformers config fields that do not change the architecture
NOT_ARCHITECTURE = {
    "transformers_version", "dtype", "bos_token_id", "eos_token_id", "pad_token_id",
    "resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout", "use_cache",
}  # fmt: skip
MOE_FAMILIES = ("mixtral", "qwen3_moe", "deepseek_v2", "deepseek_v3")
DEEPSEEK_FAMILIES = ("deepseek_v2", "deepseek_v3")


def published(name: str) -> dict:
    return json.loads((CONFIG_DIR / f"{name}.json").read_text(encoding="utf-8"))


def transformers_config(config_json: dict):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoConfig.for_model(**config_json)


def meta_model(config_json: dict) -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(transformers_config(config_json))


def unique_param_count(model: torch.nn.Module) -> int:
    unique = {id(p): p.numel() for _, p in model.named_parameters(remove_duplicate=False)}
    return sum(unique.values())


def architecture_fields(config) -> dict:
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    if values.get("n_inner", 0) is None:  # GPT-2: None means 4 * n_embd
        values["n_inner"] = 4 * values["n_embd"]
    if isinstance(values.get("rope_parameters"), dict):  # "type" is the old spelling of rope_type
        values["rope_parameters"] = {k: v for k, v in values["rope_parameters"].items() if k != "type"}
    return {k: v for k, v in values.items() if k not in NOT_ARCHITECTURE}


# -- presets ------------------------------------------------------------------------------


def test_presets_are_the_published_models_each_with_its_config_json():
    assert set(PRESETS) == set(PUBLISHED_TOTALS)
    for name in NAMES:
        assert (CONFIG_DIR / f"{name}.json").is_file(), f"missing olm_edu/models/configs/{name}.json"
        assert preset(name).name == name


def test_preset_rejects_an_unknown_name_and_lists_the_presets():
    with pytest.raises(ValueError, match="Llama-3.1-8B") as error:
        preset("llama-9000")
    assert "llama-9000" in str(error.value)


@pytest.mark.parametrize("name", NAMES)
def test_preset_round_trips_through_config_json(name):
    cfg = preset(name)
    assert from_hf_config(to_hf_config(cfg)) == cfg


@pytest.mark.parametrize("name", NAMES)
def test_to_hf_config_gives_transformers_the_same_architecture_as_the_published_file(name):
    ours = architecture_fields(transformers_config(to_hf_config(preset(name))))
    theirs = transformers_config(published(name))
    if "text_config" in published(name):  # a multimodal release: its language model's config
        theirs = theirs.get_text_config()
        ours.pop("architectures")
        theirs = {k: v for k, v in architecture_fields(theirs).items() if k != "architectures"}
        if isinstance(theirs.get("rope_parameters"), dict):  # Qwen3.5's multimodal RoPE sections: the
            theirs["rope_parameters"] = {  # same rotation for text, whose three positions are equal
                k: v for k, v in theirs["rope_parameters"].items() if k not in ("mrope_section", "mrope_interleaved")
            }
        assert ours == theirs
        return
    assert ours == architecture_fields(theirs)


@pytest.mark.parametrize("name", NAMES)
def test_count_params_equals_the_transformers_model_on_the_meta_device(name):
    model = meta_model(to_hf_config(preset(name)))
    assert count_params(preset(name)).total == unique_param_count(model)


@pytest.mark.parametrize("name", NAMES)
def test_preset_has_the_published_parameter_count(name):
    assert count_params(preset(name)).total == PUBLISHED_TOTALS[name]


# Published (total, active) in billions, as the model cards give them (rounded to the nearest
# or down: Qwen's 3.35B is "3.3B"). Mistral and Qwen count the input embedding in "active";
# DeepSeek does not (V3's README: 36.6B activated, the "37B"). Each count is within 0.06B of
# the card only under its publisher's convention.
PUBLISHED_BILLIONS = {
    "Mixtral-8x7B-v0.1": (46.7, 12.9),
    "Qwen3-30B-A3B": (30.5, 3.3),
    "DeepSeek-V2-Lite": (15.7, 2.4),
    "DeepSeek-V3": (671, 36.6),
    "gpt-oss-20b": (20.9, 3.6),
    "gpt-oss-120b": (116.8, 5.1),
}
# Publishers that leave the input embedding out of "active" (OpenAI's model card: 3.6B and 5.1B)
WITHOUT_INPUT_EMBEDDING = ("DeepSeek", "gpt-oss")


@pytest.mark.parametrize("name", list(PUBLISHED_BILLIONS))
def test_moe_presets_have_the_published_total_and_active_counts(name):
    total, active = PUBLISHED_BILLIONS[name]
    count = count_params(preset(name))
    assert round(count.total / 1e9, 1 if total < 200 else 0) == total
    publishers, other = count.active / 1e9, count.active_without_input_embedding / 1e9
    if name.startswith(WITHOUT_INPUT_EMBEDDING):  # they leave the input embedding out of "activated"
        publishers, other = other, publishers
    assert abs(publishers - active) < 0.06 < abs(other - active)
    assert count.active < count.total


def test_deepseek_v3_mtp_module_is_counted_apart_from_the_671b():
    count = count_params(preset("DeepSeek-V3"))
    # DeepSeek's README: 11.5B unique MTP parameters besides the shared embedding and head
    # (one MoE layer, 11.5B, plus the 0.1B eh_proj that joins embedding and hidden state).
    assert 11.5e9 < count.mtp < 11.7e9
    assert preset("DeepSeek-V3").mtp_layers == 1 and count_params(preset("DeepSeek-V2-Lite")).mtp == 0


def test_presets_carry_the_subtle_published_facts():
    llama_1b = preset("Llama-3.2-1B")
    assert llama_1b.tie_embeddings and llama_1b.rope_scaling["rope_type"] == "llama3"
    assert llama_1b.rope_scaling["factor"] == 32.0 and "rope_theta" not in llama_1b.rope_scaling
    assert preset("Llama-3.1-8B").rope_scaling["factor"] == 8.0 and not preset("Llama-3.1-8B").tie_embeddings
    assert preset("Qwen2.5-0.5B").tie_embeddings and not preset("Qwen2.5-7B").tie_embeddings
    assert not preset("Qwen2.5-72B").tie_embeddings
    assert (preset("Qwen2.5-0.5B").vocab_size, preset("Qwen2.5-72B").vocab_size) == (151_936, 152_064)
    qwen = preset("Qwen2.5-7B")
    assert (qwen.qkv_bias, qwen.attn_out_bias, qwen.sliding_window) == (True, False, None)
    mistral = preset("Mistral-7B-v0.1")
    assert mistral.sliding_window == 4096 and mistral.layer_type(0) == mistral.layer_type(31) == "sliding_attention"
    qwen3 = preset("Qwen3-0.6B")
    assert qwen3.qk_norm and qwen3.head_size == 128 != qwen3.embed_dim // qwen3.num_heads
    gemma = preset("gemma-2-9b")
    assert (gemma.head_size, gemma.query_pre_attn_scalar, gemma.vocab_size) == (256, 256, 256_000)
    assert (gemma.attn_logit_softcap, gemma.final_logit_softcap) == (50.0, 30.0)
    assert (gemma.norm, gemma.norm_placement, gemma.scale_embeddings) == ("rmsnorm_gemma", "sandwich", True)
    assert [gemma.layer_type(i) for i in range(4)] == ["sliding_attention", "full_attention"] * 2
    assert preset("gpt2").activation == "gelu_tanh" and preset("gpt2").hidden_dim == 4 * 768
    mixtral = preset("Mixtral-8x7B-v0.1")
    assert (mixtral.num_experts, mixtral.experts_per_token, mixtral.router_renormalize) == (8, 2, True)
    assert mixtral.expert_width == mixtral.hidden_dim == 14336 and mixtral.load_balance_coef == 0.02
    qwen = preset("Qwen3-30B-A3B")
    assert (qwen.num_experts, qwen.experts_per_token, qwen.expert_hidden_dim, qwen.first_dense_layers) == (128, 8, 768, 0)
    assert qwen.qk_norm and qwen.router_renormalize and qwen.head_size == 128
    lite = preset("DeepSeek-V2-Lite")
    assert (lite.attention, lite.q_latent_dim, lite.kv_latent_dim, lite.rope_head_dim) == ("mla", None, 512, 64)
    assert (lite.num_shared_experts, lite.first_dense_layers, lite.router_renormalize) == (2, 1, False)
    assert lite.rope_layout == "interleaved" and lite.rope_scaling["mscale_all_dim"] == 0.707
    v3 = preset("DeepSeek-V3")
    assert (v3.q_latent_dim, v3.head_size, v3.value_head_size, v3.qk_head_size) == (1536, 128, 128, 192)
    assert (v3.router_scoring, v3.router_selection_bias, v3.router_group_score) == ("sigmoid", True, "top2_sum")
    assert (v3.expert_groups, v3.groups_per_token, v3.routed_scaling_factor) == (8, 4, 2.5)
    assert (v3.num_experts, v3.experts_per_token, v3.num_shared_experts, v3.first_dense_layers) == (256, 8, 1, 3)


# -- from_hf_config -----------------------------------------------------------------------


def test_from_hf_config_rejects_an_unknown_model_type_and_lists_the_supported_ones():
    with pytest.raises(ValueError, match="bert") as error:
        from_hf_config({"model_type": "bert", "hidden_size": 768})
    for family in SUPPORTED_FAMILIES:
        assert family in str(error.value)


@pytest.mark.parametrize(
    "model_type, missing", [("llama", "intermediate_size"), ("gpt2", "n_embd"), ("gemma2", "vocab_size")]
)
def test_from_hf_config_names_a_missing_required_key(model_type, missing):
    source = {"gpt2": "gpt2", "llama": "Llama-3.1-8B", "gemma2": "gemma-2-9b"}[model_type]
    config_json = published(source)
    del config_json[missing]
    with pytest.raises(ValueError, match=repr(missing)):
        from_hf_config(config_json)


@pytest.mark.parametrize("name", ["gpt2", "Llama-3.2-1B", "Qwen3-0.6B", "gemma-2-9b"])
def test_from_hf_config_reads_files_saved_by_transformers_5_with_rope_parameters(name):
    # These fixtures were written by transformers 5.23's `to_json_file`: rope_parameters
    # instead of rope_theta/rope_scaling, explicit layer_types, only non-default keys.
    path = FIXTURES / f"{name}.transformers-5.23.json"
    assert from_hf_config(path, name=name) == preset(name)


def test_from_hf_config_reads_a_model_folder_and_names_the_config_after_it(tmp_path):
    folder = tmp_path / "my-gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(published("gpt2")), encoding="utf-8")
    cfg = from_hf_config(folder)
    assert cfg.name == "my-gpt2" and cfg.replace(name="gpt2") == preset("gpt2")


MINIMAL = {
    "gpt2": {"vocab_size": 96, "n_embd": 32, "n_layer": 2, "n_head": 4},
    **{
        family: {
            "vocab_size": 96,
            "hidden_size": 64,
            "intermediate_size": 80,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,  # Mistral's and Qwen's defaults (8, 32) need more heads
        }
        for family in ("llama", "mistral", "qwen2", "qwen3", "gemma2", "mixtral", "qwen3_moe")
    },
    # latent attention gives every head its keys and values; V2 has no default top-k
    "deepseek_v2": {
        "vocab_size": 96, "hidden_size": 64, "intermediate_size": 80, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 4, "num_experts_per_tok": 2,
    },
    "deepseek_v3": {
        "vocab_size": 96, "hidden_size": 64, "intermediate_size": 80, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 4,
    },
}  # fmt: skip


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_from_hf_config_fills_missing_keys_with_the_transformers_defaults(family):
    minimal = {"model_type": family, **MINIMAL[family]}
    filled_by_transformers = transformers_config(minimal).to_dict()
    assert from_hf_config(minimal, name="t") == from_hf_config(filled_by_transformers, name="t")


def test_qwen2_sliding_window_only_counts_when_use_sliding_window_is_on():
    config_json = published("Qwen2.5-7B")
    assert config_json["sliding_window"] == 131_072 and from_hf_config(config_json).sliding_window is None
    config_json.update(use_sliding_window=True, sliding_window=4096, max_window_layers=20)
    cfg = from_hf_config(config_json)
    assert [cfg.layer_type(i) for i in (19, 20, 27)] == ["full_attention", "sliding_attention", "sliding_attention"]


def test_mistral_with_a_null_sliding_window_attends_to_everything():
    cfg = from_hf_config({**published("Mistral-7B-v0.1"), "sliding_window": None})
    assert cfg.sliding_window is None and cfg.layer_type(0) == "full_attention"


# -- to_hf_config -------------------------------------------------------------------------


def tiny(family: str, **knobs) -> ModelConfig:
    """A small config of `family` with the knobs its class allows switched on."""
    base = from_hf_config({"model_type": family, **MINIMAL[family]}, name=f"tiny-{family}")
    return base.replace(**knobs)


TINY_CONFIGS = {
    "gpt2": dict(tie_embeddings=False, activation="relu", hidden_dim=48, norm_eps=1e-6, max_seq_len=64),
    "llama": dict(
        num_kv_heads=None,
        head_dim=24,
        qkv_bias=True,
        attn_out_bias=True,
        ffn_bias=True,
        tie_embeddings=True,
        rope_theta=50_000.0,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
        activation="gelu_tanh",
    ),
    "mistral": dict(num_kv_heads=None, head_dim=32, sliding_window=8),
    "qwen2": dict(head_dim=8, sliding_window=8, layer_types=("full_attention",) * 2 + ("sliding_attention",) * 2),
    "qwen3": dict(
        num_kv_heads=1,
        qkv_bias=True,
        attn_out_bias=True,
        sliding_window=8,
        layer_types=("sliding_attention", "full_attention", "full_attention", "sliding_attention"),
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    ),
    "gemma2": dict(
        num_kv_heads=1,
        head_dim=32,
        qkv_bias=True,
        attn_out_bias=True,
        query_pre_attn_scalar=24.0,
        attn_logit_softcap=20.0,
        final_logit_softcap=None,
        causal=False,
        tie_embeddings=False,
        sliding_window=8,
        layer_types=("full_attention", "sliding_attention", "sliding_attention", "full_attention"),
    ),
    "mixtral": dict(num_experts=4, experts_per_token=2, head_dim=24, sliding_window=8, load_balance_coef=0.01),
    "qwen3_moe": dict(
        num_experts=8, experts_per_token=3, expert_hidden_dim=16, first_dense_layers=1, router_renormalize=True,
        qkv_bias=True, attn_out_bias=True, sliding_window=8, num_kv_heads=1,
    ),
    "deepseek_v2": dict(
        q_latent_dim=None, kv_latent_dim=16, rope_head_dim=8, head_dim=12, value_head_dim=10, num_experts=8,
        experts_per_token=3, expert_hidden_dim=16, num_shared_experts=2, first_dense_layers=1, expert_groups=4,
        groups_per_token=2, routed_scaling_factor=2.0, ffn_bias=True, qkv_bias=True, attn_out_bias=True,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "mscale_all_dim": 0.8},
    ),
    "deepseek_v3": dict(
        q_latent_dim=24, kv_latent_dim=16, rope_head_dim=8, head_dim=12, num_experts=8, experts_per_token=2,
        expert_hidden_dim=16, num_shared_experts=0, first_dense_layers=2, expert_groups=2, groups_per_token=1,
        router_renormalize=False, rope_layout="half", mtp_layers=2, tie_embeddings=True,
    ),
}  # fmt: skip


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # transformers' 0 shared experts
@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_tiny_configs_with_features_switched_on_round_trip_and_count_like_transformers(family):
    cfg = tiny(family, **TINY_CONFIGS[family])
    config_json = to_hf_config(cfg)
    assert from_hf_config(config_json) == cfg
    assert count_params(cfg).total == unique_param_count(meta_model(config_json))
    hf = transformers_config(config_json)
    if family in DEEPSEEK_FAMILIES:  # their head_dim attribute holds the RoPE width
        assert (hf.qk_nope_head_dim, hf.qk_rope_head_dim) == (cfg.head_size, cfg.rope_head_dim)
    elif family != "gpt2":
        assert (getattr(hf, "head_dim", None) or cfg.embed_dim // cfg.num_heads) == cfg.head_size
    if family in ("qwen2", "qwen3", "gemma2"):  # the families with per-layer attention types
        assert hf.layer_types == [cfg.layer_type(i) for i in range(cfg.num_layers)]


@pytest.mark.parametrize(
    "family, knobs, knob",
    [
        ("llama", dict(qk_norm=True), "qk_norm"),
        ("llama", dict(qkv_bias=True, attn_out_bias=False), "attn_out_bias"),
        ("llama", dict(sliding_window=8), "sliding_window"),
        ("mistral", dict(sliding_window=8, layer_types=("full_attention", "sliding_attention") * 2), "layer_types"),
        ("qwen2", dict(qkv_bias=False), "qkv_bias"),
        ("qwen3", dict(qk_norm=False), "qk_norm"),
        ("gemma2", dict(norm_placement="pre"), "norm_placement"),
        ("gpt2", dict(num_kv_heads=2), "num_kv_heads"),
        ("gpt2", dict(norm="rmsnorm", norm_bias=False), "norm"),
        ("llama", dict(query_pre_attn_scalar=8.0), "query_pre_attn_scalar"),
        ("llama", dict(num_experts=4, experts_per_token=2), "num_experts"),
        ("mixtral", dict(num_shared_experts=1), "num_shared_experts"),
        ("mixtral", dict(router_renormalize=False), "router_renormalize"),
        ("qwen3_moe", dict(router_scoring="sigmoid"), "router_scoring"),
        ("deepseek_v2", dict(router_selection_bias=True), "router_selection_bias"),
        ("deepseek_v2", dict(rope_layout="half"), "rope_layout"),
        ("deepseek_v3", dict(router_group_score="max"), "router_group_score"),
        ("deepseek_v3", dict(attention="standard", kv_latent_dim=None, rope_head_dim=None, q_latent_dim=None), "attention"),
    ],
)
def test_to_hf_config_names_a_knob_the_family_cannot_express(family, knobs, knob):
    with pytest.raises(ValueError, match=knob):
        to_hf_config(tiny(family, **knobs))


def test_to_hf_config_rejects_the_custom_family():
    with pytest.raises(ValueError, match="custom"):
        to_hf_config(preset("gpt2").replace(family="custom"))


# -- diff ---------------------------------------------------------------------------------


def test_diff_from_gpt2_to_llama_names_the_changed_knobs_and_only_those():
    gpt2, llama = preset("gpt2"), preset("Llama-3.1-8B")
    changes = {change.knob: (change.before, change.after) for change in diff(gpt2, llama)}
    for knob in ("norm", "norm_bias", "position", "ffn", "activation", "qkv_bias", "attn_out_bias",
                 "ffn_bias", "tie_embeddings", "num_kv_heads", "rope_scaling", "embed_dim"):  # fmt: skip
        assert knob in changes, f"{knob} differs between GPT-2 and Llama 3 but is not in the diff"
    for knob in ("norm_eps", "norm_placement", "causal", "qk_norm", "sliding_window", "name", "notes", "family"):
        assert knob not in changes
    assert changes["num_kv_heads"] == (None, 8) and changes["position"] == ("learned", "rope")


def test_diff_of_a_config_with_itself_is_empty():
    assert diff(preset("gemma-2-9b"), preset("gemma-2-9b")) == []
    assert "no knob differs" in render_diff(preset("gpt2"), preset("gpt2"))


def test_render_diff_is_an_aligned_table_headed_by_both_names():
    lines = render_diff(preset("gpt2"), preset("Llama-3.1-8B")).splitlines()
    assert "gpt2" in lines[0] and "Llama-3.1-8B" in lines[0]
    column = lines[0].index("Llama-3.1-8B")
    norm_line = next(line for line in lines if line.startswith("norm "))
    assert norm_line[column:].startswith("rmsnorm"), "values must line up under their config's name"


def test_diff_table_shows_as_html_in_jupyter_and_as_text_when_printed():
    table = diff_table(preset("gpt2"), preset("Llama-3.1-8B"))
    html = table._repr_html_()
    assert html.startswith("<table>") and "<td>rmsnorm</td>" in html and "<th>knob</th>" in html
    assert str(table) == render_diff(preset("gpt2"), preset("Llama-3.1-8B"))


def test_render_diff_shows_gemma3_five_local_per_global_layers_as_a_pattern_with_its_remainder():
    text = render_diff(preset("gemma-2-9b"), preset("gemma-3-27b"))
    assert "[sliding x 5, full x 1] x 10, sliding x 2" in " ".join(text.split())
    assert "[sliding x 5, full x 1] x 4, sliding x 2" in " ".join(render_diff(preset("gpt2"), preset("gemma-3-1b")).split())


def test_render_diff_shows_gemma2_alternating_layers_as_a_pattern_and_unused_rope_knobs_as_dashes():
    text = render_diff(preset("Llama-3.1-8B"), preset("gemma-2-9b"))
    assert "[sliding, full] x 21" in text
    rope_line = next(line for line in render_diff(preset("gpt2"), preset("Llama-3.1-8B")).splitlines()
                     if line.startswith("rope_theta"))  # fmt: skip
    assert rope_line.split()[1:] == ["-", "500000.0"], "GPT-2 has no RoPE, so its rope_theta is shown as '-'"
