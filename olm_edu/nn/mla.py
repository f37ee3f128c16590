"""Multi-head latent attention (MLA, DeepSeek-V2 and V3): cache a small latent, not keys and values.

Standard attention caches, per token and layer, every head's key and value: 2 * H * d_h numbers
(GQA shrinks H to the KV heads). MLA caches one latent vector c of kv_latent_dim (512 in
DeepSeek-V3, against 2 * 128 * 128 = 32,768 for its 128 heads) and rebuilds each head's key and
value from it with learned up-projections:

    c_t         = RMSNorm(W_DKV x_t)                          the latent: (kv_latent_dim,), cached
    k_t^C, v_t  = W_UK c_t, W_UV c_t  (per head)              "content" keys and the values
    q_t         = W_UQ RMSNorm(W_DQ x_t)                      queries through their own latent
                  (or W_Q x_t when q_latent_dim is None: DeepSeek-V2-Lite)

RoPE does not commute with the up-projection (rotating c would rotate k^C differently at every
position), so position goes into a few *decoupled* dimensions: every head's query gets
rope_head_dim extra dimensions q^R, and the key gets rope_head_dim dimensions k^R = RoPE(W_KR x_t)
that are *shared by all heads* (and cached next to c). A head's score is

    score(t, s) = (q_t^C . k_s^C + q_t^R . k_s^R) * scale,     scale = 1 / sqrt(head_dim + rope_head_dim)

times the YaRN correction mscale(factor, mscale_all_dim)^2 when the RoPE is YaRN-scaled with
mscale_all_dim (DeepSeek's "softmax scale" fix; the RoPE's own attention factor,
mscale(factor, mscale) / mscale(factor, mscale_all_dim), multiplies cos and sin as usual).

Cached per token and layer: kv_latent_dim + rope_head_dim numbers (576 for DeepSeek-V3).

Top-k key selection (DeepSeek-V3.2's sparse attention, `index_topk`): a `LightningIndexer`
(olm_edu.nn.indexer) reads the query latent and scores every earlier key; each query then
attends only to its index_topk best keys. Nothing else changes: the selection is one more mask
on the same attention (and the indexer caches its own key per token, index_head_dim numbers).

Three ways to compute it (`mode`), equal to float rounding:
- "naive": cache c and k^R; each step expands every cached c into keys and values (what
  transformers does).
- "absorbed": never expand. Since q^C . (W_UK c) = (W_UK^T q^C) . c, fold W_UK into the query
  and W_UV into the output: attention runs directly over the cached latents, as multi-query
  attention with one key [c, k^R] of kv_latent_dim + rope_head_dim and one value c shared by all
  heads; the result (a latent per head) goes through W_UV. DeepSeek's inference code decodes
  this way.
- "expanded": cache the expanded per-head keys and values, like standard attention (the
  memory MLA exists to save; kept for the benchmark).

Parameter names (transformers' in brackets): q_proj, or q_down_proj [q_a_proj], q_norm
[q_a_layernorm], q_up_proj [q_b_proj]; kv_down_proj [kv_a_proj_with_mqa] (makes c and the
shared rope key together); kv_norm [kv_a_layernorm]; kv_up_proj [kv_b_proj] (W_UK and W_UV of
every head: rows per head [head_dim key rows, value_head_dim value rows]); o_proj.

Shapes: x (B, T, embed_dim) -> (B, T, embed_dim)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from olm_edu.choices import checked_choice
from olm_edu.nn.attention import IMPLEMENTATIONS, attend, attention_mask
from olm_edu.nn.blocks import Context
from olm_edu.nn.indexer import LightningIndexer
from olm_edu.nn.norms import RMSNorm
from olm_edu.nn.positions import RotaryEmbedding, apply_rotary, validate_rope_scaling

__all__ = ["LatentAttention", "MLA_MODES", "mla_softmax_scale"]

MLA_MODES = ("naive", "absorbed", "expanded")


def mla_softmax_scale(qk_head_dim: int, rope_scaling: dict[str, Any] | None, max_seq_len: int) -> float:
    """1 / sqrt(qk_head_dim), times mscale(factor, mscale_all_dim)^2 for a scaled RoPE that sets
    mscale_all_dim, where mscale(s, m) = 0.1 m ln(s) + 1 for s > 1 (else 1): DeepSeek's YaRN
    correction of the softmax temperature (as transformers' `yarn_apply_mscale`)."""
    scale = qk_head_dim**-0.5
    if validate_rope_scaling(rope_scaling) == "default" or not rope_scaling.get("mscale_all_dim"):
        return scale
    factor = rope_scaling["factor"]
    if factor is None:  # DeepSeek style: the stretch is implied by the two lengths
        factor = max_seq_len / rope_scaling["original_max_position_embeddings"]
    mscale = 1.0 if factor <= 1 else 0.1 * rope_scaling["mscale_all_dim"] * math.log(factor) + 1.0
    return scale * mscale * mscale


class LatentAttention(nn.Module):
    """Multi-head latent attention with decoupled RoPE and a latent KV cache (see the module doc).

    head_dim: the content part of each query and key (qk_nope_head_dim); rope_head_dim: the
    rotated part (qk_rope_head_dim); value_head_dim (v_head_dim): None means head_dim.
    bias: on the down-projections (transformers' attention_bias); out_bias: on o_proj
    (None: = bias). latent_norm_eps: the eps of the two latent RMSNorms (transformers and
    DeepSeek's code use 1e-6 there whatever rms_norm_eps says).
    """

    uses_context = True

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        kv_latent_dim: int,
        rope_head_dim: int,
        head_dim: int | None = None,
        q_latent_dim: int | None = None,
        value_head_dim: int | None = None,
        bias: bool = False,
        out_bias: bool | None = None,
        causal: bool = True,
        rope_theta: float = 10_000.0,
        rope_scaling: dict | None = None,
        rope_layout: str = "interleaved",
        max_seq_len: int = 2048,
        latent_norm_eps: float = 1e-6,
        dropout: float = 0.0,
        implementation: str = "sdpa",
        mode: str = "naive",
        layer_index: int = 0,
        index_topk: int | None = None,
        index_heads: int | None = None,
        index_head_dim: int | None = None,
    ):
        super().__init__()
        if head_dim is None:
            if embed_dim % num_heads:
                raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads} (or set head_dim)")
            head_dim = embed_dim // num_heads
        if rope_head_dim % 2:
            raise ValueError(f"RoPE rotates pairs of dimensions: rope_head_dim={rope_head_dim} must be even")
        value_head_dim = head_dim if value_head_dim is None else value_head_dim
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim, self.rope_head_dim, self.value_head_dim = head_dim, rope_head_dim, value_head_dim
        self.q_latent_dim, self.kv_latent_dim = q_latent_dim, kv_latent_dim
        self.causal, self.dropout, self.layer_index = causal, dropout, layer_index
        self.implementation, self.mode = implementation, mode  # validated by the setters
        qk_head_dim = head_dim + rope_head_dim

        if q_latent_dim is None:
            self.q_proj = nn.Linear(embed_dim, num_heads * qk_head_dim, bias=False)
        else:
            self.q_down_proj = nn.Linear(embed_dim, q_latent_dim, bias=bias)
            self.q_norm = RMSNorm(q_latent_dim, latent_norm_eps)
            self.q_up_proj = nn.Linear(q_latent_dim, num_heads * qk_head_dim, bias=False)
        self.kv_down_proj = nn.Linear(embed_dim, kv_latent_dim + rope_head_dim, bias=bias)
        self.kv_norm = RMSNorm(kv_latent_dim, latent_norm_eps)
        self.kv_up_proj = nn.Linear(kv_latent_dim, num_heads * (head_dim + value_head_dim), bias=False)
        self.o_proj = nn.Linear(num_heads * value_head_dim, embed_dim, bias=bias if out_bias is None else out_bias)

        self.rope_layout = rope_layout
        self.rotary = RotaryEmbedding(rope_head_dim, rope_theta, rope_scaling, max_seq_len, layout=rope_layout)
        self.scale = mla_softmax_scale(qk_head_dim, rope_scaling, max_seq_len)
        self.indexer = None
        if index_topk is not None:
            if q_latent_dim is None or index_heads is None or index_head_dim is None:
                raise ValueError(
                    "top-k selection (index_topk) needs q_latent_dim, index_heads and index_head_dim: the indexer "
                    "reads the query latent"
                )
            self.indexer = LightningIndexer(
                embed_dim, q_latent_dim, index_heads, index_head_dim, rope_head_dim, index_topk,
                rope_theta=rope_theta, rope_scaling=rope_scaling, max_seq_len=max_seq_len, layer_index=layer_index,
            )  # fmt: skip

    implementation = checked_choice("implementation", IMPLEMENTATIONS)
    mode = checked_choice("mode", MLA_MODES)

    def forward(self, x: torch.Tensor, context: Context | None = None) -> torch.Tensor:
        batch, length, _ = x.shape
        positions = context.positions if context is not None else torch.arange(length, device=x.device)
        cache = context.cache if context is not None else None
        heads, content, rope = self.num_heads, self.head_dim, self.rope_head_dim

        if self.q_latent_dim is None:
            q_latent, q = None, self.q_proj(x)
        else:
            q_latent = self.q_norm(self.q_down_proj(x))  # (B, T, r_q)
            q = self.q_up_proj(q_latent)
        q = q.view(batch, length, heads, content + rope).transpose(1, 2)  # (B, H, T, d + d_R)
        q_content, q_rope = q.split([content, rope], dim=-1)

        latent, k_rope = self.kv_down_proj(x).split([self.kv_latent_dim, rope], dim=-1)
        latent = self.kv_norm(latent)[:, None]  # (B, 1, T, d_c): one latent per token, for all heads
        k_rope = k_rope[:, None]  # (B, 1, T, d_R): one rotated key per token, shared by all heads
        cos, sin = self.rotary(positions, dtype=q.dtype)
        q_rope = apply_rotary(q_rope, cos, sin, self.rope_layout)
        k_rope = apply_rotary(k_rope, cos, sin, self.rope_layout)

        key_positions = positions
        if self.mode == "expanded":
            k, v = self._expand(latent, k_rope)
            if cache is not None:
                k, v, key_positions = cache.update(self.layer_index, k, v, positions)
        elif cache is not None:
            latent, k_rope, key_positions = cache.update_latent(self.layer_index, latent, k_rope, positions)

        allowed = attention_mask(positions, key_positions, self.causal)  # (T, T_k)
        if self.indexer is not None:  # each query keeps its top-k keys: (B, 1, T, T_k), for all heads
            selected = self.indexer(x, q_latent, positions, allowed, cache)[:, None]
            allowed = selected if allowed is None else allowed & selected
        options = dict(
            scale=self.scale, implementation=self.implementation, dropout=self.dropout if self.training else 0.0,
            is_causal=cache is None and self.causal and self.indexer is None,
        )
        if self.mode == "absorbed":
            out = self._absorbed(q_content, q_rope, latent, k_rope, allowed, options)
        else:
            if self.mode == "naive":
                k, v = self._expand(latent, k_rope)
            out = attend(torch.cat([q_content, q_rope], dim=-1), k, v, allowed, **options)  # (B, H, T, d_v)
        out = out.transpose(1, 2).reshape(batch, length, heads * self.value_head_dim)
        return self.o_proj(out)

    def _up_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK (H, head_dim, d_c) and W_UV (H, value_head_dim, d_c), views of kv_up_proj."""
        weight = self.kv_up_proj.weight.view(self.num_heads, self.head_dim + self.value_head_dim, self.kv_latent_dim)
        return weight.split([self.head_dim, self.value_head_dim], dim=1)

    def _expand(self, latent: torch.Tensor, k_rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents (B, 1, T, d_c) and rotated keys (B, 1, T, d_R) -> every head's keys
        (B, H, T, d + d_R) and values (B, H, T, d_v)."""
        batch, _, length, _ = latent.shape
        kv = self.kv_up_proj(latent[:, 0]).view(batch, length, self.num_heads, -1).transpose(1, 2)
        k_content, v = kv.split([self.head_dim, self.value_head_dim], dim=-1)
        k = torch.cat([k_content, k_rope.expand(-1, self.num_heads, -1, -1)], dim=-1)
        return k, v

    def _absorbed(self, q_content, q_rope, latent, k_rope, allowed, options) -> torch.Tensor:
        """Attention over the latents: q^C W_UK scores against c, the output goes through W_UV.

        Every head attends with the same key [c, k^R] and value c: multi-query attention. So the
        heads' queries are stacked as the queries of one head (H * T of them), and nothing of
        the cache is copied per head.

        q_content (B, H, T, d), q_rope (B, H, T, d_R), latent (B, 1, T_k, d_c),
        k_rope (B, 1, T_k, d_R) -> (B, H, T, d_v)
        """
        batch, heads, length, _ = q_content.shape
        key_weight, value_weight = self._up_weights()
        q_latent = q_content @ key_weight  # (B, H, T, d_c): the query, moved into latent space
        query = torch.cat([q_latent, q_rope], dim=-1).reshape(batch, 1, heads * length, -1)  # (B, 1, H T, d_c + d_R)
        key = torch.cat([latent, k_rope], dim=-1)  # (B, 1, T_k, d_c + d_R)
        if allowed is not None:  # (.., H T, T_k): the same mask for every head
            allowed = allowed.repeat(*[1] * (allowed.dim() - 2), heads, 1)
        out_latent = attend(query, key, latent, allowed, **{**options, "is_causal": False})  # (B, 1, H T, d_c)
        out_latent = out_latent.view(batch, heads, length, -1)
        return out_latent @ value_weight.transpose(1, 2)  # (B, H, T, d_v)

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, head_dim={self.head_dim}, rope_head_dim={self.rope_head_dim}, "
            f"value_head_dim={self.value_head_dim}, q_latent_dim={self.q_latent_dim}, "
            f"kv_latent_dim={self.kv_latent_dim}, mode={self.mode!r}, index_topk={self.indexer and self.indexer.topk}, implementation={self.implementation!r}"
        )
