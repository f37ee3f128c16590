"""Closed-form sizes of a `ModelConfig`: parameters, weight and KV-cache bytes, FLOPs per token.

Everything here is arithmetic on the knobs; no weight is allocated, so a 671B model is as quick
as a toy. Per layer, with d = embed_dim, H = num_heads, K = kv_heads, h = head_size and
F = hidden_dim::

    attention  d*H*h (q) + 2*d*K*h (k, v) + H*h*d (o)   + biases: H*h + 2*K*h (qkv), d (o)
               MLA (r_q = q_latent_dim, r = kv_latent_dim, h_R = rope_head_dim, h_v = value_head_size):
               q: d*r_q + r_q*H*(h + h_R) (or d*H*(h + h_R) without a query latent)
               kv: d*(r + h_R) + r*H*(h + h_v);  o: H*h_v*d;  biases on the down-projections and o
               the lightning indexer of sparse attention (H_I = index_heads, h_I = index_head_dim):
               r_q*H_I*h_I (queries) + d*h_I (key) + 2*h_I (its LayerNorm) + d*H_I (head weights)
    ffn        classic: 2*d*F (+ F + d biases);  glu: 3*d*F (+ 2*F + d biases)
               MoE layer (E experts of width F_e, k per token, S shared): router E*d (+ E with
               router_bias), experts E*3*d*F_e (+ E*(2*F_e + d) with expert_bias), shared experts
               one glu of width S*F_e; a token uses the router, k experts and the shared ones
               attention sinks add H per layer (one logit per head)
    norms      2 per layer ("pre", "post", "post_sublayer") or 4 ("sandwich"), each d (+ d bias
               for layernorm); qk_norm adds 2*h per head-wise norm, or (H + K)*h over the
               projections (qk_norm_scope="projection"); MLA adds its latent norms r_q + r;
               every placement but "post" adds one final norm

plus the token table (vocab * d), a learned position table (max_seq_len * d), and an output head
(vocab * d, only when untied; vocab more with lm_head_bias). DeepSeek-V3's router bias
(e_score_correction_bias) is a buffer, not a parameter, and is not counted (as transformers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from olm_edu.models.config import ModelConfig

# bits per element for the dtype names weight_bytes and kv_cache_bytes accept
DTYPE_BITS = {
    "fp32": 32,
    "float32": 32,
    "fp16": 16,
    "float16": 16,
    "bf16": 16,
    "bfloat16": 16,
    "fp8": 8,
    "int8": 8,
    "int4": 4,
}


@dataclass(frozen=True)
class ParamCount:
    """Parameters of a model, split by component.

    total          every parameter once (a tied head shares the token table, counted once).
    embedding      the vocabulary- and position-sized tables: token embedding, learned
                   positions, and an untied output head (with its bias).
    non_embedding  total - embedding. For tied models (GPT-2) this is Kaplan et al.'s N
                   ("excluding embedding parameters"); for untied ones it also leaves out the
                   head, as the Qwen2.5 model cards do ("Non-Embedding: 6.53B" for 7.61B).
    active         parameters used for one token: total minus the routed experts a token does
                   not choose (a dense model uses all of them, so active = total). The input
                   embedding table IS counted in active, as is the output head. Publishers
                   differ: Mistral (Mixtral-8x7B: 12.9B) and Qwen (Qwen3-30B-A3B: 3.3B) count
                   the input embedding; DeepSeek (V2-Lite: 2.4B, V3: 36.6B, "37B") does not.
                   `active_without_input_embedding` gives DeepSeek's convention.
    by_component   embeddings, positions, attention, ffn (routers, experts and shared
                   experts included), norms, head; sums to total.
    mtp            parameters of the cfg.mtp_layers multi-token-prediction modules (not in
                   total: the main model does not use them); their embedding and head are
                   the main model's, so not counted again.
    """

    total: int
    embedding: int
    non_embedding: int
    active: int
    by_component: dict[str, int] = field(default_factory=dict)
    mtp: int = 0

    @property
    def active_without_input_embedding(self) -> int:
        """active minus the token-embedding table (DeepSeek's way of counting active parameters)."""
        return self.active - self.by_component.get("embeddings", 0)


def _latent_attention_params(cfg: ModelConfig) -> int:
    """One MLA layer's projections and their biases (the latent norms are counted as norms)."""
    d, heads, bias = cfg.embed_dim, cfg.num_heads, cfg.qkv_bias
    q_out = heads * cfg.qk_head_size
    if cfg.q_latent_dim is None:
        q = d * q_out
    else:
        q = d * cfg.q_latent_dim + cfg.q_latent_dim * bias + cfg.q_latent_dim * q_out
    down = cfg.kv_latent_dim + cfg.rope_head_dim
    kv = d * down + down * bias + cfg.kv_latent_dim * heads * (cfg.head_size + cfg.value_head_size)
    o = heads * cfg.value_head_size * d + d * cfg.attn_out_bias
    return q + kv + o + _indexer_params(cfg)


def _indexer_params(cfg: ModelConfig) -> int:
    """The lightning indexer of one sparse-attention layer (0 without one): its query
    up-projection, key projection and key LayerNorm (weight and bias), and head weights."""
    if cfg.index_topk is None:
        return 0
    d, heads, width = cfg.embed_dim, cfg.index_heads, cfg.index_head_dim
    return cfg.q_latent_dim * heads * width + d * width + 2 * width + d * heads


def _attention_params(cfg: ModelConfig) -> int:
    """One layer's q, k, v, o projections and their biases."""
    if cfg.attention == "mla":
        return _latent_attention_params(cfg)
    d, q_width, kv_width = cfg.embed_dim, cfg.num_heads * cfg.head_size, cfg.kv_heads * cfg.head_size
    weights = d * q_width + 2 * d * kv_width + q_width * d
    biases = (q_width + 2 * kv_width) * cfg.qkv_bias + d * cfg.attn_out_bias
    return weights + biases + cfg.num_heads * cfg.attention_sinks


def _dense_ffn_params(cfg: ModelConfig, hidden: int, bias: bool) -> int:
    """One feed-forward of width `hidden`: up and down, plus a gate for GLU."""
    d = cfg.embed_dim
    if cfg.ffn == "glu":
        return 3 * d * hidden + (2 * hidden + d) * bias
    return 2 * d * hidden + (hidden + d) * bias


def _ffn_params(cfg: ModelConfig, index: int) -> tuple[int, int]:
    """Layer `index`'s feed-forward: (parameters, parameters one token uses)."""
    if not cfg.is_moe_layer(index):
        dense = _dense_ffn_params(cfg, cfg.hidden_dim, cfg.ffn_bias)
        return dense, dense
    expert = _dense_ffn_params(cfg, cfg.expert_width, bias=cfg.expert_bias)
    always = cfg.num_experts * (cfg.embed_dim + cfg.router_bias)  # the router
    if cfg.num_shared_experts:
        always += _dense_ffn_params(cfg, cfg.num_shared_experts * cfg.expert_width, cfg.ffn_bias)
    return always + cfg.num_experts * expert, always + cfg.experts_per_token * expert


def _norm_params(cfg: ModelConfig) -> int:
    """All normalisation weights: per layer, the final norm, and qk_norm's per-head norms."""
    one_norm = cfg.embed_dim * (2 if cfg.norm_bias else 1)
    per_layer = {"pre": 2, "post": 2, "sandwich": 4, "post_sublayer": 2}[cfg.norm_placement] * one_norm
    if cfg.qk_norm:
        per_layer += 2 * cfg.head_size if cfg.qk_norm_scope == "head" else (cfg.num_heads + cfg.kv_heads) * cfg.head_size
    per_layer += (cfg.q_latent_dim or 0) + (cfg.kv_latent_dim or 0)  # MLA's latent norms
    # "post" (the 2017 layout) ends every block with a norm, so it has no final norm
    final = 0 if cfg.norm_placement == "post" else one_norm
    return cfg.num_layers * per_layer + final


def count_params(cfg: ModelConfig) -> ParamCount:
    """Parameters `cfg` describes, exactly, without building it (see `ParamCount`)."""
    ffn = [_ffn_params(cfg, index) for index in range(cfg.num_layers)]
    parts = {
        "embeddings": cfg.vocab_size * cfg.embed_dim,
        "positions": cfg.max_seq_len * cfg.embed_dim if cfg.position == "learned" else 0,
        "attention": cfg.num_layers * _attention_params(cfg),
        "ffn": sum(total for total, _ in ffn),
        "norms": _norm_params(cfg),
        "head": (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.embed_dim) + cfg.vocab_size * cfg.lm_head_bias,
    }
    total = sum(parts.values())
    embedding = parts["embeddings"] + parts["positions"] + parts["head"]
    active = total - sum(total - used for total, used in ffn)
    return ParamCount(total, embedding, total - embedding, active, by_component=parts, mtp=_mtp_params(cfg))


def _mtp_params(cfg: ModelConfig) -> int:
    """cfg.mtp_layers MultiTokenPrediction modules: enorm, hnorm, eh_proj (2d -> d), one MoE
    layer and its output norm (embedding and head are shared with the main model)."""
    if not cfg.mtp_layers:
        return 0
    one_layer = cfg.replace(num_layers=1, first_dense_layers=0, layer_types=None)
    layer = _attention_params(one_layer) + _ffn_params(one_layer, 0)[0] + _norm_params(one_layer) - cfg.embed_dim
    return cfg.mtp_layers * (3 * cfg.embed_dim + 2 * cfg.embed_dim * cfg.embed_dim + layer)


def _bits(dtype: torch.dtype | str) -> int:
    if isinstance(dtype, torch.dtype):
        return dtype.itemsize * 8
    if dtype not in DTYPE_BITS:
        raise ValueError(f"dtype={dtype!r} is not a torch.dtype or one of {tuple(DTYPE_BITS)}")
    return DTYPE_BITS[dtype]


def _bytes(count: int, dtype: torch.dtype | str) -> int:
    return -(-count * _bits(dtype) // 8)  # ceil: int4 packs two values a byte


def weight_bytes(cfg: ModelConfig, dtype: torch.dtype | str = torch.bfloat16) -> int:
    """Bytes to store every parameter in `dtype` (a torch.dtype, or "bf16", "fp8", "int4", ...).

    int4 is half a byte a parameter; quantisation scales are not counted.
    """
    return _bytes(count_params(cfg).total, dtype)


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name}={value} must be at least 1")


def _tokens_seen(cfg: ModelConfig, layer: int, seq_len: int) -> int:
    """Keys a query at position seq_len - 1 attends to in `layer` (a window caps sliding layers)."""
    if cfg.layer_type(layer) == "sliding_attention":
        return min(seq_len, cfg.sliding_window)
    return seq_len


def kv_cache_bytes(
    cfg: ModelConfig, seq_len: int, dtype: torch.dtype | str = torch.bfloat16, batch_size: int = 1
) -> int:
    """Bytes of the key/value cache after `seq_len` tokens.

    Sum over layers of 2 (k and v) * kv_heads * head_size * tokens cached * batch_size, in
    `dtype`; a sliding-window layer keeps only its last `sliding_window` tokens. Multi-head
    latent attention caches kv_latent_dim + rope_head_dim numbers per token and layer (the
    latent and the shared rotated key), whatever the number of heads; sparse attention adds the
    indexer's key (index_head_dim), all in the same `dtype` (DeepSeek stores it in fp8).
    """
    _check_positive("seq_len", seq_len)
    _check_positive("batch_size", batch_size)
    tokens = sum(_tokens_seen(cfg, layer, seq_len) for layer in range(cfg.num_layers))
    return _bytes(cache_width(cfg) * tokens * batch_size, dtype)


def cache_width(cfg: ModelConfig) -> int:
    """Numbers cached per token and layer: 2 * kv_heads * head_size, or kv_latent_dim +
    rope_head_dim for MLA (+ index_head_dim, the indexer's key, with sparse attention)."""
    if cfg.attention == "mla":
        return cfg.kv_latent_dim + cfg.rope_head_dim + (cfg.index_head_dim or 0)
    return 2 * cfg.kv_heads * cfg.head_size


def flops_per_token(cfg: ModelConfig, seq_len: int) -> dict[str, int]:
    """Forward matmul FLOPs for one token attending to `seq_len` tokens (2 per multiply-add of a
    weight matmul, plus the attention term, as in Kaplan et al. 2020; unlike Chinchilla's count,
    no FLOPs for the embedding lookup, the softmax or the norms).

    A matmul with an (m, n) weight costs 2 * m * n FLOPs a token, so the projections cost twice
    their weight count: "attention" (q, k, v, o), "ffn", and "head" (the logits, vocab * d, paid
    even when the head is tied). "attention_scores" is q.k^T plus the weighted sum of values:
    2 * 2 * T * num_heads * head_size per layer, with T = seq_len (min(seq_len, window) on
    sliding layers) -- the cost of the last token, not halved for the causal mask. With MLA the
    projections are its down- and up-projections (each token's latent expanded once), and the
    scores cost 2 * T * num_heads * (qk_head_size + value_head_size). An MoE layer counts
    the matrices a token uses: the router, its experts_per_token experts and the shared ones.
    Sparse attention (index_topk): the attention reads min(T, index_topk) keys, and the indexer
    scores all T of them: 2 * T * index_heads * index_head_dim (q.k) + 2 * T * index_heads (the
    weighted sum of the heads' votes) per layer; its projections count with the attention's.
    Embedding lookups, biases, norms, softmax and activations are left out (all O(d), not
    O(d^2)). "forward" is the sum; "training" = 3 * forward (backward costs twice forward).
    """
    _check_positive("seq_len", seq_len)
    d, q_width, kv_width = cfg.embed_dim, cfg.num_heads * cfg.head_size, cfg.kv_heads * cfg.head_size
    if cfg.attention == "mla":
        no_bias = cfg.replace(qkv_bias=False, attn_out_bias=False)
        attention_weights = _latent_attention_params(no_bias)
        score_width = cfg.num_heads * (cfg.qk_head_size + cfg.value_head_size)
    else:
        attention_weights = 2 * d * q_width + 2 * d * kv_width
        score_width = 2 * q_width
    no_ffn_bias = cfg.replace(ffn_bias=False)
    read = [_tokens_seen(cfg, layer, seq_len) for layer in range(cfg.num_layers)]  # keys each layer scores
    attended = read if cfg.index_topk is None else [min(tokens, cfg.index_topk) for tokens in read]
    indexer = 0 if cfg.index_topk is None else sum(2 * t * cfg.index_heads * (cfg.index_head_dim + 1) for t in read)
    flops = {
        "attention": 2 * cfg.num_layers * attention_weights,
        "attention_scores": sum(2 * tokens * score_width for tokens in attended) + indexer,
        "ffn": 2 * sum(_ffn_params(no_ffn_bias, index)[1] for index in range(cfg.num_layers)),
        "head": 2 * d * cfg.vocab_size,
    }
    flops["forward"] = sum(flops.values())
    flops["training"] = 3 * flops["forward"]
    return flops


# ---------------------------------------------------------------------------
# Training memory per rank (lesson 25)
# ---------------------------------------------------------------------------

SHARDING = ("ddp", "zero1", "zero2", "fsdp")


def training_bytes_per_rank(
    cfg: ModelConfig,
    world_size: int,
    sharding: str = "fsdp",
    *,
    param_bytes: int = 2,
    grad_bytes: int = 2,
    optimizer_bytes: int = 12,
) -> dict[str, int]:
    """Bytes each of `world_size` ranks holds for the model's training state (activations excluded).

    Mixed-precision AdamW (the ZeRO paper's accounting): bf16 parameters (2 bytes each) and
    gradients (2), and an fp32 master copy plus Adam's two moments (4 + 4 + 4 = 12): 16 bytes
    per parameter N in all. What each `sharding` splits over the ranks:
        ddp    nothing: every rank holds everything, 16 N
        zero1  the optimiser state:                  (2 + 2) N + 12 N / world_size
        zero2  optimiser state and gradients:        2 N + (2 + 12) N / world_size
        fsdp   (ZeRO-3) parameters too:               16 N / world_size
    A shard holds ceil(N / world_size) elements. Returns {"parameters", "gradients",
    "optimizer", "total"} in bytes per rank.
    """
    from olm_edu.choices import check_choice

    check_choice("sharding", sharding, SHARDING)
    _check_positive("world_size", world_size)
    total = count_params(cfg).total
    shard = -(-total // world_size)
    split = {"ddp": (), "zero1": ("optimizer",), "zero2": ("optimizer", "gradients"),
             "fsdp": ("optimizer", "gradients", "parameters")}[sharding]
    sizes = {"parameters": param_bytes, "gradients": grad_bytes, "optimizer": optimizer_bytes}
    per_rank = {part: (shard if part in split else total) * size for part, size in sizes.items()}
    per_rank["total"] = sum(per_rank.values())
    return per_rank
