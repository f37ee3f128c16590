"""Checks for lesson 09 — RMSNorm (the module, Llama's and Gemma's precision conventions).

Exercise 1 compares the learner's `RMSNorm` with the formula computed in float64 on random
float32 tensors (each row with its own offset, so that subtracting the mean shows), rows whose
mean square is far below eps, and rows of zeros. Exercises 2 and 3 compare the learner's
`llama_rms_norm` / `gemma_rms_norm` with the library's `olm_edu.nn.RMSNorm` in bfloat16 (and
float16 when grading), where only the order of the casts decides the output.

When an answer is wrong, the check computes what the usual mistakes would output (subtracting
the mean, eps outside the square root or missing, the L2 norm, the wrong dimension, w instead
of 1 + w, a cast in the wrong place) and names the one the learner's output matches.

Tolerances
    float32: atol=1e-5, rtol=1e-4 (a mean of squares, a square root and a product, in any order:
    rsqrt or 1/sqrt, mean or sum / d).
    bfloat16 / float16: the output must be the value the convention rounds to. Another correct
    formulation differs from it in float32 by a unit in the last place, which moves a 16-bit
    result by one step only when it lies on a rounding boundary; so at most 1% of the
    elements may differ, each by at most one step. A cast in the wrong place moves a quarter
    or more of them.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from olm_edu.grading import Check, exercise
from olm_edu.nn import RMSNorm as ReferenceRMSNorm

_BUILTIN_RMS_NORM = tuple(
    name for name, owner, attribute in (
        ("torch.nn.functional.rms_norm", torch.nn.functional, "rms_norm"),
        ("torch.rms_norm", torch, "rms_norm"),
        ("torch._fused_rms_norm", torch, "_fused_rms_norm"),
        ("torch.nn.RMSNorm", torch.nn, "RMSNorm"),
    ) if hasattr(owner, attribute)
)  # fmt: skip
DEFAULT_EPS = 1e-6
ATOL, RTOL = 1e-5, 1e-4
MAX_DIFFERING = 0.01  # fraction of 16-bit outputs allowed one step off (rounding-boundary ties)

FORMULA = "x / sqrt(mean(x**2, over the last dimension) + eps) * weight"


# -- the formula and its usual mistakes (computed in float64) -----------------------------------

def _ms(x: torch.Tensor, dims: tuple[int, ...] = (-1,)) -> torch.Tensor:
    return x.pow(2).mean(dim=dims, keepdim=True)


def _reference(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x**2) + eps) * scale in float64, returned in x's dtype."""
    x64 = x.double()
    return (x64 / torch.sqrt(_ms(x64) + eps) * scale.double()).to(x.dtype)


def _maths_mistakes(x: torch.Tensor, scale: torch.Tensor, eps: float, scale_name: str) -> dict[str, torch.Tensor]:
    """What the usual mistakes in the formula output, in x's dtype (scale: what multiplies at the end)."""
    x64, s = x.double(), scale.double()
    centred = x64 - x64.mean(dim=-1, keepdim=True)
    mistakes = {
        "you subtracted the mean: that is LayerNorm. RMSNorm does not centre x; it divides x itself by its root "
        "mean square: x / sqrt(mean(x**2) + eps)":
            centred / torch.sqrt(_ms(centred) + eps) * s,
        "you subtracted the mean before dividing (x - mean) / rms: that is half of LayerNorm. RMSNorm does not "
        "centre x: x / sqrt(mean(x**2) + eps)":
            centred / torch.sqrt(_ms(x64) + eps) * s,
        "you added eps outside the square root, sqrt(mean(x**2)) + eps; it belongs inside: "
        "sqrt(mean(x**2) + eps). The two differ when mean(x**2) is close to eps or below it":
            x64 / (torch.sqrt(_ms(x64)) + eps) * s,
        "you left eps out: for rows whose mean square is far below eps it decides the output, and for a row of "
        "zeros you divide 0 by 0. Divide by sqrt(mean(x**2) + eps)":
            x64 / torch.sqrt(_ms(x64)) * s,
        "you divided by the L2 norm sqrt(sum(x**2)), which is sqrt(dim) times the root mean square: take the "
        "mean of the squares, not their sum":
            x64 / torch.sqrt(x64.pow(2).sum(dim=-1, keepdim=True) + eps) * s,
        "you divided by the mean square without its square root: divide by sqrt(mean(x**2) + eps)":
            x64 / (_ms(x64) + eps) * s,
        f"you did not multiply by {scale_name}":
            x64 / torch.sqrt(_ms(x64) + eps),
    }
    every_dim = tuple(range(x.dim()))
    for dim in every_dim[:-1]:
        mistakes[f"you normalised over dimension {dim} (across different vectors); RMSNorm normalises each vector "
                 "over its own features, the last dimension: x.pow(2).mean(dim=-1, keepdim=True)"] = (
            x64 / torch.sqrt(_ms(x64, (dim,)) + eps) * s)
    mistakes["you normalised over the whole tensor at once; RMSNorm normalises each vector over its own "
             "features, the last dimension: x.pow(2).mean(dim=-1, keepdim=True)"] = (
        x64 / torch.sqrt(_ms(x64, every_dim) + eps) * s)
    return {message: wrong.to(x.dtype) for message, wrong in mistakes.items()}


