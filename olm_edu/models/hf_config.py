"""Hugging Face `config.json` <-> `ModelConfig`.

Every published checkpoint ships a `config.json`: the architecture written in the vocabulary of
its family's transformers class (`n_embd` for GPT-2, `hidden_size` for Llama, ...).
`from_hf_config` reads one into the course's knobs; `to_hf_config` writes the knobs back as the
`config.json` of `cfg.family`, so transformers can build a reference model for a parity test.

What each family fixes and what its config.json leaves free:

    family   norm           placement  position  ffn      q/k/v bias      o bias  extras
    gpt2     layernorm      pre        learned   classic  yes             yes     n_inner
    llama    rmsnorm        pre        rope      glu      attention_bias (q,k,v,o) mlp_bias
    mistral  rmsnorm        pre        rope      glu      no              no      sliding_window (all layers)
    qwen2    rmsnorm        pre        rope      glu      yes             no      sliding layers from max_window_layers
    qwen3    rmsnorm        pre        rope      glu      attention_bias (q,k,v,o) qk_norm always on
    gemma2   rmsnorm_gemma  sandwich   rope      glu      attention_bias (q,k,v,o) soft-caps, scaled embeddings,
                                                                                 query_pre_attn_scalar, sliding layers

The mixture-of-experts families add routed experts (and DeepSeek multi-head latent attention):

    family       attention  router                                           extras
    mixtral      GQA        softmax, top-k, renormalised                     as mistral; experts of intermediate_size
    qwen3_moe    GQA        softmax, top-k, norm_topk_prob                   as qwen3 (sliding on every layer when
                                                                             use_sliding_window); dense layers from
                                                                             mlp_only_layers / decoder_sparse_step
    deepseek_v2  MLA        softmax, greedy or group_limited_greedy (max),   shared experts, first_k_dense_replace,
                            not renormalised, routed_scaling_factor          interleaved RoPE, mlp_bias
    deepseek_v3  MLA        sigmoid + selection bias (e_score_correction_    as deepseek_v2; rope_interleave;
                            bias), groups by top-2 sum, norm_topk_prob,      num_nextn_predict_layers (MTP,
                            routed_scaling_factor                            not in the main model)

`load_balance_coef` is read from router_aux_loss_coef (mixtral, qwen3_moe: the coefficient
their transformers classes train with); DeepSeek's configs carry no coefficient transformers
reads, so it is 0 there. router_z_loss_coef and router_bias_update_rate have no config.json key:
they are read as 0 and not written. DeepSeek-V2's norm_topk_prob is ignored, as transformers
5.23's DeepseekV2 ignores it.

Missing optional keys take the defaults of the family's config class in transformers 5.23.
RoPE is read from either style: `rope_theta` + `rope_scaling` (the published files) or
transformers 5's `rope_parameters`; `to_hf_config` writes the published style, which both
transformers 4 and 5 accept. `dropout` is always read as 0 (published configs describe
inference); `to_hf_config` writes `cfg.dropout` into the family's dropout fields.

A config made by `from_hf_config` is canonical: `num_kv_heads` and `head_dim` are None when
they equal their defaults, and `layer_types` is None unless layers differ. For such configs
`from_hf_config(to_hf_config(cfg)) == cfg`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from olm_edu.models import families
from olm_edu.models.config import ModelConfig

SUPPORTED_FAMILIES = (
    "gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma2", "mixtral", "qwen3_moe", "deepseek_v2", "deepseek_v3",
)  # fmt: skip
MOE_FAMILIES = ("mixtral", "qwen3_moe", "deepseek_v2", "deepseek_v3")
DEEPSEEK_FAMILIES = ("deepseek_v2", "deepseek_v3")

ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "deepseek_v2": "DeepseekV2ForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
}

# Defaults of the transformers 5.23 config classes, for keys a config.json may leave out.
_ROPE_FAMILY_DEFAULTS = {
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10_000.0,
    "tie_word_embeddings": False,
    "head_dim": None,
    "attention_bias": False,
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt2": {
        "n_positions": 1024,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "add_cross_attention": False,
    },
    "llama": {
        **_ROPE_FAMILY_DEFAULTS,
        "num_key_value_heads": None,
        "max_position_embeddings": 2048,
        "mlp_bias": False,
    },
    "mistral": {
        **_ROPE_FAMILY_DEFAULTS,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131_072,
        "sliding_window": 4096,
    },
    "qwen2": {
        **_ROPE_FAMILY_DEFAULTS,
        "num_key_value_heads": 32,
        "max_position_embeddings": 32_768,
        "use_sliding_window": False,
        "sliding_window": 4096,
        "max_window_layers": 28,
        "layer_types": None,
    },
    "qwen3": {
        **_ROPE_FAMILY_DEFAULTS,
        "num_key_value_heads": 32,
        "head_dim": 128,
        "max_position_embeddings": 32_768,
        "use_sliding_window": False,
        "sliding_window": 4096,
        "max_window_layers": 28,
        "layer_types": None,
    },
    "gemma2": {
        **_ROPE_FAMILY_DEFAULTS,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
        "query_pre_attn_scalar": 256,
        "sliding_window": 4096,
        "layer_types": None,
        "final_logit_softcapping": 30.0,
        "attn_logit_softcapping": 50.0,
        "use_bidirectional_attention": False,
    },
    "mixtral": {
        **_ROPE_FAMILY_DEFAULTS,
        "rope_theta": 1_000_000.0,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131_072,
        "rms_norm_eps": 1e-5,
        "sliding_window": None,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "router_aux_loss_coef": 0.001,
        "router_jitter_noise": 0.0,
    },
    "qwen3_moe": {
        **_ROPE_FAMILY_DEFAULTS,
        "num_key_value_heads": 4,
        "max_position_embeddings": 32_768,
        "use_sliding_window": False,
        "sliding_window": 4096,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": 768,
        "norm_topk_prob": False,
        "decoder_sparse_step": 1,
        "mlp_only_layers": None,
        "router_aux_loss_coef": 0.001,
    },
    "deepseek_v2": {
        **_ROPE_FAMILY_DEFAULTS,
        "num_key_value_heads": None,
        "max_position_embeddings": 2048,
        "mlp_bias": False,
        "first_k_dense_replace": 0,
        "kv_lora_rank": 512,
        "q_lora_rank": 1536,
        "n_group": None,
        "topk_group": None,
        "topk_method": "greedy",
        "n_routed_experts": 64,
        "n_shared_experts": 2,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "routed_scaling_factor": 1.0,
        "num_experts_per_tok": None,
        "moe_intermediate_size": 1407,
        "moe_layer_freq": 1,
    },
    "deepseek_v3": {
        **_ROPE_FAMILY_DEFAULTS,
        "num_key_value_heads": 128,
        "max_position_embeddings": 4096,
        "first_k_dense_replace": 3,
        "kv_lora_rank": 512,
        "q_lora_rank": 1536,
        "n_group": 8,
        "topk_group": 4,
        "n_routed_experts": 256,
        "n_shared_experts": 1,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "routed_scaling_factor": 2.5,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": 2048,
        "norm_topk_prob": True,
        "rope_interleave": True,
        "num_nextn_predict_layers": 1,
        "moe_layer_freq": 1,
    },
}

# config.json activation names -> course names. gelu_new (GPT-2) and gelu_pytorch_tanh are the
# same function, the tanh approximation of GELU.
_ACTIVATIONS_IN = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}


# -- reading ------------------------------------------------------------------------------


class Keys:
    """A config.json's values, with the family's transformers defaults for missing keys."""

    def __init__(self, data: dict[str, Any], family: str) -> None:
        self.data, self.family = data, family

    def __getitem__(self, key: str) -> Any:
        if key in self.data:
            return self.data[key]
        defaults = DEFAULTS[self.family] if self.family in DEFAULTS else families.REGISTRY[self.family].DEFAULTS
        return defaults[key]

    def required(self, key: str) -> Any:
        if key not in self.data:
            raise ValueError(f"config.json of model_type={self.family!r} lacks the required key {key!r}")
        return self.data[key]

    def activation(self, key: str) -> str:
        value = self[key]
        if value not in _ACTIVATIONS_IN:
            raise ValueError(f"{key}={value!r} is not one of {tuple(_ACTIVATIONS_IN)}")
        return _ACTIVATIONS_IN[value]


def _load(config: dict | str | Path) -> tuple[dict[str, Any], str | None]:
    """(the config.json as a dict, a name from its folder or file when read from disk)."""
    if isinstance(config, dict):
        return dict(config), None
    if hasattr(config, "to_dict"):  # a transformers PretrainedConfig
        return config.to_dict(), None
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"no config.json at {str(config)!r}")
    name = path.parent.name if path.name == "config.json" else path.stem
    return json.loads(path.read_text(encoding="utf-8")), name


def _read_rope(keys: Keys) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling in config.json style with "rope_type", or None)."""
    if keys.data.get("rope_parameters"):  # transformers 5 keeps theta and scaling in one dict
        scaling = dict(keys.data["rope_parameters"])
        theta = scaling.pop("rope_theta", keys["rope_theta"])
    else:
        theta = keys["rope_theta"]
        scaling = dict(keys.data["rope_scaling"]) if keys.data.get("rope_scaling") else None
    if scaling is None:
        return float(theta), None
    if "type" in scaling:  # the pre-2024 spelling of rope_type
        scaling.setdefault("rope_type", scaling["type"])
        del scaling["type"]
    if scaling.pop("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"partial_rotary_factor is not supported by model_type={keys.family!r}")
    if scaling == {"rope_type": "default"}:
        scaling = None
    return float(theta), scaling


def _canonical_layers(types: list[str], window: int | None) -> tuple[tuple[str, ...] | None, int | None]:
    """(layer_types, sliding_window) with layer_types None whenever all layers are alike."""
    if window is None or "sliding_attention" not in types:
        return None, None
    if all(kind == "sliding_attention" for kind in types):
        return None, window
    return tuple(types), window


def _gemma2_default_layer_types(num_layers: int) -> list[str]:
    # transformers 5.23's Gemma2Config: layers 0, 2, 4, ... slide; 1, 3, 5, ... see everything.
    return ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(num_layers)]


