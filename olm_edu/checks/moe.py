"""Checks for lesson 16 — Mixture of Experts and Mixtral (routing, the MoE forward, the balancing losses).

Every reference is written here from the formulas, in float64, independently of `olm_edu.nn.moe`
(which the lesson shows equal to the learner's code and to transformers' Mixtral block):

    routing     s = softmax(logits) over the E experts; the k largest s; w = s_chosen, divided by
                their sum when renormalize=True (Mixtral, Qwen3 with norm_topk_prob)
    MoE         y_t = sum over t's chosen experts e of w_te * down_e(silu(gate_e x_t) * up_e x_t),
                computed densely (every expert on every token, a (N, E) weight matrix that is 0
                off the chosen experts), a formulation no learner writes
    balance     E * sum_e f_e P_e, f_e = (tokens with e among their top-k) / N, P_e = mean_t s_te
    z-loss      mean over tokens of logsumexp(logits)^2

A token's k experts may come back in any order: routing is compared expert by expert (both sides
sorted by expert index). Gradients are compared too, because a router learns only through them.
When an answer is wrong the check computes the usual mistakes (no renormalisation, a softmax over
the chosen logits only, unweighted outputs, an output assigned where it must be added, a global
top_k used instead of the argument k, no factor E, counts instead of fractions, a z-loss that is
not squared, ...) and names the one the answer matches. The MoE forward is also given an expert
that no token chooses, with NaN weights: a sparse layer never runs it (the exercise asks for that).

Tolerances (float32 inputs, float64 references): routing weights atol=1e-6, rtol=1e-5 (a softmax
and a division); the MoE output atol=1e-5, rtol=1e-4 (three matmuls per expert); the losses
atol=1e-5, rtol=1e-4; gradients atol=1e-5, rtol=1e-4.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.nn import functional as F

from olm_edu.grading import Check, exercise
from olm_edu.nn import load_balancing_loss as library_balance
from olm_edu.nn import router_z_loss as library_z_loss

__all__ = ["route", "moe_forward", "load_balancing_loss", "router_z_loss", "reference_route", "reference_moe_forward",
           "reference_load_balancing_loss", "reference_router_z_loss"]

WEIGHT_TOL = dict(atol=1e-6, rtol=1e-5)
OUTPUT_TOL = dict(atol=1e-5, rtol=1e-4)
LOSS_TOL = dict(atol=1e-5, rtol=1e-4)
GRAD_TOL = dict(atol=1e-5, rtol=1e-4)


# -- references ------------------------------------------------------------------------------------

def _exact_route(logits: torch.Tensor, k: int, renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights (N, k), experts (N, k)), both sorted by expert index; float64 weights."""
    probabilities = torch.softmax(logits.double(), dim=-1)  # (N, E)
    experts = probabilities.topk(k, dim=-1).indices.sort(dim=-1).values  # (N, k)
    weights = probabilities.gather(-1, experts)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, experts


