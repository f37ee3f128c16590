"""The lightning indexer (DeepSeek-V3.2's DeepSeek Sparse Attention): choose the keys each query reads.

Full attention makes every query read every earlier key: O(T) work per token, O(T^2) per
sequence. DeepSeek-V3.2 keeps latent attention but lets a small, cheap scorer pick, for each
query t, the top-k earlier tokens; attention then reads only those k (2048 in V3.2), so the
attention proper costs O(k) per token however long the context.

The scorer has its own few heads (index_n_heads = 64 of width index_head_dim = 128 in V3.2,
against attention's 128 heads of 192) and one shared key per token, like multi-query attention:

    q_{t,h} = W^I_{Q,h} c^Q_t                   from the attention's own query latent c^Q_t
    k_s     = LayerNorm(W^I_K x_s)              one key per token, shared by the heads (cached)
    w_{t,h} = (W^I_w x_t)_h / sqrt(H_I)         a per-query weight for each head
    I(t, s) = sum_h w_{t,h} * ReLU(q_{t,h} . k_s / sqrt(d_I))

RoPE rotates the first rope_head_dim dimensions of q and k, in the *half* layout (rotate_half),
with the attention's frequencies (its YaRN attention factor included), though the latent
attention itself uses the interleaved layout; the other dimensions carry content only.
Query t keeps the top-k keys s <= t by I(t, s) (all of them while t + 1 <= k); ties between
equal scores go as torch.topk breaks them.

ReLU instead of softmax: a head either votes for a key or abstains, and the votes are summed
with learned, query-dependent weights. The top-k choice is discrete, so the language-modelling
loss sends no gradient into the indexer; DeepSeek trains it with its own loss (the KL divergence
to the main attention's distribution), which this module leaves to the training loop. It runs
under no_grad, as transformers' does.

Parameter names (transformers' in brackets): q_up_proj [wq_b], k_proj [wk], k_norm [k_norm],
head_weights [weights_proj].

Shapes: x (B, T, embed_dim), q_latent (B, T, q_latent_dim) -> selected (B, T, T_k) bool
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from olm_edu.nn.positions import RotaryEmbedding, apply_rotary

__all__ = ["LightningIndexer", "top_k_mask"]


def top_k_mask(scores: torch.Tensor, k: int, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """True at the k highest scores of each row, among the `allowed` ones.

    Rows with fewer than k allowed entries get all of them (and some disallowed ones, which the
    caller's `allowed` mask removes again). Shapes: scores (..., T_q, T_k), allowed broadcastable
    to it -> (..., T_q, T_k) bool
    """
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    k = min(k, scores.shape[-1])
    chosen = scores.topk(k, dim=-1).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, chosen, True)


class LightningIndexer(nn.Module):
    """Scores every (query, key) pair with a few ReLU heads and keeps each query's top-k keys.

    q_latent_dim: the width of the attention's query latent the indexer reads its queries from;
    num_heads, head_dim: the indexer's heads (index_n_heads, index_head_dim); rope_head_dim: how
    many of each head's dimensions RoPE rotates (the attention's qk_rope_head_dim); topk: keys
    kept per query (index_topk). rope_theta, rope_scaling, max_seq_len: the attention's RoPE.
    """

    def __init__(
        self,
        embed_dim: int,
        q_latent_dim: int,
        num_heads: int,
        head_dim: int,
        rope_head_dim: int,
        topk: int,
        *,
        rope_theta: float = 10_000.0,
        rope_scaling: dict | None = None,
        max_seq_len: int = 2048,
        norm_eps: float = 1e-6,
        layer_index: int = 0,
    ):
        super().__init__()
        if not 0 < rope_head_dim <= head_dim:
            raise ValueError(f"the indexer rotates rope_head_dim={rope_head_dim} of its head_dim={head_dim} dims")
        if topk < 1:
            raise ValueError(f"topk={topk} must be at least 1")
        self.num_heads, self.head_dim, self.rope_head_dim, self.topk = num_heads, head_dim, rope_head_dim, topk
        self.layer_index = layer_index
        self.q_up_proj = nn.Linear(q_latent_dim, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(embed_dim, head_dim, bias=False)
        self.k_norm = nn.LayerNorm(head_dim, eps=norm_eps)
        self.head_weights = nn.Linear(embed_dim, num_heads, bias=False)
        self.rotary = RotaryEmbedding(rope_head_dim, rope_theta, rope_scaling, max_seq_len, layout="half")

    @torch.no_grad()
    def scores(
        self, x: torch.Tensor, q_latent: torch.Tensor, positions: torch.Tensor, cache: object | None = None
    ) -> torch.Tensor:
        """I(t, s) for every query t of x and every key s (the cached ones first, then x's own).

        Shapes: x (B, T, d), q_latent (B, T, r_q), positions (T,) -> (B, T, T_k) float32
        """
        batch, length, _ = x.shape
        q = self.q_up_proj(q_latent).view(batch, length, self.num_heads, self.head_dim)  # (B, T, H_I, d_I)
        k = self.k_norm(self.k_proj(x))[:, None]  # (B, 1, T, d_I): one key per token
        cos, sin = self.rotary(positions, dtype=q.dtype)
        q = apply_rotary(q.transpose(1, 2), cos, sin, "half").transpose(1, 2)
        k = apply_rotary(k, cos, sin, "half")[:, 0]  # (B, T, d_I)
        if cache is not None:
            k = cache.update_extra(self.layer_index, "index_keys", k)  # (B, T_k, d_I)
        dots = q.float() @ k.float().transpose(-1, -2)[:, None]  # (B, T, H_I, T_k)
        votes = F.relu(dots * self.head_dim**-0.5)
        weights = self.head_weights(x).float() * self.num_heads**-0.5  # (B, T, H_I)
        return (weights[..., None, :] @ votes).squeeze(-2)  # (B, T, T_k): the heads' weighted votes

    def forward(
        self,
        x: torch.Tensor,
        q_latent: torch.Tensor,
        positions: torch.Tensor,
        allowed: torch.Tensor | None,
        cache: object | None = None,
    ) -> torch.Tensor:
        """(B, T, T_k) bool: True where query t keeps key s (its top-k among the `allowed` keys)."""
        return top_k_mask(self.scores(x, q_latent, positions, cache), self.topk, allowed)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, rope_head_dim={self.rope_head_dim}, topk={self.topk}"
