"""Families stated as tables: one module per transformers `model_type` added in Part III.

Parts I–II's ten families live in `olm_edu.models.hf_config` and `olm_edu.hf`. Each family added
since is its own small module here, in the spirit of transformers' `modular_*.py` files: a family
is the table from its config.json keys to the course's knobs (and back), plus the table from its
weight names to ours, never a new branch of model code. A family module defines

    MODEL_TYPE     the config.json model_type it reads, e.g. "gpt_oss"
    ARCHITECTURE   transformers' *ForCausalLM class name
    DEFAULTS       the transformers 5.25 config class's defaults for keys a config.json may omit
    read(keys)     -> dict of ModelConfig knobs (keys: `hf_config.Keys`, defaults applied)
    write(cfg)     -> the config.json body for cfg (the inverse of read, for parity tests)
    NAME_TABLE     [(our name, transformers' in-memory name)], as in `olm_edu.hf`
and optionally
    from_hf_layout(weights, cfg) -> dict    layout changes beyond renaming, on transformers-named
                                            weights before they are renamed to ours (e.g. split an
                                            interleaved gate/up tensor)
    to_hf_layout(weights, cfg, layout) -> dict   the inverse, on transformers-named weights after
                                            renaming; layout is "memory" or "hub" (see olm_edu.hf)
    TEXT_CONFIG_OF  model_types of multimodal wrappers whose `text_config` is this family

`REGISTRY` maps model_type -> module; `hf_config` and `hf` consult it after their own families.
"""

from __future__ import annotations

from types import ModuleType

REGISTRY: dict[str, ModuleType] = {}


def register(module: ModuleType) -> ModuleType:
    """Add a family module (called by each module at import)."""
    for name in ("MODEL_TYPE", "ARCHITECTURE", "DEFAULTS", "read", "write", "NAME_TABLE"):
        if not hasattr(module, name):
            raise TypeError(f"family module {module.__name__} lacks {name}")
    REGISTRY[module.MODEL_TYPE] = module
    return module


def text_model_type(wrapper: str) -> str | None:
    """The family whose config a multimodal wrapper (e.g. "gemma3") keeps in `text_config`."""
    for module in REGISTRY.values():
        if wrapper in getattr(module, "TEXT_CONFIG_OF", ()):
            return module.MODEL_TYPE
    return None


# One import per family module (each registers itself). Keep one per line, sorted.
from olm_edu.models.families import deepseek_v32  # noqa: E402,F401
from olm_edu.models.families import gpt_oss  # noqa: E402,F401
from olm_edu.models.families import gemma3_text  # noqa: E402,F401
from olm_edu.models.families import olmo2  # noqa: E402,F401
from olm_edu.models.families import olmo3  # noqa: E402,F401
from olm_edu.models.families import smollm3  # noqa: E402,F401