def _read_layers(keys: Keys, num_layers: int) -> tuple[tuple[str, ...] | None, int | None]:
    family = keys.family
    if family == "llama":
        return None, None
    if family in ("mistral", "mixtral"):  # one window for every layer, or none
        return None, keys["sliding_window"]
    if family == "qwen3_moe":  # Qwen3MoeAttention slides every layer when use_sliding_window is on
        return None, keys["sliding_window"] if keys["use_sliding_window"] else None
    if family in DEEPSEEK_FAMILIES:
        return None, None
    if family in ("qwen2", "qwen3"):
        window = keys["sliding_window"] if keys["use_sliding_window"] else None
        types = keys["layer_types"] or [
            "sliding_attention" if i >= keys["max_window_layers"] else "full_attention" for i in range(num_layers)
        ]
        return _canonical_layers(types, window)
    types = keys["layer_types"] or _gemma2_default_layer_types(num_layers)
    return _canonical_layers(types, keys["sliding_window"])


def _gpt2_knobs(keys: Keys) -> dict[str, Any]:
    if not keys["scale_attn_weights"] or keys["scale_attn_by_inverse_layer_idx"]:
        raise ValueError("scale_attn_weights=False or scale_attn_by_inverse_layer_idx=True is not a ModelConfig knob")
    if keys["add_cross_attention"]:
        raise ValueError("add_cross_attention=True makes an encoder-decoder; ModelConfig is decoder-only")
    embed_dim = keys.required("n_embd")
    return dict(
        vocab_size=keys.required("vocab_size"),
        max_seq_len=keys["n_positions"],
        embed_dim=embed_dim,
        num_layers=keys.required("n_layer"),
        num_heads=keys.required("n_head"),
        hidden_dim=keys["n_inner"] or 4 * embed_dim,
        norm="layernorm",
        norm_placement="pre",
        norm_eps=float(keys["layer_norm_epsilon"]),
        norm_bias=True,
        position="learned",
        ffn="classic",
        activation=keys.activation("activation_function"),
        ffn_bias=True,
        qkv_bias=True,
        attn_out_bias=True,
        tie_embeddings=bool(keys["tie_word_embeddings"]),
        init_std=float(keys["initializer_range"]),
    )


