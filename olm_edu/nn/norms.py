"""Normalisation layers: LayerNorm (GPT-2) and RMSNorm (Llama, Qwen, Mistral; Gemma's variant).

LayerNorm centres and scales each vector, then applies a learned gain and bias:

    y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias

RMSNorm skips the centring and the bias, dividing by the root mean square only:

    y = x / sqrt(mean(x**2) + eps) * weight

Where the cast back to the input dtype happens matters in bf16, and the two families differ:
- Llama: normalise in float32, cast back to the input dtype, *then* multiply by `weight`;
- Gemma: multiply by `(1 + weight)` in float32 (the weight is stored as an offset from 1, so a
  freshly initialised layer holds zeros), and cast at the very end.

Shapes: x (..., dim) -> (..., dim)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from olm_edu.choices import check_choice

__all__ = ["LayerNorm", "RMSNorm", "make_norm"]


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension, with an optional bias (GPT-2 has one)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, bias={self.bias is not None}"


class RMSNorm(nn.Module):
    """Root-mean-square normalisation (Llama, Qwen, Mistral), or Gemma's `(1 + weight)` variant.

    convention="llama": y = (x / rms(x)).to(x.dtype) * weight, computed in float32 and cast back
    before the weight is applied; the weight starts at 1.
    convention="gemma": y = (x / rms(x) * (1 + weight)).to(x.dtype), cast at the end; the weight
    starts at 0.
    learnable=False: no weight at all, y = (x / rms(x)).to(x.dtype) (Llama 4's QK-norm, which
    transformers calls Llama4TextL2Norm: an L2 normalisation scaled by sqrt(dim)).

    Shapes: x (..., dim) -> (..., dim)
    """

    def __init__(self, dim: int, eps: float = 1e-6, convention: str = "llama", learnable: bool = True):
        super().__init__()
        check_choice("convention", convention, ("llama", "gemma"))
        self.dim, self.eps, self.convention = dim, eps, convention
        self.weight = None
        if learnable:
            self.weight = nn.Parameter(torch.ones(dim) if convention == "llama" else torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is None:
            return normed.to(x.dtype)
        if self.convention == "llama":
            return self.weight * normed.to(x.dtype)
        return (normed * (1.0 + self.weight.float())).to(x.dtype)

    def extra_repr(self) -> str:
        if self.weight is None:
            return f"{self.dim}, eps={self.eps}, learnable=False"
        return f"{self.dim}, eps={self.eps}, convention={self.convention!r}"


def make_norm(kind: str, dim: int, eps: float, bias: bool = False) -> nn.Module:
    """The norm named by a config: "layernorm", "rmsnorm" (Llama) or "rmsnorm_gemma"."""
    check_choice("norm", kind, ("layernorm", "rmsnorm", "rmsnorm_gemma"))
    if kind == "layernorm":
        return LayerNorm(dim, eps, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps, convention="llama")
    return RMSNorm(dim, eps, convention="gemma")
