"""OLMo 2 (Ai2, 2024): `model_type="olmo2"` as a table of knobs.

Against Llama it moves the norms, and widens the QK-norm:

    config.json             knob
    (always)                norm_placement="post_sublayer": no norm before a sub-layer; its output
                              is normalised inside the residual branch, x + norm(f(x)), so the
                              stream itself is never rescaled (a final norm as usual)
    (always)                qk_norm with qk_norm_scope="projection": one RMSNorm over the whole
                              query projection (num_heads * head_dim) and one over the keys
                              (num_kv_heads * head_dim), before they are split into heads
    attention_bias          qkv_bias, attn_out_bias
    rope_theta/rope_scaling one RoPE for every layer

Weights: Llama's names without input_layernorm; post_attention_layernorm and
post_feedforward_layernorm are the two post-sub-layer norms, q_norm and k_norm are
(num_heads * head_dim,) and (num_kv_heads * head_dim,).
OLMo 3 (`olmo3`, its own module) adds sliding-window layers and a RoPE per layer type.
"""

from __future__ import annotations

import sys
from typing import Any

from olm_edu.models import hf_config  # partly loaded while it imports the families: used at call time only
from olm_edu.models.config import ModelConfig
from olm_edu.models.families import register
from olm_edu.models.families._shared import check_fixed, rope_parameters

MODEL_TYPE = "olmo2"
ARCHITECTURE = "Olmo2ForCausalLM"

# transformers 5.25's Olmo2Config defaults (rope_theta: PreTrainedConfig's default base)
DEFAULTS: dict[str, Any] = {
    "vocab_size": 50_304,
    "hidden_size": 4096,
    "intermediate_size": 11_008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": None,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    "rope_theta": 10_000.0,
    "attention_bias": False,
    "rms_norm_eps": 1e-5,
}

FIXED = {
    "norm": "rmsnorm", "norm_placement": "post_sublayer", "norm_bias": False, "position": "rope",
    "rope_layout": "half", "partial_rotary_factor": 1.0, "nope_layers": None, "ffn": "glu", "ffn_bias": False,
    "qk_norm": True, "qk_norm_scope": "projection", "attn_logit_softcap": None, "final_logit_softcap": None,
    "query_pre_attn_scalar": None, "causal": True, "scale_embeddings": False, "lm_head_bias": False,
    "attention": "standard", "attention_sinks": False, "num_experts": 0, "mtp_layers": 0, "head_dim": None,
}  # fmt: skip


def common_knobs(keys: hf_config.Keys) -> dict[str, Any]:
    """The knobs OLMo 2 and OLMo 3 read alike (everything but windows and RoPE)."""
    num_heads, num_kv_heads = keys["num_attention_heads"], keys["num_key_value_heads"]
    bias = bool(keys["attention_bias"])
    return dict(
        vocab_size=keys["vocab_size"],
        max_seq_len=keys["max_position_embeddings"],
        embed_dim=keys["hidden_size"],
        num_layers=keys["num_hidden_layers"],
        num_heads=num_heads,
        hidden_dim=keys["intermediate_size"],
        num_kv_heads=None if num_kv_heads in (None, num_heads) else num_kv_heads,
        norm="rmsnorm",
        norm_placement="post_sublayer",
        norm_eps=float(keys["rms_norm_eps"]),
        norm_bias=False,
        position="rope",
        ffn="glu",
        activation=keys.activation("hidden_act"),
        ffn_bias=False,
        qkv_bias=bias,
        attn_out_bias=bias,
        qk_norm=True,
        qk_norm_scope="projection",
        tie_embeddings=bool(keys["tie_word_embeddings"]),
        init_std=float(keys["initializer_range"]),
    )


def read(keys: hf_config.Keys) -> dict[str, Any]:
    rope_theta, rope_scaling = hf_config._read_rope(keys)
    return dict(common_knobs(keys), rope_theta=rope_theta, rope_scaling=rope_scaling)


def common_config(cfg: ModelConfig, fixed: dict[str, Any]) -> dict[str, Any]:
    """The config.json keys OLMo 2 and OLMo 3 write alike."""
    check_fixed(cfg, fixed)
    if cfg.qkv_bias != cfg.attn_out_bias:
        raise ValueError(f"family={cfg.family!r} cannot express attn_out_bias != qkv_bias: one attention_bias switches both")
    return {
        "hidden_size": cfg.embed_dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.kv_heads,
        "hidden_act": hf_config._ACTIVATIONS_OUT[cfg.activation],
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "attention_bias": cfg.qkv_bias,
        "attention_dropout": cfg.dropout,
    }


def write(cfg: ModelConfig) -> dict[str, Any]:
    fixed = dict(FIXED, sliding_window=None, layer_types=None, rope_theta_local=None, rope_scaling_local=None)
    return dict(common_config(cfg, fixed), rope_parameters=rope_parameters(cfg.rope_theta, cfg.rope_scaling))


NAME_TABLE = [
    ("embed.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("head.weight", "lm_head.weight"),
    ("layers.{i}.attn.attention.{proj}.{kind}", "model.layers.{i}.self_attn.{proj}.{kind}"),  # q_norm, k_norm too
    ("layers.{i}.attn.post_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("layers.{i}.ffn.post_norm.weight", "model.layers.{i}.post_feedforward_layernorm.weight"),
    ("layers.{i}.ffn.mlp.{proj}.{kind}", "model.layers.{i}.mlp.{proj}.{kind}"),
]

register(sys.modules[__name__])
