"""DeepSeek-V4 (`deepseek_v4`): compressed sparse attention, hyper-connections, hash-routed experts.

    config.json                              knob
    layer_types (per layer: sliding_attention,  layer_types (all sliding: None, sliding_window
      compressed_sparse_attention,               alone); attention = "compressed"
      heavily_compressed_attention)
    compress_rates {type: rate}              csa_compress_rate, hca_compress_rate
    sliding_window                           sliding_window (every layer has the window)
    rope_theta / compress_rope_theta         rope_theta (sliding layers) / compress_rope_theta
    rope_parameters (YaRN, compressed only)  rope_scaling (attention_factor 1 implied)
    head_dim, partial_rotary_factor          head_dim, rope_head_dim = head_dim * factor (trailing)
    q_lora_rank                              q_latent_dim
    o_groups, o_lora_rank                    o_groups, o_latent_dim
    index_n_heads, index_head_dim, index_topk  index_heads, index_head_dim, index_topk
    hc_mult, hc_sinkhorn_iters, hc_eps       hc_streams, hc_sinkhorn_iters, hc_eps
    mlp_layer_types (hash_moe / moe)         hash_routed_layers (the hash_moe indices)
    scoring_func                             router_scoring (sqrtsoftplus, softmax, sigmoid)
    swiglu_limit                             swiglu_limit (routed and shared experts; swiglu_alpha = None: V4's clamp feeds the plain SwiGLU)
    n_routed_experts, num_experts_per_tok,   num_experts, experts_per_token, expert_hidden_dim
      moe_intermediate_size                    (= hidden_dim: V4 has no dense feed-forward)
    routed_scaling_factor, mlp_bias          routed_scaling_factor, ffn_bias (shared expert)

Fixed by transformers' class, so fixed here: one key-value head (num_key_value_heads must be 1),
attention sinks on, a selection bias on learned routers, renormalised top-k weights (the class
renormalises whatever norm_topk_prob says), one shared expert of moe_intermediate_size (the class
builds one whatever n_shared_experts says), no attention biases (attention_bias is unused),
interleaved RoPE on the last rope_head_dim dims. Legacy keys (compress_ratios,
compress_rate_csa/hca, num_hash_layers, qk_rope_head_dim) are read as transformers folds them.
The multi-token-prediction module (num_nextn_predict_layers; `mtp.*` in DeepSeek's files) is
not part of transformers' model: skipped (mtp_layers = 0).

Weights are read under three namings: transformers' in-memory names, the names its
save_pretrained writes, and DeepSeek's own (`layers.0.attn.wq_a.weight`, `embed.weight`,
`hc_head_fn`, per-expert `ffn.experts.7.w1.weight`, ...), all renamed to the in-memory ones by
`DEEPSEEK_RENAMES` (the checkpoint format transformers' conversion mapping describes).
"""

from __future__ import annotations

import re
import sys
from typing import Any

from olm_edu.models import families
from olm_edu.models.config import ModelConfig
from olm_edu.models.families._shared import HYBRID_KNOBS_OFF, LLAMA4_KNOBS_OFF

MODEL_TYPE = "deepseek_v4"
ARCHITECTURE = "DeepseekV4ForCausalLM"

# transformers 5.25's DeepseekV4Config defaults (the V4-Flash architecture)
DEFAULTS: dict[str, Any] = {
    "vocab_size": 129_280, "hidden_size": 4096, "moe_intermediate_size": 2048, "num_hidden_layers": 43,
    "num_attention_heads": 64, "num_key_value_heads": 1, "head_dim": 512, "q_lora_rank": 1024,
    "num_experts_per_tok": 6, "n_routed_experts": 256, "n_shared_experts": 1, "scoring_func": "sqrtsoftplus",
    "norm_topk_prob": True, "routed_scaling_factor": 1.5, "max_position_embeddings": 1_048_576,
    "rope_theta": 10_000.0, "layer_types": None, "compress_rates": None, "compress_rope_theta": 160_000.0,
    "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6, "mlp_layer_types": None, "swiglu_limit": 10.0,
    "sliding_window": 128, "o_groups": 8, "o_lora_rank": 1024, "index_n_heads": 64, "index_head_dim": 128,
    "index_topk": 512, "hidden_act": "silu", "initializer_range": 0.02, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False, "partial_rotary_factor": None, "mlp_bias": False, "router_jitter_noise": 0.0,
}  # fmt: skip
_DEFAULT_RATES = {"compressed_sparse_attention": 4, "heavily_compressed_attention": 128}
_RATIO_TO_TYPE = {0: "sliding_attention", 4: "compressed_sparse_attention", 128: "heavily_compressed_attention"}


