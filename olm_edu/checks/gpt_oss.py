"""Checks for lesson 20 — gpt-oss: sinks, windows and clamped experts.

Every reference is written here from the formulas, in float64, independently of
`olm_edu.nn.attention` and `olm_edu.nn.moe` (which the lesson shows equal to the learner's code
and to transformers' gpt-oss modules):

    sink softmax    p = exp(s - m) / (sum_k exp(s_k - m) + exp(sink_h - m)), m the row maximum
                    over the scores and the sink; masked scores (-inf) get 0
    clamped SwiGLU  g = min(gate, limit), u = clamp(up, -limit, limit),
                    out = (u + 1) * g * sigmoid(alpha * g)
    expert layer    logits = x W_r^T + b_r; the k largest; w = softmax over those k logits;
                    y = sum_e w_e (down_e(clamped_swiglu(h_gate, h_up)) + b_down_e), with
                    [h_gate, h_up] read from the interleaved gate_up projection (gate = even
                    columns, up = odd), computed densely (every expert on every token)
    card bytes      the experts' weight matrices in MXFP4 (blocks of 32 four-bit values sharing
                    one 8-bit scale: 17 bytes per 32 values), every other parameter in bf16

When an answer is wrong the check computes the usual mistakes (a softmax without the sink, a
sink that is not exponentiated, no clamp, a two-sided gate clamp, no "+ 1", halves instead of
interleaved columns, no router bias, a softmax over every expert, MXFP4 without its scales, ...)
and names the one the answer matches.

Tolerances (float32 inputs, float64 references): softmax weights atol=1e-6, rtol=1e-5; the
SwiGLU atol=1e-5, rtol=1e-5; the expert layer atol=1e-5, rtol=1e-4; bytes exact.
"""

from __future__ import annotations

from typing import Callable

import torch

from olm_edu.analysis import count_params
from olm_edu.grading import Check, exercise
from olm_edu.models.config import ModelConfig
from olm_edu.nn.moe import clamped_swiglu as library_clamped_swiglu

__all__ = [
    "sink_softmax", "clamped_swiglu", "gpt_oss_experts", "card_bytes", "reference_sink_softmax",
    "reference_clamped_swiglu", "reference_experts", "reference_card_bytes",
]  # fmt: skip

SOFTMAX_TOL = dict(atol=1e-6, rtol=1e-5)
SWIGLU_TOL = dict(atol=1e-5, rtol=1e-5)
EXPERTS_TOL = dict(atol=1e-5, rtol=1e-4)
ALPHA = 1.702
MXFP4_BLOCK, MXFP4_BLOCK_BYTES = 32, 17  # 32 four-bit values (16 bytes) + one 8-bit scale


# -- references ------------------------------------------------------------------------------------

def reference_sink_softmax(scores: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """(B, H, T_q, T_k) scores and (H,) sinks -> (B, H, T_q, T_k) weights, float64."""
    scores = scores.double()
    sink = sinks.double().view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
    return torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]


def reference_clamped_swiglu(gate: torch.Tensor, up: torch.Tensor, limit: float, alpha: float = ALPHA) -> torch.Tensor:
    gate, up = gate.double().clamp(max=limit), up.double().clamp(-limit, limit)
    return (up + 1) * gate * torch.sigmoid(alpha * gate)


def reference_experts(x, router_weight, router_bias, gate_up_proj, gate_up_bias, down_proj, down_bias, k, limit,
                      *, interleaved=True, router_bias_used=True, renormalize=True, down_bias_used=True,
                      swap=False) -> torch.Tensor:
    """The gpt-oss expert layer, densely, in float64 (keywords switch on the usual mistakes)."""
    x = x.double()
    logits = x @ router_weight.double().T + (router_bias.double() if router_bias_used else 0.0)  # (N, E)
    if renormalize:
        top, experts = logits.topk(k, dim=-1)
        weights = torch.softmax(top, dim=-1)
    else:
        weights, experts = torch.softmax(logits, dim=-1).topk(k, dim=-1)
    dense = torch.zeros_like(logits).scatter(1, experts, weights)  # (N, E), 0 off the chosen experts
    hidden = torch.einsum("nd,edf->enf", x, gate_up_proj.double()) + gate_up_bias.double()[:, None, :]  # (E, N, 2F)
    if interleaved:
        gate, up = hidden[..., 0::2], hidden[..., 1::2]
    else:
        gate, up = hidden.chunk(2, dim=-1)
    if swap:
        gate, up = up, gate
    out = torch.einsum("enf,efd->end", reference_clamped_swiglu(gate, up, limit), down_proj.double())
    if down_bias_used:
        out = out + down_bias.double()[:, None, :]
    return torch.einsum("ne,end->nd", dense, out)