def _rope_family_knobs(keys: Keys) -> dict[str, Any]:
    family = keys.family
    embed_dim = keys.required("hidden_size")
    num_heads = keys.required("num_attention_heads")
    num_layers = keys.required("num_hidden_layers")
    num_kv_heads = keys["num_key_value_heads"]
    head_dim = keys["head_dim"]
    rope_theta, rope_scaling = _read_rope(keys)
    layer_types, sliding_window = _read_layers(keys, num_layers)
    if family == "qwen2":
        qkv_bias, attn_out_bias = True, False
    elif family in ("mistral", "mixtral"):
        qkv_bias = attn_out_bias = False
    else:
        qkv_bias = attn_out_bias = bool(keys["attention_bias"])
    gemma = family == "gemma2"
    knobs = dict(
        vocab_size=keys.required("vocab_size"),
        max_seq_len=keys["max_position_embeddings"],
        embed_dim=embed_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=keys.required("intermediate_size"),
        num_kv_heads=None if num_kv_heads in (None, num_heads) else num_kv_heads,
        head_dim=None if head_dim is None or head_dim * num_heads == embed_dim else head_dim,
        norm="rmsnorm_gemma" if gemma else "rmsnorm",
        norm_placement="sandwich" if gemma else "pre",
        norm_eps=float(keys["rms_norm_eps"]),
        norm_bias=False,
        position="rope",
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        rope_layout="half",
        ffn="glu",
        activation=keys.activation("hidden_activation" if gemma else "hidden_act"),
        ffn_bias=bool(keys["mlp_bias"]) if family in ("llama", "deepseek_v2") else False,
        qkv_bias=qkv_bias,
        attn_out_bias=attn_out_bias,
        qk_norm=family in ("qwen3", "qwen3_moe"),
        attn_logit_softcap=keys["attn_logit_softcapping"] if gemma else None,
        query_pre_attn_scalar=float(keys["query_pre_attn_scalar"]) if gemma else None,
        sliding_window=sliding_window,
        layer_types=layer_types,
        causal=not keys["use_bidirectional_attention"] if gemma else True,
        tie_embeddings=bool(keys["tie_word_embeddings"]),
        scale_embeddings=gemma,
        final_logit_softcap=keys["final_logit_softcapping"] if gemma else None,
        init_std=float(keys["initializer_range"]),
    )
    if family in DEEPSEEK_FAMILIES:
        knobs.update(_mla_knobs(keys))
    if family in MOE_FAMILIES:
        knobs.update(_moe_knobs(keys, num_layers))
    return knobs


