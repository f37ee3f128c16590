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
- Mixture of experts has two layouts. Hub files store every expert on its own:
  `model.layers.3.mlp.experts.7.gate_proj.weight` (E x (F, d) matrices; Mixtral names them
  `block_sparse_moe.experts.7.w1/w2/w3` = gate/down/up, and its router `block_sparse_moe.gate`).
  transformers 5 fuses them when loading: `mlp.experts.gate_up_proj` (E, 2F, d), gate rows
  first, and `mlp.experts.down_proj` (E, d, F). We keep `gate_proj`, `up_proj`, `down_proj` as
  3-D tensors (`layers.3.ffn.mlp.experts.gate_proj`), and read both layouts. The router is
  `mlp.gate.weight` (ours `ffn.mlp.router.weight`); DeepSeek-V3's selection bias is
  `mlp.gate.e_score_correction_bias` (ours `router.selection_bias`).
- Multi-head latent attention maps q_a_proj / q_a_layernorm / q_b_proj / kv_a_proj_with_mqa /
  kv_a_layernorm / kv_b_proj to q_down_proj / q_norm / q_up_proj / kv_down_proj / kv_norm /
  kv_up_proj. DeepSeek-V3's hub files also hold the multi-token-prediction layer
  (`model.layers.61.*`), which the main model does not use: it is skipped, as transformers does.

    model = from_pretrained("path/to/checkpoint")        # an olm_edu Transformer
    hf_weights = to_hf_state_dict(model)                 # transformers' in-memory names
    save_pretrained(model, "path/to/folder")             # config.json + model.safetensors (hub layout)
"""

from __future__ import annotations

import functools
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file

from olm_edu.models import families
from olm_edu.models.build import MultiTokenPrediction, Transformer
from olm_edu.models.hf_config import DEEPSEEK_FAMILIES, MOE_FAMILIES, from_hf_config, to_hf_config

__all__ = [
    "from_pretrained", "to_hf_state_dict", "from_hf_state_dict", "save_pretrained", "CheckpointError",
    "mtp_from_hf_state_dict", "mtp_from_pretrained",
]  # fmt: skip


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
# Mixture of experts (transformers' in-memory names); must precede the generic mlp entry.
_MOE_NAMES = [
    ("layers.{i}.ffn.mlp.router.weight", "model.layers.{i}.mlp.gate.weight"),
    ("layers.{i}.ffn.mlp.router.selection_bias", "model.layers.{i}.mlp.gate.e_score_correction_bias"),
    ("layers.{i}.ffn.mlp.shared_experts.{proj}.{kind}", "model.layers.{i}.mlp.shared_experts.{proj}.{kind}"),
    ("layers.{i}.ffn.mlp.experts.down_proj", "model.layers.{i}.mlp.experts.down_proj"),
]
# Multi-head latent attention; must precede the generic self_attn entry.
_MLA_NAMES = [
    (f"layers.{{i}}.attn.attention.{ours}.{{kind}}", f"model.layers.{{i}}.self_attn.{theirs}.{{kind}}")
    for ours, theirs in [
        ("q_down_proj", "q_a_proj"), ("q_norm", "q_a_layernorm"), ("q_up_proj", "q_b_proj"),
        ("kv_down_proj", "kv_a_proj_with_mqa"), ("kv_norm", "kv_a_layernorm"), ("kv_up_proj", "kv_b_proj"),
    ]
]  # fmt: skip
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
    if family in ("mixtral", "qwen3_moe"):
        return _MOE_NAMES + _LLAMA_NAMES + _PRE_NORM_FFN
    if family in DEEPSEEK_FAMILIES:
        return _MLA_NAMES + _MOE_NAMES + _LLAMA_NAMES + _PRE_NORM_FFN
    if family in families.REGISTRY:
        return families.REGISTRY[family].NAME_TABLE
    raise CheckpointError(
        f"family={family!r} has no Hugging Face layout; supported: gpt2, llama, mistral, qwen2, qwen3, gemma2, "
        "mixtral, qwen3_moe, deepseek_v2, deepseek_v3"
    )


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


# -- experts: hub files (one tensor per expert) <-> transformers 5 in memory (fused) ------------

_HUB_EXPERT = re.compile(
    r"^(?P<layer>model\.layers\.\d+)\.mlp\.experts\.(?P<expert>\d+)\.(?P<proj>gate_proj|up_proj|down_proj|w1|w2|w3)\.weight$"
)
_MIXTRAL_PROJ = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}  # Mixtral's hub names


def _fuse_hub_experts(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-expert hub tensors -> mlp.experts.gate_up_proj (E, 2F, d) and down_proj (E, d, F)."""
    out: dict[str, torch.Tensor] = {}
    found: dict[tuple[str, str], dict[int, torch.Tensor]] = defaultdict(dict)
    for name, tensor in weights.items():
        match = _HUB_EXPERT.match(name)
        if match is None:
            out[name] = tensor
            continue
        proj = _MIXTRAL_PROJ.get(match["proj"], match["proj"])
        found[match["layer"], proj][int(match["expert"])] = tensor
    stacked = {}
    for (layer, proj), experts in found.items():
        missing = sorted(set(range(max(experts) + 1)) - set(experts))
        if missing:
            raise CheckpointError(f"{layer}.mlp.experts: {proj} of expert(s) {missing} missing from the checkpoint")
        stacked[layer, proj] = torch.stack([experts[index] for index in range(len(experts))])
    for layer in sorted({layer for layer, _ in stacked}):
        gate, up, down = (stacked.pop((layer, proj), None) for proj in ("gate_proj", "up_proj", "down_proj"))
        if gate is None or up is None or down is None:
            raise CheckpointError(f"{layer}.mlp.experts: the checkpoint lacks gate_proj, up_proj or down_proj")
        out[f"{layer}.mlp.experts.gate_up_proj"] = torch.cat([gate, up], dim=1)
        out[f"{layer}.mlp.experts.down_proj"] = down
    return out