def _expert_matrix_params(cfg: ModelConfig) -> int:
    """The routed experts' weight matrices (gate, up, down; no biases) over all MoE layers."""
    moe_layers = sum(cfg.is_moe_layer(i) for i in range(cfg.num_layers))
    return moe_layers * cfg.num_experts * 3 * cfg.embed_dim * cfg.expert_width


def reference_card_bytes(cfg: ModelConfig) -> int:
    experts = _expert_matrix_params(cfg)
    mxfp4 = -(-experts // MXFP4_BLOCK) * MXFP4_BLOCK_BYTES
    return mxfp4 + 2 * (count_params(cfg).total - experts)


# What the cells after an unfinished exercise use until its check passes, in the input's dtype.

def library_sink_softmax(scores: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """The softmax with a sink (olm_edu.nn.attention.attend's formula), in the scores' dtype."""
    return reference_sink_softmax(scores, sinks).to(scores.dtype)


def library_experts(x, router_weight, router_bias, gate_up_proj, gate_up_bias, down_proj, down_bias, k, limit):
    """The gpt-oss expert layer in x's dtype."""
    return reference_experts(x, router_weight, router_bias, gate_up_proj, gate_up_bias, down_proj, down_bias, k,
                             limit).to(x.dtype)


# -- Exercise 1: the softmax with a sink -----------------------------------------------------------

NO_SINK = ("your weights add up to 1 in every row: the sink is missing from the denominator. Append each head's "
           "sink logit as one more column, take the softmax, then drop that column")
SINK_NOT_EXPONENTIATED = ("you added the sink logit itself to the denominator; it joins the softmax like any "
                          "score, so the denominator gets exp(sink) (after the same max subtraction)")
SINK_KEPT = ("return the weights of the real keys only: drop the sink's column after the softmax "
             "(probabilities[..., :-1])")


def _sink_mistakes(scores: torch.Tensor, sinks: torch.Tensor) -> dict[str, torch.Tensor]:
    s = scores.double()
    plain = torch.softmax(s, dim=-1)
    exp = torch.exp(s)
    not_exponentiated = exp / (exp.sum(-1, keepdim=True) + sinks.double().view(1, -1, 1, 1))
    wrong_axis = {}
    if s.shape[-2] == sinks.shape[0]:  # sinks broadcast over the queries instead of the heads
        sink = sinks.double().view(1, 1, -1, 1).expand(*s.shape[:-1], 1)
        wrong_axis = {"your sinks are indexed by the query, not by the head: each head h has one sink, "
                      "sinks.view(1, H, 1, 1)": torch.softmax(torch.cat([s, sink], -1), -1)[..., :-1]}
    return {NO_SINK: plain, SINK_NOT_EXPONENTIATED: not_exponentiated, **wrong_axis}


@exercise("Exercise 1 — the softmax with a sink", reference=library_sink_softmax)
def sink_softmax(check: Check, fn: Callable) -> None:
    cases = [  # (B, H, T_q, T_k, window, sink scale, score offset, description)
        (2, 4, 6, 6, None, 1.0, 0.0, "causal, 4 heads"),
        (1, 3, 5, 5, 2, 2.0, 0.0, "a window of 2 (two keys per query)"),
        (2, 2, 1, 7, None, 1.0, 0.0, "one query (decoding) over 7 cached keys"),
        (1, 4, 4, 4, None, 1.0, 100.0, "large scores about 100 (exp overflows float32 above 88)"),
    ]
    if check.hidden:
        cases += [
            (1, 8, 9, 9, 3, 3.0, 0.0, "8 heads, a window of 3, large sinks"),
            (2, 2, 3, 3, None, 0.1, -50.0, "scores about -50"),
        ]
    for b, h, t_q, t_k, window, sink_scale, offset, description in cases:
        scores = check.randn(b, h, t_q, t_k, scale=2.0) + offset
        query = torch.arange(t_k - t_q, t_k)[:, None]
        key = torch.arange(t_k)[None, :]
        allowed = key <= query
        if window is not None:
            allowed &= query - key < window
        scores = scores.masked_fill(~allowed, float("-inf"))
        sinks = check.randn(h, scale=sink_scale) + (offset if "large" in description else 0.0)
        original, original_sinks = scores.clone(), sinks.clone()
        what = f"sink_softmax(scores {tuple(scores.shape)}, sinks {tuple(sinks.shape)}) [{description}]"
        got = check.call(fn, scores, sinks, what=what, hint="return a tensor shaped like scores")
        check.expect(torch.equal(scores, original) and torch.equal(sinks, original_sinks),
                     f"{what} changed its inputs; compute on new tensors")
        expected = reference_sink_softmax(original, original_sinks)
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (*scores.shape[:-1], t_k + 1):
            check.fail(f"{what}: got shape {tuple(got.shape)}: {SINK_KEPT}")
        check.close_or_diagnose(
            got, expected, _sink_mistakes(original, original_sinks), what=what, **SOFTMAX_TOL,
            hint="torch.cat([scores, sinks.view(1, H, 1, 1).expand(B, H, T_q, 1)], dim=-1), softmax over the last "
                 "dimension, then [..., :-1]" + ("; torch.softmax subtracts the row maximum for you, exp() by hand "
                                                 "overflows" if "large" in description else ""),
        )
        check.expect(bool((got.detach()[..., ~allowed] == 0).all()) if isinstance(got, torch.Tensor) else False,
                     f"{what}: masked keys (score -inf) must get weight exactly 0")


# -- Exercise 2: the clamped SwiGLU --------------------------------------------------------------

def _swiglu_mistakes(gate: torch.Tensor, up: torch.Tensor, limit: float, alpha: float) -> dict[str, torch.Tensor]:
    g, u = gate.double(), up.double()
    gc, uc = g.clamp(max=limit), u.clamp(-limit, limit)
    glu = lambda a, b: (b + 1) * a * torch.sigmoid(alpha * a)  # noqa: E731
    return {
        "you did not clamp at all: gate = gate.clamp(max=limit), up = up.clamp(-limit, limit)": glu(g, u),
        "you clamped the gate on both sides; gpt-oss clamps it from above only (gate.clamp(max=limit)): a very "
        "negative gate already gives g * sigmoid(alpha g) close to 0": glu(g.clamp(-limit, limit), uc),
        "you clamped the up projection from above only; it is clamped on both sides, up.clamp(-limit, limit)":
            glu(gc, u.clamp(max=limit)),
        "you left out the + 1: gpt-oss multiplies by (up + 1)": gc * torch.sigmoid(alpha * gc) * uc,
        f"you left out alpha: the gate is g * sigmoid(alpha * g) with alpha = {alpha}, not SiLU":
            (uc + 1) * gc * torch.sigmoid(gc),
        "you swapped gate and up: the sigmoid acts on the gate": glu(u.clamp(max=limit), g.clamp(-limit, limit)),
    }


@exercise("Exercise 2 — the clamped SwiGLU", reference=library_clamped_swiglu)
def clamped_swiglu(check: Check, fn: Callable) -> None:
    cases = [((4, 10), 7.0, 3.0, "gpt-oss: limit 7, values up to about 10"), ((3, 6), 1.0, 2.0, "limit 1"),
             ((2, 5, 8), 7.0, 0.5, "small values (no clamp bites)")]
    if check.hidden:
        cases += [((64,), 0.5, 4.0, "limit 0.5, large values"), ((2, 3, 4), 20.0, 30.0, "limit 20, values about 30")]
    for shape, limit, scale, description in cases:
        gate, up = check.randn(*shape, scale=scale), check.randn(*shape, scale=scale)
        originals = gate.clone(), up.clone()
        what = f"clamped_swiglu(gate, up of shape {shape}, limit={limit}) [{description}]"
        got = check.call(fn, gate, up, limit, what=what)
        check.expect(torch.equal(gate, originals[0]) and torch.equal(up, originals[1]),
                     f"{what} changed gate or up in place (clamp_ is in place); use .clamp, which returns a new tensor")
        check.close_or_diagnose(
            got, reference_clamped_swiglu(*originals, limit), _swiglu_mistakes(*originals, limit, ALPHA), what=what,
            **SWIGLU_TOL, hint="g = gate.clamp(max=limit); u = up.clamp(-limit, limit); (u + 1) * g * sigmoid(1.702 g)",
        )


# -- Exercise 3: the gpt-oss expert layer --------------------------------------------------------------

def _experts_inputs(check: Check, n: int, d: int, e: int, f: int) -> tuple[torch.Tensor, ...]:
    x = check.randn(n, d)
    router_weight, router_bias = check.randn(e, d, scale=d**-0.5 * 2), check.randn(e, scale=1.0)
    gate_up_proj, gate_up_bias = check.randn(e, d, 2 * f, scale=d**-0.5 * 3), check.randn(e, 2 * f, scale=0.5)
    down_proj, down_bias = check.randn(e, f, d, scale=f**-0.5), check.randn(e, d, scale=0.5)
    return x, router_weight, router_bias, gate_up_proj, gate_up_bias, down_proj, down_bias


@exercise("Exercise 3 — the gpt-oss expert layer", reference=library_experts)
def gpt_oss_experts(check: Check, fn: Callable) -> None:
    cases = [(10, 8, 4, 6, 2, 1.0, "4 experts, top-2, limit 1"), (7, 12, 8, 4, 3, 7.0, "8 experts, top-3, limit 7"),
             (5, 8, 4, 6, 1, 0.5, "top-1")]
    if check.hidden:
        cases += [(1, 8, 4, 6, 2, 1.0, "one token"), (12, 16, 32, 8, 4, 7.0, "gpt-oss-20b's 32 experts, top-4")]
    for n, d, e, f, k, limit, description in cases:
        inputs = _experts_inputs(check, n, d, e, f)
        originals = tuple(t.clone() for t in inputs)
        what = f"gpt_oss_experts(x ({n}, {d}), {e} experts of width {f}, k={k}, limit={limit}) [{description}]"
        got = check.call(fn, *inputs, k, limit, what=what, hint="return a tensor of shape (N, d)")
        check.expect(all(torch.equal(a, b) for a, b in zip(inputs, originals)), f"{what} changed its inputs")
        reference = lambda **mistake: reference_experts(*originals, k, limit, **mistake)  # noqa: E731
        mistakes = {
            "you split gate_up into halves; gpt-oss interleaves them: gate = gate_up[..., 0::2], up = gate_up[..., 1::2]":
                reference(interleaved=False),
            "you took gate from the odd columns and up from the even ones: gate = [..., 0::2], up = [..., 1::2]":
                reference(swap=True),
            "you left out the router bias: logits = x @ router_weight.T + router_bias": reference(router_bias_used=False),
            "your weights are the softmax over all experts, read at the chosen ones: gpt-oss takes the softmax over "
            "the k chosen logits only (they add up to 1)": reference(renormalize=False),
            "you left out the down projection's bias (down_bias[e], added before the routing weight)":
                reference(down_bias_used=False),
        }
        check.close_or_diagnose(got, reference(), mistakes, what=what, **EXPERTS_TOL,
                                hint="route with the biased logits, then per expert: gate_up = x @ gate_up_proj[e] + "
                                     "gate_up_bias[e], clamped SwiGLU, @ down_proj[e] + down_bias[e], times the weight")


# -- Exercise 4: the memory of a 20B card ----------------------------------------------------------


@exercise("Exercise 4 — the memory of a 20B card", reference=reference_card_bytes)
def card_bytes(check: Check, fn: Callable) -> None:
    from olm_edu.models.presets import preset

    configs = [preset("gpt-oss-20b"), preset("gpt-oss-120b")]
    if check.hidden:
        configs += [preset("gpt-oss-20b").replace(num_experts=16, experts_per_token=2, num_layers=12, layer_types=None),
                    preset("gpt-oss-120b").replace(hidden_dim=1440)]
    for cfg in configs:
        what = f"card_bytes({cfg.name}: {cfg.num_layers} layers, {cfg.num_experts} experts of {cfg.expert_width})"
        got = check.call(fn, cfg, what=what, hint="return a whole number of bytes")
        experts, total = _expert_matrix_params(cfg), count_params(cfg).total
        with_biases = experts + cfg.num_layers * cfg.num_experts * (2 * cfg.expert_width + cfg.embed_dim)
        mistakes = {
            "everything in bf16 (2 bytes a parameter): the experts' matrices are stored in MXFP4": 2 * total,
            "you counted MXFP4 as 4 bits a value and forgot the scales: every block of 32 values shares one 8-bit "
            "scale, 17 bytes per 32 values (4.25 bits)": experts // 2 + 2 * (total - experts),
            "you stored every parameter in MXFP4 (17 bytes per 32); only the experts' weight matrices are, the rest "
            "(attention, embeddings, router, norms, biases) stays in bf16": -(-total // 32) * 17,
            "you also put the experts' biases in MXFP4; only the weight matrices are quantised":
                -(-with_biases // 32) * 17 + 2 * (total - with_biases),
            "you counted the active parameters: the card must hold every expert, not just the k a token uses":
                reference_card_bytes(cfg) - (cfg.num_experts - cfg.experts_per_token) * 3 * cfg.embed_dim
                * cfg.expert_width * cfg.num_layers * 17 // 32,
            "you counted the expert matrices in bf16 and the rest in MXFP4: the other way round":
                2 * experts + -(-(total - experts) // 32) * 17,
        }
        check.count(got, reference_card_bytes(cfg), mistakes, what=what,
                    hint="experts = layers * E * 3 * d * F values in MXFP4 (17 bytes per 32); the rest of "
                         "count_params(cfg).total in bf16 (2 bytes each)")
