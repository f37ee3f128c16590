"""Presets: the published architectures, read from their own config.json files.

Each preset is `from_hf_config` applied to a copy of the model's published config.json, kept in
`olm_edu/models/configs/<name>.json`, so the numbers are the publishers', not retyped ones.
`PRESETS` is a read-only mapping that parses a file the first time its preset is asked for.

    >>> cfg = preset("Llama-3.1-8B")
    >>> cfg.num_kv_heads, cfg.hidden_dim
    (8, 14336)
"""

from __future__ import annotations

import copy

from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path

from olm_edu.models.config import ModelConfig
from olm_edu.models.hf_config import from_hf_config

CONFIG_DIR = Path(__file__).with_name("configs")

# preset name -> the Hugging Face repository its config.json was copied from
HUB_IDS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "Llama-3.1-8B": "meta-llama/Llama-3.1-8B",
    "Llama-3.1-70B": "meta-llama/Llama-3.1-70B",
    "Llama-3.1-405B": "meta-llama/Llama-3.1-405B",
    "Llama-3.2-1B": "meta-llama/Llama-3.2-1B",
    "Mistral-7B-v0.1": "mistralai/Mistral-7B-v0.1",
    "Qwen2.5-0.5B": "Qwen/Qwen2.5-0.5B",
    "Qwen2.5-7B": "Qwen/Qwen2.5-7B",
    "Qwen2.5-72B": "Qwen/Qwen2.5-72B",
    "Qwen3-0.6B": "Qwen/Qwen3-0.6B",
    "gemma-2-9b": "google/gemma-2-9b",
    "Mixtral-8x7B-v0.1": "mistralai/Mixtral-8x7B-v0.1",
    "Qwen3-30B-A3B": "Qwen/Qwen3-30B-A3B",
    "DeepSeek-V2-Lite": "deepseek-ai/DeepSeek-V2-Lite",
    "DeepSeek-V3": "deepseek-ai/DeepSeek-V3",
    "DeepSeek-V3.2-Exp": "deepseek-ai/DeepSeek-V3.2-Exp",
    # Part III (olm_edu.models.families)
    "gpt-oss-20b": "openai/gpt-oss-20b",
    "gpt-oss-120b": "openai/gpt-oss-120b",
    "gemma-3-1b": "google/gemma-3-1b-pt",
    "gemma-3-27b": "google/gemma-3-27b-pt",  # the language model of the multimodal release (text_config)
    "Olmo-3-7B": "allenai/Olmo-3-1025-7B",
    "SmolLM3-3B": "HuggingFaceTB/SmolLM3-3B",
}


@cache
def _load_preset(name: str) -> ModelConfig:
    cfg = from_hf_config(CONFIG_DIR / f"{name}.json", name=name)
    return cfg.replace(notes={"hub_id": HUB_IDS[name], "source": f"olm_edu/models/configs/{name}.json"})


class _Presets(Mapping[str, ModelConfig]):
    """Read-only {name: ModelConfig}; each config.json is parsed on first use."""

    def __getitem__(self, name: str) -> ModelConfig:
        if name not in HUB_IDS:
            raise KeyError(name)
        return copy.deepcopy(_load_preset(name))  # a learner editing its dicts must not change the cache

    def __iter__(self) -> Iterator[str]:
        return iter(HUB_IDS)

    def __len__(self) -> int:
        return len(HUB_IDS)

    def __repr__(self) -> str:
        return f"PRESETS({', '.join(HUB_IDS)})"


PRESETS: Mapping[str, ModelConfig] = _Presets()


def preset(name: str) -> ModelConfig:
    """The published architecture `name` (e.g. "gpt2", "Llama-3.1-8B") as a ModelConfig."""
    if name not in HUB_IDS:
        raise ValueError(f"no preset named {name!r}; presets: {', '.join(HUB_IDS)}")
    return PRESETS[name]
