"""Combinators that make a model read like its diagram.

    Block([RMSNorm(d), Attention(...)])            run layers one after another
    Residual(norm=RMSNorm(d), attention=...)       x + body(x)
    Repeat(num_layers, make_layer)                 num_layers copies, make_layer(index) each

A `Context` travels with the activations through these combinators: the positions of the
tokens and, when decoding, the KV cache. Layers that need it (attention) declare
`uses_context = True` and receive it as a second argument; all other layers get `x` alone,
so a plain `nn.Linear` or norm drops in unchanged.

Layers can be given as a list (children named 0, 1, ...) or by keyword (children named by
the keywords, which is how `olm_edu.models.build` gives readable parameter names such as
`layers.3.attn.norm.weight`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

__all__ = ["Context", "Block", "Residual", "Repeat"]


@dataclass
class Context:
    """What every layer of one forward pass may need besides the activations.

    positions: (T,) absolute position of each token of the input (0-based).
    cache: a `KVCache` when decoding incrementally, else None.
    ids: (B, T) the token ids, for layers that route by token (DeepSeek-V4's hash-routed MoE).
    """

    positions: torch.Tensor
    cache: object | None = None
    ids: torch.Tensor | None = None


def _run(layer: nn.Module, x: torch.Tensor, context: Context | None) -> torch.Tensor:
    if getattr(layer, "uses_context", False):
        return layer(x, context)
    return layer(x)


class Block(nn.Sequential):
    """Layers applied in order: Block([f, g])(x) = g(f(x))."""

    uses_context = True

    def __init__(self, layers: Iterable[nn.Module] | None = None, **named: nn.Module):
        if layers is not None and named:
            raise ValueError("give Block its layers either as a list or by keyword, not both")
        if named:
            super().__init__()
            for name, layer in named.items():
                if layer is not None:  # None leaves an optional layer out (e.g. no post-norm)
                    self.add_module(name, layer)
        else:
            super().__init__(*(layers or []))

    def forward(self, x: torch.Tensor, context: Context | None = None) -> torch.Tensor:
        for layer in self:
            x = _run(layer, x, context)
        return x


class Residual(Block):
    """x + Block(layers)(x): the skip connection around a sub-layer."""

    def forward(self, x: torch.Tensor, context: Context | None = None) -> torch.Tensor:
        return x + super().forward(x, context)


class Repeat(nn.ModuleList):
    """`count` layers made by `make_layer(index)`, applied in order."""

    uses_context = True

    def __init__(self, count: int, make_layer: Callable[[int], nn.Module]):
        if count < 1:
            raise ValueError(f"count={count} must be at least 1")
        super().__init__(make_layer(index) for index in range(count))

    def forward(self, x: torch.Tensor, context: Context | None = None) -> torch.Tensor:
        for layer in self:
            x = _run(layer, x, context)
        return x
