"""DeepSeek-V3.2 (`deepseek_v32`): DeepSeek-V3 plus sparse attention chosen by a lightning indexer.

The table is DeepSeek-V3's (olm_edu.models.hf_config) plus three keys:

    config.json       knob              meaning
    index_topk        index_topk        keys each query attends to (2048)
    index_n_heads     index_heads       the indexer's heads (64)
    index_head_dim    index_head_dim    their width (128); the first qk_rope_head_dim rotate

and these differences from V3's transformers class:
- RoPE is always interleaved in the latent attention (V3.2's class has no rope_interleave key);
  the indexer rotates in the half layout (olm_edu.nn.indexer).
- `mlp_layer_types` ("dense" / "sparse" per layer) may replace first_k_dense_replace; only a
  run of dense layers followed by sparse ones is a knob (first_dense_layers).
- q_lora_rank is required in practice: the indexer reads the query latent.
- The multi-token-prediction layer of the published files (model.layers.61.*) is not part of
  transformers' V3.2 model and is skipped on loading (mtp_layers = 0).

Weights: V3's names, plus the indexer's
`model.layers.{i}.self_attn.indexer.{wq_b, wk, k_norm, weights_proj}` <->
`layers.{i}.attn.attention.indexer.{q_up_proj, k_proj, k_norm, head_weights}`.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from olm_edu.models import families
from olm_edu.models.config import ModelConfig

# olm_edu.models.hf_config imports the family modules while it loads: use it at call time only.

MODEL_TYPE = "deepseek_v32"
ARCHITECTURE = "DeepseekV32ForCausalLM"

# transformers 5.25's DeepseekV32Config defaults (keys read here)
DEFAULTS: dict[str, Any] = {
    "hidden_act": "silu", "initializer_range": 0.02, "rms_norm_eps": 1e-6, "rope_theta": 10_000.0,
    "tie_word_embeddings": False, "head_dim": None, "attention_bias": False, "num_key_value_heads": 128,
    "first_k_dense_replace": 3, "kv_lora_rank": 512, "q_lora_rank": 1536, "n_group": 8, "topk_group": 4,
    "n_routed_experts": 256, "n_shared_experts": 1, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "v_head_dim": 128, "routed_scaling_factor": 2.5, "num_experts_per_tok": 8, "moe_intermediate_size": 2048,
    "norm_topk_prob": True, "moe_layer_freq": 1,  # (as DeepSeek-V3's)
    "max_position_embeddings": 163_840,
    "mlp_layer_types": None,
    "index_topk": 2048,
    "index_head_dim": 128,
    "index_n_heads": 64,
    "rope_interleave": True,  # not a V3.2 key: its attention always interleaves
    "num_nextn_predict_layers": 0,  # not a V3.2 key: transformers builds no MTP module
}


def _first_dense_layers(keys: "hf_config.Keys", num_layers: int) -> int:
    types = keys["mlp_layer_types"]
    if types is None:
        return min(keys["first_k_dense_replace"], num_layers)
    if len(types) != num_layers or any(kind not in ("dense", "sparse") for kind in types):
        raise ValueError(f"mlp_layer_types={types!r} must hold num_hidden_layers={num_layers} 'dense'/'sparse' entries")
    dense = types.count("dense")
    if types != ["dense"] * dense + ["sparse"] * (num_layers - dense):
        raise ValueError(
            f"mlp_layer_types={types!r} puts dense layers after sparse ones; the knob first_dense_layers only "
            "expresses dense layers before the first MoE layer"
        )
    return dense


def read(keys: "hf_config.Keys") -> dict[str, Any]:
    """V3's table on V3.2's keys (V3.2's defaults filled in), then the indexer's three knobs."""
    from olm_edu.models import hf_config

    data = {**DEFAULTS, **keys.data}
    num_layers = keys.required("num_hidden_layers")
    data.update(
        model_type="deepseek_v3",
        rope_interleave=True,
        num_nextn_predict_layers=0,
        first_k_dense_replace=_first_dense_layers(keys, num_layers),
    )
    if data.get("q_lora_rank") is None:
        raise ValueError("q_lora_rank=None: DeepSeek-V3.2's indexer reads the query latent, so q_lora_rank is required")
    knobs = hf_config._rope_family_knobs(hf_config.Keys(data, "deepseek_v3"))
    knobs.update(index_topk=keys["index_topk"], index_heads=keys["index_n_heads"], index_head_dim=keys["index_head_dim"])
    return knobs


def write(cfg: ModelConfig) -> dict[str, Any]:
    """The config.json body of a V3.2 config: V3's, less rope_interleave and the MTP count."""
    from olm_edu.models import hf_config

    if cfg.index_topk is None:
        raise ValueError("family='deepseek_v32' needs index_topk (its transformers class always has the indexer)")
    if cfg.rope_layout != "interleaved":
        raise ValueError(f"family='deepseek_v32' cannot express rope_layout={cfg.rope_layout!r}: its class interleaves")
    if cfg.mtp_layers:
        raise ValueError(f"family='deepseek_v32' cannot express mtp_layers={cfg.mtp_layers}: transformers builds none")
    as_v3 = cfg.replace(family="deepseek_v3", index_topk=None, index_heads=None, index_head_dim=None)
    hf_config._check_expressible(as_v3)
    body = hf_config._rope_family_config(as_v3)
    del body["rope_interleave"], body["num_nextn_predict_layers"]
    body.update(index_topk=cfg.index_topk, index_n_heads=cfg.index_heads, index_head_dim=cfg.index_head_dim)
    return body


_ATTENTION = "layers.{i}.attn.attention"
_SELF_ATTN = "model.layers.{i}.self_attn"
NAME_TABLE = [
    (f"{_ATTENTION}.indexer.q_up_proj.weight", f"{_SELF_ATTN}.indexer.wq_b.weight"),
    (f"{_ATTENTION}.indexer.k_proj.weight", f"{_SELF_ATTN}.indexer.wk.weight"),
    (f"{_ATTENTION}.indexer.k_norm.{{kind}}", f"{_SELF_ATTN}.indexer.k_norm.{{kind}}"),
    (f"{_ATTENTION}.indexer.head_weights.weight", f"{_SELF_ATTN}.indexer.weights_proj.weight"),
    *[
        (f"{_ATTENTION}.{ours}.{{kind}}", f"{_SELF_ATTN}.{theirs}.{{kind}}")
        for ours, theirs in [
            ("q_down_proj", "q_a_proj"), ("q_norm", "q_a_layernorm"), ("q_up_proj", "q_b_proj"),
            ("kv_down_proj", "kv_a_proj_with_mqa"), ("kv_norm", "kv_a_layernorm"), ("kv_up_proj", "kv_b_proj"),
        ]
    ],  # fmt: skip
    ("layers.{i}.ffn.mlp.router.weight", "model.layers.{i}.mlp.gate.weight"),
    ("layers.{i}.ffn.mlp.router.selection_bias", "model.layers.{i}.mlp.gate.e_score_correction_bias"),
    ("layers.{i}.ffn.mlp.shared_experts.{proj}.{kind}", "model.layers.{i}.mlp.shared_experts.{proj}.{kind}"),
    ("layers.{i}.ffn.mlp.experts.down_proj", "model.layers.{i}.mlp.experts.down_proj"),
    ("embed.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("head.weight", "lm_head.weight"),
    ("layers.{i}.attn.norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("layers.{i}.attn.attention.{proj}.{kind}", "model.layers.{i}.self_attn.{proj}.{kind}"),
    ("layers.{i}.ffn.mlp.{proj}.{kind}", "model.layers.{i}.mlp.{proj}.{kind}"),
    ("layers.{i}.ffn.norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
]


def from_hf_layout(weights: dict, cfg: ModelConfig) -> dict:
    """Skip the MTP layers of the hub files (model.layers.{num_layers}.*) and fuse per-expert tensors."""
    from olm_edu.hf import _fuse_hub_experts  # olm_edu.hf imports the registry: import at call time

    kept = {}
    for name, tensor in weights.items():
        layer = re.match(r"model\.layers\.(\d+)\.", name)
        if layer is None or int(layer[1]) < cfg.num_layers:
            kept[name] = tensor
    return _fuse_hub_experts(kept)


def to_hf_layout(weights: dict, cfg: ModelConfig, layout: str) -> dict:
    """Hub files keep one tensor per expert."""
    from olm_edu.hf import _split_to_hub_experts

    return _split_to_hub_experts(weights, MODEL_TYPE) if layout == "hub" else weights


families.register(sys.modules[__name__])
