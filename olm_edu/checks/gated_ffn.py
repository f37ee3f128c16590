"""Checks for lesson 11 — Gated feed-forwards (SwiGLU, GeGLU, the 8d/3 width).

The feed-forward checks give your module random weights by name (gate_proj, up_proj, down_proj,
the names of `olm_edu.nn.GatedFFN` and of transformers' LlamaMLP / Gemma2MLP) and compare its
output with the reference computed here in float64 with torch.nn.functional:

    y = down_proj(act(gate_proj(x)) * up_proj(x))

at atol=1e-5, rtol=1e-4 (three float32 matmuls; x * sigmoid(x) in place of F.silu, or the tanh
formula written out in place of F.gelu, pass). The gate's pre-activations have a standard
deviation of about 2, so the negative dip of SiLU, and the difference between the exact GELU and
its tanh form, are both exercised. When an output is wrong, the check computes the usual mistakes
from the same weights (gate and up swapped, the activation after the product, a sigmoid gate,
another activation) and names the one you made.

The width check compares with Llama's rule, hidden = int(2 * 4d / 3), times ffn_dim_multiplier
(truncated to an int), rounded up to a multiple of multiple_of, on the published Llama sizes and
small edge cases (8d/3 already a multiple; a multiplier), and names the usual mistakes (no
rounding, rounding down or to the nearest, 4d instead of 8d/3, the multiplier ignored or applied
after rounding).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from olm_edu.grading import Check, exercise
from olm_edu.nn import GatedFFN, SwiGLUFFN
from olm_edu.nn import gated_hidden_dim as library_gated_hidden_dim

ATOL, RTOL = 1e-5, 1e-4
PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


# -- shared helpers for the two feed-forward exercises --------------------------------------------

def _weights(check: Check, embed_dim: int, hidden_dim: int, bias: bool) -> dict[str, torch.Tensor]:
    """Random weights by name: matrices N(0, 1/fan_in), biases N(0, 0.3^2)."""
    shapes = ((hidden_dim, embed_dim), (hidden_dim, embed_dim), (embed_dim, hidden_dim))  # (out, in)
    weights = {}
    for name, (fan_out, fan_in) in zip(PROJECTIONS, shapes):
        weights[f"{name}.weight"] = check.randn(fan_out, fan_in) / fan_in**0.5
        if bias:
            weights[f"{name}.bias"] = 0.3 * check.randn(fan_out)
    return weights


def _load(check: Check, module: object, weights: dict[str, torch.Tensor], call: str, hint: str) -> None:
    """Copy `weights` into the learner's module; fail with the expected names when they differ."""
    __tracebackhide__ = True
    if not isinstance(module, nn.Module):
        check.fail(f"{call} should make an nn.Module, got {type(module).__name__}")
    theirs = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    ours = {name: tuple(t.shape) for name, t in weights.items()}
    if theirs != ours:
        biases = {name: shape for name, shape in ours.items() if name.endswith(".bias")}
        if biases and {n: s for n, s in theirs.items()} == {n: s for n, s in ours.items() if n not in biases}:
            check.fail(f"{call} made no biases although bias=True was passed: give each nn.Linear bias=bias "
                       "(the argument), not a fixed bias=False")
        missing = ", ".join(f"{n} {s}" for n, s in ours.items() if theirs.get(n) != s) or "none"
        extra = ", ".join(f"{n} {s}" for n, s in theirs.items() if ours.get(n) != s) or "none"
        check.fail(f"{call} does not hold the parameters the check expects. Missing or with another shape: "
                   f"{missing}; not expected: {extra}. Hint: {hint}")
    module.load_state_dict(weights)
    check.passed += 1


def _projections(weights: dict[str, torch.Tensor], x: torch.Tensor):
    """gate(x), up(x) and down(.) in float64."""
    w = {name: tensor.double() for name, tensor in weights.items()}
    x = x.double()
    gate = F.linear(x, w["gate_proj.weight"], w.get("gate_proj.bias"))
    up = F.linear(x, w["up_proj.weight"], w.get("up_proj.bias"))
    down = lambda h: F.linear(h, w["down_proj.weight"], w.get("down_proj.bias"))  # noqa: E731
    return gate, up, down


