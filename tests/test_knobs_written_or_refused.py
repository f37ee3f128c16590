"""Every family either writes a knob into its config.json (and reads it back unchanged) or refuses
it by name: no knob is dropped silently on the way to transformers.

For each preset (one per family and size) and each knob added since Part II, a config with the
knob turned on is passed to `to_hf_config`; a ValueError is a refusal, anything else must round
trip through `from_hf_config`.
"""

from __future__ import annotations

import pytest

from olm_edu.models.config import ModelConfig
from olm_edu.models.hf_config import from_hf_config, to_hf_config
from olm_edu.models.presets import PRESETS, preset


def _chunked_types(cfg: ModelConfig) -> dict:
    types = tuple("chunked_attention" if cfg.layer_type(i) == "full_attention" else cfg.layer_type(i) for i in range(cfg.num_layers))
    return dict(attention_chunk_size=64, layer_types=None if set(types) == {"chunked_attention"} else types)  # canonical


CHANGES = {
    "nope_layers": lambda cfg: dict(nope_layers=(0,)),
    "attention_chunk_size": _chunked_types,
    "qk_l2_norm": lambda cfg: dict(qk_l2_norm=True),
    "attn_temperature_tuning": lambda cfg: dict(attn_temperature_tuning=True),
    "dense_layers": lambda cfg: dict(dense_layers=(0,) if 0 not in cfg.dense_layers else (), first_dense_layers=0),
    "router_weighting": lambda cfg: dict(router_weighting="input" if cfg.router_weighting == "output" else "output"),
    "attention_sinks": lambda cfg: dict(attention_sinks=not cfg.attention_sinks),
    "qk_norm_scope": lambda cfg: dict(qk_norm=True, qk_norm_scope="projection" if cfg.qk_norm_scope == "head" else "head"),
    "rope_theta_local": lambda cfg: dict(rope_theta_local=1234.0),
    "router_bias": lambda cfg: dict(router_bias=not cfg.router_bias),
    "expert_bias": lambda cfg: dict(expert_bias=not cfg.expert_bias),
    "swiglu_limit": lambda cfg: dict(swiglu_limit=3.0),
    "attn_output_gate": lambda cfg: dict(attn_output_gate=not cfg.attn_output_gate),
    "shared_expert_hidden_dim": lambda cfg: dict(shared_expert_hidden_dim=(cfg.shared_expert_hidden_dim or 8) + 8),
    "shared_expert_gate": lambda cfg: dict(shared_expert_gate=not cfg.shared_expert_gate),
    "hc_streams": lambda cfg: dict(hc_streams=2 if cfg.hc_streams == 1 else 1),
    "hash_routed_layers": lambda cfg: dict(hash_routed_layers=() if cfg.hash_routed_layers else (cfg.num_layers - 1,)),
    "router_scoring": lambda cfg: dict(router_scoring="sqrtsoftplus" if cfg.router_scoring != "sqrtsoftplus" else "sigmoid"),
    "linear_attention": lambda cfg: dict(layer_types=("linear_attention",) + tuple(cfg.layer_type(i) for i in range(1, cfg.num_layers))),
}


@pytest.mark.parametrize("knob", list(CHANGES))
@pytest.mark.parametrize("name", list(PRESETS))
def test_a_knob_is_written_and_read_back_or_refused(name, knob):
    cfg = preset(name)
    try:
        changed = cfg.replace(**CHANGES[knob](cfg))
    except ValueError:
        pytest.skip(f"{knob} cannot be turned on in {name}'s config at all")
    if changed == cfg:
        pytest.skip(f"{name} already has it")
    try:
        written = to_hf_config(changed)
    except ValueError as refusal:
        assert knob in str(refusal) or any(k in str(refusal) for k in CHANGES[knob](cfg)), refusal
        return
    assert from_hf_config(written) == changed, f"{changed.family} wrote {knob} but did not read it back"
