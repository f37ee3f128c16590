"""Qwen3.5 with experts (`qwen3_5_moe_text`, e.g. Qwen3.5-35B-A3B): Qwen3.5's hybrid layers, every
feed-forward a mixture of experts with a sigmoid-gated shared expert.

As `qwen3_5_text` (multimodal wrapper "qwen3_5_moe" with a `text_config`, the same weight
layout) plus Qwen3-Next's experts, with two differences in the router: the chosen weights are
always renormalised (no norm_topk_prob key) and every layer has experts (no decoder_sparse_step
or mlp_only_layers).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from olm_edu.models import families
from olm_edu.models.config import ModelConfig
from olm_edu.models.families import qwen3_5_text, qwen3_next

if TYPE_CHECKING:
    from olm_edu.models.hf_config import Keys

MODEL_TYPE = "qwen3_5_moe_text"
ARCHITECTURE = "Qwen3_5MoeForCausalLM"
TEXT_CONFIG_OF = ("qwen3_5_moe",)
DEFAULTS: dict[str, Any] = {
    **qwen3_5_text.DEFAULTS,
    "hidden_size": 2048,
    "num_hidden_layers": 40,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "moe_intermediate_size": 512,
    "shared_expert_intermediate_size": 512,
    "num_experts_per_tok": 8,
    "num_experts": 256,
    "router_aux_loss_coef": 0.001,
    "intermediate_size": None,  # Qwen3_5MoeTextConfig has none: every layer has experts
}

FIXED = {**qwen3_next.FIXED, "router_renormalize": True, "dense_layers": (), "first_dense_layers": 0}


def read(keys: Keys) -> dict[str, Any]:
    knobs = qwen3_next.read_hybrid(keys)
    experts = qwen3_next.read_experts(keys, renormalize=True)
    # hidden_dim is a required knob but no layer is dense: it holds the expert width
    knobs["hidden_dim"] = knobs["hidden_dim"] or experts["expert_hidden_dim"]
    knobs.update(experts)
    return knobs


def write(cfg: ModelConfig) -> dict[str, Any]:
    qwen3_next.check_fixed(cfg, FIXED)
    if cfg.num_experts == 0:
        raise ValueError(f"family={cfg.family!r} cannot express num_experts=0: every layer has experts")
    out = qwen3_next.write_hybrid(cfg)
    del out["intermediate_size"]
    out.update(qwen3_next.write_experts(cfg))
    return out


NAME_TABLE = qwen3_next.NAME_TABLE
from_hf_layout = qwen3_5_text.from_hf_layout
to_hf_layout = qwen3_5_text.to_hf_layout

families.register(sys.modules[__name__])