def _mla_knobs(keys: Keys) -> dict[str, Any]:
    """DeepSeek's multi-head latent attention. Its head_dim is qk_nope_head_dim (the head_dim
    key that transformers 5 writes holds qk_rope_head_dim, for its RoPE code, and is ignored)."""
    num_heads, embed_dim = keys.required("num_attention_heads"), keys.required("hidden_size")
    if keys["num_key_value_heads"] not in (None, num_heads):
        raise ValueError(
            f"num_key_value_heads={keys['num_key_value_heads']} must equal num_attention_heads={num_heads}: "
            "latent attention gives every head its own keys and values"
        )
    head_dim, value_head_dim = keys["qk_nope_head_dim"], keys["v_head_dim"]
    layout = "interleaved" if keys.family == "deepseek_v2" or keys["rope_interleave"] else "half"
    return dict(
        attention="mla",
        num_kv_heads=None,
        head_dim=None if head_dim * num_heads == embed_dim else head_dim,
        q_latent_dim=keys["q_lora_rank"],
        kv_latent_dim=keys["kv_lora_rank"],
        rope_head_dim=keys["qk_rope_head_dim"],
        value_head_dim=None if value_head_dim == head_dim else value_head_dim,
        rope_layout=layout,
    )


def _moe_layers(keys: Keys, num_layers: int) -> int:
    """Qwen3-MoE's decoder_sparse_step and mlp_only_layers, as a count of leading dense layers."""
    dense = set(keys["mlp_only_layers"] or [])
    step = keys["decoder_sparse_step"]
    moe = [i for i in range(num_layers) if i not in dense and (i + 1) % step == 0]
    first_dense = num_layers - len(moe)
    if moe != list(range(first_dense, num_layers)):
        raise ValueError(
            f"decoder_sparse_step={step}, mlp_only_layers={sorted(dense)} put dense layers between MoE layers; "
            "the knob first_dense_layers only expresses dense layers before the first MoE layer"
        )
    return first_dense


