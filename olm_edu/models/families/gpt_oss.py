"""gpt-oss (OpenAI, 2025): `model_type="gpt_oss"` as a table of knobs.

What it turns, against a Llama-style model with experts (Mixtral):

    config.json                     knob
    attention_bias                  qkv_bias, attn_out_bias (one switch for q, k, v and o)
    (always)                        attention_sinks: a learned logit per head in every softmax
    layer_types, sliding_window     alternating sliding (128) and full layers
    rope_theta + rope_scaling       YaRN (transformers fills in factor 32 when no RoPE is given)
    num_local_experts,              num_experts, experts_per_token; every layer is MoE, each
      num_experts_per_tok,            expert intermediate_size wide
      intermediate_size
    (always)                        router_bias (router logits + b), expert_bias (gate, up, down)
    (always)                        softmax over the top-k logits = router_renormalize=True
    swiglu_limit, swiglu_alpha      the clamped SwiGLU of the experts
    router_aux_loss_coef            load_balance_coef

hidden_act is not read: transformers' GptOssExperts always apply the clamped SwiGLU.
`quantization_config` (the published MXFP4 experts) describes how weights are stored, not the
maths; the MXFP4 tensors themselves (`*_blocks`, `*_scales`) are refused on load: dequantise
them first (transformers does with `Mxfp4Config(dequantize=True)`).

Weights: transformers keeps each layer's experts fused and transposed,
`mlp.experts.gate_up_proj` (E, d, 2F) with gate and up *interleaved* (gate = even columns, up =
odd), `gate_up_proj_bias` (E, 2F) likewise, `down_proj` (E, F, d), `down_proj_bias` (E, d); both
in memory and in the files save_pretrained writes. `from_hf_layout` splits and transposes them
into our gate_proj / up_proj (E, F, d) and down_proj (E, d, F); `to_hf_layout` puts them back.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import torch

from olm_edu.models import hf_config  # partly loaded while it imports the families: used at call time only
from olm_edu.models.config import ModelConfig
from olm_edu.models.families import register
from olm_edu.models.families._shared import check_fixed, rope_parameters

MODEL_TYPE = "gpt_oss"
ARCHITECTURE = "GptOssForCausalLM"

# transformers 5.25's GptOssConfig defaults
DEFAULT_YARN = {
    "rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
    "original_max_position_embeddings": 4096,
}  # fmt: skip
DEFAULTS: dict[str, Any] = {
    "num_hidden_layers": 36,
    "num_local_experts": 128,
    "vocab_size": 201_088,
    "hidden_size": 2880,
    "intermediate_size": 2880,
    "head_dim": 64,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "sliding_window": 128,
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
    "max_position_embeddings": 131_072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 150_000.0,
    "num_experts_per_tok": 4,
    "swiglu_alpha": 1.702,
    "swiglu_limit": 7.0,
    "router_aux_loss_coef": 0.001,
    "layer_types": None,
    "attention_bias": True,
}

FIXED = {
    "norm": "rmsnorm", "norm_placement": "pre", "norm_bias": False, "position": "rope", "rope_layout": "half",
    "partial_rotary_factor": 1.0, "ffn": "glu", "activation": "silu", "ffn_bias": False, "qk_norm": False,
    "qk_norm_scope": "head", "attn_logit_softcap": None, "final_logit_softcap": None, "query_pre_attn_scalar": None,
    "causal": True, "scale_embeddings": False, "lm_head_bias": False, "attention": "standard", "mtp_layers": 0,
    "attention_sinks": True, "rope_theta_local": None, "rope_scaling_local": None, "nope_layers": None,
    "router_scoring": "softmax", "router_renormalize": True, "expert_groups": 1, "groups_per_token": 1,
    "router_group_score": "max", "router_selection_bias": False, "routed_scaling_factor": 1.0, "num_shared_experts": 0,
    "first_dense_layers": 0, "expert_hidden_dim": None, "router_bias": True, "expert_bias": True,
}  # fmt: skip


def _default_layer_types(num_layers: int) -> list[str]:
    # GptOssConfig: layers 0, 2, 4, ... slide; 1, 3, 5, ... see everything
    return ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(num_layers)]


def read(keys: hf_config.Keys) -> dict[str, Any]:
    num_layers, num_heads = keys["num_hidden_layers"], keys["num_attention_heads"]
    embed_dim, head_dim = keys["hidden_size"], keys["head_dim"]
    num_kv_heads = keys["num_key_value_heads"]
    if keys.data.get("rope_parameters") or keys.data.get("rope_scaling"):
        rope_theta, rope_scaling = hf_config._read_rope(keys)
    else:  # GptOssConfig fills in its YaRN when the config.json gives no RoPE parameters
        rope_theta, rope_scaling = float(keys["rope_theta"]), dict(DEFAULT_YARN)
    types = keys["layer_types"] or _default_layer_types(num_layers)
    if "sliding_attention" in types and keys["sliding_window"] is None:
        raise ValueError("layer_types has sliding_attention layers but sliding_window is None")
    layer_types, sliding_window = hf_config._canonical_layers(types, keys["sliding_window"])
    if keys["swiglu_limit"] is None:
        raise ValueError("swiglu_limit=None: GptOssExperts always clamp; give a number")
    bias = bool(keys["attention_bias"])
    width = keys["intermediate_size"]
    return dict(
        vocab_size=keys["vocab_size"],
        max_seq_len=keys["max_position_embeddings"],
        embed_dim=embed_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=width,
        num_kv_heads=None if num_kv_heads in (None, num_heads) else num_kv_heads,
        head_dim=None if head_dim * num_heads == embed_dim else head_dim,
        norm="rmsnorm",
        norm_placement="pre",
        norm_eps=float(keys["rms_norm_eps"]),
        norm_bias=False,
        position="rope",
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        ffn="glu",
        activation="silu",
        ffn_bias=False,
        qkv_bias=bias,
        attn_out_bias=bias,
        sliding_window=sliding_window,
        layer_types=layer_types,
        attention_sinks=True,
        num_experts=keys["num_local_experts"],
        experts_per_token=keys["num_experts_per_tok"],
        router_renormalize=True,
        router_bias=True,
        expert_bias=True,
        swiglu_limit=float(keys["swiglu_limit"]),
        swiglu_alpha=float(keys["swiglu_alpha"]),
        load_balance_coef=float(keys["router_aux_loss_coef"]),
        tie_embeddings=bool(keys["tie_word_embeddings"]),
        init_std=float(keys["initializer_range"]),
    )


def write(cfg: ModelConfig) -> dict[str, Any]:
    check_fixed(cfg, FIXED)
    if cfg.num_experts == 0:
        raise ValueError("family='gpt_oss' cannot express num_experts=0: every gpt-oss layer has routed experts")
    if cfg.qkv_bias != cfg.attn_out_bias:
        raise ValueError("family='gpt_oss' cannot express attn_out_bias != qkv_bias: one attention_bias switches both")
    if cfg.swiglu_limit is None:
        raise ValueError("family='gpt_oss' cannot express swiglu_limit=None: its experts always clamp")
    return {
        "hidden_size": cfg.embed_dim,
        "intermediate_size": cfg.expert_width,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_size,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": rope_parameters(cfg.rope_theta, cfg.rope_scaling),
        "attention_bias": cfg.qkv_bias,
        "attention_dropout": cfg.dropout,
        "sliding_window": cfg.sliding_window,
        "layer_types": [cfg.layer_type(i) for i in range(cfg.num_layers)],
        "num_local_experts": cfg.num_experts,
        "num_experts_per_tok": cfg.experts_per_token,
        "swiglu_limit": cfg.swiglu_limit,
        "swiglu_alpha": cfg.swiglu_alpha,
        "router_aux_loss_coef": cfg.load_balance_coef,
        "hidden_act": "silu",
    }


NAME_TABLE = [
    ("embed.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("head.weight", "lm_head.weight"),
    ("layers.{i}.attn.norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("layers.{i}.attn.attention.sinks", "model.layers.{i}.self_attn.sinks"),
    ("layers.{i}.attn.attention.{proj}.{kind}", "model.layers.{i}.self_attn.{proj}.{kind}"),
    ("layers.{i}.ffn.norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("layers.{i}.ffn.mlp.router.{kind}", "model.layers.{i}.mlp.router.{kind}"),
    # after from_hf_layout: gate_proj, up_proj (E, F, d), down_proj (E, d, F) and their biases
    ("layers.{i}.ffn.mlp.experts.{proj}", "model.layers.{i}.mlp.experts.{proj}"),
]

_EXPERTS = re.compile(r"^(?P<prefix>model\.layers\.\d+\.mlp\.experts)\.(?P<name>gate_up_proj|gate_up_proj_bias|down_proj)$")


def from_hf_layout(weights: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Interleaved, transposed gate_up_proj (E, d, 2F) -> gate_proj, up_proj (E, F, d); the
    bias (E, 2F) -> gate_proj_bias, up_proj_bias (E, F); down_proj (E, F, d) -> (E, d, F)."""
    quantised = sorted(name for name in weights if name.endswith(("_blocks", "_scales")))
    if quantised:
        checkpoint_error = sys.modules["olm_edu.hf"].CheckpointError
        raise checkpoint_error(
            f"{quantised[0]}: the checkpoint holds MXFP4-quantised experts (*_blocks, *_scales); olm_edu reads "
            "float weights: dequantise them first (transformers: Mxfp4Config(dequantize=True), then save_pretrained)"
        )
    out = {}
    for name, tensor in weights.items():
        match = _EXPERTS.match(name)
        if match is None:
            out[name] = tensor
        elif match["name"] == "gate_up_proj":
            out[f"{match['prefix']}.gate_proj"] = tensor[..., 0::2].transpose(1, 2).contiguous()
            out[f"{match['prefix']}.up_proj"] = tensor[..., 1::2].transpose(1, 2).contiguous()
        elif match["name"] == "gate_up_proj_bias":
            out[f"{match['prefix']}.gate_proj_bias"] = tensor[:, 0::2].contiguous()
            out[f"{match['prefix']}.up_proj_bias"] = tensor[:, 1::2].contiguous()
        else:
            out[name] = tensor.transpose(1, 2).contiguous()
    return out


