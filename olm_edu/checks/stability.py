"""Checks for lesson 14 — Qwen and stability (QK-norm attention, the z-loss, logit soft-capping).

Each check compares the learner's object with a reference on fresh random inputs and, when the
answer is wrong, computes what the usual mistakes would output (QK-norm after RoPE instead of
before, one norm shared by queries and keys, the square left out of the z-loss, tanh(x) instead
of tanh(x / cap), ...) and names the one the answer matches.

References: the library's `olm_edu.nn.Attention(position="rope", qk_norm=True)` run in float64 on
the learner's weights; `torch.logsumexp` for the z-loss; cap * tanh(x / cap) in float64 for the
soft-cap. The mistakes are written out here, line by line, in float64.

Tolerances (float32): attention atol=1e-5, rtol=1e-4 (projections, two norms, a rotation and a
softmax, in any order); z-loss rtol=1e-5 (a log-sum-exp and a mean); soft-cap atol=1e-5 (times cap / 10 above cap 10), rtol=1e-5.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from olm_edu.grading import Check, exercise
from olm_edu.nn import Attention, router_z_loss
from olm_edu.nn import softcap as library_softcap
from olm_edu.nn.positions import RotaryEmbedding, apply_rotary

ROPE_THETA = 10_000.0
NORM_EPS = 1e-6
_PARAMETERS = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "q_norm.weight", "k_norm.weight")


# -- the library's versions, with the exercises' signatures ------------------------------------
# What the cells after an unfinished exercise use until its check passes
# (`check.<exercise>.yours_or_reference(yours)`): the learner's notebook runs to the end either way.

def reference_qk_norm_attention(embed_dim: int, num_heads: int, num_kv_heads: int, head_dim: int,
                                rope_theta: float = 1_000_000.0, eps: float = 1e-6, max_seq_len: int = 4096) -> nn.Module:
    """olm_edu.nn.Attention with qk_norm=True, RoPE and no biases: the same q/k/v/o_proj and q/k_norm."""
    return Attention(embed_dim, num_heads, num_kv_heads, head_dim, bias=False, position="rope", qk_norm=True,
                     rope_theta=rope_theta, norm_eps=eps, max_seq_len=max_seq_len)


def reference_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """olm_edu.nn.router_z_loss: the mean over positions of logsumexp(logits)^2."""
    return router_z_loss(logits)


def reference_softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """olm_edu.nn.softcap: cap * tanh(x / cap), or x when cap is None."""
    return library_softcap(x, cap)


# ---------------------------------------------------------------------------
# Exercise 1 — attention with QK-norm
# ---------------------------------------------------------------------------


def _rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + NORM_EPS) * weight


def _attention_variant(
    x: torch.Tensor,
    weights: dict[str, torch.Tensor],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    *,
    norm: str = "before",
    rope: bool = True,
    scale: float | None = None,
    causal: bool = True,
    kv_order: str = "grouped",
) -> torch.Tensor:
    """Attention with QK-norm written out in float64, with one knob per usual mistake.

    norm: "before" (correct: per-head RMSNorm, then RoPE), "after" (RoPE, then the norms),
    "shared" (q_norm on the keys too), "swapped", "q_only", "k_only", "none", "whole" (each
    token's whole H * head_dim query (key) normalised at once, then the per-head gain).
    kv_order: "grouped" (query head h reads key/value head h // groups), "tiled" (h % H_kv).
    """
    w = {name: value.double() for name, value in weights.items()}
    x = x.double()
    batch, length, _ = x.shape
    q_flat, k_flat, v_flat = x @ w["q_proj.weight"].T, x @ w["k_proj.weight"].T, x @ w["v_proj.weight"].T
    if norm == "whole":
        q_flat = _rms_norm(q_flat, 1.0)
        k_flat = _rms_norm(k_flat, 1.0)
    q = q_flat.view(batch, length, num_heads, head_dim).transpose(1, 2)  # (B, H, T, d)
    k = k_flat.view(batch, length, num_kv_heads, head_dim).transpose(1, 2)  # (B, H_kv, T, d)
    v = v_flat.view(batch, length, num_kv_heads, head_dim).transpose(1, 2)
    gains = {
        "before": ("q_norm.weight", "k_norm.weight"), "after": ("q_norm.weight", "k_norm.weight"),
        "shared": ("q_norm.weight", "q_norm.weight"), "swapped": ("k_norm.weight", "q_norm.weight"),
        "q_only": ("q_norm.weight", None), "k_only": (None, "k_norm.weight"), "none": (None, None),
    }  # fmt: skip

    def normalise(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if norm == "whole":
            return q * w["q_norm.weight"], k * w["k_norm.weight"]
        q_gain, k_gain = gains[norm]
        return (q if q_gain is None else _rms_norm(q, w[q_gain])), (k if k_gain is None else _rms_norm(k, w[k_gain]))

    if norm != "after":
        q, k = normalise(q, k)
    if rope:
        cos, sin = RotaryEmbedding(head_dim, ROPE_THETA, max_seq_len=4096)(torch.arange(length))
        q, k = apply_rotary(q, cos.double(), sin.double()), apply_rotary(k, cos.double(), sin.double())
    if norm == "after":
        q, k = normalise(q, k)
    groups = num_heads // num_kv_heads
    index = torch.arange(num_heads) // groups if kv_order == "grouped" else torch.arange(num_heads) % num_kv_heads
    k, v = k[:, index], v[:, index]  # (B, H, T, d)
    scores = q @ k.transpose(-2, -1) * (head_dim**-0.5 if scale is None else scale)  # (B, H, T, T)
    if causal:
        scores = scores.masked_fill(~torch.ones(length, length, dtype=torch.bool).tril(), float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v  # (B, H, T, d)
    return out.transpose(1, 2).reshape(batch, length, num_heads * head_dim) @ w["o_proj.weight"].T


def _attention_mistakes(x, weights, num_heads, num_kv_heads, head_dim, embed_dim) -> dict[str, torch.Tensor]:
    shape = (x, weights, num_heads, num_kv_heads, head_dim)
    mistakes = {
        "you applied QK-norm AFTER RoPE. Qwen 3 normalises each head's queries and keys BEFORE the rotation: "
        "q, k = self.q_norm(q), self.k_norm(k) first, then apply_rotary. (With gains of 1 the order would not "
        "matter, since a rotation keeps the RMS; the learned gains make it matter.)":
            _attention_variant(*shape, norm="after"),
        "you normalised the keys with self.q_norm: one norm shared by queries and keys. Queries and keys have "
        "their own gains: k = self.k_norm(k)": _attention_variant(*shape, norm="shared"),
        "you swapped the norms: the queries go through self.q_norm, the keys through self.k_norm":
            _attention_variant(*shape, norm="swapped"),
        "you normalised the queries but not the keys: apply self.k_norm to the keys as well":
            _attention_variant(*shape, norm="q_only"),
        "you normalised the keys but not the queries: apply self.q_norm to the queries as well":
            _attention_variant(*shape, norm="k_only"),
        "your output is attention WITHOUT QK-norm: apply self.q_norm and self.k_norm to each head's queries and "
        "keys (shape (B, H, T, head_dim)) before RoPE": _attention_variant(*shape, norm="none"),
        "you normalised each token's whole query (key) vector, all heads together (H * head_dim numbers). QK-norm "
        "normalises each head on its own: split the heads first, then self.q_norm(q) on (B, H, T, head_dim)":
            _attention_variant(*shape, norm="whole"),
        "your queries and keys are not rotated: after the norms, apply RoPE with cos, sin = "
        "self.rotary(torch.arange(T)) and apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)":
            _attention_variant(*shape, rope=False),
        "you did not scale the scores: divide q k^T by sqrt(head_dim) (F.scaled_dot_product_attention does it "
        "for you)": _attention_variant(*shape, scale=1.0),
        "you attend without the causal mask, so each position sees the future: mask the scores above the "
        "diagonal (or pass is_causal=True to F.scaled_dot_product_attention)": _attention_variant(*shape, causal=False),
    }
    if embed_dim != head_dim:
        mistakes[f"you scaled the scores by 1/sqrt(embed_dim) = 1/sqrt({embed_dim}); the scale is 1/sqrt(head_dim) = "
                 f"1/sqrt({head_dim})"] = _attention_variant(*shape, scale=embed_dim**-0.5)
    if 1 < num_kv_heads < num_heads:
        mistakes["your key/value heads are repeated in the wrong order (tiled, as k.repeat(1, groups, 1, 1) does): "
                 "query head h must read key/value head h // groups. Use repeat_kv(k, groups), or "
                 "k.repeat_interleave(groups, dim=1)"] = _attention_variant(*shape, kv_order="tiled")
    return mistakes


def _random_weights(check: Check, embed_dim: int, num_heads: int, num_kv_heads: int, head_dim: int) -> dict[str, torch.Tensor]:
    """Projections large enough that the scores are far from 0; gains far from 1 and unequal,
    so that the order of norm and rotation shows."""
    projection = lambda rows, columns: check.randn(rows, columns, scale=1.5 / math.sqrt(columns))
    return {
        "q_proj.weight": projection(num_heads * head_dim, embed_dim),
        "k_proj.weight": projection(num_kv_heads * head_dim, embed_dim),
        "v_proj.weight": projection(num_kv_heads * head_dim, embed_dim),
        "o_proj.weight": projection(embed_dim, num_heads * head_dim),
        "q_norm.weight": 1.0 + 0.6 * check.randn(head_dim),
        "k_norm.weight": 1.0 + 0.6 * check.randn(head_dim),
    }


def _reference_attention(x, weights, embed_dim, num_heads, num_kv_heads, head_dim) -> torch.Tensor:
    """The library's attention (olm_edu.nn.Attention) in float64 on the same weights."""
    reference = Attention(embed_dim, num_heads, num_kv_heads, head_dim, position="rope", qk_norm=True,
                          rope_theta=ROPE_THETA, norm_eps=NORM_EPS, max_seq_len=4096, implementation="explicit")
    reference.load_state_dict(weights)
    with torch.no_grad():
        return reference.double()(x.double())


@exercise("Exercise 1 — attention with QK-norm", reference=reference_qk_norm_attention)
def qk_norm_attention(check: Check, attention_class: Callable[..., nn.Module]) -> None:
    # the last visible case has num_heads * head_dim = 96 != embed_dim = 48 (as Qwen 3 often has):
    # head_dim is an argument, not embed_dim // num_heads
    cases = [(32, 4, 2, 8, 7), (24, 2, 2, 12, 6), (48, 6, 3, 16, 9)]
    if check.hidden:
        cases += [(64, 8, 1, 8, 12), (16, 4, 4, 4, 1), (20, 4, 2, 8, 5)]
    for embed_dim, num_heads, num_kv_heads, head_dim, length in cases:
        call = f"QKNormAttention(embed_dim={embed_dim}, num_heads={num_heads}, num_kv_heads={num_kv_heads}, head_dim={head_dim})"
        module = check.call(attention_class, embed_dim, num_heads, num_kv_heads, head_dim, rope_theta=ROPE_THETA,
                            eps=NORM_EPS, what=call)
        check.expect(isinstance(module, nn.Module), f"{call} should make an nn.Module, got {type(module).__name__}")
        names = set(module.state_dict())
        missing = [name for name in _PARAMETERS if name not in names]
        check.expect(not missing, f"{call} has no {', '.join(missing)}: keep the __init__ as given (q_proj, k_proj, "
                     "v_proj, o_proj, q_norm, k_norm)")
        weights = _random_weights(check, embed_dim, num_heads, num_kv_heads, head_dim)
        with torch.no_grad():
            for name, value in weights.items():
                module.get_parameter(name).copy_(value)
        x = check.randn(2, length, embed_dim)
        what = f"{call} on a random (2, {length}, {embed_dim}) input"
        own_width = "" if num_heads * head_dim == embed_dim else (
            f"; here head_dim={head_dim} is not embed_dim // num_heads = {embed_dim // num_heads}: take the head "
            f"width from self.head_dim, and merge the heads back to num_heads * head_dim = {num_heads * head_dim}, "
            f"not embed_dim")
        got = check.call(module, x.clone(), what=what,
                         hint="check the shapes: q is (B, num_heads, T, head_dim), k and v are (B, num_kv_heads, T, "
                              "head_dim); q_norm and k_norm hold head_dim gains, so apply them after splitting the "
                              "heads" + own_width)
        expected = _reference_attention(x, weights, embed_dim, num_heads, num_kv_heads, head_dim)
        check.close_or_diagnose(
            got, expected, _attention_mistakes(x, weights, num_heads, num_kv_heads, head_dim, embed_dim),
            what=what, atol=1e-5, rtol=1e-4,
            hint="project, split into heads, q_norm / k_norm on each head, RoPE, repeat the key/value heads, causal "
                 "softmax(q k^T / sqrt(head_dim)) v, merge the heads, o_proj")


# ---------------------------------------------------------------------------
# Exercise 2 — the z-loss
# ---------------------------------------------------------------------------

ZLossFn = Callable[[torch.Tensor], torch.Tensor]


def _log_partition(logits: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits.double(), dim=-1)  # (...,) log Z of each position


def _z_loss_mistakes(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    log_z = _log_partition(logits)
    mistakes = {
        "you did not square log Z: the z-loss is the mean of (log Z)^2, which is 0 only when log Z = 0 (a plain "
        "mean of log Z would reward pushing it to minus infinity)": log_z.mean(),
        "you summed (log Z)^2 over the positions; the z-loss is their MEAN, so that its size does not depend on "
        "the batch size or the sequence length": log_z.square().sum(),
        "you squared the mean of log Z; square each position's log Z first, then take the mean":
            log_z.mean().square(),
        "you penalised the squared logits; the z-loss penalises the squared log-partition function "
        "log Z = log sum_j exp(z_j) of each position": logits.double().square().mean(),
        "you used each position's largest logit instead of log Z = log sum_j exp(z_j) (torch.logsumexp over the "
        "last axis)": logits.double().amax(dim=-1).square().mean(),
        "you squared Z itself; the z-loss squares its log: (log sum_j exp(z_j))^2":
            logits.double().exp().sum(dim=-1).square().mean(),
    }
    if logits.dim() >= 2 and logits.shape[0] > 1:
        wrong_axis = torch.logsumexp(logits.double(), dim=0)
        mistakes["you took the log-sum-exp over the first axis; Z sums over the vocabulary, the LAST axis "
                 "(dim=-1)"] = wrong_axis.square().mean()
    return mistakes


@exercise("Exercise 2 — the z-loss", reference=reference_z_loss)
def z_loss(check: Check, fn: ZLossFn) -> None:
    shapes = [(8, 10), (2, 5, 7), (1, 3)] + ([(4, 16, 65), (3, 1000), (5, 1)] if check.hidden else [])
    for shape in shapes:
        logits = check.randn(*shape, scale=2.0) + check.randn(*shape[:-1], 1, scale=3.0)  # log Z of both signs
        what = f"z_loss of random logits of shape {shape}"
        given = logits.clone()
        got = check.call(fn, given, what=what)
        check.expect(torch.equal(given, logits), f"{what} changed the logits it was given (an in-place operation "
                     "such as -= or sub_): the model's logits are used again for the cross-entropy; compute on new tensors")
        if isinstance(got, torch.Tensor) and got.dim() != 0:
            check.fail(f"{what}: expected a single number (a 0-dim tensor), got shape {tuple(got.shape)}. Hint: "
                       "average (log Z)^2 over every position")
        check.close_or_diagnose(got, _log_partition(logits).square().mean(), _z_loss_mistakes(logits), what=what,
                                atol=1e-6, rtol=1e-5,
                                hint="log Z = torch.logsumexp(logits, dim=-1) for each position; return (log Z)^2 "
                                     "averaged over the positions")

    # The loss is trained on: it must stay a tensor with the right gradient, 2 log Z softmax(z) / N.
    logits = check.randn(3, 6, scale=2.0)
    _, tracked, gradient = check.call_with_gradient(fn, logits, wrt=0, what="logits that require grad")
    check.expect(tracked and gradient is not None,
                 "your z-loss does not require grad, so training could not use it. Hint: compute it from `logits` "
                 "with tensor operations only (no .item(), no math.log)")
    reference = logits.detach().requires_grad_()
    (expected_gradient,) = torch.autograd.grad(_log_partition(reference).square().mean(), reference)
    check.close(gradient, expected_gradient.float(), what="gradient of your z-loss with respect to the logits",
                atol=1e-6, rtol=1e-5)

    # Large logits: exp(100) overflows float32 unless the log-sum-exp is computed stably.
    large = torch.tensor([[100.0, 98.0, 95.0], [-3.0, 120.0, 0.0]])
    check.close(check.call(fn, large, what="logits near 100"), _log_partition(large).square().mean(),
                what="z_loss of logits near 100 (exp(100) overflows float32)", atol=1e-6, rtol=1e-5,
                hint="use torch.logsumexp(logits, dim=-1), or subtract each row's maximum before exp and add it back")


# ---------------------------------------------------------------------------
# Exercise 3 — logit soft-capping
# ---------------------------------------------------------------------------

SoftcapFn = Callable[[torch.Tensor, "float | None"], torch.Tensor]


def _softcap_mistakes(x: torch.Tensor, cap: float) -> dict[str, torch.Tensor]:
    x = x.double()
    return {
        f"you computed cap * tanh(x), without dividing by the cap inside: every value beyond about 3 is squashed to "
        f"the cap. The soft-cap is cap * tanh(x / cap) (cap = {cap:g})": cap * torch.tanh(x),
        "you computed tanh(x / cap) and forgot to multiply by the cap: the result lies in (-1, 1) instead of "
        "(-cap, cap)": torch.tanh(x / cap),
        "you clamped x to [-cap, cap]: a hard clip, whose gradient is 0 beyond the cap and which bends sharply at "
        "it. The soft-cap is the smooth cap * tanh(x / cap)": x.clamp(-cap, cap),
        "you computed tanh(x * cap) / cap; the cap goes the other way: cap * tanh(x / cap)":
            torch.tanh(x * cap) / cap,
    }


@exercise("Exercise 3 — logit soft-capping", reference=reference_softcap)
def softcap(check: Check, fn: SoftcapFn) -> None:
    caps = [50.0, 30.0, 4.0] + ([1.0, 0.5, 1000.0] if check.hidden else [])
    for cap in caps:
        x = check.randn(4, 9, scale=1.5 * cap)  # from well inside the cap to well beyond it
        what = f"softcap of a random (4, 9) tensor with cap={cap:g}"
        given = x.clone()
        got = check.call(fn, given, cap, what=what)
        check.expect(torch.equal(given, x), f"{what} changed x in place (div_, tanh_, mul_ or /=): return a new "
                     "tensor; the caller still needs x")
        expected = cap * torch.tanh(x.double() / cap)
        # float32 carries ~1e-7 of cap: equivalent forms (2 sigmoid(2x/cap) - 1) differ by that much at large caps
        check.close_or_diagnose(got, expected, _softcap_mistakes(x, cap), what=what, atol=1e-5 * max(1.0, cap / 10),
                                rtol=1e-5, hint="cap * torch.tanh(x / cap)")

    x = check.randn(3, 5, scale=40.0)
    got = check.call(fn, x.clone(), None, what="softcap(x, None)",
                     hint="models without soft-capping pass cap=None: then return x unchanged")
    check.close(got, x, what="softcap(x, None) (no cap: x unchanged)", atol=0.0, rtol=0.0,
                hint="return x itself when cap is None (models without soft-capping pass None)")

    extremes = torch.tensor([1e4, -1e4, 0.0, 1e-3])
    check.close(check.call(fn, extremes.clone(), 30.0, what="inputs ±1e4, 0 and 1e-3 with cap 30"),
                30.0 * torch.tanh(extremes.double() / 30.0), what="softcap([1e4, -1e4, 0, 1e-3], 30)",
                atol=1e-5, rtol=1e-5, hint="huge inputs end at exactly ±cap; near 0 the soft-cap is the identity")

    # The slope: 1 at 0 (small logits pass unchanged), 1 - tanh(3)^2 ≈ 0.01 at three caps (not 0, as a clamp).
    cap = 20.0
    points = torch.tensor([0.0, cap, 3 * cap, -3 * cap])
    _, tracked, slope = check.call_with_gradient(fn, points, cap, wrt=0, what="inputs that require grad")
    check.expect(tracked and slope is not None,
                 "your soft-cap does not pass gradients. Hint: use tensor operations (torch.tanh) on x")
    expected_slope = 1.0 - torch.tanh(points.double() / cap).square()
    check.close(slope, expected_slope.float(), what=f"slope of your soft-cap at x = 0, cap, 3 cap, -3 cap (cap={cap:g})",
                atol=1e-6, rtol=1e-4, hint="the slope of cap * tanh(x / cap) is 1 - tanh(x / cap)^2")
