"""Model configs, presets, the builder and the knob diff.

    cfg = preset("Llama-3.1-8B")                  # the published architecture
    cfg = from_hf_config("path/to/config.json")   # any supported config.json
    model = build(cfg.replace(num_layers=2))      # token ids (B, T) -> logits (B, T, V)
    print(render_diff(preset("gpt2"), cfg))       # the knobs that differ
"""

from olm_edu.models.build import (
    MultiTokenPrediction,
    Transformer,
    build,
    init_weights,
    set_attention_implementation,
    set_mla_mode,
    set_moe_implementation,
)
from olm_edu.models.config import ModelConfig
from olm_edu.models.diff import KnobChange, diff, diff_table, render_diff
from olm_edu.models.hf_config import from_hf_config, to_hf_config
from olm_edu.models.presets import PRESETS, preset

__all__ = [
    "ModelConfig", "Transformer", "build", "init_weights", "set_attention_implementation",
    "set_moe_implementation", "set_mla_mode", "MultiTokenPrediction",
    "KnobChange", "diff", "diff_table", "render_diff", "from_hf_config", "to_hf_config", "PRESETS", "preset",
]
