"""Gemma 3 (Google, 2025), the language model: `model_type="gemma3_text"` as a table of knobs.

Against Gemma 2 (`gemma2`, Part II) it changes three things, all knobs:

    config.json                          knob
    (always)                             qk_norm, per head, Gemma's (1 + w) RMSNorm: it replaces
                                           Gemma 2's attention soft-cap (attn_logit_softcapping is
                                           None in the published files, and transformers' Gemma3
                                           never applies it: a value is refused)
    sliding_window_pattern (6) or        five sliding (local) layers per full (global) one,
      layer_types, sliding_window          a window of 512 (1B) or 1024 tokens
    rope_theta + rope_scaling (global),  a RoPE per layer type: global layers base 1,000,000 and
      rope_local_base_freq (local)         the scaling (linear x8 from 4B up), local layers plain
                                           base 10,000: rope_theta_local, rope_scaling_local

and keeps Gemma 2's sandwich norms (a norm before and after each sub-layer), the (1 + w) RMSNorm,
the sqrt(d) embedding scale, query_pre_attn_scalar and the GeGLU (hidden_activation).
`use_bidirectional_attention=True` (the EmbeddingGemma variant, whose window transformers
halves) is refused.

Multimodal releases (Gemma 3 4B, 12B, 27B: model_type "gemma3") keep this config in their
`text_config`; `from_hf_config` reads it through the wrapper (TEXT_CONFIG_OF), with this class's
defaults for the keys it leaves out, as transformers does.
"""

from __future__ import annotations

import sys
from typing import Any

from olm_edu.models import hf_config  # partly loaded while it imports the families: used at call time only
from olm_edu.models.config import ModelConfig
from olm_edu.models.families import register
from olm_edu.models.families._shared import check_fixed, local_rope_knobs, read_rope_by_layer_type, rope_parameters

MODEL_TYPE = "gemma3_text"
ARCHITECTURE = "Gemma3ForCausalLM"
TEXT_CONFIG_OF = ("gemma3",)

# transformers 5.25's Gemma3TextConfig defaults
DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131_072,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0,
    "attention_bias": False,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "sliding_window_pattern": 6,
    "layer_types": None,
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
    "use_bidirectional_attention": False,
}

FIXED = {
    "norm": "rmsnorm_gemma", "norm_placement": "sandwich", "norm_bias": False, "position": "rope",
    "rope_layout": "half", "partial_rotary_factor": 1.0, "nope_layers": None, "ffn": "glu", "ffn_bias": False,
    "qk_norm": True, "qk_norm_scope": "head", "causal": True, "scale_embeddings": True, "lm_head_bias": False,
    "attention": "standard", "attention_sinks": False, "num_experts": 0, "mtp_layers": 0, "attn_logit_softcap": None,
}  # fmt: skip


def default_layer_types(num_layers: int, pattern: int = 6) -> list[str]:
    # Gemma3TextConfig: every `pattern`-th layer (5, 11, 17, ...) is full, the others slide
    return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(num_layers)]


def read(keys: hf_config.Keys) -> dict[str, Any]:
    if keys["use_bidirectional_attention"]:
        raise ValueError(
            "use_bidirectional_attention=True is not supported for gemma3_text: transformers then halves the "
            "window and lets tokens see ahead within it, which no ModelConfig knob expresses"
        )
    if keys["attn_logit_softcapping"] is not None:
        raise ValueError(
            f"attn_logit_softcapping={keys['attn_logit_softcapping']!r} is not supported for gemma3_text: transformers "
            "5.25's Gemma3Attention never applies it (QK-norm replaced Gemma 2's soft-cap); set it to None"
        )
    num_layers, num_heads = keys["num_hidden_layers"], keys["num_attention_heads"]
    embed_dim, head_dim, num_kv_heads = keys["hidden_size"], keys["head_dim"], keys["num_key_value_heads"]
    types = keys["layer_types"] or default_layer_types(num_layers, keys["sliding_window_pattern"])
    if "sliding_attention" in types and keys["sliding_window"] is None:
        raise ValueError("layer_types has sliding_attention layers but sliding_window is None")
    layer_types, sliding_window = hf_config._canonical_layers(types, keys["sliding_window"])
    theta, scaling, local_theta, local_scaling = read_rope_by_layer_type(
        keys, keys["rope_theta"], keys["rope_local_base_freq"]
    )
    bias = bool(keys["attention_bias"])
    return dict(
        vocab_size=keys["vocab_size"],
        max_seq_len=keys["max_position_embeddings"],
        embed_dim=embed_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=keys["intermediate_size"],
        num_kv_heads=None if num_kv_heads in (None, num_heads) else num_kv_heads,
        head_dim=None if head_dim * num_heads == embed_dim else head_dim,
        norm="rmsnorm_gemma",
        norm_placement="sandwich",
        norm_eps=float(keys["rms_norm_eps"]),
        norm_bias=False,
        position="rope",
        **local_rope_knobs((theta, scaling), (local_theta, local_scaling), sliding_window is not None),
        ffn="glu",
        activation=keys.activation("hidden_activation"),
        ffn_bias=False,
        qkv_bias=bias,
        attn_out_bias=bias,
        qk_norm=True,
        query_pre_attn_scalar=float(keys["query_pre_attn_scalar"]),
        sliding_window=sliding_window,
        layer_types=layer_types,
        tie_embeddings=bool(keys["tie_word_embeddings"]),
        scale_embeddings=True,
        final_logit_softcap=hf_config._float_or_none(keys["final_logit_softcapping"]),
        init_std=float(keys["initializer_range"]),
    )


def write(cfg: ModelConfig) -> dict[str, Any]:
    check_fixed(cfg, FIXED)
    if cfg.qkv_bias != cfg.attn_out_bias:
        raise ValueError("family='gemma3_text' cannot express attn_out_bias != qkv_bias: one attention_bias switches both")
    layer_types = [cfg.layer_type(i) for i in range(cfg.num_layers)]
    local = (cfg.rope_theta_local, cfg.rope_scaling_local) if cfg.rope_theta_local is not None else None
    return {
        "hidden_size": cfg.embed_dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_size,
        "hidden_activation": hf_config._ACTIVATIONS_OUT[cfg.activation],
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": {
            "full_attention": rope_parameters(cfg.rope_theta, cfg.rope_scaling),
            "sliding_attention": rope_parameters(*(local or (cfg.rope_theta, cfg.rope_scaling))),
        },
        "attention_bias": cfg.qkv_bias,
        "attention_dropout": cfg.dropout,
        "query_pre_attn_scalar": hf_config._int_if_whole(cfg.query_pre_attn_scalar or cfg.head_size),
        "sliding_window": cfg.sliding_window,
        "layer_types": layer_types,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": hf_config._float_or_none(cfg.final_logit_softcap),
    }


NAME_TABLE = [
    ("embed.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("head.weight", "lm_head.weight"),
    ("layers.{i}.attn.norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("layers.{i}.attn.attention.{proj}.{kind}", "model.layers.{i}.self_attn.{proj}.{kind}"),  # q_norm, k_norm too
    ("layers.{i}.attn.post_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("layers.{i}.ffn.norm.weight", "model.layers.{i}.pre_feedforward_layernorm.weight"),
    ("layers.{i}.ffn.post_norm.weight", "model.layers.{i}.post_feedforward_layernorm.weight"),
    ("layers.{i}.ffn.mlp.{proj}.{kind}", "model.layers.{i}.mlp.{proj}.{kind}"),
]

register(sys.modules[__name__])
