"""Checks for lesson 00 — Welcome (the warm-up exercise)."""

from __future__ import annotations

from typing import Callable

import torch

from olm_edu.grading import Check, exercise

_BUILTIN_SOFTMAX = (
    "torch.softmax",
    "torch.Tensor.softmax",
    "torch.nn.functional.softmax",
    "torch.special.softmax",
    "torch.log_softmax",
    "torch.nn.functional.log_softmax",
    "torch.Tensor.log_softmax",
)


@exercise("Exercise 1 — a numerically stable softmax")
def softmax(check: Check, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """softmax over the last dimension, any shape, no built-in softmax, stable for large logits."""
    check.forbid(*_BUILTIN_SOFTMAX, reason="Exercise 1 asks you to build softmax from exp and sum")
    shapes = [(5,), (3, 7), (2, 4, 6)] + ([(1,), (8, 1), (3, 2, 5, 9)] if check.hidden else [])
    for shape in shapes:
        x = check.randn(*shape, scale=3.0)
        expected = torch.softmax(x, dim=-1)
        original = x.clone()
        got = check.call(fn, x, what=f"a random {shape} tensor")
        check.close(got, expected, what=f"softmax of a random {shape} tensor",
                    hint="exponentiate, then divide by the sum over the last dimension (dim=-1, keepdim=True)")
        check.expect(torch.equal(x, original),
                     "your softmax changed its input tensor in place; compute on a new tensor instead")

    large = torch.tensor([[1000.0, 1001.0, 1002.0], [-1000.0, -1000.0, -1001.0]])
    check.close(check.call(fn, large, what="logits near ±1000"), torch.softmax(large, dim=-1),
                what="softmax of logits near ±1000",
                hint="exp(1000) overflows to inf in float32; subtract each row's maximum before exp")

    masked = torch.tensor([0.0, float("-inf"), 2.0])
    check.close(check.call(fn, masked, what="logits with -inf"), torch.softmax(masked, dim=-1),
                what="softmax of [0, -inf, 2] (a masked position)",
                hint="a -inf logit must get probability exactly 0")

    if check.hidden:
        doubles = check.randn(4, 6, dtype=torch.float64)
        got = check.call(fn, doubles, what="a float64 tensor")
        check.expect(isinstance(got, torch.Tensor) and got.dtype == torch.float64,
                     "a float64 input should give a float64 output; avoid hard-coding float32")
        check.close(got, torch.softmax(doubles, dim=-1), what="softmax of a float64 tensor", atol=1e-12, rtol=1e-10)