def _gelu_exact(t: torch.Tensor) -> torch.Tensor:
    return F.gelu(t)


def _gelu_tanh(t: torch.Tensor) -> torch.Tensor:
    return F.gelu(t, approximate="tanh")


def _common_mistakes(act: Callable, act_name: str, gate, up, down) -> dict[str, torch.Tensor]:
    """Mistakes any gated feed-forward can make, for the activation `act` called `act_name`."""
    return {
        f"you applied {act_name} to the up branch and left the gate plain (gate_proj and up_proj swapped): "
        f"the activation goes on the gate, down_proj({act_name}(gate_proj(x)) * up_proj(x))": down(act(up) * gate),
        f"you applied {act_name} after the product, to gate_proj(x) * up_proj(x); it goes on the gate alone, "
        f"before the product: down_proj({act_name}(gate_proj(x)) * up_proj(x))": down(act(gate * up)),
        f"you applied {act_name} to both branches; only the gate gets it, up_proj(x) passes unchanged":
            down(act(gate) * act(up)),
        "your feed-forward has no activation: gate_proj(x) * up_proj(x) is a plain (bilinear) product. "
        f"Apply {act_name} to the gate": down(gate * up),
        f"you applied {act_name} after down_proj; it goes on the gate, inside: "
        f"down_proj({act_name}(gate_proj(x)) * up_proj(x))": act(down(gate * up)),
        f"you left out the gate, down_proj(up_proj(x)): multiply up_proj(x) by {act_name}(gate_proj(x)) "
        "before down_proj": down(up),
    }


def _run_ffn(check: Check, module: nn.Module, call: str, weights: dict[str, torch.Tensor], shapes: list[tuple],
             act: Callable, mistakes_fn: Callable, hint: str) -> None:
    """Run the learner's module on inputs of each shape; compare with down(act(gate) * up), name mistakes."""
    for shape in shapes:
        x = check.randn(*shape, scale=2.0)  # gate pre-activations of standard deviation about 2
        gate, up, down = _projections(weights, x)
        what = f"{call} on a random {shape} tensor"
        got = check.call(module, x.clone(), what=what, hint=hint)
        mistakes = {message: wrong.float() for message, wrong in mistakes_fn(gate, up, down).items()}
        check.close_or_diagnose(got, down(act(gate) * up).float(), mistakes, what=what, atol=ATOL, rtol=RTOL, hint=hint)
        check.expect(got.dtype == torch.float32, f"{what}: a float32 input should give a float32 output, got {got.dtype}")


# -- the library's versions, with the exercises' signatures ------------------------------------
# What the cells after an unfinished exercise use until its check passes
# (`check.<exercise>.yours_or_reference(yours)`): the learner's notebook runs to the end either way.

def reference_swiglu(embed_dim: int, hidden_dim: int, bias: bool = False) -> nn.Module:
    """olm_edu.nn.SwiGLUFFN: the same gate_proj, up_proj and down_proj."""
    return SwiGLUFFN(embed_dim, hidden_dim, bias=bias)


def reference_geglu(embed_dim: int, hidden_dim: int, approximate: str = "tanh", bias: bool = False) -> nn.Module:
    """olm_edu.nn.GeGLUFFN (tanh GELU) or a GatedFFN with the exact GELU; the same layer names."""
    module = GatedFFN(embed_dim, hidden_dim, activation="gelu_tanh" if approximate == "tanh" else "gelu", bias=bias)
    module.approximate = approximate
    return module


