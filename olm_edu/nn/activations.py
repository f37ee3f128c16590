"""Activation functions by name, and the gated (GLU) family.

- "gelu": x * Phi(x), the exact Gaussian error linear unit;
- "gelu_tanh": GPT-2's tanh approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
  (transformers calls it "gelu_new" / "gelu_pytorch_tanh");
- "silu": x * sigmoid(x) (also called swish), Llama's choice;
- "relu": max(x, 0), the original transformer's.

A gated linear unit multiplies an activated projection by a plain one: GLU_act(a, b) = act(a) * b.
With SiLU it is SwiGLU (Llama, Qwen, Mistral), with GELU GeGLU (Gemma). `glu` takes the two
halves concatenated on the last dimension.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

from olm_edu.choices import check_choice

__all__ = ["ACTIVATIONS", "GLU_VARIANTS", "get_activation", "glu"]

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "relu": F.relu,
}

# The gated variants by their usual names, each naming the activation applied to the gate.
GLU_VARIANTS = {"swiglu": "silu", "geglu": "gelu", "geglu_tanh": "gelu_tanh", "reglu": "relu"}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function registered under `name`."""
    check_choice("activation", name, tuple(ACTIVATIONS))
    return ACTIVATIONS[name]


def glu(x: torch.Tensor, variant: str = "swiglu") -> torch.Tensor:
    """act(gate) * up, where x = [gate, up] on the last dimension. Shapes: (..., 2h) -> (..., h)."""
    check_choice("variant", variant, tuple(GLU_VARIANTS))
    gate, up = x.chunk(2, dim=-1)
    return ACTIVATIONS[GLU_VARIANTS[variant]](gate) * up
