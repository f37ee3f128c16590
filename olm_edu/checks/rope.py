"""Checks for lesson 10 — RoPE (frequencies, the two layouts, the weight permutation, Llama 3 scaling).

References come from `olm_edu.nn.positions` (itself tested against `transformers`), evaluated in
float64 so that the reference adds no rounding of its own. When an answer is wrong, the check
computes what the usual mistakes would output (the other layout, the sine's sign flipped,
ignored positions, a wrong exponent, ...) and names the one the answer matches.

Tolerances: frequencies rtol=1e-5 (a float32 power, in any order of operations); rotated
queries/keys atol=2e-4, rtol=1e-4 (angles up to a few hundred radians computed in float32 are
off by about 1e-5 rad); permuted weights exactly (a permutation only moves numbers); Llama 3
frequencies rtol=1e-5, atol=0 (the smallest frequencies are about 1e-7).

While the learner's code runs, the library's RoPE functions fail the check (`Check.forbid`: a
function's code is swapped for a refusal, so it is refused however the learner imported it).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from olm_edu.grading import Check, exercise
from olm_edu.nn import positions as library

FREQUENCY_RTOL = 1e-5
ROTATION_ATOL, ROTATION_RTOL = 2e-4, 1e-4


# The library functions a learner's answer may not call (they are what the exercises write).
_LIBRARY = tuple(f"olm_edu.nn.positions.{name}" for name in (
    "rope_parameters", "RotaryEmbedding", "apply_rotary", "rotate_half", "rotate_interleaved",
    "interleaved_to_half_permutation", "half_to_interleaved_permutation"))


def _forbid_library(check: Check, exercise_name: str) -> None:
    check.forbid(*_LIBRARY, reason=f"{exercise_name} asks you to write it yourself")


def _default_frequencies(head_dim: int, base: float) -> torch.Tensor:
    return library.rope_parameters(head_dim, float(base), None, 2048)[0]


# -- the library's versions, with the exercises' signatures ------------------------------------
# What the cells after an unfinished exercise use until its check passes
# (`check.<exercise>.yours_or_reference(yours)`): the learner's notebook runs to the end either way.

def _library_rotation(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, layout: str) -> torch.Tensor:
    angles = positions[:, None].float() * inv_freq.float()  # (T, d/2)
    angles = torch.cat((angles, angles), -1) if layout == "half" else angles.repeat_interleave(2, -1)  # (T, d)
    return library.apply_rotary(x, angles.cos().to(x.dtype), angles.sin().to(x.dtype), layout)


def reference_rope_frequencies(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """base^(-2i/d) for the d/2 pairs, float32 (olm_edu.nn.positions.rope_parameters without scaling)."""
    return _default_frequencies(head_dim, base)


def reference_apply_rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """RoPE in the rotate_half layout (olm_edu.nn.positions.apply_rotary). Shapes: x (B, H, T, d) -> same."""
    return _library_rotation(x, positions, inv_freq, "half")


def reference_apply_rope_interleaved(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """RoPE on adjacent pairs (olm_edu.nn.positions.apply_rotary, layout="interleaved")."""
    return _library_rotation(x, positions, inv_freq, "interleaved")


def reference_interleaved_to_half(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Each head's rows reordered by olm_edu.nn.positions.interleaved_to_half_permutation."""
    head_dim = weight.shape[0] // num_heads
    return _permute(weight, library.interleaved_to_half_permutation(head_dim), num_heads)


