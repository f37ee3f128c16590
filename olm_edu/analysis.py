"""Closed-form sizes of a `ModelConfig`: parameters, weight and KV-cache bytes, FLOPs per token.

Everything here is arithmetic on the knobs; no weight is allocated, so a 405B model is as quick
as a toy. Per layer, with d = embed_dim, H = num_heads, K = kv_heads, h = head_size and
F = hidden_dim:

    attention  d*H*h (q) + 2*d*K*h (k, v) + H*h*d (o)   + biases: H*h + 2*K*h (qkv), d (o)
    ffn        classic: 2*d*F (+ F + d biases);  glu: 3*d*F (+ 2*F + d biases)
    norms      2 per layer ("pre", "post") or 4 ("sandwich"), each d (+ d bias for layernorm);
               qk_norm adds 2*h; "pre" and "sandwich" add one final norm

plus the token table (vocab*d), a learned position table (max_seq_len*d), and an output head
(vocab*d, only when untied; vocab more with lm_head_bias).
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
    active         parameters used for one token. A dense model uses all of them, so this is
                   total, input embedding included (a lookup, but its row is used); MoE
                   configs will make it smaller.
    by_component   embeddings, positions, attention, ffn, norms, head; sums to total.
    """

    total: int
    embedding: int
    non_embedding: int
    active: int
    by_component: dict[str, int] = field(default_factory=dict)


def _attention_params(cfg: ModelConfig) -> int:
    """One layer's q, k, v, o projections and their biases."""
    d, q_width, kv_width = cfg.embed_dim, cfg.num_heads * cfg.head_size, cfg.kv_heads * cfg.head_size
    weights = d * q_width + 2 * d * kv_width + q_width * d
    biases = (q_width + 2 * kv_width) * cfg.qkv_bias + d * cfg.attn_out_bias
    return weights + biases


def _ffn_params(cfg: ModelConfig) -> int:
    """One layer's feed-forward: up and down, plus a gate for GLU."""
    d, hidden = cfg.embed_dim, cfg.hidden_dim
    if cfg.ffn == "glu":
        return 3 * d * hidden + (2 * hidden + d) * cfg.ffn_bias
    return 2 * d * hidden + (hidden + d) * cfg.ffn_bias


def _norm_params(cfg: ModelConfig) -> int:
    """All normalisation weights: per layer, the final norm, and qk_norm's per-head norms."""
    one_norm = cfg.embed_dim * (2 if cfg.norm_bias else 1)
    per_layer = {"pre": 2, "post": 2, "sandwich": 4}[cfg.norm_placement] * one_norm
    per_layer += 2 * cfg.head_size if cfg.qk_norm else 0
    # "post" (the 2017 layout) ends every block with a norm, so it has no final norm
    final = 0 if cfg.norm_placement == "post" else one_norm
    return cfg.num_layers * per_layer + final


def count_params(cfg: ModelConfig) -> ParamCount:
    """Parameters `cfg` describes, exactly, without building it (see `ParamCount`)."""
    parts = {
        "embeddings": cfg.vocab_size * cfg.embed_dim,
        "positions": cfg.max_seq_len * cfg.embed_dim if cfg.position == "learned" else 0,
        "attention": cfg.num_layers * _attention_params(cfg),
        "ffn": cfg.num_layers * _ffn_params(cfg),
        "norms": _norm_params(cfg),
        "head": (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.embed_dim) + cfg.vocab_size * cfg.lm_head_bias,
    }
    total = sum(parts.values())
    embedding = parts["embeddings"] + parts["positions"] + parts["head"]
    return ParamCount(total, embedding, total - embedding, active=total, by_component=parts)


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
    `dtype`; a sliding-window layer keeps only its last `sliding_window` tokens.
    """
    _check_positive("seq_len", seq_len)
    _check_positive("batch_size", batch_size)
    tokens = sum(_tokens_seen(cfg, layer, seq_len) for layer in range(cfg.num_layers))
    return _bytes(2 * cfg.kv_heads * cfg.head_size * tokens * batch_size, dtype)


def flops_per_token(cfg: ModelConfig, seq_len: int) -> dict[str, int]:
    """Forward matmul FLOPs for one token attending to `seq_len` tokens (Chinchilla convention).

    A matmul with an (m, n) weight costs 2*m*n FLOPs a token, so the projections cost twice
    their weight count: "attention" (q, k, v, o), "ffn", and "head" (the logits, vocab*d, paid
    even when the head is tied). "attention_scores" is q.k^T plus the weighted sum of values:
    2 * 2 * T * num_heads * head_size per layer, with T = seq_len (min(seq_len, window) on
    sliding layers) -- the cost of the last token, not halved for the causal mask.
    Embedding lookups, biases, norms, softmax and activations are left out (all O(d), not
    O(d^2)). "forward" is the sum; "training" = 3 * forward (backward costs twice forward).
    """
    _check_positive("seq_len", seq_len)
    d, q_width, kv_width = cfg.embed_dim, cfg.num_heads * cfg.head_size, cfg.kv_heads * cfg.head_size
    matmul_weights_ffn = (3 if cfg.ffn == "glu" else 2) * d * cfg.hidden_dim
    flops = {
        "attention": 2 * cfg.num_layers * (2 * d * q_width + 2 * d * kv_width),
        "attention_scores": sum(4 * _tokens_seen(cfg, layer, seq_len) * q_width for layer in range(cfg.num_layers)),
        "ffn": 2 * cfg.num_layers * matmul_weights_ffn,
        "head": 2 * d * cfg.vocab_size,
    }
    flops["forward"] = sum(flops.values())
    flops["training"] = 3 * flops["forward"]
    return flops
