"""Checks for lesson 22 — linear attention and the delta rule.

Every reference is written here from the formulas, in float64, independently of
`olm_edu.nn.linear_attention` (which the lesson shows equal to the learner's code and to
transformers' Qwen3-Next functions):

    delta-rule step   S' = exp(g) S;  u = beta (v - S'^T k);  S_new = S' + k u^T;  o = S_new^T q
                      (per batch and head; S (d_k, d_v), q, k (d_k,), v (d_v,), g and beta scalars)
    decay gate        g = -exp(A_log) * softplus(a + dt_bias), softplus(x) = log(1 + e^x)
                      computed without overflow (x for large x)
    chunked form      the recurrence above run token by token from a zero state; the learner's
                      chunked computation must give the same outputs and final state, and do
                      the same number of tensor operations for a chunk of 16 tokens as for a chunk
                      of 64 (a token-by-token loop does four times as many)
    hybrid schedule   a config.json (a dict) -> the type of each layer: layer_types when given;
                      Kimi Linear's linear_attn_config lists full_attn_layers / kda_layers, 1-based;
                      otherwise (Qwen3-Next, Qwen3.5) layer i is full when (i + 1) is a multiple of
                      full_attention_interval (4 when the key is absent); Qwen3.5 wraps all of it in
                      text_config

When an answer is wrong the check computes the usual mistakes (no decay, the decay after the
write, the correction read from the undecayed state, plain linear attention without the
correction, the read before the write, the memory read as S k instead of S^T k; A_log used
without exp, ReLU or exp instead of softplus, no dt_bias, the decay factor exp(g) returned
instead of the log-decay; a chunked form whose state does not cross chunks, whose triangular
system keeps its diagonal, that drops the incoming state's term, or that forgets the decay
inside a chunk; 0-based layer lists, the full layer first in each group of four, layer_types
ignored) and names the one the answer matches.

Tolerances (float32 inputs, float64 references): the step atol=1e-5, rtol=1e-5; the decay atol=1e-6,
rtol=1e-5; the chunked form atol=1e-4, rtol=1e-4 (a triangular solve and products of decays
over up to 64 tokens, in float32); the schedule exact.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from olm_edu.grading import Check, exercise

__all__ = [
    "delta_rule_step", "log_decay", "chunked_delta_rule", "layer_schedule", "reference_delta_rule_step",
    "reference_log_decay", "reference_chunked_delta_rule", "reference_layer_schedule", "count_tensor_operations",
    "library_chunked_delta_rule",
]  # fmt: skip

STEP_TOL = dict(atol=1e-5, rtol=1e-5)
DECAY_TOL = dict(atol=1e-6, rtol=1e-5)
CHUNK_TOL = dict(atol=1e-4, rtol=1e-4)
LAYER_TYPES = ("linear_attention", "full_attention")


# -- references ------------------------------------------------------------------------------------

def reference_delta_rule_step(state, q, k, v, g, beta, *, decay=True, decay_after=False, undecayed_read=False,
                              correction=True, read_before_write=False, transposed_read=False):
    """One token of the gated delta rule, in the inputs' dtype (keywords switch on the usual mistakes).

    state (B, H, d_k, d_v), q, k (B, H, d_k), v (B, H, d_v), g, beta (B, H) -> (out (B, H, d_v), new state)."""
    alpha = g.exp()[..., None, None] if decay else torch.ones_like(g)[..., None, None]
    decayed = state if decay_after else state * alpha
    source = state if undecayed_read else decayed
    if transposed_read:  # S k: read along the value axis (only defined when d_k = d_v)
        predicted = torch.einsum("bhkv,bhv->bhk", source, k)
    else:
        predicted = torch.einsum("bhkv,bhk->bhv", source, k)  # S^T k
    written = beta[..., None] * (v - predicted) if correction else beta[..., None] * v
    new_state = decayed + k[..., :, None] * written[..., None, :]
    if decay_after:
        new_state = new_state * alpha
    read_from = decayed if read_before_write else new_state
    out = torch.einsum("bhkv,bhk->bhv", read_from, q)  # S^T q
    return out, new_state


def reference_log_decay(a: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor) -> torch.Tensor:
    """g = -exp(A_log) * softplus(a + dt_bias): a (..., H), A_log and dt_bias (H,) -> (..., H)."""
    return -A_log.exp() * F.softplus(a + dt_bias)


def reference_chunked_delta_rule(q, k, v, g, beta, chunk_size: int = 64):
    """The gated delta rule from a zero state, token by token (the definition the chunked form must
    equal; chunk_size is accepted and changes nothing). q, k (B, H, T, d_k), v (B, H, T, d_v),
    g, beta (B, H, T) -> (out (B, H, T, d_v), final state (B, H, d_k, d_v))."""
    state = q.new_zeros(*q.shape[:2], q.shape[-1], v.shape[-1])
    outputs = []
    for t in range(q.shape[2]):
        out, state = reference_delta_rule_step(state, q[:, :, t], k[:, :, t], v[:, :, t], g[:, :, t], beta[:, :, t])
        outputs.append(out)
    return torch.stack(outputs, dim=2), state


def _chunked_variant(q, k, v, g, beta, chunk_size, *, carry_state=True, keep_diagonal=False, incoming_term=True,
                     decay_inside=True):
    """The chunked form in float64 with one of the usual mistakes switched on (all off: the right answer)."""
    batch, heads, length, key_dim = k.shape
    state = q.new_zeros(batch, heads, key_dim, v.shape[-1])
    outputs = []
    for start in range(0, length, chunk_size):
        part = slice(start, min(start + chunk_size, length))
        q_c, k_c, v_c, b_c = q[:, :, part], k[:, :, part], v[:, :, part], beta[:, :, part, None]
        size = q_c.shape[2]
        cum = g[:, :, part].cumsum(-1)[..., None]  # G_t (B, H, C, 1)
        if not carry_state:
            state = torch.zeros_like(state)
        causal = torch.ones(size, size, dtype=torch.bool).tril()
        between = (cum - cum.transpose(-1, -2)).masked_fill(~causal, float("-inf")).exp()  # exp(G_t - G_j), j <= t
        if not decay_inside:
            between = causal.to(q.dtype).expand_as(between)
        system = ((k_c * b_c) @ k_c.transpose(-1, -2) * between).tril(0 if keep_diagonal else -1)
        system = system + torch.eye(size, dtype=q.dtype)
        values = torch.linalg.solve_triangular(system, v_c * b_c, upper=False)
        keys_read = torch.linalg.solve_triangular(system, k_c * b_c * cum.exp(), upper=False)
        corrections = values - keys_read @ state if incoming_term else values
        outputs.append((q_c * cum.exp()) @ state + (q_c @ k_c.transpose(-1, -2) * between) @ corrections)
        state = state * cum[:, :, -1:].exp() + (k_c * (cum[:, :, -1:] - cum).exp()).transpose(-1, -2) @ corrections
    return torch.cat(outputs, dim=2), state


def _schedule_source(config: dict) -> dict:
    return config["text_config"] if "text_config" in config else config


def reference_layer_schedule(config: dict, *, one_based=True, full_first=False, read_layer_types=True,
                             read_text_config=True) -> list[str]:
    """The type of each layer of a hybrid config.json (see the module doc)."""
    source = _schedule_source(config) if read_text_config else config
    layers = source["num_hidden_layers"]
    if read_layer_types and source.get("layer_types") is not None:
        return list(source["layer_types"])
    linear = source.get("linear_attn_config")
    if linear is not None and "full_attn_layers" in linear:
        shift = 1 if one_based else 0
        types = ["linear_attention"] * layers
        for layer in linear["full_attn_layers"]:
            if 0 <= layer - shift < layers:
                types[layer - shift] = "full_attention"
        return types
    interval = source.get("full_attention_interval", 4)
    position = (lambda i: i % interval == 0) if full_first else (lambda i: (i + 1) % interval == 0)
    return ["full_attention" if position(i) else "linear_attention" for i in range(layers)]


# -- Exercise 1: the recurrent delta-rule step ------------------------------------------------------

def _step_mistakes(*inputs, square: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    mistakes = {
        "you never decayed the state: first S = exp(g) * S (g is a log-decay, one number per batch and head)":
            dict(decay=False),
        "you decayed the state after writing; the gated delta rule forgets first (S = exp(g) S), then reads "
        "S^T k and writes the correction into the decayed state": dict(decay_after=True),
        "your correction reads the state before it decayed: the prediction S^T k must come from the decayed "
        "state exp(g) S, the same one you add k u^T to": dict(undecayed_read=True),
        "you wrote beta * v, the plain linear-attention write: the delta rule writes the correction "
        "u = beta * (v - S^T k), what the memory gets wrong for k": dict(correction=False),
        "you read the output before writing this token: o = S_new^T q, after S_new = S + k u^T": dict(read_before_write=True),
    }
    if square:
        mistakes["you read the memory as S k; S is (d_k, d_v) and maps keys to values, so the prediction is "
                  "S^T k (sum over the key axis, einsum('bhkv,bhk->bhv'))"] = dict(transposed_read=True)
    return {message: reference_delta_rule_step(*inputs, **options) for message, options in mistakes.items()}


@exercise("Exercise 1 — the delta-rule step", reference=reference_delta_rule_step)
def delta_rule_step(check: Check, fn: Callable) -> None:
    cases = [  # (B, H, d_k, d_v, log-decay scale, what it is)
        (2, 3, 8, 8, 1.0, "2 sequences, 3 heads, d_k = d_v = 8"),
        (1, 2, 4, 6, 0.5, "d_k = 4, d_v = 6"),
        (2, 2, 6, 6, 0.0, "no decay (g = 0): the plain delta rule"),
    ]
    if check.hidden:
        cases += [(3, 4, 16, 8, 3.0, "strong decay"), (1, 1, 5, 5, 0.1, "one head")]
    for b, h, d_k, d_v, decay_scale, description in cases:
        state = check.randn(b, h, d_k, d_v)
        q = F.normalize(check.randn(b, h, d_k), dim=-1) * d_k**-0.5
        k = F.normalize(check.randn(b, h, d_k), dim=-1)
        v = check.randn(b, h, d_v)
        g = -check.randn(b, h).abs() * decay_scale
        beta = torch.sigmoid(check.randn(b, h, scale=2.0))
        inputs = (state, q, k, v, g, beta)
        originals = tuple(t.clone() for t in inputs)
        what = f"delta_rule_step(state {tuple(state.shape)}, ...) [{description}]"
        got = check.call(fn, *inputs, what=what, hint="return (out, new_state)")
        check.expect(all(torch.equal(a, b_) for a, b_ in zip(inputs, originals)),
                     f"{what} changed its inputs (an in-place *= or +=); build the new state as a new tensor")
        if not (isinstance(got, tuple) and len(got) == 2):
            check.fail(f"{what}: return a pair (out (B, H, d_v), new_state (B, H, d_k, d_v)), got {type(got).__name__}")
        got_out, got_state = got
        expected_out, expected_state = reference_delta_rule_step(*(t.double() for t in originals))
        mistakes = _step_mistakes(*(t.double() for t in originals), square=d_k == d_v)
        hint = "S = exp(g) S; u = beta (v - S^T k); S = S + k u^T; out = S^T q (per batch and head)"
        check.close_or_diagnose(got_state, expected_state, {m: wrong[1] for m, wrong in mistakes.items()},
                                what=f"{what}, new_state", **STEP_TOL, hint=hint)
        check.close_or_diagnose(got_out, expected_out, {m: wrong[0] for m, wrong in mistakes.items()},
                                what=f"{what}, out", **STEP_TOL, hint=hint)


# -- Exercise 2: the decay gate ------------------------------------------------------------------

def _decay_mistakes(a: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor) -> dict[str, torch.Tensor]:
    a, A_log, dt_bias = a.double(), A_log.double(), dt_bias.double()
    g = reference_log_decay(a, A_log, dt_bias)
    return {
        "you used A_log as the rate; it is the logarithm of A: the rate is A = exp(A_log)":
            -A_log * F.softplus(a + dt_bias),
        "your log-decay is positive: g = -exp(A_log) * softplus(a + dt_bias) is <= 0, so that exp(g) <= 1 forgets":
            -g,
        "you returned the decay factor exp(g); return the log-decay g itself (the recurrence takes exp later)": g.exp(),
        "you left out dt_bias: softplus(a + dt_bias)": -A_log.exp() * F.softplus(a),
        "you used ReLU instead of softplus: softplus(x) = log(1 + e^x), smooth and > 0 everywhere":
            -A_log.exp() * F.relu(a + dt_bias),
        "you used exp instead of softplus: softplus(x) = log(1 + e^x)": -A_log.exp() * (a + dt_bias).exp(),
        "you applied softplus to the rate too; only a + dt_bias goes through softplus, times exp(A_log)":
            -F.softplus(A_log.exp()) * F.softplus(a + dt_bias),
    }


@exercise("Exercise 2 — the decay gate", reference=reference_log_decay)
def log_decay(check: Check, fn: Callable) -> None:
    cases = [  # (shape of a: (..., H), input scale, offset, what it is)
        ((2, 5, 4), 1.0, 0.0, "2 sequences of 5 tokens, 4 heads"),
        ((3, 8), 2.0, 0.0, "3 tokens, 8 heads"),
        ((1, 4, 2), 1.0, 100.0, "large inputs about 100 (e^x overflows float32 above 88)"),
    ]
    if check.hidden:
        cases += [((6, 32), 3.0, -20.0, "very negative inputs"), ((2, 3, 16), 1.0, 100.0, "inputs about 100")]
    for shape, scale, offset, description in cases:
        heads = shape[-1]
        a = check.randn(*shape, scale=scale) + offset
        A_log = torch.empty(heads).uniform_(0.0, 16.0, generator=check.generator).log()  # A in [1, 16], Mamba-2's range
        dt_bias = check.randn(heads)
        inputs = (a, A_log, dt_bias)
        originals = tuple(t.clone() for t in inputs)
        what = f"log_decay(a {tuple(a.shape)}, A_log ({heads},), dt_bias ({heads},)) [{description}]"
        got = check.call(fn, *inputs, what=what, hint="return a tensor shaped like a")
        check.expect(all(torch.equal(x, y) for x, y in zip(inputs, originals)), f"{what} changed its inputs")
        if isinstance(got, torch.Tensor) and got.shape == a.shape and not torch.isfinite(got).all():
            check.fail(f"{what}: you got {got[~torch.isfinite(got)][0].item()}: log(1 + exp(x)) overflows for large x "
                       "(exp(x) is inf in float32 above 88). Use torch.nn.functional.softplus, which returns x itself "
                       "when x is large")
        check.close_or_diagnose(
            got, reference_log_decay(*(t.double() for t in originals)), _decay_mistakes(*originals), what=what,
            **DECAY_TOL, hint="g = -exp(A_log) * softplus(a + dt_bias), with torch.nn.functional.softplus",
        )


# -- Exercise 3: the chunked form -------------------------------------------------------------------

class _OperationCounter(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_tensor_operations(fn: Callable, *args: Any) -> int:
    """How many torch functions (indexing, arithmetic, matmuls, ...) `fn(*args)` calls. Judged from
    the grader, the learner's function runs in the kernel and the kernel counts (a count the
    student's process reports: it decides only the "still loops" diagnosis, not the answer's values)."""
    remotely = getattr(type(fn), "count_operations_remotely", None)
    if remotely is not None:
        return int(remotely(fn, args))
    with _OperationCounter() as counter:
        fn(*args)
    return counter.count


def _chunk_inputs(check: Check, b: int, h: int, t: int, d_k: int, d_v: int, decay_scale: float = 1.0):
    q = F.normalize(check.randn(b, h, t, d_k), dim=-1) * d_k**-0.5
    k = F.normalize(check.randn(b, h, t, d_k), dim=-1)
    v = check.randn(b, h, t, d_v)
    g = -torch.rand(b, h, t, generator=check.generator) * decay_scale
    beta = torch.rand(b, h, t, generator=check.generator)
    return q, k, v, g, beta


def library_chunked_delta_rule(q, k, v, g, beta, chunk_size: int = 64):
    """`olm_edu.nn.linear_attention.chunked_delta_rule` from a zero state: the reference the lesson's
    later cells fall back on."""
    from olm_edu.nn.linear_attention import chunked_delta_rule as library

    return library(q, k, v, g, beta, None, chunk_size)


@exercise("Exercise 3 — the chunked form", reference=library_chunked_delta_rule)
def chunked_delta_rule(check: Check, fn: Callable) -> None:
    cases = [  # (B, H, T, d_k, d_v, chunk, what it is)
        (2, 2, 12, 8, 6, 4, "12 tokens in chunks of 4"),
        (1, 3, 10, 8, 8, 4, "10 tokens in chunks of 4: the last chunk has 2"),
        (2, 2, 7, 6, 4, 16, "one chunk longer than the sequence"),
        (1, 2, 5, 4, 4, 1, "chunks of one token"),
    ]
    if check.hidden:
        cases += [(1, 2, 40, 16, 16, 8, "40 tokens in chunks of 8"), (2, 1, 33, 8, 8, 16, "33 tokens, chunks of 16")]
    for b, h, t, d_k, d_v, chunk, description in cases:
        inputs = _chunk_inputs(check, b, h, t, d_k, d_v)
        originals = tuple(x.clone() for x in inputs)
        what = f"chunked_delta_rule(q {tuple(inputs[0].shape)}, ..., chunk_size={chunk}) [{description}]"
        got = check.call(fn, *inputs, chunk, what=what, hint="return (out, final_state)")
        check.expect(all(torch.equal(x, y) for x, y in zip(inputs, originals)), f"{what} changed its inputs")
        if not (isinstance(got, tuple) and len(got) == 2):
            check.fail(f"{what}: return a pair (out (B, H, T, d_v), final_state (B, H, d_k, d_v))")
        doubles = tuple(x.double() for x in originals)
        expected = reference_chunked_delta_rule(*doubles)
        mistakes = {
            "your state does not cross chunks: each chunk must start from the state the previous one left "
            "(S_0 of chunk n is S_C of chunk n - 1)": dict(carry_state=False),
            "your triangular system keeps its diagonal: T = I + strictly-lower(beta_t (k_t . k_j) exp(G_t - G_j)), "
            "j < t (tril(-1)); the diagonal is the identity alone": dict(keep_diagonal=True),
            "your corrections ignore the incoming state: U = T^-1 (beta V) - T^-1 (beta e^G K) S_0": dict(incoming_term=False),
            "you left out the decay inside the chunk: each (k_t . k_j) and (q_t . k_j) is scaled by "
            "exp(G_t - G_j), G the cumulative log-decay": dict(decay_inside=False),
        }
        variants = {message: _chunked_variant(*doubles, chunk, **options) for message, options in mistakes.items()}
        for index, part in ((0, "out"), (1, "final_state")):
            check.close_or_diagnose(
                got[index], expected[index], {message: wrong[index] for message, wrong in variants.items()},
                what=f"{what}, {part}", **CHUNK_TOL,
                hint="follow the formulas above chunk by chunk; compare with your delta_rule_step run token by token",
            )
    # a chunked computation does a fixed number of tensor operations per chunk, whatever its size
    small, large = (_chunk_inputs(check, 1, 2, t, 8, 8) for t in (16, 64))
    operations = {t: count_tensor_operations(fn, *x, t) for t, x in ((16, small), (64, large))}
    check.expect(
        operations[64] < 2 * operations[16],
        f"chunked_delta_rule on one chunk of 64 tokens ran {operations[64]} tensor operations, one chunk of 16 "
        f"ran {operations[16]}: your work grows with the tokens inside a chunk, so it still loops token by token. "
        "Inside a chunk, use matrix products and one triangular solve (torch.linalg.solve_triangular)",
    )


# -- Exercise 4: the hybrid schedule ---------------------------------------------------------------

def _schedule_configs(hidden: bool) -> list[tuple[str, dict]]:
    from olm_edu.models.presets import CONFIG_DIR
    import json

    def published(name: str) -> dict:
        return json.loads((CONFIG_DIR / f"{name}.json").read_text())

    next_ = published("Qwen3-Next-80B-A3B-Instruct")
    qwen35 = published("Qwen3.5-9B")
    kimi = published("Kimi-Linear-48B-A3B-Instruct")
    interval_3 = dict(next_, num_hidden_layers=9, full_attention_interval=3)
    explicit = dict(next_, num_hidden_layers=6, layer_types=["full_attention", "linear_attention", "linear_attention",
                                                              "full_attention", "linear_attention", "full_attention"])
    no_interval = {key: value for key, value in next_.items() if key != "full_attention_interval"}
    no_interval["num_hidden_layers"] = 8
    configs = [
        ("Qwen3-Next-80B-A3B-Instruct's config.json", next_),
        ("Qwen3.5-9B's config.json (the language model inside text_config)", qwen35),
        ("Kimi-Linear-48B-A3B-Instruct's config.json (1-based lists in linear_attn_config)", kimi),
        ("a Qwen3-Next config with full_attention_interval=3 and 9 layers", interval_3),
        ("a config whose layer_types are given explicitly", explicit),
    ]
    if hidden:
        kimi_small = copy.deepcopy(kimi)
        kimi_small["num_hidden_layers"] = 6
        kimi_small["linear_attn_config"].update(full_attn_layers=[1, 6], kda_layers=[2, 3, 4, 5])
        configs += [
            ("a Qwen3-Next config without full_attention_interval (the default, 4)", no_interval),
            ("Qwen3.5-35B-A3B's config.json", published("Qwen3.5-35B-A3B")),
            ("a Kimi config whose first and last layers are full", kimi_small),
            ("a Qwen3.5 config with layer_types inside text_config", dict(qwen35, text_config=dict(
                qwen35["text_config"], num_hidden_layers=4, layer_types=["linear_attention", "full_attention"] * 2))),
        ]
    return configs


@exercise("Exercise 4 — the hybrid schedule", reference=reference_layer_schedule)
def layer_schedule(check: Check, fn: Callable) -> None:
    for description, config in _schedule_configs(check.hidden):
        original = copy.deepcopy(config)
        what = f"layer_schedule({description})"
        got = check.call(
            fn, config, what=what,
            hint="read config['text_config'] when it is there; then layer_types, linear_attn_config or "
                 "full_attention_interval (default 4)",
        )
        check.expect(config == original, f"{what} changed the config dict; read it, do not edit it")
        if isinstance(got, tuple):
            got = list(got)
        expected = reference_layer_schedule(original)
        if got == expected:
            check.passed += 1
            continue
        if not isinstance(got, list) or any(kind not in LAYER_TYPES for kind in got):
            check.fail(f"{what}: return a list with one entry per layer, each 'linear_attention' or 'full_attention'; "
                       f"got {str(got)[:100]}")
        mistakes = {
            "the lists in linear_attn_config count layers from 1 (layer 4 is index 3)": dict(one_based=False),
            "your full layer comes first in each group: layer i is full when (i + 1) % interval == 0, so the "
            "fourth, eighth, ... layers (indices 3, 7, ...) are full": dict(full_first=True),
            "this config lists its layer_types: when the key is there (and not None), return it as it is":
                dict(read_layer_types=False),
        }
        for message, options in mistakes.items():
            wrong = reference_layer_schedule(original, **options)
            if wrong != expected and got == wrong:
                check.fail(f"{what}: {message}")
        if len(got) != len(expected):
            check.fail(f"{what}: expected {len(expected)} layers, got {len(got)}: the number of layers is "
                       "num_hidden_layers (inside text_config for Qwen3.5)")
        first = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
        check.fail(f"{what}: layer {first} should be {expected[first]!r}, got {got[first]!r}")