def default_layer_types(num_layers: int) -> list[str]:
    """transformers' default schedule (V4-Pro's): two HCA layers, then HCA and CSA alternating."""
    rest = ["compressed_sparse_attention" if i % 2 else "heavily_compressed_attention" for i in range(max(num_layers - 2, 0))]
    return ["heavily_compressed_attention"] * min(num_layers, 2) + rest


def _layer_types(keys, num_layers: int) -> list[str]:
    types = keys["layer_types"]
    if types is None and keys.data.get("compress_ratios") is not None:
        ratios = keys.data["compress_ratios"]
        unknown = sorted({r for r in ratios if r not in _RATIO_TO_TYPE})
        if unknown:
            raise ValueError(f"compress_ratios has {unknown}; transformers knows {sorted(_RATIO_TO_TYPE)}")
        types = [_RATIO_TO_TYPE[r] for r in ratios]
    types = list(types if types is not None else default_layer_types(num_layers))[:num_layers]
    if len(types) != num_layers:
        raise ValueError(f"layer_types has {len(types)} entries; num_hidden_layers={num_layers}")
    return types


def _hash_layers(keys, num_layers: int) -> tuple[int, ...]:
    types = keys["mlp_layer_types"]
    if types is None:
        count = keys.data.get("num_hash_layers", 3)
        types = ["hash_moe"] * min(num_layers, count) + ["moe"] * max(0, num_layers - count)
    types = list(types)[:num_layers]
    bad = [kind for kind in types if kind not in ("hash_moe", "moe")]
    if bad or len(types) != num_layers:
        raise ValueError(f"mlp_layer_types={types!r} must hold num_hidden_layers={num_layers} 'hash_moe'/'moe' entries")
    return tuple(index for index, kind in enumerate(types) if kind == "hash_moe")


def _rope(keys) -> tuple[float, float, dict[str, Any] | None, float | None]:
    """(rope_theta, compress_rope_theta, the compressed layers' scaling, partial_rotary_factor or None)."""
    params = keys.data.get("rope_parameters") or {}
    if isinstance(params.get("main"), dict) and isinstance(params.get("compress"), dict):  # transformers 5's nesting
        main, compress = dict(params["main"]), dict(params["compress"])
        theta, compress_theta = main.get("rope_theta", keys["rope_theta"]), compress.pop("rope_theta", keys["compress_rope_theta"])
        factor = compress.pop("partial_rotary_factor", None)
        if main.get("rope_type", "default") != "default":
            raise ValueError(f"rope_parameters['main'] has rope_type={main['rope_type']!r}; only 'default' is a knob")
    else:
        theta, compress_theta, factor = keys["rope_theta"], keys["compress_rope_theta"], None
        compress = {k: v for k, v in (params or keys.data.get("rope_scaling") or {}).items() if k not in ("rope_theta",)}
        factor = compress.pop("partial_rotary_factor", None)
    if "type" in compress:
        compress.setdefault("rope_type", compress.pop("type"))
    if compress.get("attention_factor") == 1.0 and compress.get("rope_type") == "yarn":
        del compress["attention_factor"]  # V4 holds YaRN's attention factor at 1: implied by the knob
    if compress.get("attention_factor") not in (None, 1.0):
        raise ValueError(f"attention_factor={compress['attention_factor']} in the compressed RoPE: V4 uses 1.0")
    scaling = None if compress.get("rope_type", "default") == "default" else compress
    return float(theta), float(compress_theta), scaling, factor


