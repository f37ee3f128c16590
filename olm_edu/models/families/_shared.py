"""Helpers the Part III family modules share (tables of fixed knobs, RoPE in and out).

A family's transformers class hard-codes some knobs (gpt-oss always has sinks, OLMo 2 always
normalises inside the branch); `check_fixed` refuses a config that turns one of them, naming
the knob. RoPE is written the transformers 5 way (`rope_parameters`, theta inside), which every
family here reads unambiguously; `read_rope_by_layer_type` reads both that and the published
style for families whose sliding and full layers have a RoPE each (Gemma 3, OLMo 3).
"""

from __future__ import annotations

from typing import Any

from olm_edu.models import hf_config  # partly loaded while it imports the families: used at call time only
from olm_edu.models.config import ModelConfig


def check_fixed(cfg: ModelConfig, fixed: dict[str, Any]) -> None:
    """ValueError naming the first knob of `cfg` that differs from what its family's class needs."""
    for knob, needed in fixed.items():
        if getattr(cfg, knob) != needed:
            raise ValueError(
                f"family={cfg.family!r} cannot express {knob}={getattr(cfg, knob)!r}: its transformers class needs {needed!r}"
            )


def rope_parameters(theta: float, scaling: dict[str, Any] | None) -> dict[str, Any]:
    """transformers 5's rope_parameters dict: {"rope_type": ..., "rope_theta": theta, ...}."""
    return {"rope_type": "default", **(scaling or {}), "rope_theta": float(theta)}


def read_rope_by_layer_type(
    keys: hf_config.Keys, global_theta: float, local_theta: float
) -> tuple[float, dict[str, Any] | None, float, dict[str, Any] | None]:
    """(theta, scaling) of the full layers, then of the sliding layers.

    transformers 5 style: rope_parameters = {"full_attention": {...}, "sliding_attention": {...}}.
    Published style: rope_theta and rope_scaling are the full layers'; the sliding layers get plain
    RoPE of base `local_theta` (the caller's reading of the family's local key or default).
    """
    parameters = keys.data.get("rope_parameters")
    if isinstance(parameters, dict) and ("full_attention" in parameters or "sliding_attention" in parameters):
        out = []
        for layer_type, default_theta in (("full_attention", global_theta), ("sliding_attention", local_theta)):
            one = dict(parameters.get(layer_type) or {"rope_type": "default"})
            one.setdefault("rope_theta", default_theta)
            out += hf_config._read_rope(hf_config.Keys({"rope_parameters": one}, keys.family))
        return tuple(out)  # type: ignore[return-value]
    if parameters:  # one dict for every layer type
        theta, scaling = hf_config._read_rope(keys)
        return theta, scaling, theta, scaling
    scaling = dict(keys.data["rope_scaling"]) if keys.data.get("rope_scaling") else None
    theta, scaling = hf_config._read_rope(hf_config.Keys({"rope_theta": global_theta, "rope_scaling": scaling}, keys.family))
    return theta, scaling, float(local_theta), None


def local_rope_knobs(
    full: tuple[float, dict[str, Any] | None], sliding: tuple[float, dict[str, Any] | None], has_sliding: bool
) -> dict[str, Any]:
    """rope_theta, rope_scaling and, when the sliding layers' RoPE differs, rope_theta_local and
    rope_scaling_local (canonical: the local pair is None when it equals the global one or no
    layer slides)."""
    knobs = {"rope_theta": full[0], "rope_scaling": full[1]}
    if has_sliding and (float(sliding[0]), sliding[1]) != (float(full[0]), full[1]):
        knobs.update(rope_theta_local=float(sliding[0]), rope_scaling_local=sliding[1])
    return knobs
