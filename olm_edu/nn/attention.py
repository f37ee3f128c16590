"""Causal self-attention: one implementation, every knob the course turns.

For each head h, with queries Q, keys K and values V of width d_h:

    scores = Q K^T * scale                    scale = 1/sqrt(d_h) (or query_pre_attn_scalar^-1/2)
    scores = cap * tanh(scores / cap)         attention-logit soft-cap (Gemma 2), optional
    scores = scores + alibi bias              ALiBi, optional
    scores[q, k] = -inf where k may not be seen: the future (causal), or further back than the
                   sliding window (q - k >= window)
    out = softmax(scores) V

With attention sinks (gpt-oss) each head h has a learned logit s_h that joins the softmax as one
more column no value goes with:

    weights = softmax([scores, s_h])[..., :-1]      (the sink's share is dropped)

so the weights over the real keys sum to 1 - sink share: a head with nothing to look at can put
its mass on the sink instead of piling it on the first token.

Knobs:
- num_kv_heads < num_heads shares each key/value head among a group of query heads
  (GQA; MQA when num_kv_heads = 1; MHA when equal). `repeat_kv` expands them for the maths.
- position="rope" rotates queries and keys by their absolute positions (either layout);
  "alibi" adds a distance penalty to the scores; anything else leaves them alone.
- qk_norm applies an RMSNorm to each head's queries and keys, before RoPE (Qwen 3, Gemma 3:
  qk_norm_scope="head"), or one RMSNorm over the whole query projection and one over the keys
  before they are split into heads (OLMo 2/3: qk_norm_scope="projection").
- sinks=True gives each head its sink logit (the parameter `sinks`, shape (num_heads,)).
- implementation="explicit" computes the formula above line by line; "sdpa" calls
  `torch.nn.functional.scaled_dot_product_attention` (which can use fused kernels). They
  agree to float32 rounding. SDPA has no soft-cap, so a soft-capped layer always runs explicit.
  SDPA has no sink either: there the sink becomes one extra key of zeros (so q.k = 0) whose
  additive mask entry is s_h, with a value of zeros, which is the same softmax.
  Both live in `attend`, which multi-head latent attention (olm_edu.nn.mla) shares.

Shapes: x (B, T, embed_dim) -> (B, T, embed_dim)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from olm_edu.choices import check_choice, checked_choice
from olm_edu.nn.blocks import Context
from olm_edu.nn.norms import RMSNorm
from olm_edu.nn.positions import RotaryEmbedding, alibi_bias, alibi_slopes, apply_rotary

__all__ = ["Attention", "attend", "attention_mask", "repeat_kv", "softcap", "IMPLEMENTATIONS"]

IMPLEMENTATIONS = ("explicit", "sdpa")


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """cap * tanh(x / cap): a smooth clamp to (-cap, cap); identity when cap is None."""
    return x if cap is None else cap * torch.tanh(x / cap)


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, H_kv, T, d) -> (B, H_kv * groups, T, d): each KV head serves `groups` query heads."""
    if groups == 1:
        return x
    batch, kv_heads, length, dim = x.shape
    return x[:, :, None].expand(batch, kv_heads, groups, length, dim).reshape(batch, kv_heads * groups, length, dim)


