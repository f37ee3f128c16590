"""Checks for lesson 03 — Attention.

The references are computed in float64 (an explicit softmax(q k^T / sqrt(d)) v), and the
multi-head check compares with `olm_edu.nn.Attention` holding the same weights. Tolerances:
atol 1e-5, rtol 1e-4 for attention outputs in float32 (matmul and softmax sum in any order);
a future token counts as "seen" when changing it moves an earlier output by more than 1e-5.
When an answer is wrong, the check recomputes the usual mistakes (no 1/sqrt(d), softmax over
the wrong dimension, an inverted mask, heads split the wrong way, ...) and names the one that
matches.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from olm_edu.grading import Check, CheckFailed, exercise
from olm_edu.nn.attention import Attention, attend, attention_mask

_SDPA = ("torch.nn.functional.scaled_dot_product_attention",)
ATOL, RTOL = 1e-5, 1e-4
LEAK = 1e-5  # how far an earlier output may move when a later token changes (rounding only)


def _attention(q, k, v, mask=None, *, scale="sqrt", softmax_dim=-1, mask_mode="right"):
    """softmax(q k^T * scale, masked) v in float64, or one of the usual mistakes."""
    q, k, v = q.double(), k.double(), v.double()
    d = q.shape[-1]
    scores = q @ k.transpose(-2, -1)
    scores = scores * {"sqrt": d**-0.5, "none": 1.0, "d": 1.0 / d, "value_dim": v.shape[-1] ** -0.5}[scale]
    if mask is not None and mask_mode == "right":
        scores = scores.masked_fill(~mask, float("-inf"))
    if mask is not None and mask_mode == "zero":
        scores = scores.masked_fill(~mask, 0.0)
    if mask is not None and mask_mode == "inverted":
        scores = scores.masked_fill(mask, float("-inf"))
    weights = torch.softmax(scores, dim=softmax_dim)
    if mask is not None and mask_mode == "after_softmax":
        weights = weights * mask
    return weights @ v


def _matches(got: object, expected: torch.Tensor) -> bool:
    """Same shape and values (nan where the expected value is nan, as an inverted mask makes)."""
    return (isinstance(got, torch.Tensor) and got.shape == expected.shape
            and torch.allclose(got.detach().double(), expected, atol=ATOL, rtol=RTOL, equal_nan=True))


def _causal(length: int) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool).tril()


def _random_mask(check: Check, queries: int, keys: int) -> torch.Tensor:
    """A random boolean mask in which every query may see at least one key."""
    mask = check.randint(0, 2, queries, keys).bool()
    mask[torch.arange(queries), check.randint(0, keys, queries)] = True
    return mask


# ---------------------------------------------------------------------------------------------
# The library's versions, with the exercises' signatures: what later cells use until a check passes
# ---------------------------------------------------------------------------------------------


def reference_scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                           mask: torch.Tensor | None = None) -> torch.Tensor:
    """olm_edu.nn.attention.attend, step by step. Shapes: as Exercise 1."""
    return attend(q, k, v, mask, scale=q.shape[-1] ** -0.5, implementation="explicit")


def reference_causal_mask(length: int) -> torch.Tensor:
    """olm_edu.nn.attention.attention_mask for a sequence attending to itself: (length, length) bool."""
    positions = torch.arange(length)
    return attention_mask(positions, positions, causal=True)


def reference_multi_head_attention(embed_dim: int, num_heads: int) -> Attention:
    """olm_edu.nn.Attention as GPT-2 has it: causal, with biases, the same q/k/v/o_proj names."""
    return Attention(embed_dim, num_heads, bias=True, causal=True, implementation="explicit")


# ---------------------------------------------------------------------------------------------
# Exercise 1 — scaled dot-product attention
# ---------------------------------------------------------------------------------------------


@exercise("Exercise 1 — scaled dot-product attention", reference=reference_scaled_dot_product_attention)
def scaled_dot_product(check: Check, fn: Callable) -> None:
    check.forbid(*_SDPA, reason="Exercise 1 asks you to write attention from matmul and softmax")
    # (batch shape, T_q, T_k, d, d_v, mask): scale 2 makes a missing 1/sqrt(d) impossible to miss
    cases = [((), 5, 5, 8, 8, None), ((2,), 6, 6, 16, 16, None), ((2, 3), 7, 7, 8, 8, "causal"),
             ((3,), 4, 9, 16, 5, "random")]
    if check.hidden:
        cases += [((), 1, 1, 4, 4, None), ((2, 2), 12, 12, 64, 32, "causal"), ((1,), 3, 20, 2, 7, "random")]
    for batch, queries, keys, dim, value_dim, mask_kind in cases:
        q = check.randn(*batch, queries, dim, scale=2.0)
        k = check.randn(*batch, keys, dim, scale=2.0)
        v = check.randn(*batch, keys, value_dim)
        mask = {None: None, "causal": _causal(queries), "random": _random_mask(check, queries, keys)}[mask_kind]
        what = (f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
                + (f", a {mask_kind} mask" if mask is not None else ", no mask"))
        arguments = (q.clone(), k.clone(), v.clone()) + ((mask.clone(),) if mask is not None else ())
        got = check.call(fn, *arguments, what=what)
        for name, given, original in zip(("q", "k", "v", "mask"), arguments, (q, k, v, mask)):
            check.expect(torch.equal(given, original),
                         f"{what}: your function changed its input {name} in place (e.g. {name} /= ... or "
                         f"{name}.mul_(...)), so the caller's tensor is no longer what it passed; compute on new "
                         f"tensors instead (scores = q @ k.transpose(-2, -1) / math.sqrt(d))")
        expected = _attention(q, k, v, mask)
        if not _matches(got, expected):
            mistakes = [
                (dict(scale="none"), f"your scores are not divided by sqrt(d) (d = {dim}, the last dimension of q "
                                     "and k): scores = q @ k.transpose(-2, -1) / math.sqrt(d)"),
                (dict(scale="d"), f"you divided the scores by d = {dim}; divide by sqrt(d) = {math.sqrt(dim):g}"),
                (dict(scale="value_dim"), f"you scaled by sqrt of the value width (d_v = {value_dim}); the scale "
                                          f"is sqrt(d) with d = q.shape[-1] = {dim}, the width of the dot products"),
                (dict(softmax_dim=-2), "the weights of each query must sum to 1 over the keys: take the softmax "
                                       "over the last dimension (dim=-1), not dim=-2"),
            ]
            if mask is not None:
                mistakes += [
                    (dict(mask_mode="inverted"), "your mask is inverted: True means the query MAY attend to the "
                                                 "key; fill the scores where the mask is False with -inf "
                                                 "(scores.masked_fill(~mask, float('-inf')))"),
                    (dict(mask_mode="ignored"), "the mask has no effect on your output; set the masked scores "
                                                "to -inf before the softmax"),
                    (dict(mask_mode="zero"), "you filled the masked scores with 0, but a score of 0 still gets "
                                             "weight exp(0) = 1 after the softmax; fill them with float('-inf') "
                                             "so their weights come out exactly 0"),
                    (dict(mask_mode="after_softmax"), "you masked the weights after the softmax, so they no "
                                                      "longer sum to 1; mask the scores (-inf) before the softmax"),
                ]
            for options, message in mistakes:
                if _matches(got, _attention(q, k, v, mask, **options)):
                    check.fail(f"{what}: {message}")
        check.close(got, expected, what=what, atol=ATOL, rtol=RTOL,
                    hint="softmax(q @ k^T / sqrt(d), dim=-1) @ v with d = q.shape[-1], masked scores set to -inf")


# ---------------------------------------------------------------------------------------------
# Exercise 2 — the causal mask
# ---------------------------------------------------------------------------------------------


def _find_leak(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, check: Check,
               direction: str = "future") -> tuple[int, int] | None:
    """Change one token j at a time and watch the outputs i of `run` (x is (B, T, d)).

    "future": the first (i, j) with i < j whose output moved (the layer sees the future);
    "past": the first (i, j) with j <= i whose output did not move (the layer hides the past).
    Outputs that are nan count as neither.
    """
    length = x.shape[1]
    base = run(x)
    for j in range(length):
        changed = x.clone()
        changed[:, j] += check.randn(*changed[:, j].shape, scale=3.0)
        moved = (run(changed) - base).abs().amax(dim=(0, -1))  # (T,)
        for i in (range(j) if direction == "future" else range(j, length)):
            if (moved[i] > LEAK if direction == "future" else moved[i] <= LEAK):
                return i, j
    return None


@exercise("Exercise 2 — the causal mask", reference=reference_causal_mask)
def causal_mask(check: Check, fn: Callable[[int], torch.Tensor]) -> None:
    lengths = [5, 2, 8, 1] + ([3, 16, 33] if check.hidden else [])
    for length in lengths:
        what = f"causal_mask({length})"
        mask = check.call(fn, length, what=what)
        if not isinstance(mask, torch.Tensor):
            check.fail(f"{what}: expected a torch.Tensor, got {type(mask).__name__}")
        check.expect(tuple(mask.shape) == (length, length),
                     f"{what}: expected shape {(length, length)} (queries, keys), got {tuple(mask.shape)}")
        check.expect(mask.dtype == torch.bool,
                     f"{what} returned dtype {mask.dtype}; return a bool tensor (True where query i may attend to "
                     "key j). A float mask of 0s and 1s hides nothing: F.scaled_dot_product_attention adds a "
                     "float mask to the scores")
        # The mask in action: attention whose queries, keys and values all come from the tokens x.
        x = check.randn(2, length, 8)

        def run(tokens: torch.Tensor) -> torch.Tensor:
            return _attention(tokens, tokens * 0.5, tokens, mask)

        leak = _find_leak(run, x, check, "future")
        if leak is not None:
            i, j = leak
            check.fail(f"position {i} changed when token {j} changed: your mask lets attention see the future "
                       f"(mask[{i}, {j}] should be False; True means 'may attend', allowed only for j <= i)")
        defined = torch.isfinite(run(x)).all(dim=-1).all(dim=0)  # (T,)
        if not defined.all():
            i = int((~defined).nonzero()[0])
            check.fail(f"{what}: row {i} of your mask is all False, so position {i} may attend to nothing and "
                       f"its softmax is 0/0 = nan. A token may attend to itself: the diagonal must be True")
        hidden_past = _find_leak(run, x, check, "past")
        if hidden_past is not None:
            i, j = hidden_past
            check.fail(f"position {i} did not change when token {j} changed: your mask hides the past; query i "
                       f"may attend to every key j <= i, itself included (mask[{i}, {j}] should be True)")
        check.equal(mask.tolist(), _causal(length).tolist(), what=what)


# ---------------------------------------------------------------------------------------------
# Exercise 3 — multi-head attention
# ---------------------------------------------------------------------------------------------


def _multi_head(module: nn.Module, x: torch.Tensor, heads: int, *, split: str = "contiguous", merge: str = "transpose",
                causal: bool = True, out_proj: bool = True, scale: str = "head") -> torch.Tensor:
    """Causal multi-head attention in float64 with the module's weights, or one of the usual mistakes.

    split "strided": view(B, T, head_dim, H).permute(0, 3, 1, 2), so head h gets every H-th column;
    merge "reshape": (B, H, T, head_dim) reshaped to (B, T, embed_dim) without transposing back;
    merge "strided": the inverse of the strided split.
    """
    batch, length, dim = x.shape
    head_dim = dim // heads
    x = x.double()

    def project(layer: nn.Linear) -> torch.Tensor:
        y = x @ layer.weight.detach().double().T + layer.bias.detach().double()
        if split == "strided":
            return y.view(batch, length, head_dim, heads).permute(0, 3, 1, 2)
        if split == "no_transpose":  # view(B, H, T, head_dim) straight away: re-cuts memory across positions
            return y.view(batch, heads, length, head_dim)
        return y.view(batch, length, heads, head_dim).transpose(1, 2)  # (B, H, T, head_dim)

    q, k, v = project(module.q_proj), project(module.k_proj), project(module.v_proj)
    scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim if scale == "head" else dim)
    if causal:
        scores = scores.masked_fill(~_causal(length), float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v  # (B, H, T, head_dim)
    if merge == "strided":
        out = out.permute(0, 2, 3, 1)
    elif merge == "transpose":
        out = out.transpose(1, 2)
    out = out.reshape(batch, length, dim)
    if out_proj:
        out = out @ module.o_proj.weight.detach().double().T + module.o_proj.bias.detach().double()
    return out


_WRONG_SPLIT = ("your heads are split the wrong way: the projection's columns are (num_heads, head_dim), so "
                "split with view(B, T, num_heads, head_dim) (head h owns the contiguous columns h*head_dim .. "
                "(h+1)*head_dim - 1), then transpose(1, 2) to (B, num_heads, T, head_dim); "
                "view(B, T, head_dim, num_heads) cuts the columns differently")


_NO_TRANSPOSE = ("you viewed the projection as (B, num_heads, T, head_dim) without a transpose: view keeps memory order, "
                 "so each 'head' gets slices of several positions; view(B, T, num_heads, head_dim) first, then "
                 "transpose(1, 2)")


def _head_mistakes(heads: int, head_dim: int) -> list[tuple[dict, str]]:
    return [
        # view(B, T, head_dim, H).transpose(1, 2) and back: head_dim "heads" of width H
        (dict(heads=head_dim), _WRONG_SPLIT),
        (dict(split="strided", merge="strided"), _WRONG_SPLIT),
        (dict(split="strided"), _WRONG_SPLIT),
        (dict(split="no_transpose", merge="reshape"), _NO_TRANSPOSE),
        (dict(split="no_transpose"), _NO_TRANSPOSE),
        (dict(merge="reshape"), "the heads are merged the wrong way: attention returns (B, num_heads, T, head_dim); "
                                "transpose(1, 2) back to (B, T, num_heads, head_dim) before reshaping to "
                                "(B, T, embed_dim), or the reshape mixes positions and heads"),
        (dict(scale="embed"), "each head's scores are divided by sqrt(head_dim), not sqrt(embed_dim): the dot "
                              "products are over head_dim numbers"),
        (dict(out_proj=False), "the merged heads must go through the output projection o_proj"),
    ]


def _linear(module: nn.Module, name: str, dim: int) -> nn.Module:
    layer = getattr(module, name, None)
    weight, bias = getattr(layer, "weight", None), getattr(layer, "bias", None)
    if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (dim, dim) or not isinstance(bias, torch.Tensor):
        raise CheckFailed(f"MultiHeadAttention needs self.{name} = nn.Linear(embed_dim, embed_dim) (with its bias, "
                          f"as in GPT-2); got {layer!r}")
    return layer


@exercise("Exercise 3 — multi-head attention", reference=reference_multi_head_attention)
def multi_head(check: Check, cls: type) -> None:
    check.forbid(*_SDPA, reason="Exercise 3 asks you to use your own scaled_dot_product_attention")
    # head_dim != num_heads, so a split of the wrong shape cannot pass by coincidence
    sizes = [(24, 3), (16, 2)] + ([(32, 8), (12, 1), (64, 2)] if check.hidden else [])
    for embed_dim, num_heads in sizes:
        call = f"MultiHeadAttention({embed_dim}, num_heads={num_heads})"
        module = check.call(cls, embed_dim, num_heads, what=call)
        check.expect(isinstance(module, nn.Module), f"{call} should be an nn.Module, got {type(module).__name__}")
        reference = Attention(embed_dim, num_heads, bias=True, causal=True, implementation="explicit")
        with torch.no_grad():
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                layer, source = _linear(module, name, embed_dim), getattr(reference, name)
                # scaled so that the scores have a spread of a few units: peaked, not saturated
                source.weight.copy_(check.randn(embed_dim, embed_dim, scale=1.5 / math.sqrt(embed_dim)))
                source.bias.copy_(check.randn(embed_dim, scale=0.3))
                layer.weight.copy_(source.weight)
                layer.bias.copy_(source.bias)
        for batch, length in [(2, 6), (1, 1), (3, 9)]:
            x = check.randn(batch, length, embed_dim)
            what = f"{call} on x of shape {(batch, length, embed_dim)}"
            given = x.clone()
            got = check.call(module, given, what=what,
                             hint="q, k and v should be (B, num_heads, T, head_dim) when they meet in attention")
            check.expect(torch.equal(given, x), f"{what}: your forward changed its input x in place; compute on new "
                                                "tensors (the residual stream outside the layer still needs x)")
            expected = _multi_head(module, x, num_heads)
            with torch.no_grad():
                library = reference(x)
            if not _matches(got, expected):
                for options, message in _head_mistakes(num_heads, embed_dim // num_heads):
                    options = {"heads": num_heads, **options}
                    if _matches(got, _multi_head(module, x, **options)):
                        check.fail(f"{what}: {message}")
                if length > 1 and _matches(got, _multi_head(module, x, num_heads, causal=False)):
                    leak = _find_leak(lambda tokens: check.call(module, tokens, what=what).detach(), x, check)
                    i, j = leak if leak is not None else (0, length - 1)
                    check.fail(f"{what}: position {i} changed when token {j} changed: your attention sees the "
                               "future; pass causal_mask(T) to scaled_dot_product_attention")
            check.close(got, library, what=what, atol=ATOL, rtol=RTOL,
                        hint="split heads with view(B, T, num_heads, head_dim).transpose(1, 2), attend with the "
                             "causal mask, merge with transpose(1, 2).reshape(B, T, embed_dim), then o_proj")
