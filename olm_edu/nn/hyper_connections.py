"""Manifold-constrained hyper-connections (mHC, DeepSeek-V4): a residual stream widened to n streams.

A plain residual block computes x + f(x): one stream, added to. Hyper-connections keep n
streams (hc_mult = 4 in DeepSeek-V4) per token, X of shape (n, d), and each block

    reads      u = sum_i pre_i X_i                     one input for f, a weighted mix of the streams
    writes     X' = post (x) f(norm(u)) + C^T X        f's output spread over the streams (post_i
                                                       f(..)), plus the old streams mixed by C (n, n)

pre (n), post (n) and C (n, n) are computed from the streams themselves, per token, by one
small linear map of the RMS-normalised, flattened streams (weights `fn`, biases `base`, and one
learned scale for each of the three):

    pre  = sigmoid(a_pre * s_pre + b_pre) + eps
    post = 2 * sigmoid(a_post * s_post + b_post)
    C    = SinkhornKnopp(softmax(a_C * s_C + b_C) + eps)

With a free C the streams could grow or shrink without bound across a deep stack. The
"manifold constraint" projects C onto (nearly) doubly-stochastic matrices, rows and columns
each summing to 1, by alternately normalising columns and rows (Sinkhorn–Knopp). A doubly
stochastic C is a convex mix of permutations: C^T X averages the streams, so it can neither
amplify the residual signal nor lose its total (sum_i (C^T X)_i = sum_i X_i).

At the bottom the token's embedding is copied into every stream; at the top `HyperHead`
folds the streams back into one with its own sigmoid weights, before the final norm.

Parameter names follow transformers' DeepseekV4HyperConnection (fn, base, scale) and
DeepseekV4HyperHead (hc_fn, hc_base, hc_scale).

Shapes: streams (B, T, n, d)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from olm_edu.nn.blocks import Block, Context, _run

__all__ = ["sinkhorn_knopp", "HyperConnection", "HyperResidual", "HyperHead", "unit_rms", "widen"]


def unit_rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) over the last dim: RMSNorm without a weight."""
    return x * torch.rsqrt(x.float().square().mean(-1, keepdim=True) + eps).to(x.dtype)


def sinkhorn_knopp(matrix: torch.Tensor, iterations: int, eps: float = 1e-6) -> torch.Tensor:
    """Project positive (..., n, n) matrices towards doubly stochastic ones.

    Columns are normalised first, then `iterations - 1` rounds of rows-then-columns (DeepSeek-V4's
    order: the result's columns sum to 1 exactly, its rows nearly). eps keeps the divisions safe.
    """
    if iterations < 1:
        raise ValueError(f"iterations={iterations} must be at least 1")
    matrix = matrix / (matrix.sum(dim=-2, keepdim=True) + eps)
    for _ in range(iterations - 1):
        matrix = matrix / (matrix.sum(dim=-1, keepdim=True) + eps)
        matrix = matrix / (matrix.sum(dim=-2, keepdim=True) + eps)
    return matrix


class HyperConnection(nn.Module):
    """The per-token weights of one hyper-connection: (pre, post, C) from the streams.

    Shapes: streams (B, T, n, d) -> pre (B, T, n), post (B, T, n), mix (B, T, n, n), all float32
    """

    def __init__(self, embed_dim: int, streams: int, *, sinkhorn_iters: int = 20, eps: float = 1e-6, norm_eps: float = 1e-6):
        super().__init__()
        self.streams, self.sinkhorn_iters, self.eps, self.norm_eps = streams, sinkhorn_iters, eps, norm_eps
        self.fn = nn.Parameter(torch.empty((2 + streams) * streams, streams * embed_dim))
        self.base = nn.Parameter(torch.zeros((2 + streams) * streams))
        self.scale = nn.Parameter(torch.ones(3))
        nn.init.normal_(self.fn, std=0.02)

    def forward(self, streams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = self.streams
        flat = unit_rms(streams.flatten(-2).float(), self.norm_eps)  # (B, T, n d)
        a_pre, a_post, a_mix = F.linear(flat, self.fn.float()).split([n, n, n * n], dim=-1)
        b_pre, b_post, b_mix = self.base.split([n, n, n * n])
        s_pre, s_post, s_mix = self.scale.unbind(0)
        pre = torch.sigmoid(a_pre * s_pre + b_pre) + self.eps
        post = 2 * torch.sigmoid(a_post * s_post + b_post)
        mix = torch.softmax(a_mix.unflatten(-1, (n, n)) * s_mix + b_mix.view(n, n), dim=-1) + self.eps
        return pre, post, sinkhorn_knopp(mix, self.sinkhorn_iters, self.eps)

    def extra_repr(self) -> str:
        return f"streams={self.streams}, sinkhorn_iters={self.sinkhorn_iters}"


class HyperResidual(Block):
    """The residual of a hyper-connected block: X' = post (x) body(u) + C^T X, u = sum_i pre_i X_i.

    Built like `Residual`, by keyword: HyperResidual(connection=HyperConnection(...), norm=...,
    attention=...); the layers other than `connection` form the body, which sees one (B, T, d)
    input as in a plain residual block (so parameter names match a plain model's).

    Shapes: streams (B, T, n, d) -> (B, T, n, d)
    """

    def forward(self, streams: torch.Tensor, context: Context | None = None) -> torch.Tensor:
        pre, post, mix = self.connection(streams)
        x = (pre[..., None] * streams).sum(dim=-2).to(streams.dtype)  # (B, T, d): what the body reads
        for name, layer in self.named_children():
            if name != "connection":
                x = _run(layer, x, context)
        # sum_j mix[j, k] X_j: the old streams mixed by C^T, plus the body's output spread by post
        return post.to(streams.dtype)[..., None] * x[..., None, :] + mix.to(streams.dtype).transpose(-1, -2) @ streams


class HyperHead(nn.Module):
    """Fold the streams back into one: sum_i w_i X_i with w = sigmoid(a * s + b) + eps per token.

    Shapes: streams (B, T, n, d) -> (B, T, d)
    """

    def __init__(self, embed_dim: int, streams: int, *, eps: float = 1e-6, norm_eps: float = 1e-6):
        super().__init__()
        self.eps, self.norm_eps = eps, norm_eps
        self.hc_fn = nn.Parameter(torch.empty(streams, streams * embed_dim))
        self.hc_base = nn.Parameter(torch.zeros(streams))
        self.hc_scale = nn.Parameter(torch.ones(1))
        nn.init.normal_(self.hc_fn, std=0.02)

    def forward(self, streams: torch.Tensor) -> torch.Tensor:
        flat = unit_rms(streams.flatten(-2).float(), self.norm_eps)
        weights = torch.sigmoid(F.linear(flat, self.hc_fn.float()) * self.hc_scale.float() + self.hc_base.float()) + self.eps
        return (weights[..., None] * streams).sum(dim=-2).to(streams.dtype)


def widen(x: torch.Tensor, streams: int) -> torch.Tensor:
    """(B, T, d) -> (B, T, n, d): the embedding copied into every stream."""
    return x[..., None, :].expand(*x.shape[:-1], streams, x.shape[-1]).contiguous()

