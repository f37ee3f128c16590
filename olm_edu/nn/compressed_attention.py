"""DeepSeek-V4's attention: one shared key-value head, a sliding window, and compressed long-range entries.

Every layer attends, per query, over two sets of entries:
- the last `sliding_window` tokens (128 in V4), each one key that is also its value
  (multi-query attention with K = V: one head of head_dim = 512 serves all query heads);
- `compressed` entries that summarise the older context, in two kinds of layer:
    "heavily_compressed_attention" (HCA): one entry per 128 tokens, every query reads all of
        the entries whose block is complete;
    "compressed_sparse_attention" (CSA): one entry per 4 tokens (blocks of 8 overlapping by 4),
        and each query reads only the index_topk (512) entries a lightning indexer scores
        highest: sparse attention over a compressed sequence;
  "sliding_attention" layers have no compressed entries.

A compressed entry is a softmax-gated average of its block's tokens (`KVCompressor`):

    C_j = W_kv x_j,  Z_j = W_z x_j + B_pos(j mod m)          per token, and a learned bias per slot
    entry_w = RMSNorm( sum_{j in block w} softmax_j(Z_j) * C_j )      (the softmax is per channel)

CSA's blocks overlap: each token contributes two series, Ca (to the next block) and Cb (to its
own), so entry w averages the 2m slots [Ca of block w - 1, Cb of block w]. The entry is rotated
at the position of its block's first token (w * m) and is causal: query t may read entry w only
when the whole block is in its past, w < (t + 1) // m.

Positions: RoPE rotates the *last* rope_head_dim dimensions of each head (interleaved pairs).
Sliding layers use rope_theta; compressed layers (and their compressor and indexer) use
compress_rope_theta with the YaRN scaling of the config, whose attention factor is held at 1.
Because K = V, the values carry the rotation too; the output's rotated slice is rotated back
by the query's position (RoPE with -sin), so what a key contributes depends only on its
distance to the query.

The rest:
- queries come through a latent, as in MLA: q = RMSNorm_unweighted(W_UQ RMSNorm(W_DQ x)) per head;
- a learned sink per head (gpt-oss style): a logit that joins the softmax and takes weight
  away from every entry but contributes no value;
- the output projection is grouped and low-rank: the H heads are split in o_groups groups, each
  group's (H / g) * head_dim outputs go through their own (o_latent_dim x ...) matrix, and one
  matrix mixes the g * o_latent_dim results into embed_dim.

Cache per layer: the window's keys, the compressed entries (one per m tokens: 1/4 of the tokens
in CSA, 1/128 in HCA) and, for CSA, the indexer's compressed keys; plus the tokens of the block
still being filled (at most m - 1) and the previous block's Ca series (see `KVCompressor`).

Parameter names (transformers' in brackets): q_down_proj [q_a_proj], q_norm [q_a_norm],
q_up_proj [q_b_proj], kv_proj, kv_norm, o_down_proj [o_a_proj], o_proj [o_b_proj], sinks,
compressor.{kv_proj, gate_proj, position_bias, kv_norm}, indexer.{q_up_proj [q_b_proj],
head_weights [scorer.weights_proj], compressor.*} [compressor.indexer.*].

Shapes: x (B, T, embed_dim) -> (B, T, embed_dim)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from olm_edu.choices import check_choice
from olm_edu.nn.attention import attend, attention_mask
from olm_edu.nn.blocks import Context
from olm_edu.nn.hyper_connections import unit_rms
from olm_edu.nn.indexer import top_k_mask
from olm_edu.nn.norms import RMSNorm
from olm_edu.nn.positions import RotaryEmbedding, apply_rotary

__all__ = ["CompressedAttention", "KVCompressor", "CompressedIndexer", "COMPRESSIONS", "rotate_trailing", "complete_blocks"]

# layer type -> the compression of its long-range entries
COMPRESSIONS = {
    "sliding_attention": None,
    "compressed_sparse_attention": "sparse",
    "heavily_compressed_attention": "heavy",
}


def rotate_trailing(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Interleaved RoPE on the last cos.shape[-1] dims of x; the leading dims pass unchanged.

    Shapes: x (B, H, T, d), cos/sin (T, r) or (B, T, r) -> (B, H, T, d)
    """
    rotary_dim = cos.shape[-1]
    return torch.cat([x[..., :-rotary_dim], apply_rotary(x[..., -rotary_dim:], cos, sin, "interleaved")], dim=-1)