def read(keys) -> dict[str, Any]:
    num_layers = keys.required("num_hidden_layers")
    if keys["num_key_value_heads"] != 1:
        raise ValueError(f"num_key_value_heads={keys['num_key_value_heads']}: DeepSeek-V4 has one shared key-value head")
    if keys["hc_mult"] < 2:
        raise ValueError(f"hc_mult={keys['hc_mult']}: hc_streams=1 is a plain residual, which transformers' V4 never is")
    if keys["router_jitter_noise"]:
        raise ValueError(f"router_jitter_noise={keys['router_jitter_noise']} is not a ModelConfig knob")
    scoring = keys["scoring_func"]
    if scoring not in ("sqrtsoftplus", "softmax", "sigmoid"):
        raise ValueError(f"scoring_func={scoring!r} is not one of ('sqrtsoftplus', 'softmax', 'sigmoid')")
    head_dim = keys["head_dim"]
    theta, compress_theta, scaling, factor = _rope(keys)
    factor = factor or keys["partial_rotary_factor"]
    if factor is None:
        legacy = keys.data.get("qk_rope_head_dim")
        factor = legacy / head_dim if legacy is not None else 64 / 512
    types = _layer_types(keys, num_layers)
    rates = dict(_DEFAULT_RATES if keys["compress_rates"] is None else keys["compress_rates"])
    for legacy, kind in (("compress_rate_csa", "compressed_sparse_attention"), ("compress_rate_hca", "heavily_compressed_attention")):
        if keys.data.get(legacy) is not None:
            rates[kind] = keys.data[legacy]
    csa, hca = "compressed_sparse_attention" in types, "heavily_compressed_attention" in types
    all_sliding = set(types) == {"sliding_attention"}
    return dict(
        vocab_size=keys.required("vocab_size"),
        max_seq_len=keys["max_position_embeddings"],
        embed_dim=keys["hidden_size"],
        num_layers=num_layers,
        num_heads=keys["num_attention_heads"],
        hidden_dim=keys["moe_intermediate_size"],
        num_kv_heads=1,
        head_dim=head_dim,
        norm="rmsnorm",
        norm_placement="pre",
        norm_eps=float(keys["rms_norm_eps"]),
        norm_bias=False,
        position="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        rope_layout="interleaved",
        ffn="glu",
        activation=keys.activation("hidden_act"),
        ffn_bias=bool(keys["mlp_bias"]),
        qkv_bias=False,
        attn_out_bias=False,
        sliding_window=keys["sliding_window"],
        layer_types=None if all_sliding else tuple(types),
        attention="compressed",
        q_latent_dim=keys["q_lora_rank"],
        rope_head_dim=int(head_dim * factor),
        index_topk=keys["index_topk"] if csa else None,
        index_heads=keys["index_n_heads"] if csa else None,
        index_head_dim=keys["index_head_dim"] if csa else None,
        csa_compress_rate=rates["compressed_sparse_attention"] if csa else None,
        hca_compress_rate=rates["heavily_compressed_attention"] if hca else None,
        compress_rope_theta=None if all_sliding else compress_theta,
        o_groups=keys["o_groups"],
        o_latent_dim=keys["o_lora_rank"],
        attention_sinks=True,
        hc_streams=keys["hc_mult"],
        hc_sinkhorn_iters=keys["hc_sinkhorn_iters"],
        hc_eps=float(keys["hc_eps"]),
        num_experts=keys["n_routed_experts"],
        experts_per_token=keys["num_experts_per_tok"],
        num_shared_experts=1,
        router_scoring=scoring,
        router_renormalize=True,
        router_selection_bias=True,
        routed_scaling_factor=float(keys["routed_scaling_factor"]),
        hash_routed_layers=_hash_layers(keys, num_layers),
        swiglu_limit=None if keys["swiglu_limit"] is None else float(keys["swiglu_limit"]),
        swiglu_alpha=None if keys["swiglu_limit"] is not None else 1.702,  # V4's clamp: plain SwiGLU after it
        tie_embeddings=bool(keys["tie_word_embeddings"]),
        init_std=float(keys["initializer_range"]),
    )


# knob -> the only value transformers' DeepseekV4 can express
FIXED = {
    **LLAMA4_KNOBS_OFF,
    **HYBRID_KNOBS_OFF,
    "nope_layers": None, "rope_theta_local": None, "rope_scaling_local": None, "qk_norm_scope": "head",
    "router_bias": False, "expert_bias": False,
    "attention": "compressed", "num_kv_heads": 1, "norm": "rmsnorm", "norm_placement": "pre", "position": "rope",
    "rope_layout": "interleaved", "ffn": "glu", "qkv_bias": False, "attn_out_bias": False, "attention_sinks": True,
    "num_shared_experts": 1, "router_renormalize": True, "router_selection_bias": True, "first_dense_layers": 0,
    "expert_hidden_dim": None, "qk_norm": False, "attn_logit_softcap": None, "final_logit_softcap": None,
    "scale_embeddings": False, "lm_head_bias": False, "causal": True, "mtp_layers": 0, "expert_groups": 1,
    "partial_rotary_factor": 1.0,
}  # fmt: skip