def _cases(check: Check, dim: int, dtype: torch.dtype = torch.float32) -> list[tuple[str, torch.Tensor]]:
    """Random rows with their own offsets, rows whose mean square is far below eps=1e-6, rows of zeros."""
    cases = []
    for shape in ((4, dim), (2, 5, dim)):
        x = check.randn(*shape, scale=2.0) + 1.5 * check.randn(*shape[:-1], 1)  # each vector its own offset
        cases.append((f"a random {shape} tensor", x.to(dtype)))
    tiny = 1e-4 * (check.randn(3, dim) + 0.5)  # mean square about 1e-8, far below eps
    cases.append(("rows with a tiny mean square (about 1e-8, far below eps=1e-6)", tiny.to(dtype)))
    cases.append(("rows of zeros", torch.zeros(2, dim, dtype=dtype)))
    return cases


def _check_finite(check: Check, got: object, what: str) -> None:
    """A NaN or inf where the reference is finite: almost always 0 / sqrt(0), a missing eps."""
    __tracebackhide__ = True
    if isinstance(got, torch.Tensor) and got.is_floating_point() and not torch.isfinite(got).all():
        check.fail(f"{what}: your output contains {got[~torch.isfinite(got)][0].item()} where the answer is "
                   "finite. For a row of zeros, 0 / sqrt(0) is 0 / 0: add eps inside the square root, "
                   "x / sqrt(mean(x**2) + eps)")


def _check_unchanged(check: Check, tensor: torch.Tensor, original: torch.Tensor, name: str) -> None:
    check.expect(torch.equal(tensor, original), f"your code changed its input {name} in place; compute on new tensors "
                 "(x = x.float() makes a copy only when x is not float32 already, so avoid x.mul_, x /= ...)")


# -- Exercise 1: the RMSNorm module ---------------------------------------------------------------

def _check_parameters(check: Check, layer: object, dim: int, eps: float) -> None:
    __tracebackhide__ = True
    check.expect(isinstance(layer, nn.Module), f"RMSNorm({dim}) should make an nn.Module, got {type(layer).__name__}")
    weight = getattr(layer, "weight", None)
    check.expect(isinstance(weight, nn.Parameter), f"RMSNorm({dim}).weight should be an nn.Parameter (the learned "
                 f"gain), got {type(weight).__name__}. Hint: self.weight = nn.Parameter(torch.ones(dim))")
    check.expect(tuple(weight.shape) == (dim,), f"RMSNorm({dim}).weight should have shape ({dim},), got {tuple(weight.shape)}")
    check.expect(bool((weight == 1).all()), f"RMSNorm({dim}).weight should start at 1 everywhere (torch.ones), so "
                 "that a new RMSNorm only normalises; a weight that starts at 0 is Gemma's (1 + w) storage, Exercise 3")
    names = [name for name, _ in layer.named_parameters()]
    check.expect(names == ["weight"], f"RMSNorm({dim}) should have exactly one parameter, weight; it has {names}. "
                 "RMSNorm has no bias (that is one of the things it drops from LayerNorm)")
    check.expect(getattr(layer, "eps", None) == eps, f"RMSNorm({dim}, eps={eps}).eps should be {eps}, got "
                 f"{getattr(layer, 'eps', None)!r}. Hint: store the eps argument as self.eps")