class KVCompressor(nn.Module):
    """One entry per block of `rate` tokens: a softmax-gated, normalised, rotated average.

    overlap=True (CSA): each token projects to two series of `width`, Ca and Cb, and entry w
    averages Ca of block w - 1 with Cb of block w (2 * rate slots; block 0 has no Ca, its
    slots get weight 0). Returns every entry made so far (the cached ones first); with a cache,
    tokens of an unfinished block wait in the cache until their block is complete.

    Shapes: x (B, T, embed_dim) -> entries (B, C, width)
    """

    def __init__(
        self,
        embed_dim: int,
        width: int,
        rate: int,
        *,
        overlap: bool,
        rotary: RotaryEmbedding,
        norm_eps: float = 1e-6,
        name: str = "compressor",
        layer_index: int = 0,
    ):
        super().__init__()
        if rate < 1:
            raise ValueError(f"rate={rate} must be at least 1")
        series = 2 if overlap else 1
        self.width, self.rate, self.overlap, self.name, self.layer_index = width, rate, overlap, name, layer_index
        self.kv_proj = nn.Linear(embed_dim, series * width, bias=False)
        self.gate_proj = nn.Linear(embed_dim, series * width, bias=False)
        self.position_bias = nn.Parameter(torch.zeros(rate, series * width))
        self.kv_norm = RMSNorm(width, norm_eps)
        self.rotary = rotary

    def forward(self, x: torch.Tensor, cache: object | None = None) -> torch.Tensor:
        batch, width, rate = x.shape[0], self.width, self.rate
        kv, gate = self.kv_proj(x), self.gate_proj(x)  # (B, T, series * width)
        state = cache.extras[self.layer_index] if cache is not None else {}
        key = f"{self.name}.".__add__
        first_position = 0
        if cache is not None:
            first_position = 0 if key("entries") not in state else state[key("entries")].shape[1] * rate
            if key("buffer_kv") in state:  # the tokens of the unfinished block, from earlier calls
                kv, gate = torch.cat([state[key("buffer_kv")], kv], 1), torch.cat([state[key("buffer_gate")], gate], 1)
        usable = kv.shape[1] // rate * rate
        if cache is not None:
            state[key("buffer_kv")], state[key("buffer_gate")] = kv[:, usable:], gate[:, usable:]
        windows = usable // rate
        if windows:
            kv = kv[:, :usable].view(batch, windows, rate, -1)  # (B, W, m, series * width)
            gate = gate[:, :usable].view(batch, windows, rate, -1) + self.position_bias
            if self.overlap:
                kv, gate = self._overlapping(kv, gate, state if cache is not None else None, key)
            weights = gate.softmax(dim=2, dtype=torch.float32).to(kv.dtype)  # over each block's slots
            entries = self.kv_norm((kv * weights).sum(dim=2))  # (B, W, width)
            positions = torch.arange(windows, device=x.device) * rate + first_position
            cos, sin = self.rotary(positions, dtype=entries.dtype)
            entries = rotate_trailing(entries[:, None], cos, sin)[:, 0]
        else:
            entries = x.new_zeros(batch, 0, width)
        if cache is not None:
            entries = cache.update_extra(self.layer_index, key("entries"), entries)
        return entries

    def _overlapping(self, kv: torch.Tensor, gate: torch.Tensor, state: dict | None, key) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, W, m, 2 width) Ca|Cb -> (B, W, 2m, width): [Ca of block w - 1, Cb of block w].
        state: the layer's cache entries (None without a cache), which carry the last Ca across calls."""
        batch, windows, rate, _ = kv.shape
        width = self.width
        slots_kv = kv.new_zeros(batch, windows, 2 * rate, width)
        slots_gate = gate.new_full((batch, windows, 2 * rate, width), float("-inf"))  # empty slots: weight 0
        slots_kv[:, :, rate:], slots_gate[:, :, rate:] = kv[..., width:], gate[..., width:]
        slots_kv[:, 1:, :rate], slots_gate[:, 1:, :rate] = kv[:, :-1, :, :width], gate[:, :-1, :, :width]
        if state is not None:
            if key("overlap_kv") in state:  # block 0's Ca comes from the last block of an earlier call
                slots_kv[:, 0, :rate], slots_gate[:, 0, :rate] = state[key("overlap_kv")], state[key("overlap_gate")]
            state[key("overlap_kv")], state[key("overlap_gate")] = kv[:, -1, :, :width], gate[:, -1, :, :width]
        return slots_kv, slots_gate

    def extra_repr(self) -> str:
        return f"width={self.width}, rate={self.rate}, overlap={self.overlap}"


