"""Feed-forward networks: the classic MLP (GPT-2) and the gated one (SwiGLU, GeGLU).

Classic:  y = down(act(up(x)))                  two matrices, hidden width usually 4 * d
Gated:    y = down(act(gate(x)) * up(x))         three matrices

A gated FFN has three matrices instead of two, so to keep the parameter count of a 4d MLP its
hidden width is 2/3 of 4d = 8d/3, rounded up to a multiple of a hardware-friendly number
(`gated_hidden_dim`, the rule of Llama's reference code).

Shapes: x (..., embed_dim) -> (..., embed_dim)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from olm_edu.nn.activations import get_activation

__all__ = ["ClassicFFN", "GatedFFN", "SwiGLUFFN", "GeGLUFFN", "gated_hidden_dim"]


def gated_hidden_dim(embed_dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """Llama's width rule: 8d/3, times an optional multiplier, rounded up to `multiple_of`.

    Llama-3-8B: d=4096, multiplier 1.3, multiple 1024 -> 14336.
    """
    hidden = int(2 * (4 * embed_dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


class ClassicFFN(nn.Module):
    """up -> activation -> down (GPT-2's MLP, with biases)."""

    def __init__(self, embed_dim: int, hidden_dim: int | None = None, activation: str = "gelu_tanh", bias: bool = True):
        super().__init__()
        hidden_dim = 4 * embed_dim if hidden_dim is None else hidden_dim
        self.up_proj = nn.Linear(embed_dim, hidden_dim, bias=bias)
        self.down_proj = nn.Linear(hidden_dim, embed_dim, bias=bias)
        self.activation = activation
        self.act = get_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.up_proj(x)))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


class GatedFFN(nn.Module):
    """down(act(gate(x)) * up(x)): SwiGLU with "silu", GeGLU with "gelu" or "gelu_tanh".

    limit (DeepSeek-V4's swiglu_limit): clamp gate(x) to at most limit and up(x) to [-limit, limit]
    before they meet, so no activation can blow up in low precision. None: no clamp.
    """

    def __init__(
        self,
        embed_dim: int,
        hidden_dim: int | None = None,
        activation: str = "silu",
        bias: bool = False,
        limit: float | None = None,
    ):
        super().__init__()
        self.limit = limit
        hidden_dim = gated_hidden_dim(embed_dim) if hidden_dim is None else hidden_dim
        self.gate_proj = nn.Linear(embed_dim, hidden_dim, bias=bias)
        self.up_proj = nn.Linear(embed_dim, hidden_dim, bias=bias)
        self.down_proj = nn.Linear(hidden_dim, embed_dim, bias=bias)
        self.activation = activation
        self.act = get_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_proj(x), self.up_proj(x)
        if self.limit is not None:
            gate, up = gate.clamp(max=self.limit), up.clamp(-self.limit, self.limit)
        return self.down_proj(self.act(gate) * up)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}" + (f", limit={self.limit}" if self.limit is not None else "")


def SwiGLUFFN(embed_dim: int, hidden_dim: int | None = None, bias: bool = False) -> GatedFFN:
    """The gated FFN with SiLU (Llama, Qwen, Mistral)."""
    return GatedFFN(embed_dim, hidden_dim, activation="silu", bias=bias)


def GeGLUFFN(embed_dim: int, hidden_dim: int | None = None, bias: bool = False, approximate: bool = True) -> GatedFFN:
    """The gated FFN with GELU (Gemma uses the tanh approximation)."""
    return GatedFFN(embed_dim, hidden_dim, activation="gelu_tanh" if approximate else "gelu", bias=bias)
