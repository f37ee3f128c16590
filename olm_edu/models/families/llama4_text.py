"""Llama 4 (transformers' `llama4_text`, the language model of Llama 4 Scout and Maverick) as a table of knobs.

What Llama 4 changes from Llama 3, each a knob of `ModelConfig`:

    config.json key                      knob                         what it does
    no_rope_layers / _interval           nope_layers                  every 4th layer has no RoPE ("NoPE")
    attention_chunk_size, layer_types    attention_chunk_size,        the RoPE layers attend only inside
                                         layer_types                  their chunk of 8192 positions
    use_qk_norm                          qk_l2_norm                   weightless RMSNorm of q and k after
                                                                      RoPE, on the RoPE layers
    attn_temperature_tuning,             attn_temperature_tuning,     NoPE layers scale queries at position
    floor_scale, attn_scale              attn_temperature_floor,      t by 1 + attn_scale * log(1 +
                                         attn_temperature_scale       floor((t + 1) / floor_scale))
    num_local_experts,                   num_experts,                 sigmoid top-k routing (top-1 in the
    num_experts_per_tok                  experts_per_token,           releases), not renormalised, one
                                         router_scoring="sigmoid"     shared expert, and the router's score
                                         router_weighting="input"     scales the expert's *input*
    moe_layers, interleave_moe_layer_    dense_layers                 which layers have no experts (Scout: none;
    step                                                              Maverick: every second)
    intermediate_size,                   expert_hidden_dim,           the width of an expert (and of the
    intermediate_size_mlp                hidden_dim                   shared one); of a dense layer
    (complex-number RoPE)                rope_layout="interleaved"    RoPE rotates adjacent pairs

Fixed by transformers' class: RMSNorm before each sub-layer, SwiGLU, no feed-forward biases, one
attention_bias for q, k, v and o, attention scaled by head_dim ** -0.5. Read and ignored because
they do not change Llama4ForCausalLM's logits in transformers 5.25: router_jitter_noise (the
text model never reads it), router_aux_loss_coef and output_router_logits (Llama4ForCausalLM
adds no auxiliary loss: load_balance_coef is 0), attention_dropout (dropout is read as 0),
pad/bos/eos ids, use_cache.

Weights. transformers keeps each MoE layer's experts fused, in memory and in the files it
saves: `feed_forward.experts.gate_up_proj` (E, embed_dim, 2 F), gate columns first, used as
x @ gate_up_proj -- the transpose of Mixtral's (E, 2 F, embed_dim) -- and
`feed_forward.experts.down_proj` (E, F, embed_dim), the transpose of ours (E, embed_dim, F).
`from_hf_layout` and `to_hf_layout` transpose them. The published multimodal checkpoints keep
the same names under `language_model.`; their vision tower and projector are skipped.
"""

from __future__ import annotations

import sys
from typing import Any

from olm_edu.models import families
from olm_edu.models import hf_config  # partly loaded while it imports the families: used at call time only
from olm_edu.models.config import ModelConfig
from olm_edu.models.families._shared import HYBRID_KNOBS_OFF, V4_KNOBS_OFF

MODEL_TYPE = "llama4_text"
ARCHITECTURE = "Llama4ForCausalLM"
TEXT_CONFIG_OF = ("llama4",)

# Llama4TextConfig's defaults in transformers 5.25 (those of Llama 4 Scout's language model).
DEFAULTS: dict[str, Any] = {
    "intermediate_size": 8192,
    "intermediate_size_mlp": 16384,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 4096 * 32,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "num_experts_per_tok": 1,
    "num_local_experts": 16,
    "moe_layers": None,
    "interleave_moe_layer_step": 1,
    "use_qk_norm": True,
    "rope_theta": 500_000.0,
    "rope_scaling": None,
    "no_rope_layers": None,
    "no_rope_layer_interval": 4,
    "attention_chunk_size": 8192,
    "layer_types": None,
    "attn_temperature_tuning": True,
    "floor_scale": 8192,
    "attn_scale": 0.1,
    "attention_bias": False,
}