def _interleave(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """(..., F) and (..., F) -> (..., 2F) with gate at the even places and up at the odd ones."""
    return torch.stack([gate, up], dim=-1).flatten(-2)


def to_hf_layout(weights: dict[str, torch.Tensor], cfg: ModelConfig, layout: str) -> dict[str, torch.Tensor]:
    """The inverse of `from_hf_layout` (the same in memory and in the files: layout is unused)."""
    out = {}
    for name, tensor in weights.items():
        if name.endswith(".mlp.experts.gate_up_proj"):  # ours, fused gate first: (E, 2F, d)
            gate, up = tensor.transpose(1, 2).chunk(2, dim=-1)  # (E, d, F) each
            out[name] = _interleave(gate, up).contiguous()
        elif name.endswith(".mlp.experts.gate_proj_bias"):
            prefix = name.removesuffix(".gate_proj_bias")
            out[f"{prefix}.gate_up_proj_bias"] = _interleave(tensor, weights[f"{prefix}.up_proj_bias"])
        elif name.endswith(".mlp.experts.up_proj_bias"):
            continue
        elif name.endswith(".mlp.experts.down_proj"):
            out[name] = tensor.transpose(1, 2).contiguous()
        else:
            out[name] = tensor
    return out


register(sys.modules[__name__])
