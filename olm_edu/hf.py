"""Hugging Face interop: checkpoints in, checkpoints out.

A Hugging Face checkpoint folder holds `config.json` and the weights as safetensors, either
one `model.safetensors` or shards listed in `model.safetensors.index.json`. Only safetensors
are read: a pickled `pytorch_model.bin` can run arbitrary code when loaded, so it is refused.

Names differ between the two worlds, and so do some layouts:
- Llama, Mistral, Qwen 2/3 and Gemma 2 name things almost as we do
  (`model.layers.3.self_attn.q_proj.weight` <-> `layers.3.attn.attention.q_proj.weight`);
  Gemma 2's four norms per layer map onto our sandwich norms.
- GPT-2 fuses q, k and v into one `c_attn` matrix and stores its linear layers as `Conv1D`,
  whose weight is the transpose of `nn.Linear`'s (in_features, out_features). Hub files
  use bare names (`h.0.attn.c_attn.weight`); transformers in memory prefixes `transformer.`.
- A tied head has no weight of its own; checkpoints may omit `lm_head.weight` or repeat it.

    model = from_pretrained("path/to/checkpoint")        # an olm_edu Transformer
    hf_weights = to_hf_state_dict(model)                 # transformers' in-memory names
    save_pretrained(model, "path/to/folder")             # config.json + model.safetensors
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file

from olm_edu.models.build import Transformer
from olm_edu.models.hf_config import from_hf_config, to_hf_config

__all__ = ["from_pretrained", "to_hf_state_dict", "from_hf_state_dict", "save_pretrained", "CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint is missing, unsafe, or its weights do not fit the model its config describes."""