def write(cfg: ModelConfig) -> dict[str, Any]:
    for knob, needed in FIXED.items():
        if getattr(cfg, knob) != needed:
            raise ValueError(f"family='deepseek_v4' cannot express {knob}={getattr(cfg, knob)!r}: its class needs {needed!r}")
    if cfg.swiglu_limit is not None and cfg.swiglu_alpha is not None:
        raise ValueError(f"family='deepseek_v4' cannot express swiglu_alpha={cfg.swiglu_alpha}: its clamped SwiGLU is the plain one (None)")
    if cfg.router_bias or cfg.expert_bias:
        raise ValueError("family='deepseek_v4' cannot express router_bias or expert_bias (gpt-oss's)")
    if cfg.hc_streams < 2:
        raise ValueError(f"family='deepseek_v4' cannot express hc_streams={cfg.hc_streams}: its class always has hyper-connections")
    types = [cfg.layer_type(i) for i in range(cfg.num_layers)]
    factor = cfg.rope_head_dim / cfg.head_size
    compress = {"rope_type": "default", **(cfg.rope_scaling or {})}
    compress.update(rope_theta=cfg.compress_rope_theta or cfg.rope_theta, partial_rotary_factor=factor)
    if compress["rope_type"] == "yarn":
        compress["attention_factor"] = 1.0
    rates = dict(_DEFAULT_RATES)
    rates.update({k: v for k, v in (("compressed_sparse_attention", cfg.csa_compress_rate),
                                    ("heavily_compressed_attention", cfg.hca_compress_rate)) if v is not None})  # fmt: skip
    hash_layers = set(cfg.hash_routed_layers)
    body = {
        "hidden_size": cfg.embed_dim, "moe_intermediate_size": cfg.hidden_dim, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": 1, "head_dim": cfg.head_size,
        "q_lora_rank": cfg.q_latent_dim, "num_experts_per_tok": cfg.experts_per_token,
        "n_routed_experts": cfg.num_experts, "n_shared_experts": 1, "scoring_func": cfg.router_scoring,
        "routed_scaling_factor": cfg.routed_scaling_factor, "max_position_embeddings": cfg.max_seq_len,
        "rope_theta": cfg.rope_theta, "compress_rope_theta": compress["rope_theta"], "layer_types": types,
        "compress_rates": rates, "hc_mult": cfg.hc_streams, "hc_sinkhorn_iters": cfg.hc_sinkhorn_iters,
        "hc_eps": cfg.hc_eps, "mlp_layer_types": ["hash_moe" if i in hash_layers else "moe" for i in range(cfg.num_layers)],
        "swiglu_limit": cfg.swiglu_limit, "sliding_window": cfg.sliding_window, "o_groups": cfg.o_groups,
        "o_lora_rank": cfg.o_latent_dim, "partial_rotary_factor": factor, "rms_norm_eps": cfg.norm_eps,
        "hidden_act": {"gelu_tanh": "gelu_pytorch_tanh"}.get(cfg.activation, cfg.activation), "mlp_bias": cfg.ffn_bias,
        "attention_dropout": cfg.dropout,
        "rope_parameters": {
            "main": {"rope_type": "default", "rope_theta": cfg.rope_theta, "partial_rotary_factor": factor},
            "compress": compress,
        },
    }  # fmt: skip
    if cfg.index_topk is not None:
        body.update(index_topk=cfg.index_topk, index_n_heads=cfg.index_heads, index_head_dim=cfg.index_head_dim)
    return body