# Knobs Llama4ForCausalLM hard-codes: knob -> the only value it can express.
FIXED: dict[str, Any] = {
    "norm": "rmsnorm", "norm_placement": "pre", "position": "rope", "rope_layout": "interleaved",
    "partial_rotary_factor": 1.0, "ffn": "glu", "ffn_bias": False, "qk_norm": False, "attn_logit_softcap": None,
    "final_logit_softcap": None, "sliding_window": None, "causal": True, "scale_embeddings": False,
    "lm_head_bias": False, "attention": "standard", "mtp_layers": 0, "load_balance_coef": 0.0,
    "qk_norm_scope": "head", "attention_sinks": False, "rope_theta_local": None, "rope_scaling_local": None,
    **{knob: value for knob, value in HYBRID_KNOBS_OFF.items() if knob != "dense_layers"},
    **V4_KNOBS_OFF,
}  # fmt: skip
# ... and on its MoE layers (when there are any).
FIXED_MOE: dict[str, Any] = {
    "router_scoring": "sigmoid", "router_renormalize": False, "expert_groups": 1, "groups_per_token": 1,
    "router_selection_bias": False, "routed_scaling_factor": 1.0, "num_shared_experts": 1, "router_weighting": "input",
    "router_bias": False, "expert_bias": False, "swiglu_limit": None,
}  # fmt: skip

