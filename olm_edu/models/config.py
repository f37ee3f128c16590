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

from olm_edu.choices import check_choice

NORMS = ("layernorm", "rmsnorm", "rmsnorm_gemma")
NORM_PLACEMENTS = ("pre", "post", "sandwich", "post_sublayer")
QK_NORM_SCOPES = ("head", "projection")
POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "none")
ROPE_LAYOUTS = ("half", "interleaved")
FFN_KINDS = ("classic", "glu")
ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "relu")
LAYER_TYPES = ("full_attention", "sliding_attention")
ATTENTIONS = ("standard", "mla")
ROUTER_SCORINGS = ("softmax", "sigmoid")
ROUTER_GROUP_SCORES = ("max", "top2_sum")
FAMILIES = (
    "gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma2",
    "mixtral", "qwen3_moe", "deepseek_v2", "deepseek_v3",
    # Part III (olm_edu.models.families)
    "gpt_oss", "gemma3_text", "olmo2", "olmo3", "smollm3", "llama4_text",
    "qwen3_next", "qwen3_5_text", "qwen3_5_moe_text", "kimi_linear", "deepseek_v32", "deepseek_v4",
    "custom",
)  # fmt: skip


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
        (Gemma 2: a norm before and after each sub-layer), "post_sublayer" (OLMo 2/3: the norm
        applied to the sub-layer's output inside the residual branch, x + norm(f(x)), and no
        norm before it; a final norm as "pre"). norm_eps, norm_bias.
    Positions
        position: "learned" (GPT-2), "sinusoidal", "rope", "alibi", "none".
        rope_theta, rope_scaling (the transformers dict, e.g. {"rope_type": "llama3",
        "factor": 8.0, ...}, or None), rope_layout ("half": rotate_half as transformers;
        "interleaved": adjacent pairs as the RoPE paper), partial_rotary_factor.
        nope_layers: indices of the layers whose attention has no positional encoding at all
        ("NoPE": no rotation of queries and keys; Llama 4 every fourth layer, SmolLM3);
        None: every layer rotates. Only with position="rope".
        rope_theta_local, rope_scaling_local: the RoPE of the sliding-window layers when it differs
        from the full layers' (Gemma 3: base 10,000 locally, 1,000,000 and a scaling globally;
        OLMo 3: the scaling on full layers only). None: every layer uses rope_theta and
        rope_scaling; rope_scaling_local needs rope_theta_local.
    Feed-forward
        ffn: "classic" (up, activation, down) or "glu" (down(act(gate x) * up x): SwiGLU with
        "silu", GeGLU with "gelu"/"gelu_tanh"). activation, ffn_bias.
    Attention
        qkv_bias, attn_out_bias, qk_norm (RMSNorm on each head's queries and keys, before
        RoPE), attn_logit_softcap, query_pre_attn_scalar (scale = its -1/2 power; None:
        head_dim), sliding_window, layer_types (per layer "full_attention" or
        "sliding_attention"; None: all sliding if sliding_window else all full), causal.
        qk_norm_scope: "head" (one RMSNorm of head_dim shared by every head: Qwen 3, Gemma 3) or
        "projection" (OLMo 2/3: one RMSNorm over the whole query projection, num_heads * head_dim
        wide, and one over the keys, num_kv_heads * head_dim, before splitting into heads).
        The QK-norms follow `norm`'s convention (Gemma's (1 + w) for "rmsnorm_gemma").
        attention_sinks (gpt-oss): each head learns one extra logit s_h that joins the softmax
        denominator, softmax over [scores, s_h] with the sink's column dropped, so a head can put
        its mass "nowhere" instead of on the first token.
    Multi-head latent attention (DeepSeek-V2/V3; see olm_edu.nn.mla)
        attention: "standard" (MHA/GQA/MQA, the knobs above) or "mla". With "mla", keys and
        values come out of a latent of kv_latent_dim per token (kv_lora_rank), queries out of
        a latent of q_latent_dim (q_lora_rank; None: straight from the input, as V2-Lite);
        each head's query and key are head_dim "content" dimensions (qk_nope_head_dim) plus
        rope_head_dim rotated ones (qk_rope_head_dim; the rotated key is one vector shared by
        all heads); values are value_head_dim wide (v_head_dim; None: head_dim). qkv_bias
        puts biases on the two down-projections (transformers' attention_bias).
    Sparse attention (DeepSeek-V3.2; see olm_edu.nn.indexer)
        index_topk: each query attends only to the index_topk keys a lightning indexer scores
        highest (None: every key); the indexer has index_heads heads of index_head_dim, reads
        its queries from the query latent (so it needs q_latent_dim) and caches one key of
        index_head_dim per token. Only with attention="mla".
    Mixture of experts (Mixtral, Qwen3-MoE, DeepSeek; see olm_edu.nn.moe)
        num_experts (routed experts; 0: a dense feed-forward), experts_per_token (the top-k),
        expert_hidden_dim (each expert's width; None: hidden_dim), num_shared_experts (always-on
        experts, fused into one feed-forward num_shared_experts * expert_hidden_dim wide),
        first_dense_layers (that many leading layers keep a dense feed-forward of hidden_dim).
        The router: router_scoring "softmax" (Mixtral, Qwen, DeepSeek-V2) or "sigmoid"
        (DeepSeek-V3); router_renormalize (divide the chosen weights by their sum);
        expert_groups / groups_per_token (group-limited routing: the experts form expert_groups
        groups and a token chooses only within its best groups_per_token, a group scored by
        router_group_score "max" (V2) or "top2_sum" (V3)); router_selection_bias (DeepSeek-V3:
        a per-expert bias added to the scores for choosing only, moved by the aux-loss-free
        balance); routed_scaling_factor (multiplies the routed experts' weights).
        gpt-oss: router_bias (a learned bias on the router logits), expert_bias (biases on every
        expert's gate, up and down projections), swiglu_limit (the clamped SwiGLU of its experts:
        gate clamped to <= limit, up to [-limit, limit], out = (up + 1) * gate * sigmoid(alpha *
        gate), alpha = swiglu_alpha; None: the plain SwiGLU). Its router, softmax over the top-k
        logits, is router_scoring="softmax" with router_renormalize=True (the same numbers).
    Multi-token prediction
        mtp_layers: the multi-token-prediction modules a checkpoint carries (DeepSeek-V3: 1).
        They are not part of the main model (see `MultiTokenPrediction`).
    Embeddings and output
        tie_embeddings, scale_embeddings (multiply by sqrt(embed_dim), Gemma), lm_head_bias,
        final_logit_softcap.
    Training
        dropout, init_std; the balancing of MoE routers: load_balance_coef (weight of the
        Switch load-balancing loss, transformers' router_aux_loss_coef), router_z_loss_coef
        (weight of the router z-loss), router_bias_update_rate (DeepSeek-V3's gamma: the step of
        the aux-loss-free bias update). See `Transformer.aux_loss` and
        `Transformer.update_router_biases`.
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
    nope_layers: tuple[int, ...] | None = None
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
    qk_norm_scope: str = "head"
    attention_sinks: bool = False
    rope_theta_local: float | None = None
    rope_scaling_local: dict[str, Any] | None = None
    # multi-head latent attention
    attention: str = "standard"
    q_latent_dim: int | None = None
    kv_latent_dim: int | None = None
    rope_head_dim: int | None = None
    value_head_dim: int | None = None
    # sparse attention: top-k keys per query, chosen by a lightning indexer
    index_topk: int | None = None
    index_heads: int | None = None
    index_head_dim: int | None = None
    # mixture of experts
    num_experts: int = 0
    experts_per_token: int | None = None
    expert_hidden_dim: int | None = None
    num_shared_experts: int = 0
    first_dense_layers: int = 0
    router_scoring: str = "softmax"
    router_renormalize: bool = False
    expert_groups: int = 1
    groups_per_token: int = 1
    router_group_score: str = "max"
    router_selection_bias: bool = False
    routed_scaling_factor: float = 1.0
    router_bias: bool = False
    expert_bias: bool = False
    swiglu_limit: float | None = None
    swiglu_alpha: float = 1.702
    # multi-token prediction
    mtp_layers: int = 0
    # embeddings and output
    tie_embeddings: bool = True
    scale_embeddings: bool = False
    lm_head_bias: bool = False
    final_logit_softcap: float | None = None
    # training
    dropout: float = 0.0
    init_std: float = 0.02
    load_balance_coef: float = 0.0
    router_z_loss_coef: float = 0.0
    router_bias_update_rate: float = 0.0
    # free-form notes that are not knobs (e.g. the source of a preset); ignored by `diff`
    notes: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("layer_types", "nope_layers"):  # lists (from JSON) become tuples: hashable, comparable
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if self.nope_layers == ():  # no NoPE layer is spelled None, so equal configs compare equal
            object.__setattr__(self, "nope_layers", None)
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

    @property
    def value_head_size(self) -> int:
        """Width of one head's values (value_head_dim for MLA, else head_size)."""
        return self.head_size if self.value_head_dim is None else self.value_head_dim

    @property
    def qk_head_size(self) -> int:
        """Width of one head's queries and keys: head_size, plus rope_head_dim for MLA."""
        return self.head_size + (self.rope_head_dim or 0)

    @property
    def expert_width(self) -> int:
        """Hidden width of one routed expert (expert_hidden_dim, or hidden_dim)."""
        return self.hidden_dim if self.expert_hidden_dim is None else self.expert_hidden_dim

    def is_moe_layer(self, index: int) -> bool:
        """Whether layer `index` has routed experts (False for dense configs and the first
        first_dense_layers layers)."""
        return self.num_experts > 0 and index >= self.first_dense_layers

    def uses_rope(self, index: int) -> bool:
        """Whether layer `index` rotates its queries and keys (position="rope" and not a NoPE layer)."""
        return self.position == "rope" and (self.nope_layers is None or index not in self.nope_layers)

    def layer_type(self, index: int) -> str:
        """"full_attention" or "sliding_attention" for layer `index`."""
        if self.layer_types is not None:
            return self.layer_types[index]
        return "sliding_attention" if self.sliding_window else "full_attention"

    def rope_of_layer(self, index: int) -> tuple[float, dict[str, Any] | None]:
        """(theta, scaling) of layer `index`'s RoPE: the local pair on sliding layers when set."""
        if self.rope_theta_local is not None and self.layer_type(index) == "sliding_attention":
            return self.rope_theta_local, self.rope_scaling_local
        return self.rope_theta, self.rope_scaling

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some knobs changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


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
    check_choice("family", cfg.family, FAMILIES)
    check_choice("norm", cfg.norm, NORMS)
    check_choice("norm_placement", cfg.norm_placement, NORM_PLACEMENTS)
    check_choice("position", cfg.position, POSITIONS)
    check_choice("rope_layout", cfg.rope_layout, ROPE_LAYOUTS)
    check_choice("ffn", cfg.ffn, FFN_KINDS)
    check_choice("activation", cfg.activation, ACTIVATIONS)
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
            check_choice("layer_types entry", kind, LAYER_TYPES)
        if "sliding_attention" in cfg.layer_types and cfg.sliding_window is None:
            raise ValueError("layer_types has sliding_attention layers but sliding_window is None")
    _validate_nope_layers(cfg)
    if cfg.rope_scaling is not None and cfg.position != "rope":
        raise ValueError(f"rope_scaling is set but position={cfg.position!r}; it needs position='rope'")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout={cfg.dropout} must be in [0, 1)")
    _validate_mla(cfg)
    _validate_moe(cfg)
    _validate_frontier(cfg)
    _positive_or_zero("mtp_layers", cfg.mtp_layers)
    for name in ("load_balance_coef", "router_z_loss_coef", "router_bias_update_rate"):
        if not getattr(cfg, name) >= 0:
            raise ValueError(f"{name}={getattr(cfg, name)!r} must be >= 0 (0 switches it off)")


def _validate_nope_layers(cfg: ModelConfig) -> None:
    if cfg.nope_layers is None:
        return
    if cfg.position != "rope":
        raise ValueError(f"nope_layers is set but position={cfg.position!r}; NoPE layers are layers left out of position='rope'")
    for index in cfg.nope_layers:
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < cfg.num_layers:
            raise ValueError(f"nope_layers entry {index!r} must be a layer index in [0, num_layers={cfg.num_layers})")
    if list(cfg.nope_layers) != sorted(set(cfg.nope_layers)):
        raise ValueError(f"nope_layers={cfg.nope_layers} must be sorted, without repeats")


def _positive_or_zero(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name}={value!r} must be an int >= 0")


_MLA_KNOBS = ("q_latent_dim", "kv_latent_dim", "rope_head_dim", "value_head_dim")


def _validate_mla(cfg: ModelConfig) -> None:
    check_choice("attention", cfg.attention, ATTENTIONS)
    if cfg.attention == "standard":
        for name in (*_MLA_KNOBS, "index_topk", "index_heads", "index_head_dim"):
            if getattr(cfg, name) is not None:
                raise ValueError(f"{name}={getattr(cfg, name)!r} is a knob of attention='mla'; attention='standard'")
        return
    for name in ("kv_latent_dim", "rope_head_dim"):
        if getattr(cfg, name) is None:
            raise ValueError(f"attention='mla' needs {name} (got None)")
    for name in _MLA_KNOBS:
        if getattr(cfg, name) is not None:
            _positive(name, getattr(cfg, name))
    if cfg.num_kv_heads not in (None, cfg.num_heads):
        raise ValueError(
            f"attention='mla' gives every head its own keys and values: num_kv_heads={cfg.num_kv_heads} must be None"
        )
    if cfg.position != "rope":
        raise ValueError(f"attention='mla' needs position='rope' (its decoupled key is rotated), got position={cfg.position!r}")
    if cfg.rope_head_dim % 2:
        raise ValueError(f"RoPE rotates pairs of dimensions: rope_head_dim={cfg.rope_head_dim} must be even")
    if cfg.partial_rotary_factor != 1.0:
        raise ValueError("attention='mla' rotates rope_head_dim dimensions; partial_rotary_factor must be 1.0")
    for name in ("qk_norm", "attn_logit_softcap", "sliding_window", "query_pre_attn_scalar", "nope_layers"):
        if getattr(cfg, name):
            raise ValueError(f"{name}={getattr(cfg, name)!r} is not supported with attention='mla'")
    _validate_indexer(cfg)


_INDEXER_KNOBS = ("index_topk", "index_heads", "index_head_dim")


def _validate_indexer(cfg: ModelConfig) -> None:
    """The lightning indexer's knobs: all set (sparse attention) or all None."""
    set_knobs = [name for name in _INDEXER_KNOBS if getattr(cfg, name) is not None]
    if not set_knobs:
        return
    if len(set_knobs) != len(_INDEXER_KNOBS):
        missing = [name for name in _INDEXER_KNOBS if name not in set_knobs]
        raise ValueError(f"sparse attention sets {', '.join(set_knobs)} but not {', '.join(missing)}: set all three or none")
    for name in _INDEXER_KNOBS:
        _positive(name, getattr(cfg, name))
    if cfg.q_latent_dim is None:
        raise ValueError("index_topk needs q_latent_dim: the indexer reads its queries from the query latent")
    if cfg.index_head_dim < cfg.rope_head_dim:
        raise ValueError(
            f"index_head_dim={cfg.index_head_dim} must be >= rope_head_dim={cfg.rope_head_dim} (RoPE rotates that many)"
        )


_MOE_KNOBS = {
    "experts_per_token": None, "expert_hidden_dim": None, "num_shared_experts": 0, "first_dense_layers": 0,
    "expert_groups": 1, "groups_per_token": 1, "router_selection_bias": False, "routed_scaling_factor": 1.0,
    "router_bias": False, "expert_bias": False, "swiglu_limit": None,
}  # fmt: skip


def _validate_moe(cfg: ModelConfig) -> None:
    _positive_or_zero("num_experts", cfg.num_experts)
    check_choice("router_scoring", cfg.router_scoring, ROUTER_SCORINGS)
    check_choice("router_group_score", cfg.router_group_score, ROUTER_GROUP_SCORES)
    if cfg.num_experts == 0:
        for name, off in _MOE_KNOBS.items():
            if getattr(cfg, name) != off:
                raise ValueError(f"{name}={getattr(cfg, name)!r} is a mixture-of-experts knob, but num_experts=0")
        return
    if cfg.experts_per_token is None:
        raise ValueError(f"num_experts={cfg.num_experts} needs experts_per_token (the top-k)")
    _positive("experts_per_token", cfg.experts_per_token)
    if cfg.experts_per_token > cfg.num_experts:
        raise ValueError(f"experts_per_token={cfg.experts_per_token} must be <= num_experts={cfg.num_experts}")
    if cfg.expert_hidden_dim is not None:
        _positive("expert_hidden_dim", cfg.expert_hidden_dim)
    _positive_or_zero("num_shared_experts", cfg.num_shared_experts)
    _positive_or_zero("first_dense_layers", cfg.first_dense_layers)
    if cfg.first_dense_layers > cfg.num_layers:
        raise ValueError(f"first_dense_layers={cfg.first_dense_layers} must be <= num_layers={cfg.num_layers}")
    _positive("expert_groups", cfg.expert_groups)
    _positive("groups_per_token", cfg.groups_per_token)
    if cfg.num_experts % cfg.expert_groups:
        raise ValueError(f"num_experts={cfg.num_experts} must be divisible by expert_groups={cfg.expert_groups}")
    if cfg.groups_per_token > cfg.expert_groups:
        raise ValueError(f"groups_per_token={cfg.groups_per_token} must be <= expert_groups={cfg.expert_groups}")
    per_group = cfg.num_experts // cfg.expert_groups
    if cfg.experts_per_token > cfg.groups_per_token * per_group:
        raise ValueError(
            f"experts_per_token={cfg.experts_per_token} is more than the groups_per_token={cfg.groups_per_token} "
            f"groups of {per_group} experts a token may choose from"
        )
    if cfg.expert_groups > 1 and cfg.router_group_score == "top2_sum" and per_group < 2:
        raise ValueError(f"router_group_score='top2_sum' needs at least 2 experts per group, got {per_group}")
    if not cfg.routed_scaling_factor > 0:
        raise ValueError(f"routed_scaling_factor={cfg.routed_scaling_factor!r} must be positive")


def _validate_frontier(cfg: ModelConfig) -> None:
    """The 2025 knobs: QK-norm scope, sinks, per-layer RoPE, gpt-oss's clamped experts."""
    check_choice("qk_norm_scope", cfg.qk_norm_scope, QK_NORM_SCOPES)
    if cfg.qk_norm_scope != "head" and not cfg.qk_norm:
        raise ValueError(f"qk_norm_scope={cfg.qk_norm_scope!r} needs qk_norm=True")
    if cfg.attention_sinks and cfg.attention != "standard":
        raise ValueError("attention_sinks=True is not supported with attention='mla'")
    if cfg.rope_theta_local is not None:
        if not cfg.rope_theta_local > 0:
            raise ValueError(f"rope_theta_local={cfg.rope_theta_local!r} must be positive (or None)")
    elif cfg.rope_scaling_local is not None:
        raise ValueError("rope_scaling_local is set but rope_theta_local is None; set both (the sliding layers' RoPE)")
    for name in ("rope_theta_local", "rope_scaling_local"):
        if getattr(cfg, name) is not None and cfg.position != "rope":
            raise ValueError(f"{name} is set but position={cfg.position!r}; it needs position='rope'")
    if cfg.swiglu_limit is not None:
        if not cfg.swiglu_limit > 0:
            raise ValueError(f"swiglu_limit={cfg.swiglu_limit!r} must be positive (or None: no clamp)")
        if cfg.ffn != "glu" or cfg.activation != "silu":
            raise ValueError(
                f"swiglu_limit clamps a SwiGLU: it needs ffn='glu' and activation='silu', got ffn={cfg.ffn!r}, "
                f"activation={cfg.activation!r}"
            )
    if not cfg.swiglu_alpha > 0:
        raise ValueError(f"swiglu_alpha={cfg.swiglu_alpha!r} must be positive")
    if cfg.swiglu_alpha != 1.702 and cfg.swiglu_limit is None:
        raise ValueError(f"swiglu_alpha={cfg.swiglu_alpha!r} is a knob of the clamped SwiGLU; set swiglu_limit")