# (our name, transformers name) for the Llama-style families; {i} is the layer index.
_LLAMA_NAMES = [
    ("embed.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("head.weight", "lm_head.weight"),
    ("layers.{i}.attn.norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("layers.{i}.attn.attention.{proj}.{kind}", "model.layers.{i}.self_attn.{proj}.{kind}"),
    ("layers.{i}.ffn.mlp.{proj}.{kind}", "model.layers.{i}.mlp.{proj}.{kind}"),
]
_PRE_NORM_FFN = [("layers.{i}.ffn.norm.weight", "model.layers.{i}.post_attention_layernorm.weight")]
_SANDWICH_NORMS = [
    ("layers.{i}.attn.post_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("layers.{i}.ffn.norm.weight", "model.layers.{i}.pre_feedforward_layernorm.weight"),
    ("layers.{i}.ffn.post_norm.weight", "model.layers.{i}.post_feedforward_layernorm.weight"),
]
_GPT2_NAMES = [
    ("embed.weight", "transformer.wte.weight"),
    ("positions.weight", "transformer.wpe.weight"),
    ("norm.{kind}", "transformer.ln_f.{kind}"),
    ("head.weight", "lm_head.weight"),
    ("layers.{i}.attn.norm.{kind}", "transformer.h.{i}.ln_1.{kind}"),
    ("layers.{i}.ffn.norm.{kind}", "transformer.h.{i}.ln_2.{kind}"),
    ("layers.{i}.attn.attention.o_proj.{kind}", "transformer.h.{i}.attn.c_proj.{kind}"),
    ("layers.{i}.ffn.mlp.up_proj.{kind}", "transformer.h.{i}.mlp.c_fc.{kind}"),
    ("layers.{i}.ffn.mlp.down_proj.{kind}", "transformer.h.{i}.mlp.c_proj.{kind}"),
]
# Buffers some checkpoints carry that are not weights (causal masks, RoPE tables).
_IGNORED = re.compile(r"(^|\.)(attn\.bias|attn\.masked_bias|rotary_emb\.inv_freq)$")


def _name_table(family: str) -> list[tuple[str, str]]:
    if family == "gpt2":
        return _GPT2_NAMES
    if family == "gemma2":
        return _LLAMA_NAMES + _SANDWICH_NORMS
    if family in ("llama", "mistral", "qwen2", "qwen3"):
        return _LLAMA_NAMES + _PRE_NORM_FFN
    raise CheckpointError(f"family={family!r} has no Hugging Face layout; supported: gpt2, llama, mistral, qwen2, qwen3, gemma2")


@functools.lru_cache(maxsize=None)
def _pattern(template: str) -> re.Pattern:
    escaped = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)")
    escaped = escaped.replace(r"\{proj\}", r"(?P<proj>\w+)").replace(r"\{kind\}", r"(?P<kind>weight|bias)")
    return re.compile(escaped + "$")


def _rename(name: str, table: list[tuple[str, str]], to_hf: bool) -> str | None:
    for ours, theirs in table:
        source, target = (ours, theirs) if to_hf else (theirs, ours)
        match = _pattern(source).match(name)
        if match:
            return target.format(**match.groupdict())
    return None


# -- GPT-2's fused, transposed layout ----------------------------------------------------------

def _gpt2_to_ours(hf: dict[str, torch.Tensor], num_layers: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Split c_attn into q, k, v and transpose every Conv1D weight."""
    conv1d = re.compile(r"transformer\.h\.\d+\.(attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")
    for name, tensor in hf.items():
        if ".attn.c_attn." in name:
            continue
        ours = _rename(name, _GPT2_NAMES, to_hf=False)
        if ours is None:
            yield name, tensor  # reported as unexpected by the caller
        else:
            yield ours, tensor.t() if conv1d.match(name) else tensor
    for i in range(num_layers):
        prefix = f"transformer.h.{i}.attn.c_attn"
        if f"{prefix}.weight" in hf:
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), hf[f"{prefix}.weight"].t().chunk(3, dim=0)):
                yield f"layers.{i}.attn.attention.{proj}.weight", part
        if f"{prefix}.bias" in hf:
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), hf[f"{prefix}.bias"].chunk(3)):
                yield f"layers.{i}.attn.attention.{proj}.bias", part


def _gpt2_to_hf(ours: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    conv1d = re.compile(r"layers\.\d+\.(attn\.attention\.o_proj|ffn\.mlp\.up_proj|ffn\.mlp\.down_proj)\.weight$")
    hf = {}
    for name, tensor in ours.items():
        if re.match(r"layers\.\d+\.attn\.attention\.[qkv]_proj\.", name):
            continue
        hf[_rename(name, _GPT2_NAMES, to_hf=True)] = tensor.t().contiguous() if conv1d.match(name) else tensor
    for i in range(num_layers):
        prefix = f"layers.{i}.attn.attention"
        hf[f"transformer.h.{i}.attn.c_attn.weight"] = torch.cat(
            [ours[f"{prefix}.{p}.weight"] for p in ("q_proj", "k_proj", "v_proj")]
        ).t().contiguous()
        hf[f"transformer.h.{i}.attn.c_attn.bias"] = torch.cat([ours[f"{prefix}.{p}.bias"] for p in ("q_proj", "k_proj", "v_proj")])
    return hf


# -- state dicts both ways ----------------------------------------------------------------------

def _normalise_hf_names(weights: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """Drop non-weight buffers and give hub names the in-memory prefix transformers uses."""
    out = {}
    for name, tensor in weights.items():
        if _IGNORED.search(name):
            continue
        if family == "gpt2" and not name.startswith(("transformer.", "lm_head.")):
            name = "transformer." + name  # the original GPT-2 files use bare names: h.0.ln_1.weight
        out[name] = tensor
    return out


def from_hf_state_dict(model: Transformer, weights: dict[str, torch.Tensor]) -> None:
    """Load transformers-named weights into `model` (strict: every weight present, none left over)."""
    cfg = model.config
    weights = _normalise_hf_names(weights, cfg.family)
    if cfg.tie_embeddings and "lm_head.weight" in weights:
        embed_name = "transformer.wte.weight" if cfg.family == "gpt2" else "model.embed_tokens.weight"
        head = weights.pop("lm_head.weight")
        if embed_name in weights and not torch.equal(head, weights[embed_name]):
            raise CheckpointError("the config ties the head to the embedding, but lm_head.weight differs from it")
    if cfg.family == "gpt2":
        converted = dict(_gpt2_to_ours(weights, cfg.num_layers))
    else:
        table = _name_table(cfg.family)
        converted = {(_rename(name, table, to_hf=False) or name): tensor for name, tensor in weights.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not fit a {cfg.family} model with this config: "
            f"missing {_few(missing)}; unexpected {_few(unexpected)}"
        )
    for name, tensor in converted.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"{name}: checkpoint shape {tuple(tensor.shape)}, model expects {tuple(expected[name].shape)}")
    model.load_state_dict(converted, strict=True)


def to_hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """The model's weights under transformers' in-memory names and layouts (tied head omitted)."""
    cfg = model.config
    ours = model.state_dict()
    if cfg.family == "gpt2":
        return _gpt2_to_hf(ours, cfg.num_layers)
    table = _name_table(cfg.family)
    return {_rename(name, table, to_hf=True): tensor for name, tensor in ours.items()}


# -- folders ---------------------------------------------------------------------------------

def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.exists():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no weight_map")
        weights: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).exists():
                raise CheckpointError(f"{index} lists shard {shard}, which is not in {folder}")
            weights.update(load_file(folder / shard))
        return weights
    if single.exists():
        return load_file(single)
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise CheckpointError(
            f"{folder} holds only pickled weights (.bin/.pt); olm_edu reads safetensors only, because "
            "unpickling can run arbitrary code. Convert them with a tool you trust."
        )
    raise CheckpointError(f"no model.safetensors or model.safetensors.index.json in {folder}")


def from_pretrained(path: str | Path, *, dtype: torch.dtype = torch.float32) -> Transformer:
    """Load a Hugging Face checkpoint folder (config.json + safetensors) into an olm_edu model."""
    folder = Path(path)
    if not (folder / "config.json").exists():
        raise CheckpointError(f"no config.json in {folder}")
    cfg = from_hf_config(folder / "config.json")
    model = Transformer(cfg).to(dtype)
    from_hf_state_dict(model, _read_weights(folder))
    return model.eval()


def save_pretrained(model: Transformer, path: str | Path) -> None:
    """Write config.json and model.safetensors that transformers can load."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(to_hf_config(model.config), indent=2), encoding="utf-8")
    weights = {name: tensor.contiguous() for name, tensor in to_hf_state_dict(model).items()}
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def _few(names: list[str], limit: int = 6) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
