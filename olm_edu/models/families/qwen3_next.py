"""Qwen3-Next (`qwen3_next`): a hybrid of Gated DeltaNet and gated full attention, with MoE.

config.json key                         knob
layer_types (or full_attention_interval,  layer_types: "linear_attention" / "full_attention"
  default 4: every 4th layer full)
linear_num_key_heads / _value_heads      linear_num_key_heads / linear_num_value_heads
linear_key_head_dim / _value_head_dim    linear_key_head_dim / linear_value_head_dim
linear_conv_kernel_dim                   linear_conv_kernel
partial_rotary_factor (default 0.25,     partial_rotary_factor
  top level or in rope_parameters)
num_experts, num_experts_per_tok         num_experts, experts_per_token (0 experts: dense)
moe_intermediate_size                    expert_hidden_dim
shared_expert_intermediate_size          shared_expert_hidden_dim (always gated: shared_expert_gate)
norm_topk_prob                           router_renormalize
decoder_sparse_step, mlp_only_layers     dense_layers (layers whose MLP is dense)
router_aux_loss_coef                     load_balance_coef

Fixed by the class: zero-centred (1 + w) RMSNorm everywhere ("rmsnorm_gemma", including q/k
norms), QK-norm, the sigmoid output gate on full attention, softmax top-k router, the gated
delta rule with a per-head decay ("gated_deltanet"), SiLU gated norm on the linear layers.

Weights: the linear layers' q, k, v and output gate z come fused in one in_proj_qkvz, grouped by
key head ([q, k, v of the group's value heads, z of them] per key head), and b, a in
in_proj_ba, grouped the same way; `from_hf_layout` splits them into our q_proj, k_proj, v_proj,
gate_proj, beta_proj and decay_proj, `to_hf_layout` fuses them back.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import torch

from olm_edu.models import families
from olm_edu.models.config import ModelConfig
from olm_edu.models.families._shared import LLAMA4_KNOBS_OFF, V4_KNOBS_OFF

if TYPE_CHECKING:  # hf_config imports the family modules while it loads: read it lazily
    from olm_edu.models.hf_config import Keys

MODEL_TYPE = "qwen3_next"
ARCHITECTURE = "Qwen3NextForCausalLM"
DEFAULTS: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 48,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "rope_theta": 10_000.0,
    "attention_bias": False,
    "head_dim": 256,
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 32,
    "decoder_sparse_step": 1,
    "moe_intermediate_size": 512,
    "shared_expert_intermediate_size": 512,
    "num_experts_per_tok": 10,
    "num_experts": 512,
    "norm_topk_prob": True,
    "router_aux_loss_coef": 0.001,
    "mlp_only_layers": None,
    "layer_types": None,
    "full_attention_interval": 4,
    "partial_rotary_factor": 0.25,
}


# -- config ---------------------------------------------------------------------------------------


def read_rope(keys: Keys) -> tuple[float, dict[str, Any] | None, float]:
    """(rope_theta, rope_scaling, partial_rotary_factor). The factor may sit at the top level (the
    published files) or in transformers 5's rope_parameters; Qwen3.5's multimodal RoPE keys
    (mrope_section, mrope_interleaved) change nothing for text, whose three position axes are
    equal, and are dropped."""
    from olm_edu.models.hf_config import Keys, _read_rope

    data = dict(keys.data)
    factor = data.pop("partial_rotary_factor", None)
    if data.get("rope_parameters"):
        parameters = dict(data["rope_parameters"])
        factor = parameters.pop("partial_rotary_factor", factor)
        for key in ("mrope_section", "mrope_interleaved"):
            parameters.pop(key, None)
        data["rope_parameters"] = parameters
    if isinstance(data.get("rope_scaling"), dict):
        scaling = dict(data["rope_scaling"])
        for key in ("mrope_section", "mrope_interleaved", "partial_rotary_factor"):
            scaling.pop(key, None)
        data["rope_scaling"] = scaling or None
    theta, scaling = _read_rope(Keys(data, keys.family))
    return theta, scaling, float(keys["partial_rotary_factor"] if factor is None else factor)


def read_layer_types(keys: Keys, num_layers: int) -> tuple[str, ...]:
    """layer_types, or every full_attention_interval-th layer full and the others linear."""
    types = keys["layer_types"]
    if types is None:
        interval = keys["full_attention_interval"]
        types = ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(num_layers)]
    for kind in types:
        if kind not in ("linear_attention", "full_attention"):
            raise ValueError(f"layer_types entry {kind!r} is not one of ('linear_attention', 'full_attention')")
    return tuple(types)


def read_hybrid(keys: Keys, decay_family: str = "gated_deltanet") -> dict[str, Any]:
    """The knobs the Qwen hybrids share (Qwen3-Next, Qwen3.5 dense and MoE): everything but the experts."""
    embed_dim = keys.required("hidden_size")
    num_heads = keys.required("num_attention_heads")
    num_layers = keys.required("num_hidden_layers")
    num_kv_heads, head_dim = keys["num_key_value_heads"], keys["head_dim"]
    theta, scaling, partial = read_rope(keys)
    value_heads, key_heads = keys["linear_num_value_heads"], keys["linear_num_key_heads"]
    value_dim, key_dim = keys["linear_value_head_dim"], keys["linear_key_head_dim"]
    return dict(
        vocab_size=keys.required("vocab_size"),
        max_seq_len=keys["max_position_embeddings"],
        embed_dim=embed_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=keys["intermediate_size"],
        num_kv_heads=None if num_kv_heads in (None, num_heads) else num_kv_heads,
        head_dim=None if head_dim is None or head_dim * num_heads == embed_dim else head_dim,
        norm="rmsnorm_gemma",
        norm_placement="pre",
        norm_eps=float(keys["rms_norm_eps"]),
        norm_bias=False,
        position="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        rope_layout="half",
        partial_rotary_factor=partial,
        ffn="glu",
        activation=keys.activation("hidden_act"),
        ffn_bias=False,
        qkv_bias=bool(keys["attention_bias"]),
        attn_out_bias=bool(keys["attention_bias"]),
        qk_norm=True,
        attn_output_gate=True,
        layer_types=read_layer_types(keys, num_layers),
        linear_attention=decay_family,
        linear_num_key_heads=key_heads,
        linear_num_value_heads=None if value_heads == key_heads else value_heads,
        linear_key_head_dim=key_dim,
        linear_value_head_dim=None if value_dim == key_dim else value_dim,
        linear_conv_kernel=keys["linear_conv_kernel_dim"],
        tie_embeddings=bool(keys["tie_word_embeddings"]),
        init_std=float(keys["initializer_range"]),
    )


def read_experts(keys: Keys, renormalize: bool) -> dict[str, Any]:
    """Routed experts with one sigmoid-gated shared expert (Qwen3-Next, Qwen3.5-MoE)."""
    shared = keys["shared_expert_intermediate_size"]
    if not shared:
        raise ValueError("shared_expert_intermediate_size=0: the Qwen hybrid MoE always has a gated shared expert")
    return dict(
        num_experts=keys["num_experts"],
        experts_per_token=keys["num_experts_per_tok"],
        expert_hidden_dim=keys["moe_intermediate_size"],
        shared_expert_hidden_dim=shared,
        shared_expert_gate=True,
        router_scoring="softmax",
        router_renormalize=renormalize,
        load_balance_coef=float(keys["router_aux_loss_coef"]),
    )


def read(keys: Keys) -> dict[str, Any]:
    knobs = read_hybrid(keys)
    num_layers = knobs["num_layers"]
    if keys["num_experts"] > 0:
        knobs.update(read_experts(keys, bool(keys["norm_topk_prob"])))
        step = keys["decoder_sparse_step"]
        only_dense = set(keys["mlp_only_layers"] or [])
        knobs["dense_layers"] = tuple(i for i in range(num_layers) if i in only_dense or (i + 1) % step)
    return knobs


# Knobs the Qwen hybrids' transformers classes hard-code.
FIXED = {
    **LLAMA4_KNOBS_OFF,
    **V4_KNOBS_OFF,
    "norm": "rmsnorm_gemma", "norm_placement": "pre", "position": "rope", "rope_layout": "half", "ffn": "glu",
    "ffn_bias": False, "qk_norm": True, "attn_output_gate": True, "attn_logit_softcap": None,
    "final_logit_softcap": None, "query_pre_attn_scalar": None, "sliding_window": None, "causal": True,
    "scale_embeddings": False, "lm_head_bias": False, "attention": "standard", "mtp_layers": 0,
    "linear_attention": "gated_deltanet", "router_scoring": "softmax", "expert_groups": 1,
    "router_selection_bias": False, "routed_scaling_factor": 1.0, "num_shared_experts": 0,
    "nope_layers": None, "index_topk": None, "qk_norm_scope": "head", "attention_sinks": False,
    "rope_theta_local": None, "router_bias": False, "expert_bias": False, "swiglu_limit": None,
}  # fmt: skip


def check_fixed(cfg: ModelConfig, fixed: dict[str, Any]) -> None:
    for knob, needed in fixed.items():
        if getattr(cfg, knob) != needed:
            raise ValueError(f"family={cfg.family!r} cannot express {knob}={getattr(cfg, knob)!r}: its transformers class needs {needed!r}")
    if cfg.qkv_bias != cfg.attn_out_bias:
        raise ValueError(f"family={cfg.family!r} cannot express attn_out_bias={cfg.attn_out_bias!r}: one attention_bias switches q, k, v and o")
    if not cfg.has_linear_attention and cfg.layer_types is None:
        raise ValueError(f"family={cfg.family!r} needs layer_types (its layers are linear or full attention)")
    if cfg.num_experts and not cfg.shared_expert_gate:
        raise ValueError(f"family={cfg.family!r} cannot express shared_expert_gate=False: its MoE has a gated shared expert")


def write_hybrid(cfg: ModelConfig) -> dict[str, Any]:
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
        "partial_rotary_factor": cfg.partial_rotary_factor,
        "hidden_act": {"gelu_tanh": "gelu_pytorch_tanh"}.get(cfg.activation, cfg.activation),
        "attention_bias": cfg.qkv_bias,
        "attention_dropout": cfg.dropout,
        "layer_types": [cfg.layer_type(i) for i in range(cfg.num_layers)],
        "linear_num_key_heads": cfg.linear_num_key_heads,
        "linear_num_value_heads": cfg.linear_num_value_heads or cfg.linear_num_key_heads,
        "linear_key_head_dim": cfg.linear_key_head_dim,
        "linear_value_head_dim": cfg.linear_value_head_dim or cfg.linear_key_head_dim,
        "linear_conv_kernel_dim": cfg.linear_conv_kernel,
    }
    return out


def write_experts(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "num_experts": cfg.num_experts,
        "num_experts_per_tok": cfg.experts_per_token,
        "moe_intermediate_size": cfg.expert_width,
        "shared_expert_intermediate_size": cfg.shared_expert_width,
        "router_aux_loss_coef": cfg.load_balance_coef,
    }


def write(cfg: ModelConfig) -> dict[str, Any]:
    check_fixed(cfg, FIXED)
    out = write_hybrid(cfg)
    if cfg.num_experts:
        out.update(write_experts(cfg), norm_topk_prob=cfg.router_renormalize, decoder_sparse_step=1,
                   mlp_only_layers=[i for i in range(cfg.num_layers) if not cfg.is_moe_layer(i)])  # fmt: skip
    else:
        out.update(num_experts=0, mlp_only_layers=[])
    return out


# -- weights --------------------------------------------------------------------------------------

NAME_TABLE = [
    ("embed.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("head.weight", "lm_head.weight"),
    ("layers.{i}.attn.norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("layers.{i}.ffn.norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    # full layers (and, renamed by the layout hooks, the linear layers' tensors)
    ("layers.{i}.attn.attention.{proj}.{kind}", "model.layers.{i}.self_attn.{proj}.{kind}"),
    ("layers.{i}.attn.attention.{proj}", "model.layers.{i}.self_attn.{proj}"),  # A_log, dt_bias
    ("layers.{i}.ffn.mlp.router.weight", "model.layers.{i}.mlp.gate.weight"),
    ("layers.{i}.ffn.mlp.experts.down_proj", "model.layers.{i}.mlp.experts.down_proj"),
    ("layers.{i}.ffn.mlp.shared_experts.{proj}.{kind}", "model.layers.{i}.mlp.shared_expert.{proj}.{kind}"),
    ("layers.{i}.ffn.mlp.{proj}.{kind}", "model.layers.{i}.mlp.{proj}.{kind}"),
]

# our linear-attention parameter -> transformers' name, where they differ only by name
_LINEAR_RENAMED = {"conv1d.weight": "conv1d.weight", "A_log": "A_log", "dt_bias": "dt_bias",
                   "norm.weight": "norm.weight", "o_proj.weight": "out_proj.weight"}  # fmt: skip


def linear_layers(cfg: ModelConfig) -> list[int]:
    return [i for i in range(cfg.num_layers) if cfg.layer_type(i) == "linear_attention"]


def _widths(cfg: ModelConfig) -> tuple[int, int, int, int, int]:
    key_heads = cfg.linear_num_key_heads
    value_heads = cfg.linear_num_value_heads or key_heads
    key_dim = cfg.linear_key_head_dim
    value_dim = cfg.linear_value_head_dim or key_dim
    return key_heads, value_heads // key_heads, key_dim, value_dim, value_heads


def _drop_extras(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Skip the multi-token-prediction head the published files carry (transformers skips it too)."""
    return {name: tensor for name, tensor in weights.items() if not name.startswith("mtp.")}