def reference_llama3_frequencies(inv_freq: torch.Tensor, factor: float, low_freq_factor: float,
                                 high_freq_factor: float, original_max_len: int) -> torch.Tensor:
    """Llama 3's piecewise scaling of the frequencies (what rope_parameters(..., {"rope_type": "llama3"})
    computes from the base), applied to the given frequencies."""
    f = inv_freq.double()
    wavelength = 2 * math.pi / f
    smooth = (original_max_len / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blend = (1 - smooth) * f / factor + smooth * f
    scaled = torch.where(wavelength > original_max_len / low_freq_factor, f / factor,
                         torch.where(wavelength < original_max_len / high_freq_factor, f, blend))
    return scaled.to(inv_freq.dtype)


# -- Exercise 1: the frequencies ------------------------------------------------------------------

def _frequency_mistakes(head_dim: int, base: float) -> dict[str, torch.Tensor]:
    half = head_dim // 2
    pair = torch.arange(half, dtype=torch.float64)
    base = float(base)
    mistakes = {
        "your exponent is i/d; it must be 2i/d (pair i holds dimensions 2i and 2i + 1, so the exponent "
        "steps by 2/d): base ** (-torch.arange(0, d, 2) / d)": base ** (-pair / head_dim),
        "your exponent is positive: you returned base^(2i/d), the factor by which each pair is slower, "
        "not the frequency. theta_i = base^(-2i/d) = 1 / base^(2i/d)": base ** (2 * pair / head_dim),
        "your pairs start at i = 1; the first pair (i = 0) has frequency 1 (one radian per token): "
        "torch.arange(0, d, 2), not torch.arange(2, d + 1, 2)": base ** (-2 * (pair + 1) / head_dim),
    }
    if half > 1:
        mistakes["your exponent runs from 0 to -1 exactly (linspace); the last exponent must be -(d - 2)/d, "
                 "one step short of -1: base ** (-torch.arange(0, d, 2) / d)"] = base ** (-torch.linspace(0, 1, half, dtype=torch.float64))
    return mistakes


@exercise("Exercise 1 — the RoPE frequencies", reference=reference_rope_frequencies)
def rope_frequencies(check: Check, fn: Callable[..., torch.Tensor]) -> None:
    _forbid_library(check, "Exercise 1")
    cases = [(8, 10000.0), (64, 10000.0), (128, 500000.0)]
    if check.hidden:
        cases += [(2, 10000.0), (96, 1_000_000.0), (16, 10), (256, 10000.0)]
    for head_dim, base in cases:
        what = f"rope_frequencies({head_dim}, base={base:g})"
        got = check.call(fn, head_dim, base, what=what)
        if not isinstance(got, torch.Tensor):
            check.fail(f"{what} should return a tensor, got {type(got).__name__}")
        if tuple(got.shape) == (head_dim,) and head_dim > 2:
            check.fail(f"{what} returned {head_dim} values; RoPE has one frequency per *pair* of dimensions, "
                       f"so expected shape ({head_dim // 2},). Hint: torch.arange(0, d, 2) gives the d/2 values 2i")
        check.expect(got.dtype == torch.float32, f"{what} should be float32 (the dtype models keep their "
                     f"frequencies in), got {got.dtype}. Hint: .float()")
        check.close_or_diagnose(got, _default_frequencies(head_dim, base), _frequency_mistakes(head_dim, base),
                                what=what, atol=0.0, rtol=FREQUENCY_RTOL,
                                hint="theta_i = base ** (-2 i / d) for i = 0 .. d/2 - 1")


# -- Rotations: references and the usual mistakes ---------------------------------------------------

def _cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    angle = positions.double()[:, None] * inv_freq.double()  # (T, d/2)
    angle = torch.cat((angle, angle), -1) if layout == "half" else angle.repeat_interleave(2, -1)  # (T, d)
    return angle.cos(), angle.sin()


def _rotate(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, *, cos_layout: str,
            rotate: str, sign: float = 1.0) -> torch.Tensor:
    """x * cos + sign * rotate(x) * sin, with cos/sin laid out one way and the rotation another."""
    cos, sin = _cos_sin(positions, inv_freq, cos_layout)
    turn = library.rotate_half if rotate == "half" else library.rotate_interleaved
    x64 = x.double()
    return (x64 * cos + sign * turn(x64) * sin).to(x.dtype)


def _reference(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, layout: str) -> torch.Tensor:
    cos, sin = _cos_sin(positions, inv_freq, layout)
    return library.apply_rotary(x.double(), cos, sin, layout).to(x.dtype)


def _rotation_mistakes(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor,
                       layout: str) -> dict[str, torch.Tensor]:
    other = "interleaved" if layout == "half" else "half"
    head_dim = x.shape[-1]
    if layout == "half":
        other_message = ("you applied the interleaved layout (pairs of adjacent dimensions 2i, 2i + 1, as in the "
                         "RoPE paper and Meta's code) where the rotate_half layout is expected: here pair i is "
                         "(x[i], x[i + d/2]), cos/sin are torch.cat((angles, angles), -1) and the partner of x[i] "
                         "comes from rotate_half(x)")
    else:
        other_message = ("you applied the rotate_half layout (pairs x[i], x[i + d/2], as in transformers' Llama) "
                         "where the interleaved layout is expected: here pair i is the adjacent (x[2i], x[2i + 1]), "
                         "read as the complex number x[2i] + j x[2i + 1]")
    mistakes = {
        other_message: _reference(x, positions, inv_freq, other),
        "you rotate the wrong way (the sine's sign is flipped, or you multiply by the conjugate e^(-j t theta)): "
        "the first of a pair becomes a cos - b sin, the second b cos + a sin":
            _rotate(x, positions, inv_freq, cos_layout=layout, rotate=layout, sign=-1.0),
        "your positions start at 1; use the positions you are given (the first token of a sequence is at 0)":
            _reference(x, positions + 1, inv_freq, layout),
        "you mixed the layouts: cos/sin are laid out one way and the rotation pairs dimensions the other way. "
        + ("With rotate_half, repeat the angles as torch.cat((angles, angles), -1), not repeat_interleave"
           if layout == "half" else "With adjacent pairs, repeat each angle twice in place "
           "(angles.repeat_interleave(2, -1)), not torch.cat((angles, angles), -1)"):
            _rotate(x, positions, inv_freq, cos_layout=other, rotate=layout),
        "you mixed the layouts: cos/sin fit this layout but your rotation pairs the dimensions the other way "
        + ("(rotate_half gives [-x2, x1] with x1, x2 the halves)" if layout == "half"
           else "(the partner of x[2i] is x[2i + 1]: (x0, x1) -> (-x1, x0))"):
            _rotate(x, positions, inv_freq, cos_layout=layout, rotate=other),
    }
    arange = torch.arange(positions.numel())
    if not torch.equal(positions, arange):
        mistakes["you ignored `positions` and used 0, 1, ..., T-1; rotate token t by the angle positions[t] * "
                 "theta_i (during generation with a KV cache the new token sits at position T, not 0)"] = (
            _reference(x, arange, inv_freq, layout))
    if layout == "half":
        first, second = x.double().chunk(2, -1)
        angle = positions.double()[:, None] * inv_freq.double()
        mistakes["you rotated only the first half of the dimensions and left the second half as it was; a pair "
                 "has two members and both change: [x1 cos - x2 sin, x2 cos + x1 sin]"] = torch.cat(
            (first * angle.cos() - second * angle.sin(), second), -1).to(x.dtype)
    else:
        order = library.interleaved_to_half_permutation(head_dim)
        mistakes["you rotated the right pairs but wrote the result as [real parts, imaginary parts]; the "
                 "interleaved layout keeps each pair adjacent: torch.view_as_real(z).flatten(-2)"] = (
            _reference(x, positions, inv_freq, layout)[..., order])
        mistakes["you read the pairs as (x[i], x[i + d/2]) (the rotate_half layout) and wrote them back "
                 "interleaved; the interleaved layout reads adjacent pairs: x.reshape(..., d/2, 2)"] = (
            _reference(x, positions, inv_freq, "half")[..., library.half_to_interleaved_permutation(head_dim)])
    wrong_base = _default_frequencies(head_dim, 10000.0)
    if not torch.allclose(wrong_base, inv_freq.float()):
        mistakes["you recomputed the frequencies with base 10000 instead of using the `inv_freq` you were "
                 "given (models use other bases: Llama 3 uses 500000)"] = _reference(x, positions, wrong_base, layout)
    return mistakes


def _rotation_cases(check: Check) -> list[tuple[tuple[int, int, int, int], torch.Tensor, torch.Tensor]]:
    """((B, H, T, d), positions, inv_freq)."""
    cases = [
        ((1, 1, 4, 2), torch.arange(4), _default_frequencies(2, 10000.0)),
        ((2, 3, 5, 8), torch.arange(5), _default_frequencies(8, 10000.0)),
        ((1, 2, 6, 16), torch.arange(20, 26), _default_frequencies(16, 500000.0)),  # a chunk after 20 tokens
        ((2, 4, 7, 64), check.randint(0, 200, 7), _default_frequencies(64, 10000.0)),
    ]
    if check.hidden:
        cases += [
            ((1, 1, 1, 32), torch.tensor([57]), _default_frequencies(32, 10000.0)),  # one new token, cache of 57
            ((3, 2, 9, 128), check.randint(0, 300, 9), _default_frequencies(128, 500000.0)),
            ((1, 2, 5, 12), torch.arange(5), _default_frequencies(12, 10000.0) / 4),  # a scaled inv_freq
        ]
    return cases


def _check_rotation(check: Check, fn: Callable, layout: str, name: str) -> None:
    hint_shapes = ("x is (B, H, T, d); angles = positions[:, None] * inv_freq is (T, d/2); cos and sin need "
                   "d entries per position, so repeat the d/2 angles " +
                   ("as torch.cat((angles, angles), -1)" if layout == "half" else "with repeat_interleave(2, -1)"))
    for shape, positions, inv_freq in _rotation_cases(check):
        x = check.randn(*shape)
        original = x.clone()
        what = f"{name}(x of shape {shape}, positions={positions.tolist()}, inv_freq of shape ({inv_freq.numel()},))"
        got = check.call(fn, x, positions.clone(), inv_freq.clone(), what=what, hint=hint_shapes)
        check.expect(torch.equal(x, original), f"{what} changed x in place; return a new tensor")
        if isinstance(got, torch.Tensor) and got.dtype != x.dtype:
            check.fail(f"{what} returned dtype {got.dtype}; return x's dtype ({x.dtype}). Hint: .type_as(x)")
        check.close_or_diagnose(got, _reference(x, positions, inv_freq, layout),
                                _rotation_mistakes(x, positions, inv_freq, layout),
                                what=what, atol=ROTATION_ATOL, rtol=ROTATION_RTOL, hint=hint_shapes)


# -- Exercise 2: rotate_half layout --------------------------------------------------------------

@exercise("Exercise 2 — RoPE in the rotate_half layout", reference=reference_apply_rope,
          helpers=(library.rotate_half,))
def apply_rope(check: Check, rotate_half_fn: Callable, apply_fn: Callable) -> None:
    _forbid_library(check, "Exercise 2")
    for d in (2, 4, 8) + ((16,) if check.hidden else ()):
        x = torch.arange(1.0, d + 1).repeat(2, 1)  # (2, d): 1 .. d
        what = f"rotate_half({x[0].tolist()})"
        got = check.call(rotate_half_fn, x.clone(), what=what)
        first, second = x.chunk(2, -1)
        check.close_or_diagnose(got, torch.cat((-second, first), -1), {
            "you returned [x2, -x1]: that turns each pair by -90 degrees (the wrong way). rotate_half(x) is "
            "[-x2, x1], the partner of (a, b) being (-b, a)": torch.cat((second, -first), -1),
            "you swapped the halves but forgot the minus sign: rotate_half(x) is [-x2, x1]": torch.cat((second, first), -1),
            "you rotated adjacent pairs ((x0, x1) -> (-x1, x0)): that is the interleaved layout; rotate_half "
            "works on the two halves: [-x2, x1]": library.rotate_interleaved(x),
        }, what=what, atol=0.0, rtol=0.0, hint="split the last dim in two halves x1, x2 and return [-x2, x1]")
    _check_rotation(check, apply_fn, "half", "apply_rope")


# -- Exercise 3: interleaved layout ---------------------------------------------------------------

@exercise("Exercise 3 — RoPE in the interleaved layout", reference=reference_apply_rope_interleaved)
def apply_rope_interleaved(check: Check, apply_fn: Callable) -> None:
    _forbid_library(check, "Exercise 3")
    _check_rotation(check, apply_fn, "interleaved", "apply_rope_interleaved")


# -- Exercise 4: the weight permutation ---------------------------------------------------------------

def _permute(weight: torch.Tensor, order: torch.Tensor, num_heads: int) -> torch.Tensor:
    head_dim = order.numel()
    return weight.view(num_heads, head_dim, -1)[:, order].reshape(num_heads * head_dim, -1)


@exercise("Exercise 4 — convert q/k weights from interleaved to rotate_half", reference=reference_interleaved_to_half)
def interleaved_to_half(check: Check, fn: Callable) -> None:
    _forbid_library(check, "Exercise 4")
    cases = [(1, 8, 5), (3, 8, 6), (4, 16, 24)]
    if check.hidden:
        cases += [(2, 2, 3), (8, 64, 16), (5, 6, 7)]
    for num_heads, head_dim, embed_dim in cases:
        weight = check.randn(num_heads * head_dim, embed_dim)
        original = weight.clone()
        what = (f"interleaved_to_half(weight of shape ({num_heads * head_dim}, {embed_dim}), "
                f"num_heads={num_heads}) (head_dim={head_dim})")
        got = check.call(fn, weight, num_heads, what=what)
        check.expect(torch.equal(weight, original), f"{what} changed the weight in place; return a new tensor")
        to_half = library.interleaved_to_half_permutation(head_dim)
        mistakes = {
            "you returned the weight unchanged: the rows of each head must be reordered "
            "[0, 2, 4, ..., d-2, 1, 3, ..., d-1]": original,
            "you applied the inverse permutation (half -> interleaved, [0, d/2, 1, d/2 + 1, ...]). In the "
            "rotate_half layout row i and row i + d/2 form pair i, and they must be the interleaved rows 2i "
            "and 2i + 1: new order [0, 2, 4, ..., 1, 3, 5, ...]": _permute(
                original, library.half_to_interleaved_permutation(head_dim), num_heads),
        }
        if num_heads > 1:
            mistakes["you permuted all the rows as if the matrix were one head; each head's head_dim rows are "
                     "reordered on their own: weight.view(num_heads, head_dim, -1)[:, order]"] = _permute(
                original, library.interleaved_to_half_permutation(num_heads * head_dim), 1)
        check.close_or_diagnose(got, _permute(original, to_half, num_heads), mistakes, what=what, atol=0.0, rtol=0.0,
                                hint="within each head, new row j < d/2 is old row 2j and new row d/2 + j is old "
                                     "row 2j + 1")


# -- Exercise 5: Llama 3 frequencies ----------------------------------------------------------------

def _llama3_mistakes(inv_freq: torch.Tensor, factor: float, low: float, high: float,
                     original: int) -> dict[str, torch.Tensor]:
    f = inv_freq.double()

    def piecewise(wavelength: torch.Tensor, long_value: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
        long_edge, short_edge = original / low, original / high
        return torch.where(wavelength > long_edge, long_value, torch.where(wavelength < short_edge, f, band))

    wavelength = 2 * math.pi / f
    smooth = (original / wavelength - low) / (high - low)
    return {
        "you returned the frequencies unchanged; long wavelengths must be divided by factor": f,
        "you divided every frequency by factor: that is linear scaling (position interpolation). Llama 3 "
        "keeps the frequencies whose wavelength is shorter than original_max_len / high_freq_factor":
            f / factor,
        "you multiplied the long-wavelength frequencies by factor; stretching the context *divides* them "
        "(a slower turn, a longer wavelength)": piecewise(wavelength, f * factor, (1 - smooth) * f * factor + smooth * f),
        "your blend in the band runs the wrong way: at the long-wavelength edge (wavelength = original_max_len / "
        "low_freq_factor) it must give f / factor, at the short edge f. smooth = (original_max_len / wavelength "
        "- low_freq_factor) / (high_freq_factor - low_freq_factor) is the weight of f":
            piecewise(wavelength, f / factor, smooth * f / factor + (1 - smooth) * f),
        "you left the band between the two wavelengths unchanged; there Llama 3 blends f / factor and f "
        "smoothly": piecewise(wavelength, f / factor, f),
        "you divided the whole band by factor; there Llama 3 blends f / factor and f smoothly":
            piecewise(wavelength, f / factor, f / factor),
        "your wavelength is 1 / f; a pair turning at f radians per token comes back after 2 pi / f tokens":
            _llama3_reference_f64(f, factor, low, high, original, two_pi=1.0),
    }


def _llama3_reference_f64(f: torch.Tensor, factor: float, low: float, high: float, original: int,
                          two_pi: float = 2 * math.pi) -> torch.Tensor:
    wavelength = two_pi / f
    smooth = (original / wavelength - low) / (high - low)
    blend = (1 - smooth) * f / factor + smooth * f
    return torch.where(wavelength > original / low, f / factor, torch.where(wavelength < original / high, f, blend))


@exercise("Exercise 5 — Llama 3 frequency scaling", reference=reference_llama3_frequencies)
def llama3_frequencies(check: Check, fn: Callable) -> None:
    _forbid_library(check, "Exercise 5")
    # (head_dim, theta, factor, low_freq_factor, high_freq_factor, original_max_len)
    cases = [(128, 500000.0, 8.0, 1.0, 4.0, 8192), (64, 500000.0, 32.0, 1.0, 4.0, 8192),
             (64, 10000.0, 4.0, 2.0, 8.0, 1024)]
    if check.hidden:
        cases += [(16, 10000.0, 2.0, 1.0, 4.0, 64), (256, 1_000_000.0, 16.0, 1.0, 2.0, 4096),
                  (128, 500000.0, 8.0, 1.0, 4.0, 8192)]
    for head_dim, theta, factor, low, high, original in cases:
        inv_freq = _default_frequencies(head_dim, theta)
        scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                   "original_max_position_embeddings": original}
        expected = library.rope_parameters(head_dim, theta, scaling, 16 * original)[0]
        what = (f"llama3_frequencies(inv_freq of head_dim={head_dim}, base={theta:g}; factor={factor:g}, "
                f"low_freq_factor={low:g}, high_freq_factor={high:g}, original_max_len={original})")
        given = inv_freq.clone()
        got = check.call(fn, given, factor, low, high, original, what=what)
        check.expect(torch.equal(given, inv_freq), f"{what} changed inv_freq in place; return a new tensor")
        check.close_or_diagnose(got, expected, _llama3_mistakes(inv_freq, factor, low, high, original),
                                what=what, atol=0.0, rtol=FREQUENCY_RTOL,
                                hint="wavelength = 2 pi / f; keep f where wavelength < original_max_len / "
                                     "high_freq_factor, use f / factor where wavelength > original_max_len / "
                                     "low_freq_factor, and blend in between")
