"""The output head: hidden states -> logits over the vocabulary.

logits = h W^T (+ b), optionally soft-capped: cap * tanh(logits / cap) (Gemma 2).
With tied embeddings (GPT-2, Gemma, small Llamas and Qwens) W *is* the token embedding
matrix, so the head adds no parameters.

Shapes: h (B, T, embed_dim) -> logits (B, T, vocab_size)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["OutputHead"]


class OutputHead(nn.Module):
    """Linear map to the vocabulary, tied to an embedding or with its own weight."""

    def __init__(
        self,
        embed_dim: int,
        vocab_size: int,
        *,
        tied_to: nn.Embedding | None = None,
        bias: bool = False,
        softcap: float | None = None,
    ):
        super().__init__()
        self.softcap = softcap
        # A tied head keeps a reference to the embedding without registering it as a child,
        # so the shared matrix appears once in state_dict() and parameters().
        self._tied = [tied_to] if tied_to is not None else []
        self.weight = None if tied_to is not None else nn.Parameter(torch.empty(vocab_size, embed_dim))
        self.bias = nn.Parameter(torch.zeros(vocab_size)) if bias else None

    @property
    def tied(self) -> bool:
        return bool(self._tied)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        weight = self._tied[0].weight if self._tied else self.weight
        logits = F.linear(h, weight, self.bias)
        if self.softcap is not None:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits

    def extra_repr(self) -> str:
        return f"tied={self.tied}, softcap={self.softcap}"
