"""OLMo 3 (Ai2, 2025): `model_type="olmo3"`, OLMo 2 (see `olmo2`) plus windows.

    config.json                        knob
    layer_types, sliding_window        three sliding layers (window 4096) per full one
    rope_theta + rope_scaling          the full layers' RoPE (OLMo 3 7B: YaRN); the sliding layers
                                         rotate with plain RoPE: rope_theta_local, rope_scaling_local

A transformers 5 quirk, reproduced so that the numbers match: from the published style
(rope_theta + rope_scaling) Olmo3Config gives the sliding layers the class's default base,
500,000, whatever rope_theta says (it reads rope_theta once, for the full layers). The
published OLMo 3 files use 500,000 for both, so they are unaffected. `rope_parameters` with a
dict per layer type (what transformers 5 writes) is read as it stands.
"""

from __future__ import annotations

import sys
from typing import Any

from olm_edu.models import hf_config  # partly loaded while it imports the families: used at call time only
from olm_edu.models.config import ModelConfig
from olm_edu.models.families import olmo2, register
from olm_edu.models.families._shared import local_rope_knobs, read_rope_by_layer_type, rope_parameters

MODEL_TYPE = "olmo3"
ARCHITECTURE = "Olmo3ForCausalLM"
DEFAULT_THETA = 500_000.0

# transformers 5.25's Olmo3Config defaults
DEFAULTS: dict[str, Any] = {**olmo2.DEFAULTS, "rope_theta": DEFAULT_THETA, "sliding_window": 4096, "layer_types": None}
FIXED = olmo2.FIXED
NAME_TABLE = olmo2.NAME_TABLE


def default_layer_types(num_layers: int) -> list[str]:
    # Olmo3Config: every fourth layer (3, 7, 11, ...) is full, the others slide
    return ["sliding_attention" if (i + 1) % 4 else "full_attention" for i in range(num_layers)]


def read(keys: hf_config.Keys) -> dict[str, Any]:
    types = keys["layer_types"] or default_layer_types(keys["num_hidden_layers"])
    if "sliding_attention" in types and keys["sliding_window"] is None:
        raise ValueError("layer_types has sliding_attention layers but sliding_window is None")
    layer_types, sliding_window = hf_config._canonical_layers(types, keys["sliding_window"])
    theta, scaling, local_theta, local_scaling = read_rope_by_layer_type(keys, keys["rope_theta"], DEFAULT_THETA)
    return dict(
        olmo2.common_knobs(keys),
        **local_rope_knobs((theta, scaling), (local_theta, local_scaling), sliding_window is not None),
        sliding_window=sliding_window,
        layer_types=layer_types,
    )


def write(cfg: ModelConfig) -> dict[str, Any]:
    local = (cfg.rope_theta_local, cfg.rope_scaling_local) if cfg.rope_theta_local is not None else None
    return dict(
        olmo2.common_config(cfg, FIXED),
        sliding_window=cfg.sliding_window,
        layer_types=[cfg.layer_type(i) for i in range(cfg.num_layers)],
        rope_parameters={
            "full_attention": rope_parameters(cfg.rope_theta, cfg.rope_scaling),
            "sliding_attention": rope_parameters(*(local or (cfg.rope_theta, cfg.rope_scaling))),
        },
    )


register(sys.modules[__name__])
