"""Kimi Linear (`kimi_linear`): Kimi Delta Attention layers with latent-attention (MLA) full layers, MoE.

config.json key (transformers alias)            knob
linear_attn_config: {full_attn_layers,           layer_types (the lists are 1-based; without them
  kda_layers (1-based), num_heads, head_dim,       every 4th layer from layer 4 is full),
  short_conv_kernel_size} (or layer_types,         linear_num_key_heads, linear_key_head_dim,
  linear_num_heads, linear_head_dim,               linear_conv_kernel; linear_attention="kimi_delta"
  linear_conv_kernel_dim)
kv_lora_rank, q_lora_rank, qk_nope_head_dim,     kv_latent_dim, q_latent_dim, head_dim, rope_head_dim,
  qk_rope_head_dim, v_head_dim                     value_head_dim (attention="mla", position="none")
num_experts (num_local_experts)                  num_experts
num_experts_per_token (num_experts_per_tok)      experts_per_token
num_shared_experts (n_shared_experts)            num_shared_experts (moe_intermediate_size wide each)
moe_renormalize (norm_topk_prob)                 router_renormalize
num_expert_group (n_group), topk_group           expert_groups, groups_per_token (groups by top-2 sum)
routed_scaling_factor                            routed_scaling_factor
first_k_dense_replace, or mlp_layer_types        first_dense_layers, or dense_layers
model_max_length (max_position_embeddings)       max_seq_len

Fixed by the class: Llama-style RMSNorm (rms_norm_eps, default 1e-5), sigmoid router scores with
a selection bias (e_score_correction_bias), the latent attention's queries and shared key are not
rotated (NoPE: transformers builds no rotary embedding for Kimi Linear; the published config's
mla_use_nope says the same), per-channel decay with low-rank decay and output-gate projections
and a sigmoid-gated norm ("kimi_delta"). Keys transformers does not read (moe_layer_freq,
moe_router_activation_func, mla_use_nope, num_nextn_predict_layers) are not read either.

Weights (transformers' in-memory names -> ours): the delta-attention layers' forget_gate.f_a_proj
/ f_b_proj -> decay_down / decay_up, forget_gate.A_log (1, 1, H, 1) -> A_log (H,),
forget_gate.dt_bias -> dt_bias, b_proj -> beta_proj, g_a_proj / g_b_proj -> gate_down /
gate_up, o_norm -> norm. The published files keep f_a_proj, f_b_proj, A_log, dt_bias directly
under self_attn, three convolutions q_conv1d, k_conv1d, v_conv1d (concatenated into our one
depthwise conv1d), and the experts per expert under block_sparse_moe (w1, w2, w3).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import torch

from olm_edu.models import families
from olm_edu.models.config import ModelConfig
from olm_edu.models.families._shared import LLAMA4_KNOBS_OFF, V4_KNOBS_OFF
from olm_edu.models.families import qwen3_next

if TYPE_CHECKING:
    from olm_edu.models.hf_config import Keys

MODEL_TYPE = "kimi_linear"
ARCHITECTURE = "KimiLinearForCausalLM"
DEFAULTS: dict[str, Any] = {
    "vocab_size": 163840,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "moe_intermediate_size": 1024,
    "num_hidden_layers": 27,
    "num_attention_heads": 32,
    "num_key_value_heads": None,
    "n_shared_experts": 1,
    "routed_scaling_factor": 2.446,
    "kv_lora_rank": 512,
    "q_lora_rank": None,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "qk_nope_head_dim": 128,
    "n_group": 1,
    "topk_group": 1,
    "num_experts_per_tok": 8,
    "norm_topk_prob": True,
    "hidden_act": "silu",
    "max_position_embeddings": 1048576,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "num_local_experts": 256,
    "mlp_layer_types": None,
    "layer_types": None,
    "linear_head_dim": 128,
    "linear_num_heads": 32,
    "linear_conv_kernel_dim": 4,
    "first_k_dense_replace": 1,
    "linear_attn_config": {},
}
# transformers' attribute_map: the published (and to_dict) spelling -> the class's field
_ALIASES = {
    "max_position_embeddings": "model_max_length", "norm_topk_prob": "moe_renormalize", "n_group": "num_expert_group",
    "num_local_experts": "num_experts", "num_experts_per_tok": "num_experts_per_token",
    "n_shared_experts": "num_shared_experts",
}  # fmt: skip


def _get(keys: Keys, key: str) -> Any:
    """keys[key], or its published alias when the config uses that spelling."""
    alias = _ALIASES.get(key)
    if key not in keys.data and alias is not None and alias in keys.data:
        return keys.data[alias]
    return keys[key]


def _layer_types(keys: Keys, num_layers: int) -> tuple[str, ...]:
    linear = keys["linear_attn_config"] or {}
    if keys["layer_types"] is not None:
        types = list(keys["layer_types"])
    elif "full_attn_layers" in linear and "kda_layers" in linear:
        types = [None] * num_layers
        for layer in linear["full_attn_layers"]:
            types[layer - 1] = "full_attention"
        for layer in linear["kda_layers"]:
            types[layer - 1] = "linear_attention"
        if None in types:
            raise ValueError(f"linear_attn_config leaves layer {types.index(None) + 1} (1-based) neither full nor KDA")
    else:
        types = ["full_attention" if i and i % 4 == 0 else "linear_attention" for i in range(num_layers)]
    for kind in types:
        if kind not in ("linear_attention", "full_attention"):
            raise ValueError(f"layer_types entry {kind!r} is not one of ('linear_attention', 'full_attention')")
    return tuple(types)


def _dense_layers(keys: Keys, num_layers: int) -> dict[str, Any]:
    types = keys["mlp_layer_types"]
    if types is None:
        return {"first_dense_layers": keys["first_k_dense_replace"]}
    dense = [i for i, kind in enumerate(types) if kind == "dense"]
    if dense == list(range(len(dense))):
        return {"first_dense_layers": len(dense)}
    return {"dense_layers": tuple(dense)}


def read(keys: Keys) -> dict[str, Any]:
    embed_dim = keys.required("hidden_size")
    num_heads = keys.required("num_attention_heads")
    num_layers = keys.required("num_hidden_layers")
    if keys["num_key_value_heads"] not in (None, num_heads):
        raise ValueError(
            f"num_key_value_heads={keys['num_key_value_heads']} must equal num_attention_heads={num_heads}: "
            "latent attention gives every head its own keys and values"
        )
    linear = keys["linear_attn_config"] or {}
    num_experts = _get(keys, "num_local_experts")
    knobs = dict(
        vocab_size=keys.required("vocab_size"),
        max_seq_len=_get(keys, "max_position_embeddings"),
        embed_dim=embed_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=keys["intermediate_size"],
        norm="rmsnorm",
        norm_placement="pre",
        norm_eps=float(keys["rms_norm_eps"]),
        norm_bias=False,
        position="none",
        ffn="glu",
        activation=keys.activation("hidden_act"),
        ffn_bias=False,
        qkv_bias=bool(keys["attention_bias"]),
        attn_out_bias=bool(keys["attention_bias"]),
        attention="mla",
        q_latent_dim=keys["q_lora_rank"],
        kv_latent_dim=keys["kv_lora_rank"],
        head_dim=keys["qk_nope_head_dim"],
        rope_head_dim=keys["qk_rope_head_dim"],
        value_head_dim=keys["v_head_dim"] or keys["qk_nope_head_dim"],
        layer_types=_layer_types(keys, num_layers),
        linear_attention="kimi_delta",
        linear_num_key_heads=linear.get("num_heads", keys["linear_num_heads"]),
        linear_key_head_dim=linear.get("head_dim", keys["linear_head_dim"]),
        linear_conv_kernel=linear.get("short_conv_kernel_size", keys["linear_conv_kernel_dim"]),
        tie_embeddings=bool(keys["tie_word_embeddings"]),
        init_std=float(keys["initializer_range"]),
    )
    if knobs["value_head_dim"] == knobs["head_dim"]:
        knobs["value_head_dim"] = None
    if num_experts:
        knobs.update(
            num_experts=num_experts,
            experts_per_token=_get(keys, "num_experts_per_tok"),
            expert_hidden_dim=keys["moe_intermediate_size"],
            num_shared_experts=_get(keys, "n_shared_experts") or 0,
            router_scoring="sigmoid",
            router_renormalize=bool(_get(keys, "norm_topk_prob")),
            expert_groups=_get(keys, "n_group") or 1,
            groups_per_token=keys["topk_group"] or 1,
            router_group_score="top2_sum",
            router_selection_bias=True,
            routed_scaling_factor=float(keys["routed_scaling_factor"]),
            **_dense_layers(keys, num_layers),
        )
    return knobs


FIXED = {
    **LLAMA4_KNOBS_OFF,
    **V4_KNOBS_OFF,
    "norm": "rmsnorm", "norm_placement": "pre", "position": "none", "ffn": "glu", "ffn_bias": False, "qk_norm": False,
    "attn_output_gate": False, "attn_logit_softcap": None, "final_logit_softcap": None, "query_pre_attn_scalar": None,
    "sliding_window": None, "causal": True, "scale_embeddings": False, "lm_head_bias": False, "attention": "mla",
    "mtp_layers": 0, "linear_attention": "kimi_delta", "linear_num_value_heads": None,
    "linear_value_head_dim": None, "shared_expert_hidden_dim": None, "shared_expert_gate": False,
    "nope_layers": None, "index_topk": None, "qk_norm_scope": "head", "attention_sinks": False,
    "rope_theta_local": None, "router_bias": False, "expert_bias": False, "swiglu_limit": None,
}  # fmt: skip


def write(cfg: ModelConfig) -> dict[str, Any]:
    for knob, needed in FIXED.items():
        if getattr(cfg, knob) != needed:
            raise ValueError(f"family='kimi_linear' cannot express {knob}={getattr(cfg, knob)!r}: its transformers class needs {needed!r}")
    if cfg.qkv_bias != cfg.attn_out_bias:
        raise ValueError(f"family='kimi_linear' cannot express attn_out_bias={cfg.attn_out_bias!r}: one attention_bias switches them all")
    if cfg.num_experts:
        for knob, needed in {"router_scoring": "sigmoid", "router_selection_bias": True, "router_group_score": "top2_sum"}.items():
            if getattr(cfg, knob) != needed:
                raise ValueError(
                    f"family='kimi_linear' cannot express {knob}={getattr(cfg, knob)!r}: its router needs {needed!r} "
                    "(sigmoid scores, a selection bias, groups scored by their top-2 sum)"
                )
    types = [cfg.layer_type(i) for i in range(cfg.num_layers)]
    out = {
        "hidden_size": cfg.embed_dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_heads,
        "model_max_length": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "hidden_act": {"gelu_tanh": "gelu_pytorch_tanh"}.get(cfg.activation, cfg.activation),
        "attention_bias": cfg.qkv_bias,
        "attention_dropout": cfg.dropout,
        "q_lora_rank": cfg.q_latent_dim,
        "kv_lora_rank": cfg.kv_latent_dim,
        "qk_nope_head_dim": cfg.head_size,
        "qk_rope_head_dim": cfg.rope_head_dim,
        "v_head_dim": cfg.value_head_size,
        "layer_types": types,
        "linear_attn_config": {
            "full_attn_layers": [i + 1 for i, kind in enumerate(types) if kind == "full_attention"],
            "kda_layers": [i + 1 for i, kind in enumerate(types) if kind == "linear_attention"],
            "num_heads": cfg.linear_num_key_heads,
            "head_dim": cfg.linear_key_head_dim,
            "short_conv_kernel_size": cfg.linear_conv_kernel,
        },
        "num_experts": cfg.num_experts,
        "pad_token_id": None, "bos_token_id": None, "eos_token_id": None,
    }  # fmt: skip
    if cfg.num_experts:
        out.update(
            num_experts_per_token=cfg.experts_per_token,
            moe_intermediate_size=cfg.expert_width,
            num_shared_experts=cfg.num_shared_experts,
            moe_renormalize=cfg.router_renormalize,
            num_expert_group=cfg.expert_groups,
            topk_group=cfg.groups_per_token,
            routed_scaling_factor=cfg.routed_scaling_factor,
            mlp_layer_types=["sparse" if cfg.is_moe_layer(i) else "dense" for i in range(cfg.num_layers)],
        )
    else:
        out["mlp_layer_types"] = ["dense"] * cfg.num_layers
    return out


# -- weights --------------------------------------------------------------------------------------

NAME_TABLE = [
    # latent attention (as DeepSeek's in olm_edu.hf), before the generic self_attn entry
    (f"layers.{{i}}.attn.attention.{ours}.{{kind}}", f"model.layers.{{i}}.self_attn.{theirs}.{{kind}}")
    for ours, theirs in [
        ("q_down_proj", "q_a_proj"), ("q_norm", "q_a_layernorm"), ("q_up_proj", "q_b_proj"),
        ("kv_down_proj", "kv_a_proj_with_mqa"), ("kv_norm", "kv_a_layernorm"), ("kv_up_proj", "kv_b_proj"),
    ]
] + [
    ("layers.{i}.ffn.mlp.router.weight", "model.layers.{i}.mlp.gate.weight"),
    ("layers.{i}.ffn.mlp.router.selection_bias", "model.layers.{i}.mlp.gate.e_score_correction_bias"),
    ("layers.{i}.ffn.mlp.experts.down_proj", "model.layers.{i}.mlp.experts.down_proj"),
    ("layers.{i}.ffn.mlp.shared_experts.{proj}.{kind}", "model.layers.{i}.mlp.shared_experts.{proj}.{kind}"),
    *[entry for entry in qwen3_next.NAME_TABLE if "router" not in entry[0] and "experts" not in entry[0]],
]  # fmt: skip
# our delta-attention parameter -> transformers' in-memory name (under self_attn.)
_RENAMED = {
    "decay_down.weight": "forget_gate.f_a_proj.weight", "decay_up.weight": "forget_gate.f_b_proj.weight",
    "dt_bias": "forget_gate.dt_bias", "beta_proj.weight": "b_proj.weight", "gate_down.weight": "g_a_proj.weight",
    "gate_up.weight": "g_b_proj.weight", "norm.weight": "o_norm.weight",
}  # fmt: skip
_HUB_FORGET_GATE = ("f_a_proj.weight", "f_b_proj.weight", "dt_bias", "A_log")  # directly under self_attn in the files


def from_hf_layout(weights: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    from olm_edu.hf import _fuse_hub_experts

    weights = {name.replace(".block_sparse_moe.", ".mlp."): tensor for name, tensor in weights.items()}
    weights = _fuse_hub_experts(weights)
    for i in qwen3_next.linear_layers(cfg):
        prefix = f"model.layers.{i}.self_attn."
        for name in _HUB_FORGET_GATE:  # the files' layout -> transformers' forget_gate module
            if prefix + name in weights:
                weights[prefix + "forget_gate." + name] = weights.pop(prefix + name)
        if prefix + "q_conv1d.weight" in weights:
            convs = [weights.pop(f"{prefix}{part}_conv1d.weight") for part in "qkv"]
            weights[prefix + "conv1d.weight"] = torch.cat(convs)
        for mine, hf_name in _RENAMED.items():
            weights[prefix + mine] = weights.pop(prefix + hf_name)
        weights[prefix + "A_log"] = weights.pop(prefix + "forget_gate.A_log").reshape(-1)
    return weights


def to_hf_layout(weights: dict[str, torch.Tensor], cfg: ModelConfig, layout: str) -> dict[str, torch.Tensor]:
    from olm_edu.hf import _split_to_hub_experts

    for i in qwen3_next.linear_layers(cfg):
        prefix = f"model.layers.{i}.self_attn."
        for mine, hf_name in _RENAMED.items():
            weights[prefix + hf_name] = weights.pop(prefix + mine)
        weights[prefix + "forget_gate.A_log"] = weights.pop(prefix + "A_log").reshape(1, 1, -1, 1)
    if layout == "hub":  # experts one by one as w1 (gate), w3 (up), w2 (down), as the published files
        weights = _split_to_hub_experts(weights, "mixtral")
    return weights


families.register(sys.modules[__name__])