def _moe_knobs(keys: Keys, num_layers: int) -> dict[str, Any]:
    family, hidden_dim = keys.family, keys.required("intermediate_size")
    if family == "mixtral":
        if keys["router_jitter_noise"]:
            raise ValueError(f"router_jitter_noise={keys['router_jitter_noise']} is not a ModelConfig knob")
        return dict(
            num_experts=keys["num_local_experts"],
            experts_per_token=keys["num_experts_per_tok"],
            router_renormalize=True,
            load_balance_coef=float(keys["router_aux_loss_coef"]),
        )
    if family == "qwen3_moe":
        # published files say num_experts; transformers 5 writes it as num_local_experts
        num_experts = keys.data.get("num_local_experts", keys["num_experts"])
        if not num_experts:
            return dict(load_balance_coef=float(keys["router_aux_loss_coef"]))  # every layer dense
        expert_dim = keys["moe_intermediate_size"]
        return dict(
            num_experts=num_experts,
            experts_per_token=keys["num_experts_per_tok"],
            expert_hidden_dim=None if expert_dim == hidden_dim else expert_dim,
            first_dense_layers=_moe_layers(keys, num_layers),
            router_renormalize=bool(keys["norm_topk_prob"]),
            load_balance_coef=float(keys["router_aux_loss_coef"]),
        )
    expert_dim, top_k = keys["moe_intermediate_size"], keys["num_experts_per_tok"]
    if top_k is None:  # DeepSeek-V2's class has no default for it
        raise ValueError(f"config.json of model_type={family!r} lacks the required key 'num_experts_per_tok'")
    if keys["moe_layer_freq"] != 1:
        raise ValueError(f"moe_layer_freq={keys['moe_layer_freq']} is not a knob: transformers puts experts on every layer")
    knobs = dict(
        num_experts=keys["n_routed_experts"],
        experts_per_token=top_k,
        expert_hidden_dim=None if expert_dim == hidden_dim else expert_dim,
        num_shared_experts=keys["n_shared_experts"] or 0,
        first_dense_layers=keys["first_k_dense_replace"] or 0,
        routed_scaling_factor=float(keys["routed_scaling_factor"]),
    )
    if family == "deepseek_v2":
        method = keys["topk_method"]
        if method not in ("greedy", "group_limited_greedy"):
            raise ValueError(f"topk_method={method!r} is not one of ('greedy', 'group_limited_greedy')")
        if method == "group_limited_greedy":
            knobs.update(expert_groups=keys["n_group"], groups_per_token=keys["topk_group"])
        return dict(knobs, router_scoring="softmax", router_renormalize=False, router_group_score="max")
    return dict(
        knobs,
        router_scoring="sigmoid",
        router_renormalize=bool(keys["norm_topk_prob"]),
        expert_groups=keys["n_group"] or 1,
        groups_per_token=keys["topk_group"] or 1,
        router_group_score="top2_sum",
        router_selection_bias=True,
        mtp_layers=keys["num_nextn_predict_layers"],
    )


def from_hf_config(config: dict | str | Path, name: str | None = None) -> ModelConfig:
    """The `ModelConfig` of a Hugging Face config.json (a dict, the file, or its folder; a
    transformers config object also works).

    `name` defaults to the config's `_name_or_path`, then to the folder (or file) it was read
    from, then to the model_type. Raises ValueError for an unsupported model_type, a missing
    required key (named), or an option no knob expresses.
    """
    data, name_from_path = _load(config)
    data, wrapper = _unwrap_text_config(data)
    family = data.get("model_type")
    supported = supported_families()
    if family not in supported:
        raise ValueError(f"model_type={family!r} is not supported; supported: {supported}")
    keys = Keys(data, family)
    if family in families.REGISTRY:
        knobs = families.REGISTRY[family].read(keys)
    else:
        knobs = _gpt2_knobs(keys) if family == "gpt2" else _rope_family_knobs(keys)
    name = name or data.get("_name_or_path") or name_from_path or family
    notes = {"source": str(config)} if name_from_path else {}
    if wrapper:
        notes["text_config"] = f"read from the text_config of a model_type={wrapper!r} config (the language model only)"
    return ModelConfig(name=name, family=family, dropout=0.0, notes=notes, **knobs)


def supported_families() -> tuple[str, ...]:
    """Every model_type `from_hf_config` reads: Parts I–II's and the registered family modules'."""
    return SUPPORTED_FAMILIES + tuple(sorted(families.REGISTRY))