def reference_gated_hidden_dim(embed_dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """olm_edu.nn.gated_hidden_dim, Llama's rule."""
    return library_gated_hidden_dim(embed_dim, multiple_of, ffn_dim_multiplier)


# -- Exercise 1: SwiGLU -----------------------------------------------------------------------------

_LAYER_NAMES = ("self.gate_proj = nn.Linear(embed_dim, hidden_dim, bias=bias), self.up_proj = nn.Linear(embed_dim, "
                 "hidden_dim, bias=bias), self.down_proj = nn.Linear(hidden_dim, embed_dim, bias=bias)")


def _swiglu_mistakes(gate, up, down) -> dict[str, torch.Tensor]:
    mistakes = {
        "you gated with a plain sigmoid, torch.sigmoid(gate); SiLU is the input times its sigmoid, "
        "gate * torch.sigmoid(gate) (a sigmoid gate is the original GLU, not SwiGLU)": down(torch.sigmoid(gate) * up),
        "you used GELU on the gate; that is GeGLU (Exercise 2). SwiGLU uses SiLU, gate * torch.sigmoid(gate)":
            down(F.gelu(gate) * up),
        "you used ReLU on the gate (ReGLU); SwiGLU uses SiLU, gate * torch.sigmoid(gate)": down(F.relu(gate) * up),
    }
    mistakes.update(_common_mistakes(F.silu, "SiLU", gate, up, down))
    return mistakes


@exercise("Exercise 1 — SwiGLU", reference=reference_swiglu)
def swiglu(check: Check, swiglu_class: Callable[..., nn.Module]) -> None:
    """SwiGLU(embed_dim, hidden_dim, bias=False): down(silu(gate x) * up x), SiLU written by hand."""
    check.forbid("torch.nn.functional.silu",
                 reason="Exercise 1 asks you to write SiLU yourself, gate * torch.sigmoid(gate) (nn.SiLU calls it too)")
    sizes = [(16, 40, False), (24, 64, True)]  # the exercise asks for bias=False and bias=True
    if check.hidden:
        sizes += [(32, 88, True), (8, 8, False), (1, 3, True)]
    hint = "self.down_proj(gate * torch.sigmoid(gate) * self.up_proj(x)) with gate = self.gate_proj(x)"
    for embed_dim, hidden_dim, bias in sizes:
        args, call = (embed_dim, hidden_dim), f"SwiGLU({embed_dim}, {hidden_dim})"
        kwargs = {"bias": True} if bias else {}
        if bias:
            call = f"SwiGLU({embed_dim}, {hidden_dim}, bias=True)"
        module = check.call(swiglu_class, *args, what=call, **kwargs)
        weights = _weights(check, embed_dim, hidden_dim, bias)
        _load(check, module, weights, call, _LAYER_NAMES + ("" if bias else " (no biases unless bias=True)"))
        # (..., embed_dim): three leading shapes in view, one more when grading
        shapes = [(2, 5, embed_dim), (3, embed_dim), (embed_dim,)] + ([(1, 1, 2, embed_dim)] if check.hidden else [])
        _run_ffn(check, module, call, weights, shapes, F.silu, _swiglu_mistakes, hint)


# -- Exercise 2: GeGLU ------------------------------------------------------------------------------

def _geglu_mistakes(approximate: str):
    asked, other = (_gelu_tanh, _gelu_exact) if approximate == "tanh" else (_gelu_exact, _gelu_tanh)

    def mistakes(gate, up, down) -> dict[str, torch.Tensor]:
        if approximate == "tanh":
            named = {"you used the exact GELU (erf) where approximate='tanh' asks for the tanh form, Gemma's GeGLU: "
                     "F.gelu(gate, approximate=self.approximate)": down(other(gate) * up)}
        else:
            named = {"you used the tanh form where approximate='none' asks for the exact GELU: pass the argument on, "
                     "F.gelu(gate, approximate=self.approximate)": down(other(gate) * up)}
        named["you used SiLU on the gate; that is SwiGLU (Exercise 1). GeGLU uses GELU"] = down(F.silu(gate) * up)
        named["you gated with a plain sigmoid; GeGLU multiplies up_proj(x) by GELU(gate_proj(x))"] = \
            down(torch.sigmoid(gate) * up)
        named.update(_common_mistakes(asked, "GELU", gate, up, down))
        return named

    return mistakes


@exercise("Exercise 2 — GeGLU", reference=reference_geglu)
def geglu(check: Check, geglu_class: Callable[..., nn.Module]) -> None:
    """GeGLU(embed_dim, hidden_dim, approximate="tanh", bias=False): down(gelu(gate x) * up x)."""
    cases = [(16, 40, None, False), (24, 64, "none", False), (8, 8, "none", True)]  # with and without biases
    if check.hidden:
        cases += [(32, 88, "tanh", True), (12, 20, "tanh", False)]
    for embed_dim, hidden_dim, approximate, bias in cases:
        kwargs = {}
        if approximate is not None:
            kwargs["approximate"] = approximate
        if bias:
            kwargs["bias"] = True
        call = f"GeGLU({embed_dim}, {hidden_dim}" + "".join(f", {k}={v!r}" for k, v in kwargs.items()) + ")"
        module = check.call(geglu_class, embed_dim, hidden_dim, what=call, **kwargs)
        weights = _weights(check, embed_dim, hidden_dim, bias)
        _load(check, module, weights, call, _LAYER_NAMES + "; store approximate as self.approximate")
        form = approximate or "tanh"
        act = _gelu_tanh if form == "tanh" else _gelu_exact
        hint = (f"self.down_proj(F.gelu(self.gate_proj(x), approximate=self.approximate) * self.up_proj(x)); "
                f"here approximate={form!r}")
        shapes = [(2, 6, embed_dim)] + ([(4, embed_dim)] if check.hidden else [])
        _run_ffn(check, module, call, weights, shapes, act, _geglu_mistakes(form), hint)


# -- Exercise 3: the gated width ------------------------------------------------------------------

def _llama_rule(embed_dim: int, multiple_of: int, multiplier: float | None) -> int:
    """Llama's reference code, written out independently of olm_edu.nn.ffn."""
    hidden = int(2 * (4 * embed_dim) / 3)
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def _two_thirds(embed_dim: int, multiplier: float | None) -> int:
    hidden = int(2 * (4 * embed_dim) / 3)
    return hidden if multiplier is None else int(multiplier * hidden)


# message -> the answer that mistake gives, as a function of (embed_dim, multiple_of, multiplier)
WIDTH_MISTAKES: dict[str, Callable[[int, int, float | None], int]] = {
    "you did not round: int(8 * embed_dim / 3) (times the multiplier) is the width before rounding; round it up to "
    "the next multiple of multiple_of": lambda d, m, k: _two_thirds(d, k),
    "you rounded down to a multiple of multiple_of (floor); Llama rounds up, so the width never falls below 8d/3: "
    "multiple_of * math.ceil(hidden / multiple_of)": lambda d, m, k: m * (_two_thirds(d, k) // m),
    "you rounded to the nearest multiple of multiple_of; Llama always rounds up: "
    "multiple_of * math.ceil(hidden / multiple_of)": lambda d, m, k: m * round(_two_thirds(d, k) / m),
    "when the width is already a multiple of multiple_of you add one more multiple; round up only when needed: "
    "multiple_of * math.ceil(hidden / multiple_of) (or (hidden + multiple_of - 1) // multiple_of * multiple_of)":
        lambda d, m, k: m * (_two_thirds(d, k) // m + 1),
    "you started from 4 * embed_dim, the classic MLP's width; a gated feed-forward has three matrices, so it starts "
    "from 2/3 of it, int(2 * 4 * embed_dim / 3)":
        lambda d, m, k: m * math.ceil((4 * d if k is None else int(k * 4 * d)) / m),
    "you ignored ffn_dim_multiplier: when it is not None, multiply the 8d/3 width by it (and truncate with int) "
    "before rounding": lambda d, m, k: _llama_rule(d, m, None),
    "you applied ffn_dim_multiplier after rounding; it scales the 8d/3 width before the rounding, so that the "
    "result is a multiple of multiple_of": lambda d, m, k: int(_llama_rule(d, m, None) * (k or 1)),
}

# (what, embed_dim, multiple_of, ffn_dim_multiplier); the Llama sizes are from Meta's params.json files
WIDTH_CASES = [
    ("Llama 2 7B (embed_dim=4096, multiple_of=256)", 4096, 256, None),
    ("Llama 3 8B (embed_dim=4096, multiple_of=1024, ffn_dim_multiplier=1.3)", 4096, 1024, 1.3),
    ("Llama 2 13B (embed_dim=5120, multiple_of=256)", 5120, 256, None),
    ("embed_dim=96, multiple_of=256 (8d/3 = 256 is already a multiple)", 96, 256, None),
    ("embed_dim=64, multiple_of=32", 64, 32, None),
    ("embed_dim=48, multiple_of=1 (no rounding at all)", 48, 1, None),
]
HIDDEN_WIDTH_CASES = [
    ("Llama 2 70B (embed_dim=8192, multiple_of=4096, ffn_dim_multiplier=1.3)", 8192, 4096, 1.3),
    ("Llama 3.1 405B (embed_dim=16384, multiple_of=4096, ffn_dim_multiplier=1.2)", 16384, 4096, 1.2),
    ("Llama 3.2 1B (embed_dim=2048, multiple_of=256, ffn_dim_multiplier=1.5)", 2048, 256, 1.5),
    ("embed_dim=100, multiple_of=64, ffn_dim_multiplier=1.5", 100, 64, 1.5),
    ("embed_dim=3, multiple_of=8", 3, 8, None),
    ("embed_dim=768, multiple_of=256 (GPT-2's width: 8d/3 = 2048)", 768, 256, None),
]


@exercise("Exercise 3 — the gated width", reference=reference_gated_hidden_dim)
def gated_hidden_dim(check: Check, fn: Callable[..., int]) -> None:
    """gated_hidden_dim(embed_dim, multiple_of=256, ffn_dim_multiplier=None) -> int, Llama's rule."""
    check.forbid("olm_edu.nn.gated_hidden_dim",
                 reason="Exercise 3 asks you to write Llama's rule yourself (the lesson compares the two afterwards)")
    cases = WIDTH_CASES + (HIDDEN_WIDTH_CASES if check.hidden else [])
    answers = []
    for what, embed_dim, multiple_of, multiplier in cases:
        call = f"gated_hidden_dim({embed_dim}, multiple_of={multiple_of}, ffn_dim_multiplier={multiplier})"
        answers.append(check.call(fn, embed_dim, multiple_of=multiple_of, ffn_dim_multiplier=multiplier, what=call))
    defaults = check.call(fn, 4096, what="gated_hidden_dim(4096) with the default multiple_of and ffn_dim_multiplier")

    for (what, embed_dim, multiple_of, multiplier), got in zip(cases, answers):
        if not isinstance(got, int) or isinstance(got, bool):
            check.fail(f"on {what}: return an int (a width counts features), got {type(got).__name__} {got!r}. "
                       "Hint: `/` gives a float; math.ceil and // give ints")
    wrong = [(case, got) for case, got in zip(cases, answers) if got != _llama_rule(*case[1:])]
    if wrong:
        for message, mistake in WIDTH_MISTAKES.items():
            if all(mistake(*case[1:]) == got for case, got in zip(cases, answers)):
                check.fail(message)
        (what, embed_dim, multiple_of, multiplier), got = wrong[0]
        check.fail(f"on {what}: expected {_llama_rule(embed_dim, multiple_of, multiplier)}, got {got}. Hint: "
                   "hidden = int(2 * 4 * embed_dim / 3); if ffn_dim_multiplier is not None, hidden = "
                   "int(ffn_dim_multiplier * hidden); then round up to a multiple of multiple_of")
    check.passed += len(cases)
    check.equal(defaults, 11008, what="gated_hidden_dim(4096) with the defaults (multiple_of=256, no multiplier)",
                hint="give multiple_of the default 256 and ffn_dim_multiplier the default None")