# (our name, transformers' name); specific entries before the generic feed_forward.{proj} one.
NAME_TABLE = [
    ("embed.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("head.weight", "lm_head.weight"),
    ("layers.{i}.attn.norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("layers.{i}.ffn.norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("layers.{i}.attn.attention.{proj}.{kind}", "model.layers.{i}.self_attn.{proj}.{kind}"),
    ("layers.{i}.ffn.mlp.router.weight", "model.layers.{i}.feed_forward.router.weight"),
    ("layers.{i}.ffn.mlp.shared_experts.{proj}.{kind}", "model.layers.{i}.feed_forward.shared_expert.{proj}.{kind}"),
    ("layers.{i}.ffn.mlp.experts.down_proj", "model.layers.{i}.feed_forward.experts.down_proj"),
    ("layers.{i}.ffn.mlp.{proj}.{kind}", "model.layers.{i}.feed_forward.{proj}.{kind}"),
]


# -- reading ----------------------------------------------------------------------------------

def _rope_flags(keys: hf_config.Keys, num_layers: int) -> list[bool]:
    """Per layer, whether it rotates: no_rope_layers (1 = RoPE, 0 = NoPE; extra entries unused),
    or, when that is absent or empty, NoPE every no_rope_layer_interval-th layer."""
    listed = keys["no_rope_layers"]
    if listed:
        if len(listed) < num_layers:
            raise ValueError(f"no_rope_layers has {len(listed)} entries; it needs one per layer (num_hidden_layers={num_layers})")
        return [bool(flag) for flag in listed[:num_layers]]
    interval = keys["no_rope_layer_interval"]
    if not isinstance(interval, int) or interval < 1:
        raise ValueError(f"no_rope_layer_interval={interval!r} must be a positive int")
    return [(index + 1) % interval != 0 for index in range(num_layers)]


def _moe_layer_indices(keys: hf_config.Keys, num_layers: int) -> list[int]:
    """moe_layers when given (indices outside the model match no layer, as in transformers), else
    every interleave_moe_layer_step-th layer: step - 1, 2 step - 1, ..."""
    if keys["moe_layers"] is not None:
        return sorted({index for index in keys["moe_layers"] if 0 <= index < num_layers})
    step = keys["interleave_moe_layer_step"]
    if not isinstance(step, int) or step < 1:
        raise ValueError(f"interleave_moe_layer_step={step!r} must be a positive int")
    return list(range(step - 1, num_layers, step))


def _attention_layers(keys: hf_config.Keys, rotates: list[bool]) -> dict[str, Any]:
    """attention_chunk_size and layer_types (canonical: None when every layer is alike)."""
    chunk = keys["attention_chunk_size"]
    types = keys["layer_types"] or [
        "chunked_attention" if rope and chunk is not None else "full_attention" for rope in rotates
    ]
    if len(types) != len(rotates):
        raise ValueError(f"layer_types has {len(types)} entries; num_hidden_layers={len(rotates)}")
    for kind in types:
        if kind not in ("full_attention", "chunked_attention"):
            raise ValueError(f"layer_types entry {kind!r} is not one of ('full_attention', 'chunked_attention')")
    if "chunked_attention" not in types:
        return dict(attention_chunk_size=None, layer_types=None)
    if chunk is None:
        raise ValueError("layer_types has chunked_attention layers but attention_chunk_size is None")
    return dict(attention_chunk_size=chunk, layer_types=None if set(types) == {"chunked_attention"} else tuple(types))


def read(keys: hf_config.Keys) -> dict[str, Any]:
    """config.json of a Llama4TextConfig (defaults applied) -> ModelConfig knobs."""
    embed_dim = keys.required("hidden_size")
    num_heads = keys.required("num_attention_heads")
    num_layers = keys.required("num_hidden_layers")
    num_kv_heads = keys["num_key_value_heads"]
    head_dim = keys["head_dim"]
    rope_theta, rope_scaling = hf_config._read_rope(keys)
    rotates = _rope_flags(keys, num_layers)
    nope_layers = tuple(index for index, rope in enumerate(rotates) if not rope) or None
    bias = bool(keys["attention_bias"])
    dense_width = keys["intermediate_size_mlp"]
    knobs: dict[str, Any] = dict(
        vocab_size=keys.required("vocab_size"),
        max_seq_len=keys["max_position_embeddings"],
        embed_dim=embed_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=dense_width,
        num_kv_heads=None if num_kv_heads in (None, num_heads) else num_kv_heads,
        head_dim=None if head_dim is None or head_dim * num_heads == embed_dim else head_dim,
        norm="rmsnorm",
        norm_eps=float(keys["rms_norm_eps"]),
        norm_bias=False,
        position="rope",
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        rope_layout="interleaved",  # Llama 4 multiplies (x[2i] + j x[2i+1]) by e^{j t f_i}
        nope_layers=nope_layers,
        ffn="glu",
        activation=keys.activation("hidden_act"),
        ffn_bias=False,
        qkv_bias=bias,
        attn_out_bias=bias,
        qk_l2_norm=bool(keys["use_qk_norm"]),
        tie_embeddings=bool(keys["tie_word_embeddings"]),
        init_std=float(keys["initializer_range"]),
        **_attention_layers(keys, rotates),
    )
    if keys["attn_temperature_tuning"]:
        knobs.update(
            attn_temperature_tuning=True,
            attn_temperature_floor=keys["floor_scale"],
            attn_temperature_scale=float(keys["attn_scale"]),
        )
    moe_layers = _moe_layer_indices(keys, num_layers)
    if moe_layers:
        expert_width = keys["intermediate_size"]
        knobs.update(
            num_experts=keys["num_local_experts"],
            experts_per_token=keys["num_experts_per_tok"],
            expert_hidden_dim=None if expert_width == dense_width else expert_width,
            dense_layers=tuple(index for index in range(num_layers) if index not in moe_layers),
            **FIXED_MOE,
        )
    return knobs


# -- writing ----------------------------------------------------------------------------------

def _check_expressible(cfg: ModelConfig) -> None:
    fixed = dict(FIXED, **(FIXED_MOE if cfg.num_experts else {}))
    for knob, needed in fixed.items():
        if getattr(cfg, knob) != needed:
            raise hf_config._cannot(cfg, knob, f"Llama4ForCausalLM needs {needed!r}")
    if cfg.qkv_bias != cfg.attn_out_bias:
        raise hf_config._cannot(cfg, "attn_out_bias", "one attention_bias switches q, k, v and o together")
    if cfg.query_pre_attn_scalar not in (None, cfg.head_size):
        raise hf_config._cannot(cfg, "query_pre_attn_scalar", "attention is scaled by head_dim ** -0.5")


def write(cfg: ModelConfig) -> dict[str, Any]:
    """The Llama4TextConfig body for cfg (model_type, vocab_size, tying and init are added by
    hf_config.to_hf_config). Raises ValueError naming a knob Llama4ForCausalLM cannot express."""
    _check_expressible(cfg)
    moe_layers = [index for index in range(cfg.num_layers) if cfg.is_moe_layer(index)]
    return {
        "hidden_size": cfg.embed_dim,
        "intermediate_size": cfg.expert_width,
        "intermediate_size_mlp": cfg.hidden_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_size,
        "hidden_act": hf_config._ACTIVATIONS_OUT[cfg.activation],
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": {"rope_type": "default", **(cfg.rope_scaling or {}), "rope_theta": cfg.rope_theta},
        "attention_bias": cfg.qkv_bias,
        "attention_dropout": cfg.dropout,
        "no_rope_layers": [int(cfg.uses_rope(index)) for index in range(cfg.num_layers)],
        "attention_chunk_size": cfg.attention_chunk_size,
        "layer_types": [cfg.layer_type(index) for index in range(cfg.num_layers)],
        "use_qk_norm": cfg.qk_l2_norm,
        "attn_temperature_tuning": cfg.attn_temperature_tuning,
        "floor_scale": cfg.attn_temperature_floor,
        "attn_scale": cfg.attn_temperature_scale,
        "num_local_experts": cfg.num_experts or 1,  # the class always has the key; unused without MoE layers
        "num_experts_per_tok": cfg.experts_per_token or 1,
        "moe_layers": moe_layers,
    }


# -- weights ----------------------------------------------------------------------------------

def _is_text_weight(name: str) -> bool:
    return name.startswith(("model.", "lm_head."))


def from_hf_layout(weights: dict, cfg: ModelConfig) -> dict:
    """transformers' Llama 4 layouts -> the ones olm_edu.hf renames: the multimodal checkpoints'
    `language_model.` prefix removed (vision tower and projector skipped); each gate_up_proj
    (E, d, 2F) transposed to Mixtral's fused (E, 2F, d), which olm_edu.hf splits into gate and
    up; each experts.down_proj (E, F, d) transposed to ours (E, d, F)."""
    if any(name.startswith("language_model.") for name in weights):
        weights = {name.removeprefix("language_model."): t for name, t in weights.items() if name.startswith("language_model.")}
    out = {}
    for name, tensor in weights.items():
        if name.endswith(".feed_forward.experts.gate_up_proj"):
            layer = name.removesuffix(".feed_forward.experts.gate_up_proj")
            out[f"{layer}.mlp.experts.gate_up_proj"] = tensor.transpose(1, 2)
        elif name.endswith(".feed_forward.experts.down_proj"):
            out[name] = tensor.transpose(1, 2)
        else:
            out[name] = tensor
    return out


def to_hf_layout(weights: dict, cfg: ModelConfig, layout: str) -> dict:
    """The inverse of `from_hf_layout` (text model only). The files transformers saves keep the
    in-memory layout, so "hub" and "memory" are the same."""
    out = {}
    for name, tensor in weights.items():
        if name.endswith(".mlp.experts.gate_up_proj"):
            layer = name.removesuffix(".mlp.experts.gate_up_proj")
            out[f"{layer}.feed_forward.experts.gate_up_proj"] = tensor.transpose(1, 2)
        elif name.endswith(".feed_forward.experts.down_proj"):
            out[name] = tensor.transpose(1, 2)
        else:
            out[name] = tensor
    return out


families.register(sys.modules[__name__])