def _unwrap_text_config(data: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """A multimodal release (Gemma 3 27B, Llama 4, Qwen3.5) keeps its language model's config
    in `text_config`: return that (with its model_type filled in) and the wrapper's model_type.
    Keys the text config leaves out take the text family's defaults, as transformers does;
    tie_word_embeddings, when only the wrapper has it, is taken from the wrapper."""
    wrapper = data.get("model_type")
    text = data.get("text_config")
    if wrapper in supported_families() or not isinstance(text, dict):
        return data, None
    inner_type = families.text_model_type(wrapper) or text.get("model_type")
    if inner_type is None:
        return data, None
    inner = dict(text, model_type=inner_type)
    if "tie_word_embeddings" in data and "tie_word_embeddings" not in text:
        inner["tie_word_embeddings"] = data["tie_word_embeddings"]
    if "_name_or_path" in data:
        inner.setdefault("_name_or_path", data["_name_or_path"])
    return inner, wrapper


# -- writing ------------------------------------------------------------------------------

# Knobs each family's transformers class hard-codes: knob -> the only value it can express.
_ROPE_FAMILY_FIXED = {
    "position": "rope",
    "nope_layers": None,
    "rope_layout": "half",
    "partial_rotary_factor": 1.0,
    "ffn": "glu",
    "lm_head_bias": False,
}
_PLAIN_ROPE_FAMILY_FIXED = {
    **_ROPE_FAMILY_FIXED,
    "norm": "rmsnorm",
    "norm_placement": "pre",
    "attn_logit_softcap": None,
    "final_logit_softcap": None,
    "scale_embeddings": False,
    "causal": True,
}
# Knobs no dense family's transformers class can turn.
_DENSE = {"num_experts": 0, "attention": "standard", "mtp_layers": 0}
# The router of each MoE family, and knobs they share.
_NO_MLA = {"attention": "standard", "mtp_layers": 0}
_SOFTMAX_TOP_K = {
    "router_scoring": "softmax", "expert_groups": 1, "router_group_score": "max", "router_selection_bias": False,
    "routed_scaling_factor": 1.0, "num_shared_experts": 0,
}  # fmt: skip
_DEEPSEEK_FIXED = {
    **{knob: value for knob, value in _PLAIN_ROPE_FAMILY_FIXED.items() if knob != "rope_layout"},
    "attention": "mla", "qk_norm": False, "sliding_window": None,
}  # fmt: skip
FIXED_KNOBS: dict[str, dict[str, Any]] = {
    "gpt2": {
        "norm": "layernorm",
        "norm_placement": "pre",
        "norm_bias": True,
        "position": "learned",
        "ffn": "classic",
        "ffn_bias": True,
        "qkv_bias": True,
        "attn_out_bias": True,
        "qk_norm": False,
        "attn_logit_softcap": None,
        "final_logit_softcap": None,
        "sliding_window": None,
        "causal": True,
        "scale_embeddings": False,
        "lm_head_bias": False,
        **_DENSE,
    },
    "llama": {**_PLAIN_ROPE_FAMILY_FIXED, **_DENSE, "qk_norm": False, "sliding_window": None},
    "mistral": {
        **_PLAIN_ROPE_FAMILY_FIXED,
        **_DENSE,
        "qk_norm": False,
        "qkv_bias": False,
        "attn_out_bias": False,
        "ffn_bias": False,
        "layer_types": None,
    },
    "qwen2": {
        **_PLAIN_ROPE_FAMILY_FIXED, **_DENSE, "qk_norm": False, "qkv_bias": True, "attn_out_bias": False, "ffn_bias": False,
    },  # fmt: skip
    "qwen3": {**_PLAIN_ROPE_FAMILY_FIXED, **_DENSE, "qk_norm": True, "ffn_bias": False},
    "gemma2": {
        **_ROPE_FAMILY_FIXED,
        "norm": "rmsnorm_gemma",
        "norm_placement": "sandwich",
        "qk_norm": False,
        "ffn_bias": False,
        "scale_embeddings": True,
        **_DENSE,
    },
    "mixtral": {
        **_PLAIN_ROPE_FAMILY_FIXED,
        **_NO_MLA,
        **_SOFTMAX_TOP_K,
        "qk_norm": False,
        "qkv_bias": False,
        "attn_out_bias": False,
        "ffn_bias": False,
        "layer_types": None,
        "router_renormalize": True,
        "expert_hidden_dim": None,
        "first_dense_layers": 0,
    },
    "qwen3_moe": {
        **_PLAIN_ROPE_FAMILY_FIXED, **_NO_MLA, **_SOFTMAX_TOP_K, "qk_norm": True, "ffn_bias": False, "layer_types": None,
    },  # fmt: skip
    "deepseek_v2": {
        **_DEEPSEEK_FIXED,
        "mtp_layers": 0,
        "rope_layout": "interleaved",
        "router_scoring": "softmax",
        "router_renormalize": False,
        "router_group_score": "max",
        "router_selection_bias": False,
    },
    "deepseek_v3": {
        **_DEEPSEEK_FIXED,
        "ffn_bias": False,
        "router_scoring": "sigmoid",
        "router_group_score": "top2_sum",
        "router_selection_bias": True,
    },
}

_ACTIVATIONS_OUT = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "silu": "silu", "relu": "relu"}