@exercise("Exercise 1 — RMSNorm", reference=ReferenceRMSNorm)
def rms_norm(check: Check, rms_norm_class: Callable[..., nn.Module]) -> None:
    """RMSNorm(dim, eps=1e-6): one weight parameter, no built-in rms_norm, float32 maths."""
    check.forbid(*_BUILTIN_RMS_NORM, reason="Exercise 1 asks you to write RMSNorm from a mean of squares and a square root")
    configs = [(16, None), (64, None)] + ([(7, None), (768, None), (1, None), (24, 1e-5)] if check.hidden else [])
    for dim, eps in configs:
        call = f"RMSNorm({dim})" if eps is None else f"RMSNorm({dim}, eps={eps})"
        layer = check.call(rms_norm_class, dim, what=call) if eps is None else check.call(
            rms_norm_class, dim, eps=eps, what=call)
        eps = DEFAULT_EPS if eps is None else eps
        _check_parameters(check, layer, dim, eps)
        weight = 1.0 + 0.5 * check.randn(dim)
        with torch.no_grad():
            layer.weight.copy_(weight)
        for case, x in _cases(check, dim):
            what = f"{call} on {case}"
            original = x.clone()
            with torch.no_grad():
                got = check.call(layer, x, what=what, hint="keep the reduced dimension so it broadcasts: "
                                 "x.pow(2).mean(dim=-1, keepdim=True)")
            _check_unchanged(check, x, original, "x")
            _check_finite(check, got, what)
            check.close_or_diagnose(got, _reference(x, weight, eps), _maths_mistakes(x, weight, eps, "self.weight"),
                                    what=what, atol=ATOL, rtol=RTOL, hint=f"compute {FORMULA}")


# -- Exercises 2 and 3: the precision conventions -------------------------------------------------

def _reference_module(dim: int, eps: float, convention: str, weight: torch.Tensor) -> nn.Module:
    module = ReferenceRMSNorm(dim, eps, convention=convention).to(weight.dtype)
    with torch.no_grad():
        module.weight.copy_(weight)
    return module


def _normalised32(x: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)


def _same_rounding(got: object, expected: torch.Tensor) -> bool:
    """Same shape and dtype; at most MAX_DIFFERING of the elements differ, each by at most one step."""
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape or got.dtype != expected.dtype:
        return False
    got64, expected64 = got.detach().double(), expected.detach().double()
    if (~torch.isfinite(got64) & torch.isfinite(expected64)).any():
        return False
    differing = got64 != expected64
    one_step = torch.finfo(expected.dtype).eps * expected64.abs() + torch.finfo(expected.dtype).tiny
    return differing.double().mean().item() <= MAX_DIFFERING and bool(((got64 - expected64).abs() <= one_step).all())


Mistakes = list[tuple[str, torch.Tensor]]  # (message naming the mistake, what it outputs); a message may repeat


def _check_rounding(check: Check, got: object, expected: torch.Tensor, mistakes: Mistakes, *,
                    what: str, wrong_dtype: str, hint: str) -> None:
    """Pass if `got` rounds as `expected`; else name the mistake it matches; else say how far it is."""
    __tracebackhide__ = True
    if not isinstance(got, torch.Tensor):
        check.fail(f"{what}: expected a torch.Tensor, got {type(got).__name__}")
    if got.shape != expected.shape:
        check.fail(f"{what}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}")
    if got.dtype != expected.dtype:
        check.fail(f"{what}: your output is {got.dtype}, it should be {expected.dtype}, the dtype of x. {wrong_dtype}")
    _check_finite(check, got, what)
    if _same_rounding(got, expected):
        check.passed += 1
        return
    for message, wrong in mistakes:
        if _same_rounding(got, wrong):
            check.fail(f"{what}: {message}")
    got64, expected64 = got.detach().double(), expected.double()
    differing = got64 != expected64
    index = tuple(int(i) for i in differing.nonzero()[0])
    check.fail(f"{what}: {differing.double().mean().item():.0%} of your outputs differ from the reference (first at "
               f"index {index}: expected {expected64[index].item():.6g}, got {got64[index].item():.6g}; at most "
               f"{MAX_DIFFERING:.0%} may differ, by one rounding step). Hint: {hint}")