def from_hf_layout(weights: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    from olm_edu.hf import _fuse_hub_experts

    weights = _fuse_hub_experts(_drop_extras(weights))
    key_heads, ratio, key_dim, value_dim, _ = _widths(cfg)
    for i in linear_layers(cfg):
        theirs, ours = f"model.layers.{i}.linear_attn.", f"model.layers.{i}.self_attn."
        qkvz = weights.pop(theirs + "in_proj_qkvz.weight")
        grouped = qkvz.view(key_heads, 2 * key_dim + 2 * ratio * value_dim, -1)
        q, k, v, z = grouped.split([key_dim, key_dim, ratio * value_dim, ratio * value_dim], dim=1)
        ba = weights.pop(theirs + "in_proj_ba.weight").view(key_heads, 2 * ratio, -1)
        b, a = ba.split([ratio, ratio], dim=1)
        for name, part in (("q_proj", q), ("k_proj", k), ("v_proj", v), ("gate_proj", z), ("beta_proj", b), ("decay_proj", a)):
            weights[ours + name + ".weight"] = part.reshape(-1, part.shape[-1])
        for mine, hf_name in _LINEAR_RENAMED.items():
            weights[ours + mine] = weights.pop(theirs + hf_name)
    return weights


def to_hf_layout(weights: dict[str, torch.Tensor], cfg: ModelConfig, layout: str) -> dict[str, torch.Tensor]:
    from olm_edu.hf import _split_to_hub_experts

    key_heads, ratio, key_dim, value_dim, _ = _widths(cfg)
    for i in linear_layers(cfg):
        theirs, ours = f"model.layers.{i}.linear_attn.", f"model.layers.{i}.self_attn."
        part = {name: weights.pop(f"{ours}{name}.weight") for name in ("q_proj", "k_proj", "v_proj", "gate_proj", "beta_proj", "decay_proj")}
        grouped = [part["q_proj"].view(key_heads, key_dim, -1), part["k_proj"].view(key_heads, key_dim, -1),
                   part["v_proj"].view(key_heads, ratio * value_dim, -1), part["gate_proj"].view(key_heads, ratio * value_dim, -1)]  # fmt: skip
        weights[theirs + "in_proj_qkvz.weight"] = torch.cat(grouped, dim=1).flatten(0, 1)
        ba = [part["beta_proj"].view(key_heads, ratio, -1), part["decay_proj"].view(key_heads, ratio, -1)]
        weights[theirs + "in_proj_ba.weight"] = torch.cat(ba, dim=1).flatten(0, 1)
        for mine, hf_name in _LINEAR_RENAMED.items():
            weights[theirs + hf_name] = weights.pop(ours + mine)
    return _split_to_hub_experts(weights, cfg.family) if layout == "hub" else weights


families.register(sys.modules[__name__])