def _cannot(cfg: ModelConfig, knob: str, why: str) -> ValueError:
    return ValueError(f"family={cfg.family!r} cannot express {knob}={getattr(cfg, knob)!r}: {why}")


def _check_expressible(cfg: ModelConfig) -> None:
    for knob, needed in FIXED_KNOBS[cfg.family].items():
        if getattr(cfg, knob) != needed:
            raise _cannot(cfg, knob, f"its transformers class needs {needed!r}")
    if cfg.family in ("llama", "qwen3", "gemma2", "qwen3_moe", *DEEPSEEK_FAMILIES) and cfg.qkv_bias != cfg.attn_out_bias:
        raise _cannot(cfg, "attn_out_bias", "one attention_bias switches q, k, v and o together")
    if cfg.family != "gemma2" and cfg.query_pre_attn_scalar not in (None, cfg.head_size):
        raise _cannot(cfg, "query_pre_attn_scalar", "attention is scaled by head_dim ** -0.5")
    if cfg.family in ("mixtral", *DEEPSEEK_FAMILIES) and cfg.num_experts == 0:
        raise _cannot(cfg, "num_experts", "its transformers class has routed experts on its MoE layers")
    if cfg.family == "deepseek_v2" and cfg.expert_groups == 1 and cfg.groups_per_token != 1:
        raise _cannot(cfg, "groups_per_token", "one group of experts leaves nothing to limit")
    if cfg.family == "gpt2":
        if cfg.kv_heads != cfg.num_heads:
            raise _cannot(cfg, "num_kv_heads", "GPT-2 has one key/value head per query head")
        if cfg.head_size * cfg.num_heads != cfg.embed_dim:
            raise _cannot(cfg, "head_dim", "GPT-2's heads split n_embd exactly")


def _gpt2_config(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "n_positions": cfg.max_seq_len,
        "n_embd": cfg.embed_dim,
        "n_layer": cfg.num_layers,
        "n_head": cfg.num_heads,
        "n_inner": cfg.hidden_dim,
        "activation_function": "gelu_new" if cfg.activation == "gelu_tanh" else cfg.activation,
        "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
    }


def _int_if_whole(value: float) -> int | float:
    # Gemma2Config is a strict dataclass that types query_pre_attn_scalar as int.
    return int(value) if float(value).is_integer() else value


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)


def _sliding_keys(cfg: ModelConfig) -> dict[str, Any]:
    """Qwen's sliding-window keys: layers from max_window_layers on slide (or an explicit list)."""
    types = [cfg.layer_type(i) for i in range(cfg.num_layers)]
    if "sliding_attention" not in types:
        return {"use_sliding_window": False, "sliding_window": None, "max_window_layers": cfg.num_layers}
    first = types.index("sliding_attention")
    keys = {"use_sliding_window": True, "sliding_window": cfg.sliding_window, "max_window_layers": first}
    if any(kind == "full_attention" for kind in types[first:]):
        keys["layer_types"] = types
    return keys


