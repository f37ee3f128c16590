"""Checks for lesson 04 — The block (LayerNorm, GELU, the MLP, the pre-norm block).

Each check builds the learner's module, gives it the weights of an independent reference
(`torch.nn.functional.layer_norm`, `F.gelu`, `olm_edu.nn`), and compares outputs on fresh random
inputs and edge cases. When the output is wrong, the check also computes the outputs of the
usual mistakes (the unbiased variance, the wrong dimension, post-norm, a missing residual, ...)
and names the mistake the learner's output matches.

Tolerances (float32): LayerNorm, the MLP and the block atol=1e-5, rtol=1e-4 (a mean, a variance
and a square root, or a few matmuls, in any order); GELU atol=1e-6, rtol=1e-5.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from olm_edu.grading import Check, exercise
from olm_edu.nn import Attention, ClassicFFN
from olm_edu.nn import LayerNorm as ReferenceLayerNorm
from olm_edu.nn.activations import get_activation

_BUILTIN_LAYER_NORM = (
    "torch.nn.functional.layer_norm",
    "torch.layer_norm",
    "torch.native_layer_norm",
    "torch.nn.LayerNorm",
)
GPT2_EPS = 1e-5


# -- Exercise 1: LayerNorm ---------------------------------------------------------------------

def _normalise(x: torch.Tensor, dims: tuple[int, ...], eps: float, unbiased: bool = False) -> torch.Tensor:
    mean = x.mean(dim=dims, keepdim=True)
    variance = x.var(dim=dims, keepdim=True, unbiased=unbiased)
    return (x - mean) / torch.sqrt(variance + eps)


def _layer_norm_mistakes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> dict[str, torch.Tensor]:
    mistakes = {
        "you divided by d - 1 (the unbiased variance, which is what torch.var computes by default); LayerNorm "
        "divides by d. Use x.var(dim=-1, keepdim=True, unbiased=False), or ((x - mean) ** 2).mean(dim=-1, keepdim=True)":
            _normalise(x, (-1,), eps, unbiased=True) * weight + bias,
        "you did not apply the learned gain and bias: multiply the normalised x by self.weight and add self.bias":
            _normalise(x, (-1,), eps),
    }
    every_dim = tuple(range(x.dim()))
    for dim in every_dim[:-1]:
        mistakes[f"you normalised over dimension {dim} (across different vectors); LayerNorm normalises each "
                 "vector over its own features, the last dimension: mean(dim=-1, keepdim=True)"] = (
            _normalise(x, (dim,), eps) * weight + bias)
    mistakes["you normalised over the whole tensor at once; LayerNorm normalises each vector over its own "
             "features, the last dimension: mean(dim=-1, keepdim=True)"] = _normalise(x, every_dim, eps) * weight + bias
    return mistakes


def _check_layer_norm_parameters(check: Check, layer: object, dim: int, eps: float) -> None:
    check.expect(isinstance(layer, nn.Module), f"LayerNorm({dim}) should make an nn.Module, got {type(layer).__name__}")
    for name, start, role in (("weight", 1.0, "gain"), ("bias", 0.0, "bias")):
        parameter = getattr(layer, name, None)
        check.expect(isinstance(parameter, nn.Parameter),
                     f"LayerNorm({dim}).{name} should be an nn.Parameter (the learned {role}), got "
                     f"{type(parameter).__name__}. Hint: self.{name} = nn.Parameter(torch.{'ones' if start else 'zeros'}(dim))")
        check.expect(tuple(parameter.shape) == (dim,),
                     f"LayerNorm({dim}).{name} should have shape ({dim},), got {tuple(parameter.shape)}")
        check.expect(bool((parameter == start).all()),
                     f"LayerNorm({dim}).{name} should start at {start:g} everywhere, so that a new LayerNorm only normalises")
    registered = {id(p) for p in layer.parameters()}
    check.expect(id(layer.weight) in registered and id(layer.bias) in registered,
                 f"LayerNorm({dim}).parameters() should contain weight and bias (assign them as nn.Parameter attributes)")
    check.expect(getattr(layer, "eps", None) == eps, f"LayerNorm({dim}, eps={eps}).eps should be {eps}, got "
                 f"{getattr(layer, 'eps', None)!r}. Hint: store the eps argument as self.eps")


def _reference_layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """F.layer_norm computed in float64 (so the reference adds no rounding of its own), returned in x's dtype."""
    as64 = lambda t: None if t is None else t.double()
    return F.layer_norm(x.double(), x.shape[-1:], as64(weight), as64(bias), eps).to(x.dtype)