def attention_mask(
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    causal: bool = True,
    window: int | None = None,
) -> torch.Tensor | None:
    """(T_q, T_k) boolean mask, True where a query may attend to a key; None if all may.

    causal: key position <= query position. window: query - key < window (a window of W
    sees the token itself and the W - 1 before it).
    """
    offset = query_positions[:, None] - key_positions[None, :]  # (T_q, T_k)
    allowed = None
    if causal:
        allowed = offset >= 0
    if window is not None:
        inside = offset < window
        allowed = inside if allowed is None else allowed & inside
    return allowed


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: torch.Tensor | None,
    *,
    scale: float,
    implementation: str = "sdpa",
    bias: torch.Tensor | None = None,
    logit_softcap: float | None = None,
    dropout: float = 0.0,
    is_causal: bool = False,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(softcap(q k^T * scale) + bias, masked where not `allowed`) v.

    "explicit" computes it one line per step; "sdpa" hands it to PyTorch's fused kernel (a mask
    and a bias go in as one additive mask; SDPA has no soft-cap, so a soft-capped call always
    runs explicit). is_causal=True says `allowed` is the plain causal mask of a sequence
    attending to itself (T_q = T_k), so SDPA may use its fused causal kernel instead.
    sinks: one logit per head that joins each softmax denominator (see the module docstring).

    Shapes: q (B, H, T_q, d), k (B, H, T_k, d), v (B, H, T_k, d_v), allowed (T_q, T_k),
        bias (H, T_q, T_k), sinks (H,) -> (B, H, T_q, d_v)
    """
    check_choice("implementation", implementation, IMPLEMENTATIONS)
    if implementation == "explicit" or logit_softcap is not None:
        scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, T_q, T_k)
        scores = softcap(scores, logit_softcap)
        if bias is not None:
            scores = scores + bias
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        if sinks is None:
            weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        else:
            weights = _softmax_with_sink(scores, sinks).to(q.dtype)
        weights = F.dropout(weights, dropout, dropout > 0)
        return weights @ v  # (B, H, T_q, d_v)
    if sinks is not None:
        return _sdpa_with_sink(q, k, v, allowed, scale, bias, dropout, sinks)
    if is_causal and bias is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scale)
    mask = allowed
    if bias is not None:
        mask = bias if allowed is None else bias.masked_fill(~allowed, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale)


def _softmax_with_sink(scores: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """softmax over [scores, sink] without the sink's column, in float32.

    The largest logit (sink included) is subtracted first, as gpt-oss's reference code does, so a
    large sink cannot overflow in half precision. Shapes: (B, H, T_q, T_k), (H,) -> (B, H, T_q, T_k)
    """
    scores = scores.float()
    sink = sinks.float().view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)  # (B, H, T_q, 1)
    logits = torch.cat([scores, sink], dim=-1)
    logits = logits - logits.amax(dim=-1, keepdim=True)
    return torch.softmax(logits, dim=-1)[..., :-1]


def _sdpa_with_sink(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None, scale: float,
    bias: torch.Tensor | None, dropout: float, sinks: torch.Tensor,
) -> torch.Tensor:
    """SDPA with a sink: one more key of zeros (its score q.0 = 0) whose additive mask entry is
    the sink logit, and a value of zeros, so it takes its share of the softmax and adds nothing."""
    batch, heads, length_q, _ = q.shape
    k = torch.cat([k, k.new_zeros(batch, heads, 1, k.shape[-1])], dim=2)  # (B, H, T_k + 1, d)
    v = torch.cat([v, v.new_zeros(batch, heads, 1, v.shape[-1])], dim=2)
    mask = q.new_zeros(heads, length_q, k.shape[2] - 1) if bias is None else bias.expand(heads, length_q, -1)
    if allowed is not None:
        mask = mask.masked_fill(~allowed, float("-inf"))
    sink_column = sinks.to(q.dtype).view(heads, 1, 1).expand(heads, length_q, 1)
    mask = torch.cat([mask, sink_column], dim=-1)  # (H, T_q, T_k + 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale)


class Attention(nn.Module):
    """Multi-head attention covering MHA / GQA / MQA, RoPE, ALiBi, QK-norm, soft-cap, windows, sinks.

    Parameters are named as in Llama's code: q_proj, k_proj, v_proj, o_proj (and q_norm,
    k_norm with QK-norm; sinks with attention sinks). norm_convention is the QK-norms' RMSNorm
    convention ("llama" or "gemma"); qk_norm_scope "head" or "projection" (see the module docstring).
    """

    uses_context = True

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        *,
        bias: bool = False,
        out_bias: bool | None = None,
        causal: bool = True,
        position: str = "none",
        rope_theta: float = 10_000.0,
        rope_scaling: dict | None = None,
        rope_layout: str = "half",
        partial_rotary_factor: float = 1.0,
        max_seq_len: int = 2048,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
        logit_softcap: float | None = None,
        scale: float | None = None,
        sliding_window: int | None = None,
        dropout: float = 0.0,
        implementation: str = "sdpa",
        layer_index: int = 0,
        qk_norm_scope: str = "head",
        norm_convention: str = "llama",
        sinks: bool = False,
    ):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} must be divisible by num_kv_heads={num_kv_heads}")
        if head_dim is None:
            if embed_dim % num_heads:
                raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads} (or set head_dim)")
            head_dim = embed_dim // num_heads
        check_choice("position", position, ("none", "rope", "alibi", "learned", "sinusoidal"))
        self.embed_dim, self.num_heads, self.num_kv_heads, self.head_dim = embed_dim, num_heads, num_kv_heads, head_dim
        self.causal, self.sliding_window, self.logit_softcap = causal, sliding_window, logit_softcap
        self.scale = head_dim**-0.5 if scale is None else scale
        self.dropout, self.layer_index = dropout, layer_index
        self.implementation = implementation  # validated by the property setter

        self.q_proj = nn.Linear(embed_dim, num_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, num_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, num_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(num_heads * head_dim, embed_dim, bias=bias if out_bias is None else out_bias)
        check_choice("qk_norm_scope", qk_norm_scope, ("head", "projection"))
        self.qk_norm_scope = qk_norm_scope
        per_head = qk_norm_scope == "head"
        q_width, k_width = (head_dim, head_dim) if per_head else (num_heads * head_dim, num_kv_heads * head_dim)
        self.q_norm = RMSNorm(q_width, norm_eps, convention=norm_convention) if qk_norm else None
        self.k_norm = RMSNorm(k_width, norm_eps, convention=norm_convention) if qk_norm else None
        self.sinks = nn.Parameter(torch.zeros(num_heads)) if sinks else None

        self.rope_layout = rope_layout
        self.rotary = None
        if position == "rope":
            rotary_dim = int(head_dim * partial_rotary_factor)
            if rotary_dim % 2:
                raise ValueError(f"RoPE needs an even number of rotated dimensions, got {rotary_dim} (head_dim={head_dim})")
            self.rotary = RotaryEmbedding(rotary_dim, rope_theta, rope_scaling, max_seq_len, layout=rope_layout)
        self.register_buffer(
            "alibi_slopes", alibi_slopes(num_heads) if position == "alibi" else None, persistent=False
        )

    implementation = checked_choice("implementation", IMPLEMENTATIONS)

    def forward(self, x: torch.Tensor, context: Context | None = None) -> torch.Tensor:
        batch, length, _ = x.shape
        positions = context.positions if context is not None else torch.arange(length, device=x.device)
        cache = context.cache if context is not None else None

        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # (B, T, H * d), (B, T, H_kv * d) twice
        if self.q_norm is not None and self.qk_norm_scope == "projection":  # OLMo: over all heads at once
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, d)
        k = k.view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, H_kv, T, d)
        v = v.view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None and self.qk_norm_scope == "head":  # each head's vectors, before the rotation
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary is not None:
            cos, sin = self.rotary(positions, dtype=q.dtype)
            q = apply_rotary(q, cos, sin, self.rope_layout)
            k = apply_rotary(k, cos, sin, self.rope_layout)

        key_positions = positions
        if cache is not None:
            k, v, key_positions = cache.update(self.layer_index, k, v, positions, self.sliding_window)
        groups = self.num_heads // self.num_kv_heads
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)  # (B, H, T_k, d)

        allowed = attention_mask(positions, key_positions, self.causal, self.sliding_window)
        bias = None
        if self.alibi_slopes is not None:
            bias = alibi_bias(self.alibi_slopes, positions, key_positions).to(q.dtype)  # (H, T_q, T_k)
        out = attend(
            q, k, v, allowed, scale=self.scale, implementation=self.implementation, bias=bias,
            logit_softcap=self.logit_softcap, dropout=self.dropout if self.training else 0.0,
            is_causal=cache is None and self.causal and self.sliding_window is None, sinks=self.sinks,
        )
        out = out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)  # (B, T, H * d)
        return self.o_proj(out)

    def extra_repr(self) -> str:
        parts = [f"heads={self.num_heads}", f"kv_heads={self.num_kv_heads}", f"head_dim={self.head_dim}"]
        if self.sliding_window is not None:
            parts.append(f"sliding_window={self.sliding_window}")
        if self.logit_softcap is not None:
            parts.append(f"logit_softcap={self.logit_softcap}")
        if self.sinks is not None:
            parts.append("sinks=True")
        if self.q_norm is not None and self.qk_norm_scope != "head":
            parts.append(f"qk_norm_scope={self.qk_norm_scope!r}")
        parts.append(f"implementation={self.implementation!r}")
        return ", ".join(parts)
