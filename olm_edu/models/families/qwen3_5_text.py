"""Qwen3.5, dense (`qwen3_5_text`): Qwen3-Next's hybrid layers with a dense feed-forward.

The published releases (e.g. Qwen3.5-27B) are multimodal: config.json has model_type "qwen3_5"
and keeps the language model in `text_config` (read through it, TEXT_CONFIG_OF), and the
checkpoint names its weights `model.language_model.*` next to the vision tower `model.visual.*`
(skipped: olm_edu reads the language model only). Qwen3_5ForCausalLM's own save_pretrained
writes plain `model.*` names; both are read.

Keys as Qwen3-Next (see olm_edu.models.families.qwen3_next) without the experts. Differences in
the maths: none for text. The RoPE is "multimodal" (mrope_section, mrope_interleaved: each
frequency follows the time, height or width position); a text token's three positions are
equal, so it is the plain partial RoPE. The linear layers' projections come unfused:
in_proj_qkv (q, k, v one after the other), in_proj_z (the output gate), in_proj_b, in_proj_a.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import torch

from olm_edu.models import families
from olm_edu.models.config import ModelConfig
from olm_edu.models.families import qwen3_next

if TYPE_CHECKING:
    from olm_edu.models.hf_config import Keys

MODEL_TYPE = "qwen3_5_text"
ARCHITECTURE = "Qwen3_5ForCausalLM"
TEXT_CONFIG_OF = ("qwen3_5",)
DEFAULTS: dict[str, Any] = {
    **{key: value for key, value in qwen3_next.DEFAULTS.items() if "expert" not in key and key not in
       ("decoder_sparse_step", "norm_topk_prob", "router_aux_loss_coef", "mlp_only_layers", "moe_intermediate_size")},
    "vocab_size": 248320,
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
}  # fmt: skip

FIXED = {**qwen3_next.FIXED, "num_experts": 0}


def read(keys: Keys) -> dict[str, Any]:
    return qwen3_next.read_hybrid(keys)


def write(cfg: ModelConfig) -> dict[str, Any]:
    qwen3_next.check_fixed(cfg, FIXED)
    return qwen3_next.write_hybrid(cfg)


NAME_TABLE = qwen3_next.NAME_TABLE

# our linear-attention parameter -> transformers' name
_RENAMED = {"gate_proj.weight": "in_proj_z.weight", "beta_proj.weight": "in_proj_b.weight",
            "decay_proj.weight": "in_proj_a.weight", **qwen3_next._LINEAR_RENAMED}  # fmt: skip


def _language_model_only(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The published multimodal files: model.language_model.* -> model.*; the vision tower and
    the multi-token-prediction head are skipped."""
    out = {}
    for name, tensor in weights.items():
        if name.startswith(("model.visual.", "mtp.")):
            continue
        out[name.replace("model.language_model.", "model.", 1)] = tensor
    return out


def from_hf_layout(weights: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    from olm_edu.hf import _fuse_hub_experts

    weights = _fuse_hub_experts(_language_model_only(weights))
    key_width = cfg.linear_num_key_heads * cfg.linear_key_head_dim
    for i in qwen3_next.linear_layers(cfg):
        theirs, ours = f"model.layers.{i}.linear_attn.", f"model.layers.{i}.self_attn."
        q, k, v = weights.pop(theirs + "in_proj_qkv.weight").split([key_width, key_width, _value_width(cfg)])
        weights[ours + "q_proj.weight"], weights[ours + "k_proj.weight"], weights[ours + "v_proj.weight"] = q, k, v
        for mine, hf_name in _RENAMED.items():
            weights[ours + mine] = weights.pop(theirs + hf_name)
    return weights


def _value_width(cfg: ModelConfig) -> int:
    return (cfg.linear_num_value_heads or cfg.linear_num_key_heads) * (cfg.linear_value_head_dim or cfg.linear_key_head_dim)


def to_hf_layout(weights: dict[str, torch.Tensor], cfg: ModelConfig, layout: str) -> dict[str, torch.Tensor]:
    from olm_edu.hf import _split_to_hub_experts

    for i in qwen3_next.linear_layers(cfg):
        theirs, ours = f"model.layers.{i}.linear_attn.", f"model.layers.{i}.self_attn."
        parts = [weights.pop(f"{ours}{name}.weight") for name in ("q_proj", "k_proj", "v_proj")]
        weights[theirs + "in_proj_qkv.weight"] = torch.cat(parts)
        for mine, hf_name in _RENAMED.items():
            weights[theirs + hf_name] = weights.pop(ours + mine)
    return _split_to_hub_experts(weights, cfg.family) if layout == "hub" else weights


families.register(sys.modules[__name__])