def _randomise_affine(check: Check, layer: nn.Module, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    weight, bias = 1.0 + 0.5 * check.randn(dim), 0.5 * check.randn(dim)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return weight, bias


@exercise("Exercise 1 — LayerNorm", reference=ReferenceLayerNorm)
def layer_norm(check: Check, layer_norm_class: Callable[..., nn.Module]) -> None:
    """LayerNorm(dim, eps=1e-5) with weight/bias parameters, no built-in layer_norm."""
    check.forbid(*_BUILTIN_LAYER_NORM, reason="Exercise 1 asks you to write LayerNorm from a mean, a variance and a square root")
    atol, rtol = 1e-5, 1e-4
    keep_dim = "keep the reduced dimension so it broadcasts: x.mean(dim=-1, keepdim=True)"
    dims = (16, 32) + ((7, 768) if check.hidden else ())
    for dim in dims:
        layer = check.call(layer_norm_class, dim, what=f"LayerNorm({dim})")
        _check_layer_norm_parameters(check, layer, dim, GPT2_EPS)
        weight, bias = _randomise_affine(check, layer, dim)
        for shape in ((4, dim), (2, 5, dim)):
            x = check.randn(*shape, scale=3.0) + 2.0 * check.randn(*shape[:-1], 1)  # each vector its own offset
            what = f"LayerNorm({dim}) on a random {shape} tensor"
            got = check.call(layer, x.clone(), what=what, hint=keep_dim)
            check.close_or_diagnose(got, _reference_layer_norm(x, weight, bias, GPT2_EPS), _layer_norm_mistakes(x, weight, bias, GPT2_EPS),
                      what=what, atol=atol, rtol=rtol,
                      hint="subtract the mean over the last dimension, divide by sqrt(variance + eps), then "
                           "multiply by self.weight and add self.bias")

        constant = torch.stack([torch.full((dim,), 2.5), torch.full((dim,), -1.0)])  # (2, dim)
        what = f"LayerNorm({dim}) on rows whose entries are all equal (variance 0)"
        got = check.call(layer, constant, what=what)
        check.close(got, _reference_layer_norm(constant, weight, bias, GPT2_EPS), what=what, atol=atol, rtol=rtol,
                    hint="with variance 0, x - mean is 0 and you divide 0 by sqrt(0): add eps to the variance inside "
                         "the square root, (x - mean) / sqrt(var + self.eps), and the output is just the bias")

        tiny = 0.01 + 1e-3 * check.randn(3, dim)  # variance about 1e-6, well below eps
        what = f"LayerNorm({dim}) on rows with a tiny variance (about 1e-6, smaller than eps=1e-5)"
        got = check.call(layer, tiny, what=what)
        check.close(got, _reference_layer_norm(tiny, weight, bias, GPT2_EPS), what=what, atol=atol, rtol=rtol,
                    hint="here eps decides the output: add self.eps to the variance *inside* the square root, "
                         "(x - mean) / sqrt(var + eps); leaving eps out, or adding it to the standard deviation, "
                         "blows such rows up")

    if check.hidden:
        layer = check.call(layer_norm_class, 1, what="LayerNorm(1)")
        single = check.randn(3, 1)
        got = check.call(layer, single, what="LayerNorm(1) on a (3, 1) tensor")
        check.close(got, torch.zeros(3, 1), what="LayerNorm(1) (one feature: the variance is 0)", atol=atol, rtol=rtol,
                    hint="with one feature the variance is 0 and the unbiased variance divides by d - 1 = 0")
        layer = check.call(layer_norm_class, 24, eps=1e-3, what="LayerNorm(24, eps=1e-3)")
        _check_layer_norm_parameters(check, layer, 24, 1e-3)
        tiny = 0.01 + 1e-2 * check.randn(3, 24)
        got = check.call(layer, tiny, what="LayerNorm(24, eps=1e-3)")
        check.close(got, _reference_layer_norm(tiny, None, None, 1e-3), what="LayerNorm(24, eps=1e-3) on tiny-variance rows",
                    atol=atol, rtol=rtol, hint="use self.eps, not a hard-coded 1e-5")


# -- Exercise 2: GELU, tanh form ---------------------------------------------------------------

@exercise("Exercise 2 — GELU, GPT-2's tanh form", reference=get_activation("gelu_tanh"))
def gelu_tanh(check: Check, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    check.forbid("torch.nn.functional.gelu", reason="Exercise 2 asks you to write the tanh formula yourself")
    cases = [
        ("evenly spaced points from -6 to 6", torch.linspace(-6.0, 6.0, 121)),
        ("a random (4, 8) tensor", check.randn(4, 8, scale=3.0)),
        ("large inputs ±30 and ±100", torch.tensor([-100.0, -30.0, 30.0, 100.0])),
    ]
    if check.hidden:
        cases += [("a random (2, 3, 5) tensor", check.randn(2, 3, 5, scale=2.0)), ("zeros", torch.zeros(6))]
    formula = "0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))"
    for what, x in cases:
        original = x.clone()
        got = check.call(fn, x, what=what, hint=f"compute {formula}")
        mistakes = {
            "this is the exact GELU, x * Phi(x) (with erf); this exercise asks for GPT-2's tanh approximation": F.gelu(original),
        }
        check.close_or_diagnose(got, F.gelu(original, approximate="tanh"), mistakes, what=f"gelu_tanh of {what}",
                  atol=1e-6, rtol=1e-5, hint=f"compute {formula}; use torch.tanh, which stays finite for large inputs")
        check.expect(torch.equal(x, original), "your gelu_tanh changed its input tensor in place; compute on a new tensor")
    if check.hidden:
        doubles = check.randn(5, dtype=torch.float64)
        got = check.call(fn, doubles, what="a float64 tensor")
        check.expect(isinstance(got, torch.Tensor) and got.dtype == torch.float64,
                     "a float64 input should give a float64 output")


# -- Exercise 3: the MLP -------------------------------------------------------------------------

def _expected_names(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


def _list(names: dict[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{name} {shape}" for name, shape in names.items()) or "none"


def _randomise(module: nn.Module, generator: torch.Generator, scale: float = 1.0) -> None:
    """Matrices N(0, 1/fan_in) and vectors (biases) N(0, 0.3^2): far from the zero-bias defaults."""
    with torch.no_grad():
        for parameter in module.parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.copy_(noise * scale / parameter.shape[1] ** 0.5 if parameter.dim() == 2 else 0.3 * noise)


def _load(check: Check, learner: nn.Module, weights: dict[str, torch.Tensor], what: str, hint: str) -> None:
    """Copy `weights` into the learner's module, failing with the expected names when they differ."""
    __tracebackhide__ = True
    if not isinstance(learner, nn.Module):
        check.fail(f"{what} should make an nn.Module, got {type(learner).__name__}")
    theirs = _expected_names(learner)
    ours = {name: tuple(tensor.shape) for name, tensor in weights.items()}
    if theirs != ours:
        missing = {n: s for n, s in ours.items() if theirs.get(n) != s}
        extra = {n: s for n, s in theirs.items() if ours.get(n) != s}
        check.fail(f"{what} does not hold the parameters the check expects. Missing or with another shape: "
                   f"{_list(missing)}; not expected: {_list(extra)}. Hint: {hint}")
    learner.load_state_dict(weights)
    check.passed += 1


@exercise("Exercise 3 — the MLP", reference=ClassicFFN)
def mlp(check: Check, mlp_class: Callable[..., nn.Module]) -> None:
    sizes = [(16, None), (24, None)] + ([(32, 40), (8, None)] if check.hidden else [])
    for embed_dim, hidden_dim in sizes:
        call = f"MLP({embed_dim})" if hidden_dim is None else f"MLP({embed_dim}, hidden_dim={hidden_dim})"
        args = (embed_dim,) if hidden_dim is None else (embed_dim, hidden_dim)
        module = check.call(mlp_class, *args, what=call)
        reference = ClassicFFN(embed_dim, hidden_dim, activation="gelu_tanh")
        _randomise(reference, check.generator)
        width = hidden_dim or 4 * embed_dim
        _load(check, module, reference.state_dict(), call,
              f"self.up_proj = nn.Linear(embed_dim, hidden_dim) and self.down_proj = nn.Linear(hidden_dim, embed_dim), "
              f"with hidden_dim = 4 * embed_dim = {4 * embed_dim} unless it is given (here {width})")
        x = check.randn(2, 5, embed_dim)
        with torch.no_grad():
            expected = reference(x)
            up = reference.up_proj(x)
            mistakes = {
                "your MLP has no activation between its two layers, so the two matrices collapse into a single "
                "linear map: apply gelu_tanh to the output of up_proj": reference.down_proj(up),
                "you used the exact GELU (nn.GELU() or F.gelu(x)); GPT-2 uses the tanh form, your gelu_tanh":
                    reference.down_proj(F.gelu(up)),
                "you used ReLU; GPT-2's MLP uses GELU in its tanh form (your gelu_tanh)": reference.down_proj(F.relu(up)),
                "you applied the activation after down_proj; it goes between the two layers: "
                "down_proj(gelu_tanh(up_proj(x)))": F.gelu(reference.down_proj(up), approximate="tanh"),
            }
        got = check.call(module, x, what=f"{call} on a random (2, 5, {embed_dim}) tensor")
        check.close_or_diagnose(got, expected, mistakes, what=f"{call} on a random (2, 5, {embed_dim}) tensor", atol=1e-5, rtol=1e-4,
                  hint="self.down_proj(gelu_tanh(self.up_proj(x))); if this looks right, check that Exercise 2 passes")


# -- Exercise 4: the pre-norm block ------------------------------------------------------------

BLOCK_PARTS = ("ln1", "attn", "ln2", "mlp")


def _reference_parts(embed_dim: int, num_heads: int, generator: torch.Generator) -> dict[str, nn.Module]:
    parts = {
        "ln1": ReferenceLayerNorm(embed_dim),
        "attn": Attention(embed_dim, num_heads, bias=True, implementation="explicit"),
        "ln2": ReferenceLayerNorm(embed_dim),
        "mlp": ClassicFFN(embed_dim, activation="gelu_tanh"),
    }
    for name, part in parts.items():
        _randomise(part, generator)
        if name.startswith("ln"):
            with torch.no_grad():
                part.weight.copy_(1.0 + 0.3 * torch.randn(embed_dim, generator=generator))
    return parts


def _block_outputs(x: torch.Tensor, p: dict[str, nn.Module]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The pre-norm block, and the usual mistakes, computed from the reference parts."""
    ln1, attn, ln2, mlp = (p[name] for name in BLOCK_PARTS)
    with torch.no_grad():
        h = x + attn(ln1(x))
        expected = h + mlp(ln2(h))
        post = ln1(x + attn(x))
        post = ln2(post + mlp(post))
        no_residual = mlp(ln2(attn(ln1(x))))
        normed = ln1(x)
        normed = normed + attn(normed)
        normed_2 = ln2(normed)
        normed_residual = normed_2 + mlp(normed_2)
        same_norm = h + mlp(ln1(h))
        parallel = x + attn(ln1(x)) + mlp(ln2(x))
        attention_only = h
    mistakes = {
        "your block normalises after adding (post-norm, ln(x + sublayer(x)), the 2017 layout); GPT-2 is pre-norm: "
        "x = x + self.attn(self.ln1(x)), then x = x + self.mlp(self.ln2(x))": post,
        "your block has no residual connections: add each sub-layer's output to x, x = x + self.attn(self.ln1(x))":
            no_residual,
        "you added the sub-layer's output to the normalised x; the residual adds it to x itself: "
        "x = x + self.attn(self.ln1(x))": normed_residual,
        "your MLP sub-layer uses ln1; each sub-layer has its own norm: x = x + self.mlp(self.ln2(x))": same_norm,
        "your MLP sees the block's input, not x after the attention sub-layer was added; the two sub-layers run "
        "one after the other": parallel,
        "your block stops after the attention sub-layer; add the MLP sub-layer: x = x + self.mlp(self.ln2(x))":
            attention_only,
    }
    return expected, mistakes


class ReferencePreNormBlock(nn.Module):
    """GPT-2's pre-norm block from the library's parts, under Exercise 4's names.
    Shapes: x (B, T, embed_dim) -> (B, T, embed_dim)."""

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        self.ln1 = ReferenceLayerNorm(embed_dim)
        self.attn = Attention(embed_dim, num_heads, bias=True)
        self.ln2 = ReferenceLayerNorm(embed_dim)
        self.mlp = ClassicFFN(embed_dim, activation="gelu_tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


@exercise("Exercise 4 — the pre-norm block", reference=ReferencePreNormBlock)
def block(check: Check, block_class: Callable[..., nn.Module]) -> None:
    configs = [(32, 4)] + ([(48, 6), (16, 1)] if check.hidden else [])
    for embed_dim, num_heads in configs:
        call = f"PreNormBlock({embed_dim}, {num_heads})"
        learner = check.call(block_class, embed_dim, num_heads, what=call)
        parts = _reference_parts(embed_dim, num_heads, check.generator)
        weights = {f"{prefix}.{name}": tensor for prefix in BLOCK_PARTS for name, tensor in parts[prefix].state_dict().items()}
        _load(check, learner, weights, call,
              "self.ln1 = LayerNorm(embed_dim), self.attn = Attention(embed_dim, num_heads, bias=True), "
              "self.ln2 = LayerNorm(embed_dim), self.mlp = MLP(embed_dim)")
        for shape in ((2, 7, embed_dim), (1, 1, embed_dim)):
            x = check.randn(*shape)
            expected, mistakes = _block_outputs(x, parts)
            what = f"{call} on a random {shape} tensor"
            got = check.call(learner, x, what=what)
            check.close_or_diagnose(got, expected, mistakes, what=what, atol=1e-5, rtol=1e-4,
                      hint="x = x + self.attn(self.ln1(x)); x = x + self.mlp(self.ln2(x)); if this looks right, "
                           "check that Exercises 1 and 3 pass")