def _dense_gates(weights: torch.Tensor, experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """(N, E): each token's routing weight at its chosen experts, 0 elsewhere."""
    return torch.zeros(weights.shape[0], num_experts, dtype=weights.dtype).scatter(1, experts, weights)


def _all_experts(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
                 gate_activation: bool = True) -> torch.Tensor:
    """Every expert on every token: x (N, d) -> (E, N, d). gate_activation=False puts SiLU on up."""
    g = torch.einsum("nd,efd->enf", x, gate)
    u = torch.einsum("nd,efd->enf", x, up)
    hidden = F.silu(g) * u if gate_activation else g * F.silu(u)
    return torch.einsum("enf,edf->end", hidden, down)


def _one_expert(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """One SwiGLU expert: x (..., d) -> (..., d)."""
    return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)


def _combine(gates: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """(N, E) gates and (E, N, d) outputs -> (N, d)."""
    return torch.einsum("ne,end->nd", gates, outputs)


def _exact_balance(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Switch load-balancing loss E * sum_e f_e P_e, f_e a fraction of the N tokens (sums to k)."""
    num_tokens, num_experts = logits.shape
    probabilities = torch.softmax(logits.double(), dim=-1)
    experts = probabilities.topk(k, dim=-1).indices
    fraction = torch.bincount(experts.flatten(), minlength=num_experts).double() / num_tokens
    return num_experts * (fraction * probabilities.mean(dim=0)).sum()


def _exact_z_loss(logits: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits.double(), dim=-1).square().mean()


# -- shared helpers --------------------------------------------------------------------------------

def _by_expert(experts: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = experts.argsort(dim=-1)
    return experts.gather(-1, order), weights.gather(-1, order)


def _gradient(check: Check, tracked: bool, gradient: torch.Tensor | None, what: str, hint: str,
              reaches: str = "the router logits") -> torch.Tensor:
    """The gradient `Check.call_with_gradient` measured, failing with `hint` when none reaches the input."""
    __tracebackhide__ = True
    if not tracked or gradient is None:
        check.fail(f"{what}: no gradient reaches {reaches}. {hint}")
    return gradient


# -- the library's versions, with the exercises' signatures ------------------------------------
# What the cells after an unfinished exercise use until its check passes
# (`check.<exercise>.yours_or_reference(yours)`): the learner's notebook runs to the end either way.

def reference_route(logits: torch.Tensor, k: int, renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, experts), each (N, k), in the logits' dtype (what olm_edu.nn.Router computes)."""
    weights, experts = torch.softmax(logits, dim=-1).topk(k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, experts


def reference_moe_forward(x: torch.Tensor, router_weight: torch.Tensor, gate_proj: torch.Tensor, up_proj: torch.Tensor,
                          down_proj: torch.Tensor, k: int) -> torch.Tensor:
    """Mixtral's layer with olm_edu.nn.Experts' loop: x (B, T, d) -> (B, T, d)."""
    flat = x.reshape(-1, x.shape[-1])  # (N, d)
    weights, experts = reference_route(flat @ router_weight.T, k)
    out = torch.zeros_like(flat)
    for expert in experts.unique().tolist():
        tokens, slot = torch.where(experts == expert)
        out = out.index_add(0, tokens, _one_expert(flat[tokens], gate_proj[expert], up_proj[expert],
                                                   down_proj[expert]) * weights[tokens, slot, None])
    return out.reshape(x.shape)


def reference_load_balancing_loss(logits: torch.Tensor, k: int) -> torch.Tensor:
    """olm_edu.nn.load_balancing_loss on softmax scores and their top-k experts."""
    scores = torch.softmax(logits, dim=-1)
    return library_balance(scores, scores.topk(k, dim=-1).indices)


def reference_router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """olm_edu.nn.router_z_loss."""
    return library_z_loss(logits)


# -- Exercise 1: top-k routing -----------------------------------------------------------------

NOT_RENORMALISED = (
    "you did not renormalise the k chosen weights. With renormalize=True (Mixtral) the chosen softmax "
    "probabilities are divided by their sum, so each token's weights add up to 1: "
    "weights = weights / weights.sum(dim=-1, keepdim=True)"
)
SOFTMAX_OVER_CHOSEN = (
    "your weights add up to 1 over the k chosen experts: you took the softmax over the chosen logits only "
    "(top-k first, then softmax), or renormalised regardless. For Mixtral that is the same thing as "
    "softmax-then-renormalise, but with renormalize=False (Qwen3-MoE with norm_topk_prob=false, DeepSeek-V2) "
    "the weights are the softmax over ALL E experts, read at the chosen ones, and add up to less than 1: "
    "softmax over every expert first, then top-k, and divide only when renormalize is True"
)
RAW_LOGITS = ("your weights are the raw logits of the chosen experts: turn the logits into probabilities with a "
              "softmax first")


def _route_call(check: Check, fn: Callable, logits: torch.Tensor, k: int, renormalize: bool, what: str):
    result = check.call(fn, logits, k, renormalize=renormalize, what=what,
                        hint="return (weights, experts), each of shape (N, k)")
    return _route_result(check, result, logits, k, what)


def _route_result(check: Check, result: Any, logits: torch.Tensor, k: int, what: str):
    if not (isinstance(result, tuple) and len(result) == 2 and all(isinstance(t, torch.Tensor) for t in result)):
        check.fail(f"{what} should return a tuple (weights, experts) of two tensors, got {type(result).__name__}")
    weights, experts = result
    n = logits.shape[0]
    for name, tensor in (("weights", weights), ("experts", experts)):
        if tuple(tensor.shape) != (n, k):
            check.fail(f"{what}: {name} should have shape (N, k) = {(n, k)}, got {tuple(tensor.shape)}. "
                       "Hint: torch.topk(probabilities, k, dim=-1) returns values and indices of that shape")
    check.expect(not experts.is_floating_point() and not experts.is_complex(),
                 f"{what}: experts should hold integer expert indices (int64, as topk's .indices), got {experts.dtype}")
    check.expect(weights.is_floating_point(), f"{what}: weights should be floating point, got {weights.dtype}")
    return weights, experts.long()


def _check_experts(check: Check, logits: torch.Tensor, k: int, got: torch.Tensor, expected: torch.Tensor,
                   what: str) -> None:
    __tracebackhide__ = True
    got_sorted = got.sort(dim=-1).values
    if torch.equal(got_sorted, expected):
        check.passed += 1
        return
    if (got_sorted[:, 1:] == got_sorted[:, :-1]).any():
        token = int((got_sorted[:, 1:] == got_sorted[:, :-1]).any(dim=-1).nonzero()[0])
        check.fail(f"{what}: token {token} chose the same expert twice ({got[token].tolist()}); a token's k experts "
                   "must be k different ones. Hint: torch.topk(probabilities, k, dim=-1).indices")
    smallest = logits.double().topk(k, dim=-1, largest=False).indices.sort(dim=-1).values
    if torch.equal(got_sorted, smallest):
        check.fail(f"{what}: you chose the k experts with the SMALLEST scores; the router sends each token to its "
                   "k largest (torch.topk takes the largest by default)")
    if logits.shape[0] > 1:
        across_tokens = torch.softmax(logits.double(), dim=0).topk(k, dim=-1).indices.sort(dim=-1).values
        if torch.equal(got_sorted, across_tokens):
            check.fail(f"{what}: you took the softmax across tokens (dim=0); each token's distribution is over the "
                       "experts, the last dimension: softmax(logits, dim=-1)")
    token = int((got_sorted != expected).any(dim=-1).nonzero()[0])
    check.fail(f"{what}: token {token} should go to experts {expected[token].tolist()} (its {k} largest router "
               f"probabilities), got {got_sorted[token].tolist()}. Hint: torch.topk(probabilities, k, dim=-1).indices")


def _route_mistakes(logits: torch.Tensor, experts: torch.Tensor, renormalize: bool) -> dict[str, torch.Tensor]:
    probabilities = torch.softmax(logits.double(), dim=-1).gather(-1, experts)
    chosen_logits = logits.double().gather(-1, experts)
    if renormalize:
        return {NOT_RENORMALISED: probabilities, RAW_LOGITS: chosen_logits,
                RAW_LOGITS + ", then renormalise them": chosen_logits / chosen_logits.sum(-1, keepdim=True)}
    return {SOFTMAX_OVER_CHOSEN: probabilities / probabilities.sum(-1, keepdim=True), RAW_LOGITS: chosen_logits}


@exercise("Exercise 1 — top-k routing", reference=reference_route)
def route(check: Check, fn: Callable) -> None:
    cases = [  # (tokens, experts, k, renormalize, logit scale, what it is)
        (6, 8, 2, True, 1.0, "Mixtral: 8 experts, top-2, renormalised"),
        (5, 4, 1, True, 1.0, "top-1 of 4, renormalised (every weight is 1)"),
        (7, 8, 2, False, 1.5, "8 experts, top-2, not renormalised (Qwen3 with norm_topk_prob=false)"),
        (9, 6, 3, False, 1.0, "6 experts, top-3, not renormalised"),
        (5, 8, 2, True, 3.0, "large logits, about 100 (exp overflows float32 above 88)"),
    ]
    if check.hidden:
        cases += [
            (1, 8, 2, True, 1.0, "a single token"),
            (4, 4, 4, True, 1.0, "k = E: every expert chosen"),
            (16, 64, 6, False, 2.0, "DeepSeek-V2-like: 64 experts, top-6, not renormalised"),
            (8, 128, 8, True, 2.0, "Qwen3-30B-A3B-like: 128 experts, top-8, renormalised"),
            (6, 8, 2, False, 3.0, "large logits about 100, not renormalised"),
        ]
    for index, (n, e, k, renormalize, scale, description) in enumerate(cases):
        logits = check.randn(n, e, scale=scale) + (100.0 if "large" in description else 0.0)
        original = logits.clone()
        what = f"route(logits of shape ({n}, {e}), k={k}, renormalize={renormalize}) [{description}]"
        weights, experts = _route_call(check, fn, logits, k, renormalize, what)
        check.expect(torch.equal(logits, original), f"{what} changed the logits it was given; compute on new tensors")
        expected_weights, expected_experts = _exact_route(original, k, renormalize)
        _check_experts(check, original, k, experts, expected_experts, what)
        _, got_weights = _by_expert(experts, weights)
        check.close_or_diagnose(
            got_weights, expected_weights, _route_mistakes(original, expected_experts, renormalize),
            what=f"{what}: the weights (sorted by expert)", **WEIGHT_TOL,
            hint="probabilities = softmax(logits, dim=-1) over all experts; take the k largest; divide them by "
                 "their sum only when renormalize is True" + (
                     "; with logits this large, exp overflows unless you use torch.softmax (or subtract the "
                     "row maximum first)" if "large" in description else ""),
        )
        if index in (0, 2):  # the router learns only through the weights: they must carry a gradient
            what_grad = f"{what}, gradient of the weights"
            projection = check.randn(n, k)  # weighs the weights sorted by expert: slot j of the sorted row
            in_order = torch.zeros(n, k).scatter(-1, experts.argsort(dim=-1), projection)  # the same, unsorted
            result, tracked, gradient = check.call_with_gradient(
                fn, original.clone(), k, renormalize=renormalize, wrt=0, output=0, weight=in_order, what=what_grad,
                hint="return (weights, experts), each of shape (N, k)")
            _, experts_again = _route_result(check, result, original, k, what_grad)
            if not torch.equal(experts_again, experts):
                check.fail(f"{what_grad}: the same logits chose other experts ({experts_again.tolist()} after "
                           f"{experts.tolist()}); routing must depend on the logits alone")
            hint = ("The router is trained only through the routing weights (the choice itself has no gradient): "
                    "do not detach them, call .item()/.tolist(), or compute them under torch.no_grad()")
            got = _gradient(check, tracked, gradient, what_grad, hint)
            reference_leaf = original.double().requires_grad_(True)
            reference_weights, _ = _exact_route(reference_leaf, k, renormalize)
            (expected,) = torch.autograd.grad((reference_weights * projection.double()).sum(), reference_leaf)
            check.close(got, expected, what=f"{what_grad} with respect to the logits", **GRAD_TOL, hint=hint)


# -- Exercise 2: the MoE forward ---------------------------------------------------------------

def _moe_weights(check: Check, e: int, d: int, f: int) -> tuple[torch.Tensor, ...]:
    router = check.randn(e, d, scale=d**-0.5 * 2.0)
    gate, up = check.randn(e, f, d, scale=d**-0.5), check.randn(e, f, d, scale=d**-0.5)
    down = check.randn(e, d, f, scale=f**-0.5)
    return router, gate, up, down


def _moe_mistakes(x: torch.Tensor, router: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
                  k: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The reference output (N, d) and the outputs of the usual mistakes."""
    num_experts = router.shape[0]
    logits = x @ router.T  # (N, E)
    weights, experts = _exact_route(logits, k, renormalize=True)
    plain, _ = _exact_route(logits, k, renormalize=False)
    outputs = _all_experts(x, gate, up, down)  # (E, N, d)
    dense = lambda w: _dense_gates(w, experts, num_experts)  # noqa: E731
    expected = _combine(dense(weights), outputs)
    best = logits.argmax(dim=-1, keepdim=True)
    mistakes = {
        "you added the chosen experts' outputs without their routing weights: multiply each expert's output by its "
        "token's weight before adding it in (out[tokens] += weights[tokens, slot, None] * expert_output)":
            _combine(dense(torch.ones_like(weights)), outputs),
        "you averaged the chosen experts' outputs (equal weights 1/k): weigh each by its routing weight instead":
            _combine(dense(torch.full_like(weights, 1.0 / k)), outputs),
        "you weighed the outputs with the softmax probabilities without renormalising them: Mixtral's weights are "
        "renormalised over the k chosen experts (route(logits, k, renormalize=True))": _combine(dense(plain), outputs),
        "you ran every expert on every token, weighed by the full softmax: a sparse MoE keeps only each token's "
        "top-k experts and gives the others weight 0": _combine(torch.softmax(logits, dim=-1), outputs),
        "you applied SiLU to the up projection; SwiGLU puts it on the gate: down(silu(gate x) * up x)":
            _combine(dense(weights), _all_experts(x, gate, up, down, gate_activation=False)),
    }
    if k > 1:
        mistakes["you used only each token's best expert; Mixtral adds the weighted outputs of all k chosen ones"] = (
            _combine(torch.zeros_like(logits).scatter(1, best, 1.0), outputs))
    scaled_inputs = torch.stack([  # w * expert(x) is not expert(w * x): the expert is not linear
        sum(_one_expert(x[t] * weights[t, j], gate[e], up[e], down[e]) for j, e in enumerate(experts[t].tolist()))
        for t in range(x.shape[0])
    ])  # fmt: skip
    mistakes["you scaled each expert's INPUT by its routing weight; the weight multiplies the expert's OUTPUT: "
             "weight * expert(x), not expert(weight * x)"] = scaled_inputs
    if k > 1:  # out[tokens] = ... keeps only the expert written last: the highest index, or the last slot
        last_expert = torch.zeros_like(weights).scatter(1, experts.argmax(dim=-1, keepdim=True), 1.0) * weights
        by_probability = weights.argsort(dim=-1, descending=True)  # topk's slot order
        last_slot = torch.zeros_like(weights).scatter(1, by_probability[:, -1:], 1.0) * weights
        overwrite = ("each token's output holds only ONE of its k experts' weighted outputs, the one written last "
                     "({}): you assigned (out[tokens] = ...) where you must add (out[tokens] += ... or "
                     "out = out.index_add(0, tokens, ...)), since a token receives k contributions")
        mistakes[overwrite.format("its expert with the highest index")] = _combine(dense(last_expert), outputs)
        mistakes[overwrite.format("its last slot, the smallest weight")] = _combine(dense(last_slot), outputs)
    for other_k in range(1, num_experts + 1):  # a global top_k used instead of the argument
        if other_k != k:
            other_weights, other_experts = _exact_route(logits, other_k, renormalize=True)
            mistakes[f"your output is that of top-{other_k} routing, but this case passes k={k}: route with the "
                     f"argument k (route(logits, k)), not a notebook variable such as top_k"] = _combine(
                _dense_gates(other_weights, other_experts, num_experts), outputs)
    return expected, mistakes


def _poison_unused_expert(x: torch.Tensor, router: torch.Tensor, gate: torch.Tensor,
                          up: torch.Tensor, down: torch.Tensor) -> int:
    """Make the last expert one that no token chooses, and fill its weights with NaN (in place).

    x's first feature is made positive (>= 0.5) and the last router row is -20 along it, so that
    expert's logit is below -10 while the others are about N(0, 2^2): it is never among the top-k.
    A sparse MoE never runs it; code that runs every expert on every token (weight 0 for the
    unchosen ones) gets 0 * NaN = NaN.
    """
    unused = router.shape[0] - 1
    x[..., 0] = x[..., 0].abs() + 0.5
    router[unused] = 0.0
    router[unused, 0] = -20.0
    for weight in (gate, up, down):
        weight[unused] = float("nan")
    return unused


@exercise("Exercise 2 — the MoE forward", reference=reference_moe_forward)
def moe_forward(check: Check, fn: Callable) -> None:
    cases = [  # (B, T, d, E, F, k, an unused expert with NaN weights)
        (2, 5, 16, 4, 24, 2, False),
        (1, 9, 8, 8, 12, 2, False),
        (1, 7, 8, 6, 12, 3, False),  # k other than the notebook's top_k = 2
        (2, 4, 8, 5, 12, 1, True),  # "run each expert only on the tokens that chose it"
    ]
    if check.hidden:
        cases += [(2, 3, 8, 4, 16, 1, False), (1, 3, 16, 8, 8, 2, True), (1, 6, 12, 4, 20, 4, False),
                  (3, 4, 8, 6, 10, 3, False)]
    for index, (b, t, d, e, f, k, poisoned) in enumerate(cases):
        x = check.randn(b, t, d)
        router, gate, up, down = _moe_weights(check, e, d, f)
        unused = _poison_unused_expert(x, router, gate, up, down) if poisoned else None
        originals = [tensor.clone() for tensor in (x, router, gate, up, down)]
        what = (f"moe_forward(x {tuple(x.shape)}, router_weight ({e}, {d}), gate_proj/up_proj ({e}, {f}, {d}), "
                f"down_proj ({e}, {d}, {f}), k={k})")
        if poisoned:
            what += f" [no token chooses expert {unused}, whose weights are NaN]"
        hint = ("the weights are stored as nn.Linear stores them, (out, in): F.linear(h, gate_proj[e]) "
                "is h @ gate_proj[e].T")
        if index == 0:  # the router learns through the weights of the combination: measure d(out . projection)
            projection = check.randn(b, t, d)
            got, tracked, got_grad = check.call_with_gradient(fn, x, router, gate, up, down, k, wrt=1,
                                                              weight=projection, what=what, hint=hint)
        else:
            got = check.call(fn, x, router, gate, up, down, k, what=what, hint=hint)
        for tensor, original, name in zip((x, router, gate, up, down), originals,
                                          ("x", "router_weight", "gate_proj", "up_proj", "down_proj")):
            check.expect(torch.equal(tensor.detach(), original) or (poisoned and torch.equal(
                tensor.detach().nan_to_num(7.0), original.nan_to_num(7.0))),
                f"{what} changed its input {name}; compute on new tensors")
        flat = [tensor.double() for tensor in originals]
        if poisoned:  # the reference weighs the unused expert by 0; any finite weights do
            flat[2:] = [weight.nan_to_num(0.0) for weight in flat[2:]]
            if isinstance(got, torch.Tensor) and got.shape == x.shape and torch.isnan(got).any():
                check.fail(f"{what}: your output has NaN, which only expert {unused} could bring in, and no token "
                           "chose it: you ran every expert on every token (with weight 0 for the unchosen ones). "
                           "Run each expert only on the tokens that chose it: tokens, slot = "
                           "torch.where(experts == expert)")
        expected, mistakes = _moe_mistakes(flat[0].reshape(-1, d), *flat[1:], k)
        shape = (b, t, d)
        reshaped = {message: value.reshape(shape) for message, value in mistakes.items()}
        check.close_or_diagnose(
            got, expected.reshape(shape), reshaped, what=what, **OUTPUT_TOL,
            hint="flatten x to (N, d); logits = x @ router_weight.T; weights, experts = route(logits, k); for each "
                 "expert, find its tokens, run down(silu(gate x) * up x) on them, multiply by their weights and add "
                 "into the output at those tokens; reshape back to (B, T, d)",
        )
        if index == 0:  # the router learns through the weights of the combination
            hint = ("The router weight learns only through the routing weights that scale the expert outputs: keep "
                    "them in the autograd graph (no torch.no_grad(), .detach() or .item() on the way)")
            got_grad = _gradient(check, tracked, got_grad, what, hint, reaches="router_weight")
            reference_router = flat[1].clone().requires_grad_(True)
            logits = flat[0].reshape(-1, d) @ reference_router.T
            weights, experts = _exact_route(logits, k)
            out = _combine(_dense_gates(weights, experts, e), _all_experts(flat[0].reshape(-1, d), *flat[2:]))
            (expected_grad,) = torch.autograd.grad((out.reshape(shape) * projection.double()).sum(), reference_router)
            check.close(got_grad, expected_grad, what=f"{what}: the gradient with respect to router_weight",
                        **GRAD_TOL, hint=hint)


# -- Exercise 3: the load-balancing loss -----------------------------------------------------------

def _balance_mistakes(logits: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    num_tokens, num_experts = logits.shape
    expected = _exact_balance(logits, k)
    probabilities = torch.softmax(logits.double(), dim=-1)
    experts = probabilities.topk(k, dim=-1).indices
    fraction = torch.bincount(experts.flatten(), minlength=num_experts).double() / num_tokens
    first_only = torch.bincount(experts[:, 0], minlength=num_experts).double() / num_tokens
    mistakes = {
        "you left out the factor E (num_experts) in front of the sum: L = E * sum_e f_e P_e. With it, perfectly "
        "even routing scores k whatever the number of experts, so one coefficient suits any E": expected / num_experts,
        "you used token counts instead of fractions: divide each expert's count by the number of tokens N "
        "(f_e = count_e / N), otherwise the loss grows with the batch size": expected * num_tokens,
        "you used token counts instead of fractions AND left out the factor E: f_e = count_e / N, and "
        "L = E * sum_e f_e P_e": expected * num_tokens / num_experts,
        "you took P_e as the mean LOGIT of expert e; it is the mean router PROBABILITY, softmax(logits, dim=-1) "
        "averaged over the tokens": num_experts * (fraction * logits.double().mean(dim=0)).sum(),
        "you used the probabilities for f as well (E * sum_e P_e^2): f_e must count the hard top-k choices, "
        "(tokens that have e among their k experts) / N": num_experts * probabilities.mean(dim=0).square().sum(),
    }
    if k > 1:
        mistakes[f"you divided the counts by N * k (so f sums to 1). This lesson, like transformers and olm_edu, "
                 f"divides by the number of tokens N, so f sums to k and even routing gives k = {k}"] = expected / k
        mistakes["you counted only each token's first choice; f_e counts every one of its k choices "
                 "(bincount of all of topk(...).indices)"] = num_experts * (first_only * probabilities.mean(0)).sum()
    for other_k in range(1, num_experts + 1):  # a global top_k used instead of the argument
        if other_k != k:
            mistakes[f"your loss is the one for top-{other_k} routing, but this case passes k={k}: use the argument "
                     f"k, not a notebook variable such as top_k"] = _exact_balance(logits, other_k)
    return mistakes


def _collapsed_logits(num_tokens: int, num_experts: int, k: int, check: Check) -> torch.Tensor:
    """Every token strongly prefers experts 0..k-1: nearly all the probability on them."""
    logits = check.randn(num_tokens, num_experts, scale=0.1)
    logits[:, :k] += 12.0 + torch.arange(k, 0, -1)
    return logits


@exercise("Exercise 3 — the load-balancing loss", reference=reference_load_balancing_loss)
def load_balancing_loss(check: Check, fn: Callable) -> None:
    cases = [  # (logits, k, what)
        (check.randn(32, 8, scale=1.5), 2, "random logits, 32 tokens, 8 experts, top-2"),
        (check.randn(20, 4), 1, "20 tokens, 4 experts, top-1 (the Switch Transformer)"),
        (_collapsed_logits(16, 8, 2, check), 2,
         "collapsed routing: every token prefers experts 0 and 1 (loss near E = 8)"),
        (check.randn(10, 8, scale=3.0) + 100.0, 2, "large logits, about 100 (exp overflows float32 above 88)"),
    ]
    if check.hidden:
        cases += [
            (check.randn(1, 8), 2, "a single token"),
            (check.randn(64, 64, scale=3.0), 6, "64 experts, top-6"),
            (check.randn(12, 6, dtype=torch.float64), 3, "float64 logits"),
            (check.randn(16, 8, scale=3.0) - 100.0, 3, "large negative logits, about -100, top-3"),
        ]
    for index, (logits, k, description) in enumerate(cases):
        n, e = logits.shape
        what = f"load_balancing_loss(logits of shape ({n}, {e}), k={k}) [{description}]"
        original, given = logits.clone(), logits.clone()
        got, tracked, gradient = check.call_with_gradient(fn, given, k, wrt=0, what=what)
        check.expect(torch.equal(given, original), f"{what} changed the logits it was given")
        if not isinstance(got, torch.Tensor):
            check.fail(f"{what}: expected a 0-dim torch.Tensor, got {type(got).__name__}. Hint: stay in tensor "
                       "operations (no .item(), no Python float): the loss must carry a gradient")
        check.close_or_diagnose(
            got, _exact_balance(original, k), _balance_mistakes(original, k), what=what, **LOSS_TOL,
            hint="P = softmax(logits, dim=-1).mean(dim=0); f = bincount of the top-k expert indices (minlength=E) / N; "
                 "loss = E * (f * P).sum()" + ("; with logits this large, exp overflows unless you use torch.softmax "
                                               "(or subtract the row maximum first)" if "large" in description else ""),
        )
        if index in (0, 1):
            hint = ("The gradient flows through P (the mean probabilities); f is a count and has none. Keep the "
                    "softmax in the graph: no .detach(), .item() or torch.no_grad() around P")
            got_grad = _gradient(check, tracked, gradient, what, hint)
            reference_leaf = original.double().requires_grad_(True)
            (expected_grad,) = torch.autograd.grad(_exact_balance(reference_leaf, k), reference_leaf)
            check.close(got_grad, expected_grad, what=f"{what}: the gradient with respect to the logits", **GRAD_TOL,
                        hint=hint + ". f must not carry a gradient either: build it from the integer top-k indices")


# -- Exercise 4: the router z-loss -----------------------------------------------------------------

def _z_mistakes(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    wide = logits.double()
    lse = torch.logsumexp(wide, dim=-1)
    mistakes = {
        "you did not square the log-sum-exp: the z-loss is the mean of logsumexp(logits)^2 (squared, so that large "
        "logits of either sign are pushed back towards 0 and the push grows with their size)": lse.mean(),
        "you summed over the tokens; take the mean over tokens, so the loss does not grow with the batch size":
            lse.square().sum(),
        "you squared the logits themselves; the z-loss squares each token's log-sum-exp over the experts, "
        "logsumexp(logits, dim=-1) ** 2, then takes the mean": wide.square().mean(),
        "you used each token's largest logit; the z-loss uses the log-sum-exp over the experts (a soft maximum "
        "that also counts the other experts)": wide.max(dim=-1).values.square().mean(),
    }
    if logits.shape[0] > 1:
        mistakes["you took the log-sum-exp over the tokens (dim=0); it runs over the experts of each token, dim=-1"] = (
            torch.logsumexp(wide, dim=0).square().mean())
    return mistakes


@exercise("Exercise 4 — the router z-loss", reference=reference_router_z_loss)
def router_z_loss(check: Check, fn: Callable) -> None:
    cases = [
        (check.randn(16, 8, scale=2.0), "random logits, 16 tokens, 8 experts"),
        (check.randn(6, 4) - 3.0, "negative logits"),
        (check.randn(5, 8, scale=3.0) + 100.0, "large logits, about 100 (exp overflows float32 above 88)"),
    ]
    if check.hidden:
        cases += [
            (check.randn(1, 8), "a single token"),
            (check.randn(40, 64, scale=3.0), "64 experts"),
            (check.randn(7, 5, dtype=torch.float64), "float64 logits"),
        ]
    for index, (logits, description) in enumerate(cases):
        n, e = logits.shape
        what = f"router_z_loss(logits of shape ({n}, {e})) [{description}]"
        original, given = logits.clone(), logits.clone()
        got, tracked, gradient = check.call_with_gradient(fn, given, wrt=0, what=what)
        check.expect(torch.equal(given, original), f"{what} changed the logits it was given")
        if not isinstance(got, torch.Tensor):
            check.fail(f"{what}: expected a 0-dim torch.Tensor, got {type(got).__name__}. Hint: no .item(): the loss "
                       "must carry a gradient")
        check.close_or_diagnose(
            got, _exact_z_loss(original), _z_mistakes(original), what=what, **LOSS_TOL,
            hint="torch.logsumexp(logits, dim=-1).square().mean(); log(exp(logits).sum(-1)) overflows for logits "
                 "above about 88 in float32, logsumexp does not",
        )
        if index == 0:
            hint = "keep the loss in the autograd graph (no .detach(), .item() or torch.no_grad())"
            got_grad = _gradient(check, tracked, gradient, what, hint)
            reference_leaf = original.double().requires_grad_(True)
            (expected_grad,) = torch.autograd.grad(_exact_z_loss(reference_leaf), reference_leaf)
            check.close(got_grad, expected_grad, what=f"{what}: the gradient with respect to the logits", **GRAD_TOL,
                        hint=hint)