def _split_to_hub_experts(weights: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """The inverse of `_fuse_hub_experts`: one tensor per expert, named as the family's hub files."""
    out = {}
    mixtral = family == "mixtral"
    hub_proj = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"} if mixtral else {}
    for name, tensor in weights.items():
        if name.endswith(".mlp.experts.gate_up_proj"):
            parts = dict(zip(("gate_proj", "up_proj"), tensor.chunk(2, dim=1)))
        elif name.endswith(".mlp.experts.down_proj"):
            parts = {"down_proj": tensor}
        else:
            out[name] = tensor
            continue
        prefix = name.rsplit(".", 1)[0]  # model.layers.3.mlp.experts
        for proj, stacked in parts.items():
            for expert, matrix in enumerate(stacked):
                out[f"{prefix}.{expert}.{hub_proj.get(proj, proj)}.weight"] = matrix.contiguous()
    if mixtral:  # Mixtral's files call the MoE block block_sparse_moe
        out = {name.replace(".mlp.", ".block_sparse_moe."): tensor for name, tensor in out.items()}
    return out


# -- state dicts both ways ----------------------------------------------------------------------

def _normalise_hf_names(weights: dict[str, torch.Tensor], family: str, num_layers: int) -> dict[str, torch.Tensor]:
    """Drop non-weight buffers (and DeepSeek-V3's multi-token-prediction layers), give hub names
    the in-memory prefix and layout transformers uses."""
    out = {}
    for name, tensor in weights.items():
        if _IGNORED.search(name):
            continue
        if family == "gpt2" and not name.startswith(("transformer.", "lm_head.")):
            name = "transformer." + name  # the original GPT-2 files use bare names: h.0.ln_1.weight
        if family == "mixtral":
            name = name.replace(".block_sparse_moe.", ".mlp.")
        layer = re.match(r"model\.layers\.(\d+)\.", name)
        if family == "deepseek_v3" and layer and int(layer[1]) >= num_layers:
            continue  # the MTP module (model.layers.61 in DeepSeek-V3's files), not part of the main model
        if ".shared_experts." in name and tensor.numel() == 0:
            continue  # transformers builds 0-wide shared experts when n_shared_experts = 0
        out[name] = tensor
    return _fuse_hub_experts(out) if family in MOE_FAMILIES else out


def _from_fused(name: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """transformers' gate_up_proj (E, 2F, d) -> our gate_proj and up_proj (E, F, d) each."""
    match = re.match(r"model\.layers\.(\d+)\.mlp\.experts\.gate_up_proj$", name)
    if match is None:
        yield name, tensor
        return
    gate, up = tensor.chunk(2, dim=1)
    yield f"layers.{match[1]}.ffn.mlp.experts.gate_proj", gate
    yield f"layers.{match[1]}.ffn.mlp.experts.up_proj", up


def _to_fused(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our gate_proj and up_proj (E, F, d) -> transformers' gate_up_proj (E, 2F, d), gate first."""
    out = {}
    for name, tensor in ours.items():
        match = re.match(r"layers\.(\d+)\.ffn\.mlp\.experts\.(gate_proj|up_proj)$", name)
        if match is None:
            out[name] = tensor
        elif match[2] == "gate_proj":
            out[f"model.layers.{match[1]}.mlp.experts.gate_up_proj"] = torch.cat(
                [tensor, ours[f"layers.{match[1]}.ffn.mlp.experts.up_proj"]], dim=1
            )
    return out


def from_hf_state_dict(model: Transformer, weights: dict[str, torch.Tensor]) -> None:
    """Load transformers-named weights into `model` (strict: every weight present, none left over)."""
    cfg = model.config
    weights = _normalise_hf_names(weights, cfg.family, cfg.num_layers)
    hook = getattr(families.REGISTRY.get(cfg.family), "from_hf_layout", None)
    if hook is not None:
        weights = hook(weights, cfg)
    if cfg.tie_embeddings and "lm_head.weight" in weights:
        embed_name = "transformer.wte.weight" if cfg.family == "gpt2" else "model.embed_tokens.weight"
        head = weights.pop("lm_head.weight")
        if embed_name in weights and not torch.equal(head, weights[embed_name]):
            raise CheckpointError("the config ties the head to the embedding, but lm_head.weight differs from it")
    if cfg.family == "gpt2":
        converted = dict(_gpt2_to_ours(weights, cfg.num_layers))
    else:
        table = _name_table(cfg.family)
        converted = {
            (_rename(name, table, to_hf=False) or name): part
            for fused_name, fused in weights.items()
            for name, part in _from_fused(fused_name, fused)
        }
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


def to_hf_state_dict(model: Transformer, layout: str = "memory") -> dict[str, torch.Tensor]:
    """The model's weights under transformers' names (tied head omitted).

    layout="memory": transformers 5's in-memory names and layouts (fused experts, as
    `model.state_dict()` of the transformers model); "hub": the layout of published checkpoint
    files (one tensor per expert; Mixtral's block_sparse_moe / w1 w2 w3). They differ only for
    mixture-of-experts families.
    """
    if layout not in ("memory", "hub"):
        raise ValueError(f"layout={layout!r} is not one of ('memory', 'hub')")
    cfg = model.config
    ours = model.state_dict()
    if cfg.family == "gpt2":
        return _gpt2_to_hf(ours, cfg.num_layers)
    table = _name_table(cfg.family)
    memory = {_rename(name, table, to_hf=True) or name: tensor for name, tensor in _to_fused(ours).items()}
    hook = getattr(families.REGISTRY.get(cfg.family), "to_hf_layout", None)
    if hook is not None:
        memory = hook(memory, cfg, layout)
    if layout == "hub" and cfg.family in MOE_FAMILIES:
        return _split_to_hub_experts(memory, cfg.family)
    return memory


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
    """Write config.json and model.safetensors that transformers can load (hub layout: one
    tensor per expert, as published checkpoints and transformers' own save_pretrained)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(to_hf_config(model.config), indent=2), encoding="utf-8")
    weights = {name: tensor.contiguous() for name, tensor in to_hf_state_dict(model, layout="hub").items()}
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


# -- DeepSeek-V3's multi-token-prediction module -------------------------------------------------

_MTP_OWN = {"enorm.weight": "enorm.weight", "hnorm.weight": "hnorm.weight", "eh_proj.weight": "eh_proj.weight",
            "shared_head.norm.weight": "post_norm.weight"}  # fmt: skip
_MTP_SHARED = ("embed_tokens.weight", "shared_head.head.weight")  # copies of the main model's


def mtp_from_hf_state_dict(mtp: MultiTokenPrediction, weights: dict[str, torch.Tensor], layer: int) -> None:
    """Load an MTP module from DeepSeek-V3's hub tensors `model.layers.{layer}.*` (layer =
    num_hidden_layers + depth: 61 for V3): enorm, hnorm, eh_proj, shared_head.norm, and a decoder
    layer named like the main model's. Its embed_tokens and shared_head.head repeat the main
    model's embedding and head, which the module borrows, and are skipped. Strict, like
    `from_hf_state_dict`."""
    prefix = f"model.layers.{layer}."
    converted, decoder = {}, {}
    for name, tensor in weights.items():
        if not name.startswith(prefix) or name[len(prefix) :] in _MTP_SHARED:
            continue
        rest = name[len(prefix) :]
        if rest in _MTP_OWN:
            converted[_MTP_OWN[rest]] = tensor
        else:
            decoder[f"model.layers.0.{rest}"] = tensor  # the decoder layer, renamed as the main model's layer 0
    table = _name_table("deepseek_v3")
    for fused_name, fused in _fuse_hub_experts(decoder).items():
        for name, part in _from_fused(fused_name, fused):
            ours = _rename(name, table, to_hf=False) or name
            converted["layer." + ours.removeprefix("layers.0.")] = part
    expected = mtp.state_dict()
    missing, unexpected = sorted(set(expected) - set(converted)), sorted(set(converted) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{prefix}* does not fit the MTP module: missing {_few(missing)}; unexpected {_few(unexpected)}")
    mtp.load_state_dict(converted, strict=True)


def mtp_from_pretrained(path: str | Path, *, dtype: torch.dtype = torch.float32) -> torch.nn.ModuleList:
    """The cfg.mtp_layers multi-token-prediction modules of a DeepSeek-V3 checkpoint folder
    (empty when its config has none). Use them with the main model from `from_pretrained`."""
    folder = Path(path)
    cfg = from_hf_config(folder / "config.json")
    weights = _read_weights(folder)
    modules = torch.nn.ModuleList()
    for depth in range(cfg.mtp_layers):
        mtp = MultiTokenPrediction(cfg, depth).to(dtype)
        mtp_from_hf_state_dict(mtp, weights, cfg.num_layers + depth)
        modules.append(mtp.eval())
    return modules


def _few(names: list[str], limit: int = 6) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
