"""`ModelConfig`: every architectural knob of a decoder-only transformer, in one place.

The course's central picture is the diff between two configs: GPT-2 and Llama 3 differ in a
handful of these fields and nowhere else. Each field is a knob a lesson turns.

A config is frozen (immutable) and validated when it is made, so a bad combination fails at
once with a message naming the field and the allowed values. Derived numbers (`kv_heads`,
`head_size`, the type of each layer) are properties, never stored twice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

NORMS = ("layernorm", "rmsnorm", "rmsnorm_gemma")
NORM_PLACEMENTS = ("pre", "post", "sandwich")
POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "none")
ROPE_LAYOUTS = ("half", "interleaved")
FFN_KINDS = ("classic", "glu")
ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "relu")
LAYER_TYPES = ("full_attention", "sliding_attention")
FAMILIES = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma2", "custom")


@dataclass(frozen=True)
class ModelConfig:
    """The knobs of a decoder-only transformer (names follow the course everywhere).

    Sizes
        vocab_size, max_seq_len, embed_dim, num_layers, num_heads,
        num_kv_heads (None: = num_heads, i.e. MHA; 1: MQA; in between: GQA),
        head_dim (None: embed_dim // num_heads), hidden_dim (feed-forward width).
    Normalisation
        norm: "layernorm" (GPT-2), "rmsnorm" (Llama convention: normalise in float32, cast
        back, multiply by weight), "rmsnorm_gemma" (x_normed * (1 + weight), cast after).
        norm_placement: "pre" (GPT-2 and later), "post" (the 2017 transformer), "sandwich"
        (Gemma 2: a norm before and after each sub-layer). norm_eps, norm_bias.
    Positions
        position: "learned" (GPT-2), "sinusoidal", "rope", "alibi", "none".
        rope_theta, rope_scaling (the transformers dict, e.g. {"rope_type": "llama3",
        "factor": 8.0, ...}, or None), rope_layout ("half": rotate_half as transformers;
        "interleaved": adjacent pairs as the RoPE paper), partial_rotary_factor.
    Feed-forward
        ffn: "classic" (up, activation, down) or "glu" (down(act(gate x) * up x): SwiGLU with
        "silu", GeGLU with "gelu"/"gelu_tanh"). activation, ffn_bias.
    Attention
        qkv_bias, attn_out_bias, qk_norm (RMSNorm on each head's queries and keys, before
        RoPE), attn_logit_softcap, query_pre_attn_scalar (scale = its -1/2 power; None:
        head_dim), sliding_window, layer_types (per layer "full_attention" or
        "sliding_attention"; None: all sliding if sliding_window else all full), causal.
    Embeddings and output
        tie_embeddings, scale_embeddings (multiply by sqrt(embed_dim), Gemma), lm_head_bias,
        final_logit_softcap.
    Training
        dropout, init_std.
    """

    vocab_size: int
    max_seq_len: int
    embed_dim: int
    num_layers: int
    num_heads: int
    hidden_dim: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    name: str = "custom"
    family: str = "custom"
    # normalisation
    norm: str = "layernorm"
    norm_placement: str = "pre"
    norm_eps: float = 1e-5
    norm_bias: bool = True
    # positions
    position: str = "learned"
    rope_theta: float = 10_000.0
    rope_scaling: dict[str, Any] | None = None
    rope_layout: str = "half"
    partial_rotary_factor: float = 1.0
    # feed-forward
    ffn: str = "classic"
    activation: str = "gelu_tanh"
    ffn_bias: bool = True
    # attention
    qkv_bias: bool = True
    attn_out_bias: bool = True
    qk_norm: bool = False
    attn_logit_softcap: float | None = None
    query_pre_attn_scalar: float | None = None
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    causal: bool = True
    # embeddings and output
    tie_embeddings: bool = True
    scale_embeddings: bool = False
    lm_head_bias: bool = False
    final_logit_softcap: float | None = None
    # training
    dropout: float = 0.0
    init_std: float = 0.02
    # free-form notes that are not knobs (e.g. the source of a preset); ignored by `diff`
    notes: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.layer_types is not None and not isinstance(self.layer_types, tuple):
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        validate(self)

    # -- derived numbers ------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (num_kv_heads, or num_heads when that is None)."""
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def head_size(self) -> int:
        """Width of one attention head (head_dim, or embed_dim // num_heads)."""
        return self.embed_dim // self.num_heads if self.head_dim is None else self.head_dim

    @property
    def rotary_dim(self) -> int:
        """How many dimensions of each head RoPE rotates (partial rotary keeps the rest)."""
        return int(self.head_size * self.partial_rotary_factor)

    def layer_type(self, index: int) -> str:
        """"full_attention" or "sliding_attention" for layer `index`."""
        if self.layer_types is not None:
            return self.layer_types[index]
        return "sliding_attention" if self.sliding_window else "full_attention"

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some knobs changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {allowed}")


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive int")


def validate(cfg: ModelConfig) -> None:
    """Raise ValueError naming the knob when a config cannot describe a working model."""
    for name in ("vocab_size", "max_seq_len", "embed_dim", "num_layers", "num_heads", "hidden_dim"):
        _positive(name, getattr(cfg, name))
    if cfg.num_kv_heads is not None:
        _positive("num_kv_heads", cfg.num_kv_heads)
        if cfg.num_heads % cfg.num_kv_heads:
            raise ValueError(f"num_heads={cfg.num_heads} must be divisible by num_kv_heads={cfg.num_kv_heads}")
    if cfg.head_dim is None and cfg.embed_dim % cfg.num_heads:
        raise ValueError(
            f"embed_dim={cfg.embed_dim} must be divisible by num_heads={cfg.num_heads} (or set head_dim)"
        )
    if cfg.head_dim is not None:
        _positive("head_dim", cfg.head_dim)
    _choice("family", cfg.family, FAMILIES)
    _choice("norm", cfg.norm, NORMS)
    _choice("norm_placement", cfg.norm_placement, NORM_PLACEMENTS)
    _choice("position", cfg.position, POSITIONS)
    _choice("rope_layout", cfg.rope_layout, ROPE_LAYOUTS)
    _choice("ffn", cfg.ffn, FFN_KINDS)
    _choice("activation", cfg.activation, ACTIVATIONS)
    if not 0.0 < cfg.partial_rotary_factor <= 1.0:
        raise ValueError(f"partial_rotary_factor={cfg.partial_rotary_factor} must be in (0, 1]")
    if cfg.position == "rope" and cfg.rotary_dim % 2:
        raise ValueError(
            f"RoPE rotates pairs of dimensions: head_dim * partial_rotary_factor = {cfg.rotary_dim} must be even"
        )
    if cfg.position == "sinusoidal" and cfg.embed_dim % 2:
        raise ValueError(f"sinusoidal positions need an even embed_dim, got embed_dim={cfg.embed_dim}")
    if cfg.norm != "layernorm" and cfg.norm_bias:
        raise ValueError(f"norm_bias=True needs norm='layernorm'; {cfg.norm!r} has no bias")
    for name in ("attn_logit_softcap", "final_logit_softcap", "query_pre_attn_scalar", "rope_theta"):
        value = getattr(cfg, name)
        if value is not None and not value > 0:
            raise ValueError(f"{name}={value!r} must be positive (or None to switch it off)")
    if cfg.sliding_window is not None:
        _positive("sliding_window", cfg.sliding_window)
    if cfg.layer_types is not None:
        if len(cfg.layer_types) != cfg.num_layers:
            raise ValueError(f"layer_types has {len(cfg.layer_types)} entries; num_layers={cfg.num_layers}")
        for kind in cfg.layer_types:
            _choice("layer_types entry", kind, LAYER_TYPES)
        if "sliding_attention" in cfg.layer_types and cfg.sliding_window is None:
            raise ValueError("layer_types has sliding_attention layers but sliding_window is None")
    if cfg.rope_scaling is not None and cfg.position != "rope":
        raise ValueError(f"rope_scaling is set but position={cfg.position!r}; it needs position='rope'")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout={cfg.dropout} must be in [0, 1)")