def _rope_family_config(cfg: ModelConfig) -> dict[str, Any]:
    family = cfg.family
    out = {
        "hidden_size": cfg.embed_dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_size,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": dict(cfg.rope_scaling) if cfg.rope_scaling else None,
        "attention_dropout": cfg.dropout,
    }
    act_key = "hidden_activation" if family == "gemma2" else "hidden_act"
    out[act_key] = _ACTIVATIONS_OUT[cfg.activation]
    if family in ("llama", "qwen3", "gemma2", "qwen3_moe", *DEEPSEEK_FAMILIES):
        out["attention_bias"] = cfg.qkv_bias
    if family in ("llama", "deepseek_v2"):
        out["mlp_bias"] = cfg.ffn_bias
    if family == "qwen2" and cfg.head_dim is None:
        del out["head_dim"]  # Qwen2Config has no head_dim key; set only when it differs
    if family in DEEPSEEK_FAMILIES:
        del out["head_dim"]  # transformers sets it to qk_rope_head_dim itself; the widths are the qk_* keys
    if family in ("mixtral", "qwen3_moe") and cfg.head_dim is None:
        del out["head_dim"]  # their config classes leave head_dim unset unless it differs
    if family in ("mistral", "mixtral"):
        out["sliding_window"] = cfg.sliding_window
    if family in ("qwen2", "qwen3"):
        out.update(_sliding_keys(cfg))
    if family == "qwen3_moe":
        out.update(use_sliding_window=cfg.sliding_window is not None, sliding_window=cfg.sliding_window)
    if family in DEEPSEEK_FAMILIES:
        out.update(_mla_config(cfg))
    if family in MOE_FAMILIES:
        out.update(_moe_config(cfg))
    if family == "gemma2":
        types = [cfg.layer_type(i) for i in range(cfg.num_layers)]
        out["sliding_window"] = cfg.sliding_window
        if types != _gemma2_default_layer_types(cfg.num_layers) or cfg.sliding_window is None:
            out["layer_types"] = types
        out["query_pre_attn_scalar"] = _int_if_whole(cfg.query_pre_attn_scalar or cfg.head_size)
        out["attn_logit_softcapping"] = _float_or_none(cfg.attn_logit_softcap)
        out["final_logit_softcapping"] = _float_or_none(cfg.final_logit_softcap)
        if not cfg.causal:
            out["use_bidirectional_attention"] = True
    return out


def _mla_config(cfg: ModelConfig) -> dict[str, Any]:
    out = {
        "num_key_value_heads": cfg.num_heads,
        "q_lora_rank": cfg.q_latent_dim,
        "kv_lora_rank": cfg.kv_latent_dim,
        "qk_nope_head_dim": cfg.head_size,
        "qk_rope_head_dim": cfg.rope_head_dim,
        "v_head_dim": cfg.value_head_size,
    }
    if cfg.family == "deepseek_v3":
        out["rope_interleave"] = cfg.rope_layout == "interleaved"
    return out


def _moe_config(cfg: ModelConfig) -> dict[str, Any]:
    family = cfg.family
    if family == "mixtral":
        return {
            "num_local_experts": cfg.num_experts,
            "num_experts_per_tok": cfg.experts_per_token,
            "router_aux_loss_coef": cfg.load_balance_coef,
        }
    if family == "qwen3_moe":
        return {
            "num_experts": cfg.num_experts,
            "num_experts_per_tok": cfg.experts_per_token or 1,
            "moe_intermediate_size": cfg.expert_width,
            "norm_topk_prob": cfg.router_renormalize,
            "decoder_sparse_step": 1,
            "mlp_only_layers": list(range(cfg.first_dense_layers)),
            "router_aux_loss_coef": cfg.load_balance_coef,
        }
    out = {
        "n_routed_experts": cfg.num_experts,
        "num_experts_per_tok": cfg.experts_per_token,
        "moe_intermediate_size": cfg.expert_width,
        "n_shared_experts": cfg.num_shared_experts,
        "first_k_dense_replace": cfg.first_dense_layers,
        "routed_scaling_factor": cfg.routed_scaling_factor,
        "n_group": cfg.expert_groups,
        "topk_group": cfg.groups_per_token,
    }
    if family == "deepseek_v2":
        out["topk_method"] = "group_limited_greedy" if cfg.expert_groups > 1 else "greedy"
        out["norm_topk_prob"] = False
    else:
        out["norm_topk_prob"] = cfg.router_renormalize
        out["num_nextn_predict_layers"] = cfg.mtp_layers
    return out


def to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """The config.json (as a dict) of `cfg` for its family's transformers class.

    Raises ValueError for family "custom" and for a knob the family's class cannot express
    (the message names the knob and what the class needs).
    """
    supported = supported_families()
    if cfg.family not in supported:
        raise ValueError(f"family={cfg.family!r} has no transformers config; set family to one of {supported}")
    if cfg.family in families.REGISTRY:
        module = families.REGISTRY[cfg.family]
        body, architecture = module.write(cfg), module.ARCHITECTURE
    else:
        _check_expressible(cfg)
        body = _gpt2_config(cfg) if cfg.family == "gpt2" else _rope_family_config(cfg)
        architecture = ARCHITECTURES[cfg.family]
    return {
        "model_type": cfg.family,
        "architectures": [architecture],
        "_name_or_path": cfg.name,
        "vocab_size": cfg.vocab_size,
        **body,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
    }


# The family modules import this one; importing them last keeps the cycle harmless.
from olm_edu.models.families import *  # noqa: E402,F401,F403  (registers every family module)