def _low_precision_cases(check: Check) -> list[tuple[str, torch.Tensor]]:
    dtypes = [torch.bfloat16] + ([torch.float16] if check.hidden else [])
    cases = []
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        for shape in ((4, 16, 64),) + (((1, 3, 512),) if check.hidden else ()):
            x = check.randn(*shape, scale=2.0) + 1.5 * check.randn(*shape[:-1], 1)
            cases.append((f"a random {name} {shape} tensor", x.to(dtype)))
    return cases


def _precision_check(check: Check, fn: Callable, convention: str, make_weight: Callable[[int], torch.Tensor],
                     scale_of: Callable[[torch.Tensor], torch.Tensor], scale_name: str,
                     dtype_mistakes: Callable[[torch.Tensor, torch.Tensor, float], Mistakes],
                     maths_extra: Callable[[torch.Tensor, torch.Tensor, float], dict[str, torch.Tensor]],
                     wrong_dtype: str, hint: str) -> None:
    __tracebackhide__ = True
    name = f"{convention}_rms_norm"
    # float32: the maths (the casts change nothing here)
    for dim, eps in [(32, DEFAULT_EPS)] + ([(8, 1e-5)] if check.hidden else []):
        weight = make_weight(dim)
        for case, x in _cases(check, dim):
            what = f"{name}(x, weight, eps={eps:g}) on {case} (float32)"
            original, original_weight = x.clone(), weight.clone()
            got = check.call(fn, x, weight, eps, what=what, hint=hint)
            _check_unchanged(check, x, original, "x")
            _check_unchanged(check, weight, original_weight, "weight")
            _check_finite(check, got, what)
            mistakes = {**maths_extra(x, weight, eps), **_maths_mistakes(x, scale_of(weight), eps, scale_name)}
            check.close_or_diagnose(got, _reference(x, scale_of(weight), eps), mistakes, what=what, atol=ATOL, rtol=RTOL,
                                    hint=hint)
    # 16-bit: only the order of the casts decides the output
    for case, x in _low_precision_cases(check):
        eps = DEFAULT_EPS
        weight = make_weight(x.shape[-1]).to(x.dtype)
        with torch.no_grad():
            expected = _reference_module(x.shape[-1], eps, convention, weight)(x)
        what = f"{name}(x, weight) on {case}, weight in the same dtype"
        got = check.call(fn, x, weight, eps, what=what, hint=hint)
        _check_rounding(check, got, expected, dtype_mistakes(x, weight, eps), what=what, wrong_dtype=wrong_dtype,
                        hint=hint)


def _all_low_precision(x: torch.Tensor, scale: torch.Tensor, eps: float) -> list[torch.Tensor]:
    """Formulations that never leave x's dtype (scale already in x's dtype)."""
    return [
        x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * scale,
        scale * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)),
        x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * scale,
    ]


# -- Exercise 2: Llama's order ----------------------------------------------------------------

LLAMA_HINT = ("x32 = x.float(); normalised = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps); "
              "return weight * normalised.to(x.dtype)")
LLAMA_IN_LOW_PRECISION = ("you computed in x's own dtype: Llama first converts x to float32 (x.float()), normalises "
                          "there, casts the result back with .to(x.dtype) and only then multiplies by the weight")


def _llama_dtype_mistakes(x: torch.Tensor, weight: torch.Tensor, eps: float) -> Mistakes:
    normalised = _normalised32(x, eps)
    rsqrt_low = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps).to(x.dtype)
    return [
        ("you multiplied by the weight in float32 and cast once at the end (that is Gemma's order). Llama casts the "
         "normalised x back to x.dtype first and then multiplies by the weight, in x's dtype: "
         "weight * normalised.to(x.dtype)", (normalised * weight.float()).to(x.dtype)),
        ("you computed the mean square in float32 but scaled x in its own dtype (x * rsqrt(...).to(x.dtype)): the "
         "whole normalisation x * rsqrt(mean(x**2) + eps) happens in float32, and only its result is cast back",
         x * rsqrt_low * weight),
    ] + [(LLAMA_IN_LOW_PRECISION, wrong) for wrong in _all_low_precision(x, weight, eps)]