class CompressedIndexer(nn.Module):
    """CSA's lightning indexer: scores each query against compressed keys of its own, keeps the top-k.

    As DeepSeek-V3.2's (olm_edu.nn.indexer), I(t, w) = sum_h w_{t,h} ReLU(q_{t,h} . k_w / sqrt(d_I)),
    with queries from the attention's query latent, but the keys are compressed entries (a
    `KVCompressor` of width index_head_dim over the same overlapping blocks), RoPE rotates the last
    rope_head_dim dims at compress_rope_theta, and a query may only pick complete blocks.

    Shapes: x (B, T, embed_dim), q_latent (B, T, q_latent_dim) -> selected (B, T, C) bool
    """

    def __init__(
        self,
        embed_dim: int,
        q_latent_dim: int,
        num_heads: int,
        head_dim: int,
        topk: int,
        rate: int,
        *,
        rotary: RotaryEmbedding,
        norm_eps: float = 1e-6,
        layer_index: int = 0,
    ):
        super().__init__()
        self.num_heads, self.head_dim, self.topk, self.rate = num_heads, head_dim, topk, rate
        self.compressor = KVCompressor(
            embed_dim, head_dim, rate, overlap=True, rotary=rotary, norm_eps=norm_eps, name="indexer", layer_index=layer_index
        )
        self.q_up_proj = nn.Linear(q_latent_dim, num_heads * head_dim, bias=False)
        self.head_weights = nn.Linear(embed_dim, num_heads, bias=False)

    def forward(
        self, x: torch.Tensor, q_latent: torch.Tensor, positions: torch.Tensor, cache: object | None = None
    ) -> torch.Tensor:
        batch, length, _ = x.shape
        keys = self.compressor(x, cache)  # (B, C, d_I)
        cos, sin = self.compressor.rotary(positions, dtype=keys.dtype)
        q = self.q_up_proj(q_latent).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        q = rotate_trailing(q, cos, sin).transpose(1, 2)  # (B, T, H_I, d_I)
        votes = F.relu(q.float() @ keys.float().transpose(-1, -2)[:, None]) * self.head_dim**-0.5  # (B, T, H_I, C)
        weights = self.head_weights(x).float() * self.num_heads**-0.5  # (B, T, H_I)
        scores = (votes * weights[..., None]).sum(dim=2)  # (B, T, C)
        complete = complete_blocks(positions, keys.shape[1], self.rate)  # (T, C)
        return top_k_mask(scores, self.topk, complete) & complete

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, topk={self.topk}, rate={self.rate}"


