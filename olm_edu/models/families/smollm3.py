"""SmolLM3 (Hugging Face, 2025): `model_type="smollm3"`, Llama with NoPE layers.

    config.json                           knob
    no_rope_layers (1 = rotate, 0 = NoPE)  nope_layers: the layers whose queries and keys are not
      or no_rope_layer_interval (4)          rotated at all (every fourth: 3, 7, 11, ...); they see
                                             position only through the causal mask
    use_sliding_window, sliding_window,    sliding layers (off in the published model; by default
      layer_types                            the NoPE layers when on)
    attention_bias, mlp_bias               qkv_bias and attn_out_bias, ffn_bias
    rope_theta + rope_scaling              one RoPE for the layers that rotate

A config whose layer_types lists sliding layers while use_sliding_window is False is refused:
transformers' masks then slide (eager, SDPA) while its flash-attention path does not.
`max_window_layers` in the published file is read by no transformers code and is ignored.
"""

from __future__ import annotations

import sys
from typing import Any

from olm_edu.models import hf_config  # partly loaded while it imports the families: used at call time only
from olm_edu.models.config import ModelConfig
from olm_edu.models.families import register
from olm_edu.models.families._shared import check_fixed, rope_parameters

MODEL_TYPE = "smollm3"
ARCHITECTURE = "SmolLM3ForCausalLM"

# transformers 5.25's SmolLM3Config defaults
DEFAULTS: dict[str, Any] = {
    "vocab_size": 128_256,
    "hidden_size": 2048,
    "intermediate_size": 11_008,
    "num_hidden_layers": 36,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "hidden_act": "silu",
    "max_position_embeddings": 32_768,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "rope_theta": 2_000_000.0,
    "use_sliding_window": False,
    "sliding_window": None,
    "no_rope_layers": None,
    "no_rope_layer_interval": 4,
    "layer_types": None,
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": True,
}

FIXED = {
    "norm": "rmsnorm", "norm_placement": "pre", "norm_bias": False, "position": "rope", "rope_layout": "half",
    "partial_rotary_factor": 1.0, "ffn": "glu", "qk_norm": False, "qk_norm_scope": "head", "attn_logit_softcap": None,
    "final_logit_softcap": None, "query_pre_attn_scalar": None, "causal": True, "scale_embeddings": False,
    "lm_head_bias": False, "attention": "standard", "attention_sinks": False, "num_experts": 0, "mtp_layers": 0,
    "rope_theta_local": None, "rope_scaling_local": None, "head_dim": None,
}  # fmt: skip


def read(keys: hf_config.Keys) -> dict[str, Any]:
    num_layers, num_heads, num_kv_heads = keys["num_hidden_layers"], keys["num_attention_heads"], keys["num_key_value_heads"]
    uses_rope = keys["no_rope_layers"]
    if uses_rope is None:  # SmolLM3Config: 1 (rotate) except every no_rope_layer_interval-th layer
        uses_rope = [int((i + 1) % keys["no_rope_layer_interval"] != 0) for i in range(num_layers)]
    if len(uses_rope) != num_layers:
        raise ValueError(f"no_rope_layers has {len(uses_rope)} entries for num_hidden_layers={num_layers}")
    window = keys["sliding_window"] if keys["use_sliding_window"] else None
    types = keys["layer_types"]
    if types is None:  # SmolLM3Config: with windows on, the NoPE layers slide
        types = ["sliding_attention" if window is not None and not rope else "full_attention" for rope in uses_rope]
    if "sliding_attention" in types and window is None:
        raise ValueError(
            "layer_types lists sliding_attention layers but use_sliding_window is False or sliding_window is None: "
            "transformers' masks would slide while its flash-attention path would not"
        )
    layer_types, sliding_window = hf_config._canonical_layers(types, window)
    rope_theta, rope_scaling = hf_config._read_rope(keys)
    attention_bias = bool(keys["attention_bias"])
    return dict(
        vocab_size=keys["vocab_size"],
        max_seq_len=keys["max_position_embeddings"],
        embed_dim=keys["hidden_size"],
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=keys["intermediate_size"],
        num_kv_heads=None if num_kv_heads in (None, num_heads) else num_kv_heads,
        norm="rmsnorm",
        norm_placement="pre",
        norm_eps=float(keys["rms_norm_eps"]),
        norm_bias=False,
        position="rope",
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        nope_layers=tuple(i for i, rope in enumerate(uses_rope) if not rope) or None,
        ffn="glu",
        activation=keys.activation("hidden_act"),
        ffn_bias=bool(keys["mlp_bias"]),
        qkv_bias=attention_bias,
        attn_out_bias=attention_bias,
        sliding_window=sliding_window,
        layer_types=layer_types,
        tie_embeddings=bool(keys["tie_word_embeddings"]),
        init_std=float(keys["initializer_range"]),
    )


def write(cfg: ModelConfig) -> dict[str, Any]:
    check_fixed(cfg, FIXED)
    if cfg.qkv_bias != cfg.attn_out_bias:
        raise ValueError("family='smollm3' cannot express attn_out_bias != qkv_bias: one attention_bias switches both")
    return {
        "hidden_size": cfg.embed_dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.kv_heads,
        "hidden_act": hf_config._ACTIVATIONS_OUT[cfg.activation],
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": rope_parameters(cfg.rope_theta, cfg.rope_scaling),
        "no_rope_layers": [int(cfg.uses_rope(i)) for i in range(cfg.num_layers)],
        "no_rope_layer_interval": _interval(cfg),
        "use_sliding_window": cfg.sliding_window is not None,
        "sliding_window": cfg.sliding_window,
        "layer_types": [cfg.layer_type(i) for i in range(cfg.num_layers)],
        "attention_bias": cfg.qkv_bias,
        "mlp_bias": cfg.ffn_bias,
        "attention_dropout": cfg.dropout,
        # token ids are not knobs; SmolLM3Config's default pad id (128004) lies outside small vocabularies
        "pad_token_id": None,
    }


def _interval(cfg: ModelConfig) -> int:
    """The no_rope_layer_interval that spells cfg.nope_layers, if one does (else the default 4;
    no_rope_layers, written out in full, is what transformers reads)."""
    nope = list(cfg.nope_layers or ())
    for interval in range(1, cfg.num_layers + 1):
        if nope == [i for i in range(cfg.num_layers) if (i + 1) % interval == 0]:
            return interval
    return DEFAULTS["no_rope_layer_interval"]


NAME_TABLE = [
    ("embed.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("head.weight", "lm_head.weight"),
    ("layers.{i}.attn.norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("layers.{i}.attn.attention.{proj}.{kind}", "model.layers.{i}.self_attn.{proj}.{kind}"),
    ("layers.{i}.ffn.norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("layers.{i}.ffn.mlp.{proj}.{kind}", "model.layers.{i}.mlp.{proj}.{kind}"),
]

register(sys.modules[__name__])