_ATTN, _SELF = "layers.{i}.attn.attention", "model.layers.{i}.self_attn"
_MLP, _THEIR_MLP = "layers.{i}.ffn.mlp", "model.layers.{i}.mlp"
NAME_TABLE = [
    ("embed.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("head.weight", "lm_head.weight"),
    ("hc_head.{proj}", "model.hc_head.{proj}"),
    ("layers.{i}.attn.norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("layers.{i}.ffn.norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("layers.{i}.attn.connection.{proj}", "model.layers.{i}.attn_hc.{proj}"),
    ("layers.{i}.ffn.connection.{proj}", "model.layers.{i}.ffn_hc.{proj}"),
    (f"{_ATTN}.indexer.compressor.position_bias", f"{_SELF}.compressor.indexer.position_bias"),
    (f"{_ATTN}.indexer.q_up_proj.weight", f"{_SELF}.compressor.indexer.q_b_proj.weight"),
    (f"{_ATTN}.indexer.head_weights.weight", f"{_SELF}.compressor.indexer.scorer.weights_proj.weight"),
    (f"{_ATTN}.indexer.compressor.{{proj}}.weight", f"{_SELF}.compressor.indexer.{{proj}}.weight"),
    (f"{_ATTN}.compressor.position_bias", f"{_SELF}.compressor.position_bias"),
    (f"{_ATTN}.compressor.{{proj}}.weight", f"{_SELF}.compressor.{{proj}}.weight"),
    (f"{_ATTN}.q_down_proj.weight", f"{_SELF}.q_a_proj.weight"),
    (f"{_ATTN}.q_norm.weight", f"{_SELF}.q_a_norm.weight"),
    (f"{_ATTN}.q_up_proj.weight", f"{_SELF}.q_b_proj.weight"),
    (f"{_ATTN}.o_down_proj.weight", f"{_SELF}.o_a_proj.weight"),
    (f"{_ATTN}.o_proj.weight", f"{_SELF}.o_b_proj.weight"),
    (f"{_ATTN}.sinks", f"{_SELF}.sinks"),
    (f"{_ATTN}.{{proj}}.weight", f"{_SELF}.{{proj}}.weight"),  # kv_proj, kv_norm
    (f"{_MLP}.router.weight", f"{_THEIR_MLP}.gate.weight"),
    (f"{_MLP}.router.selection_bias", f"{_THEIR_MLP}.gate.e_score_correction_bias"),
    (f"{_MLP}.router.token_to_experts", f"{_THEIR_MLP}.gate.tid2eid"),
    (f"{_MLP}.shared_experts.{{proj}}.{{kind}}", f"{_THEIR_MLP}.shared_experts.{{proj}}.{{kind}}"),
    (f"{_MLP}.experts.down_proj", f"{_THEIR_MLP}.experts.down_proj"),
]

# DeepSeek's checkpoint names -> transformers' in-memory names (without "model."), applied in order
DEEPSEEK_RENAMES = [
    (r"\.attn\.", ".self_attn."), (r"\.ffn\.", ".mlp."), (r"\.indexer\.compressor\.", ".compressor.indexer."),
    (r"^embed\.weight", "embed_tokens.weight"), (r"^head\.weight", "lm_head.weight"),
    (r"^hc_head_fn", "hc_head.hc_fn"), (r"^hc_head_base", "hc_head.hc_base"), (r"^hc_head_scale", "hc_head.hc_scale"),
    (r"\.attn_norm\.", ".input_layernorm."), (r"\.ffn_norm\.", ".post_attention_layernorm."),
    (r"\.hc_attn_fn", ".attn_hc.fn"), (r"\.hc_attn_base", ".attn_hc.base"), (r"\.hc_attn_scale", ".attn_hc.scale"),
    (r"\.hc_ffn_fn", ".ffn_hc.fn"), (r"\.hc_ffn_base", ".ffn_hc.base"), (r"\.hc_ffn_scale", ".ffn_hc.scale"),
    (r"\.attn_sink", ".sinks"), (r"\.indexer\.weights_proj\.", ".compressor.indexer.scorer.weights_proj."),
    (r"\.indexer\.wq_b\.", ".compressor.indexer.q_b_proj."), (r"\.norm\.", ".kv_norm."), (r"\.ape$", ".position_bias"),
    (r"\.wq_a\.", ".q_a_proj."), (r"\.self_attn\.wq_b\.", ".self_attn.q_b_proj."), (r"\.wkv\.", ".kv_proj."),
    (r"\.wgate\.", ".gate_proj."), (r"\.wo_a\.", ".o_a_proj."), (r"\.wo_b\.", ".o_b_proj."), (r"\.q_norm\.", ".q_a_norm."),
    (r"\.gate\.bias$", ".gate.e_score_correction_bias"), (r"\.shared_experts\.w1\.", ".shared_experts.gate_proj."),
    (r"\.shared_experts\.w2\.", ".shared_experts.down_proj."), (r"\.shared_experts\.w3\.", ".shared_experts.up_proj."),
]  # fmt: skip


def in_memory_name(name: str) -> str:
    """Any of the three namings -> transformers' in-memory name."""
    bare = name.removeprefix("model.")
    for pattern, replacement in DEEPSEEK_RENAMES:
        bare = re.sub(pattern, replacement, bare)
    return bare if bare.startswith("lm_head.") else "model." + bare


def from_hf_layout(weights: dict, cfg: ModelConfig) -> dict:
    """Rename to the in-memory names, skip the MTP module (mtp.*), fuse per-expert tensors."""
    from olm_edu.hf import _fuse_hub_experts  # olm_edu.hf imports the registry: import at call time

    renamed = {in_memory_name(name): tensor for name, tensor in weights.items() if not name.startswith(("mtp.", "model.mtp."))}
    return _fuse_hub_experts(renamed)


families.register(sys.modules[__name__])