def complete_blocks(positions: torch.Tensor, entries: int, rate: int) -> torch.Tensor:
    """(T, C) bool: query at position t may read entry w (block [w m, (w + 1) m)) when w < (t + 1) // m."""
    return torch.arange(entries, device=positions.device)[None, :] < ((positions + 1) // rate)[:, None]


class CompressedAttention(nn.Module):
    """DeepSeek-V4's attention layer (see the module doc). layer_type: "sliding_attention",
    "compressed_sparse_attention" or "heavily_compressed_attention"."""

    uses_context = True

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        *,
        q_latent_dim: int,
        rope_head_dim: int,
        o_groups: int,
        o_latent_dim: int,
        sliding_window: int,
        layer_type: str = "sliding_attention",
        compress_rate: int | None = None,
        rope_theta: float = 10_000.0,
        compress_rope_theta: float = 160_000.0,
        rope_scaling: dict | None = None,
        max_seq_len: int = 2048,
        norm_eps: float = 1e-6,
        attention_sinks: bool = True,
        index_topk: int | None = None,
        index_heads: int | None = None,
        index_head_dim: int | None = None,
        layer_index: int = 0,
    ):
        super().__init__()
        check_choice("layer_type", layer_type, tuple(COMPRESSIONS))
        if (num_heads * head_dim) % o_groups:
            raise ValueError(f"num_heads * head_dim = {num_heads * head_dim} must be divisible by o_groups={o_groups}")
        if not 0 < rope_head_dim <= head_dim:
            raise ValueError(f"rope_head_dim={rope_head_dim} must be in (0, head_dim={head_dim}]")
        self.num_heads, self.head_dim, self.o_groups = num_heads, head_dim, o_groups
        self.sliding_window, self.layer_type, self.layer_index = sliding_window, layer_type, layer_index
        self.norm_eps = norm_eps
        self.compression = COMPRESSIONS[layer_type]

        self.q_down_proj = nn.Linear(embed_dim, q_latent_dim, bias=False)
        self.q_norm = RMSNorm(q_latent_dim, norm_eps)
        self.q_up_proj = nn.Linear(q_latent_dim, num_heads * head_dim, bias=False)
        self.kv_proj = nn.Linear(embed_dim, head_dim, bias=False)
        self.kv_norm = RMSNorm(head_dim, norm_eps)
        # grouped low-rank output: o_groups blocks of (o_latent_dim, num_heads * head_dim / o_groups)
        self.o_down_proj = nn.Linear(num_heads * head_dim // o_groups, o_groups * o_latent_dim, bias=False)
        self.o_proj = nn.Linear(o_groups * o_latent_dim, embed_dim, bias=False)
        self.sinks = nn.Parameter(torch.zeros(num_heads)) if attention_sinks else None

        if self.compression is None:
            self.rotary = RotaryEmbedding(rope_head_dim, rope_theta, None, max_seq_len, layout="interleaved")
        else:  # compressed layers: their own base, and YaRN without its attention factor
            scaling = dict(rope_scaling) if rope_scaling else None
            if scaling and scaling.get("rope_type", scaling.get("type")) == "yarn":
                scaling.setdefault("attention_factor", 1.0)
            self.rotary = RotaryEmbedding(rope_head_dim, compress_rope_theta, scaling, max_seq_len, layout="interleaved")
        self.compressor = self.indexer = None
        if self.compression is not None:
            if compress_rate is None:
                raise ValueError(f"layer_type={layer_type!r} needs compress_rate")
            self.compressor = KVCompressor(
                embed_dim, head_dim, compress_rate, overlap=self.compression == "sparse", rotary=self.rotary,
                norm_eps=norm_eps, layer_index=layer_index,
            )  # fmt: skip
        if self.compression == "sparse":
            if index_topk is None or index_heads is None or index_head_dim is None:
                raise ValueError("compressed_sparse_attention needs index_topk, index_heads and index_head_dim")
            self.indexer = CompressedIndexer(
                embed_dim, q_latent_dim, index_heads, index_head_dim, index_topk, compress_rate,
                rotary=self.rotary, norm_eps=norm_eps, layer_index=layer_index,
            )  # fmt: skip

    def forward(self, x: torch.Tensor, context: Context | None = None) -> torch.Tensor:
        batch, length, _ = x.shape
        positions = context.positions if context is not None else torch.arange(length, device=x.device)
        cache = context.cache if context is not None else None
        cos, sin = self.rotary(positions, dtype=x.dtype)

        q_latent = self.q_norm(self.q_down_proj(x))  # (B, T, r_q)
        q = self.q_up_proj(q_latent).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        q = rotate_trailing(unit_rms(q, self.norm_eps), cos, sin)  # (B, H, T, d): each head normalised
        kv = rotate_trailing(self.kv_norm(self.kv_proj(x))[:, None], cos, sin)  # (B, 1, T, d): key = value

        key_positions = positions
        if cache is not None:  # K = V: the values slot holds nothing
            kv, _, key_positions = cache.update(self.layer_index, kv, kv[..., :0], positions, self.sliding_window)
        allowed = attention_mask(positions, key_positions, True, self.sliding_window)[None, None]  # (1, 1, T, T_k)
        if self.compressor is not None:
            entries = self.compressor(x, cache)  # (B, C, d)
            if self.indexer is not None:
                readable = self.indexer(x, q_latent, positions, cache)  # (B, T, C): the top-k complete blocks
            else:
                readable = complete_blocks(positions, entries.shape[1], self.compressor.rate).expand(batch, -1, -1)
            kv = torch.cat([kv, entries[:, None]], dim=2)
            allowed = torch.cat([allowed.expand(batch, -1, -1, -1), readable[:, None]], dim=-1)

        # the shared head broadcasts over the query heads; the mask differs per batch row (the
        # indexer's choice), which the explicit path takes as it is
        out = attend(q, kv, kv, allowed, scale=self.head_dim**-0.5, implementation="explicit", sinks=self.sinks)
        out = rotate_trailing(out, cos, -sin)  # undo the values' rotation at the query's position
        grouped = out.transpose(1, 2).reshape(batch, length, self.o_groups, -1)  # (B, T, g, H d / g)
        weight = self.o_down_proj.weight.view(self.o_groups, -1, grouped.shape[-1])  # (g, r_o, H d / g)
        low_rank = torch.einsum("btgi,goi->btgo", grouped, weight)  # (B, T, g, r_o): one matrix per group
        return self.o_proj(low_rank.flatten(2))

    def extra_repr(self) -> str:
        parts = [f"heads={self.num_heads}", f"head_dim={self.head_dim}", f"layer_type={self.layer_type!r}"]
        parts += [f"sliding_window={self.sliding_window}", f"o_groups={self.o_groups}", f"sinks={self.sinks is not None}"]
        return ", ".join(parts)