def _norm_function(convention: str) -> Callable[..., torch.Tensor]:
    """The library's RMSNorm with the given convention as a function of (x, weight, eps)."""

    def norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        layer = ReferenceRMSNorm(weight.shape[-1], eps, convention=convention).to(weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(weight)
        return layer(x).detach()

    norm.__name__ = f"{convention}_rms_norm"
    return norm


@exercise("Exercise 2 — Llama's precision convention", reference=_norm_function("llama"))
def llama_rms_norm(check: Check, fn: Callable[..., torch.Tensor]) -> None:
    """llama_rms_norm(x, weight, eps): float32 maths, cast back, then multiply by weight."""
    check.forbid(*_BUILTIN_RMS_NORM, reason="Exercise 2 asks you to write the float32 normalisation yourself")
    _precision_check(
        check, fn, "llama",
        make_weight=lambda dim: 1.0 + 0.5 * check.randn(dim),
        scale_of=lambda weight: weight, scale_name="weight",
        dtype_mistakes=_llama_dtype_mistakes,
        maths_extra=lambda x, weight, eps: {},
        wrong_dtype="Cast the normalised tensor back with .to(x.dtype) before multiplying by the weight: a float32 "
                    "tensor times a bfloat16 weight stays float32",
        hint=LLAMA_HINT,
    )


# -- Exercise 3: Gemma's (1 + w) ------------------------------------------------------------

GEMMA_HINT = ("x32 = x.float(); normalised = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps); "
              "return (normalised * (1.0 + weight.float())).to(x.dtype)")
W_NOT_ONE_PLUS_W = ("you multiplied by weight; Gemma stores the scale as an offset from 1 and multiplies by "
                    "(1 + weight), so a weight of zeros is the identity scale")


def _gemma_weight(check: Check, dim: int) -> torch.Tensor:
    """Offsets of two sizes: some of order 0.3, some so small that (1 + w) formed in bfloat16 loses them."""
    weight = 0.3 * check.randn(dim)
    weight[::2] = 0.003 * check.randn((dim + 1) // 2)
    return weight


def _gemma_maths_extra(x: torch.Tensor, weight: torch.Tensor, eps: float) -> dict[str, torch.Tensor]:
    return {W_NOT_ONE_PLUS_W: _reference(x, weight, eps)}


def _gemma_dtype_mistakes(x: torch.Tensor, weight: torch.Tensor, eps: float) -> Mistakes:
    normalised = _normalised32(x, eps)
    low, step = x.dtype, torch.finfo(x.dtype).eps  # step: the spacing of x's dtype between 1 and 2
    cast_first = ("you cast the normalised x to x.dtype before multiplying by (1 + weight), as Llama does. Gemma "
                  "multiplies in float32 and casts only the product: (normalised * (1.0 + weight.float())).to(x.dtype)")
    return [
        (W_NOT_ONE_PLUS_W, (normalised * weight.float()).to(low)),
        (W_NOT_ONE_PLUS_W, weight * normalised.to(low)),
        (cast_first, normalised.to(low) * (1.0 + weight)),
        (cast_first, (normalised.to(low).float() * (1.0 + weight.float())).to(low)),
        (f"you computed 1 + weight in {str(low).removeprefix('torch.')}: near 1 its steps are {step:.2g} apart, so "
         f"offsets are rounded to multiples of that, and those below {step / 2:.2g} vanish. Convert the weight "
         "first: 1.0 + weight.float()", (normalised * (1.0 + weight).float()).to(low)),
    ] + [("you computed in x's own dtype: Gemma converts x to float32 (x.float()), normalises and multiplies by "
          "(1 + weight.float()) there, and casts only the final product", wrong)
         for wrong in _all_low_precision(x, 1.0 + weight, eps)]


@exercise("Exercise 3 — Gemma's (1 + w) RMSNorm", reference=_norm_function("gemma"))
def gemma_rms_norm(check: Check, fn: Callable[..., torch.Tensor]) -> None:
    """gemma_rms_norm(x, weight, eps): float32 maths times (1 + weight), cast at the end."""
    check.forbid(*_BUILTIN_RMS_NORM, reason="Exercise 3 asks you to write the float32 normalisation yourself")
    _precision_check(
        check, fn, "gemma",
        make_weight=lambda dim: _gemma_weight(check, dim),
        scale_of=lambda weight: 1.0 + weight, scale_name="(1 + weight)",
        dtype_mistakes=_gemma_dtype_mistakes,
        maths_extra=_gemma_maths_extra,
        wrong_dtype="Gemma casts the float32 product back at the very end: (normalised * (1.0 + weight.float())).to(x.dtype)",
        hint=GEMMA_HINT,
    )
