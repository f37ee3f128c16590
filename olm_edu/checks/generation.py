"""Checks for lesson 07 — Generation (top-k, top-p, one cached attention step).

The filters are compared with references written here from their definitions (sort once, then
keep by rank or by the probability mass before each token), on random logits with batch
dimensions and on hand-made edge cases: ties at the k-th value, a p reached exactly at a token
boundary, k larger than the vocabulary, a p so small that only the top token survives.
The cached attention step is compared, chunk by chunk, with causal attention over the whole
sequence at once.

Tolerances: the filters only keep or remove logits, so kept values must be returned unchanged
(exact); attention outputs are compared at atol=1e-5, rtol=1e-4 (float32; any order of
summation or softmax formulation passes).
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Callable

import torch

from olm_edu.grading import Check, exercise

Filter = Callable[[torch.Tensor, float], torch.Tensor]


# -- references ---------------------------------------------------------------------------------

def _top_k_keep(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the tokens top-k keeps: every logit >= the k-th largest (ties kept)."""
    sorted_logits = logits.sort(dim=-1, descending=True).values
    kth_largest = sorted_logits[..., min(k, logits.shape[-1]) - 1 : min(k, logits.shape[-1])]
    return logits >= kth_largest


def _top_p_keep(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Boolean mask of the tokens top-p keeps: those whose more likely tokens hold < p of the mass."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probabilities = sorted_logits.softmax(dim=-1)
    mass_before = probabilities.cumsum(dim=-1) - probabilities
    keep_sorted = mass_before < p
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def _filtered(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(~keep, float("-inf"))


def reference_top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Exercise 1's filter (as olm_edu.generate.sample_next applies it). Shapes: (..., V) -> (..., V)."""
    return _filtered(logits, _top_k_keep(logits, k))


def reference_top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Exercise 2's filter (as olm_edu.generate.sample_next applies it). Shapes: (..., V) -> (..., V)."""
    return _filtered(logits, _top_p_keep(logits, p))


# -- shared checking of a filter's output --------------------------------------------------------

def _as_rows(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1, tensor.shape[-1])


def _check_filter_output(check: Check, got, logits: torch.Tensor, keep: torch.Tensor, call: str,
                         diagnose: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], str]) -> None:
    """Shape, dtype, which tokens were kept, and kept values unchanged."""
    keep = keep & (logits > float("-inf"))  # a logit that is already -inf stays -inf either way
    if not isinstance(got, torch.Tensor):
        check.fail(f"{call} should return a tensor of logits, got {type(got).__name__}")
    check.expect(tuple(got.shape) == tuple(logits.shape),
                 f"{call}: expected shape {tuple(logits.shape)}, got {tuple(got.shape)}. Hint: filter along the "
                 "last dimension (the vocabulary) and keep every leading (batch) dimension")
    check.expect(got.dtype == logits.dtype, f"{call}: expected dtype {logits.dtype}, got {got.dtype}")
    if torch.isnan(got).any():
        check.fail(f"{call}: your result contains nan; removed tokens should be float('-inf')")
    if (got == float("inf")).any():
        check.fail(f"{call}: your result contains +inf; removed tokens should be -inf")
    got_keep = got > float("-inf")
    expected_logits = _filtered(logits, keep)
    if not torch.equal(got_keep, keep) and bool((got[~keep] == 0).all()) and bool((~keep).any()):
        check.fail(f"{call}: the removed tokens are 0, not -inf. A logit of 0 still gets probability after the "
                   "softmax; set removed logits to float('-inf')")
    sums = got.sum(dim=-1)
    if not torch.equal(got_keep, keep) and bool((got >= 0).all()) and torch.allclose(sums, torch.ones_like(sums)):
        check.fail(f"{call}: you returned probabilities; return the filtered *logits* (kept values unchanged, "
                   "-inf elsewhere), the softmax comes later")
    all_removed = _as_rows(~got_keep).all(dim=-1) & _as_rows(keep).any(dim=-1)
    if all_removed.any():
        check.fail(f"{call}: every token of row {int(all_removed.nonzero()[0])} was removed; "
                   "the most likely token must always be kept")
    if not torch.equal(got_keep, keep):
        rows = (_as_rows(got_keep) != _as_rows(keep)).any(dim=-1).nonzero()
        row = int(rows[0])
        check.fail(f"{call}, row {row}: " + diagnose(row, _as_rows(logits)[row], _as_rows(keep)[row],
                                                     _as_rows(got_keep)[row]))
    kept_equal = torch.equal(got[keep], logits[keep])
    if not kept_equal:
        check.fail(f"{call}: the kept logits changed (expected {_few(expected_logits[keep])}, got "
                   f"{_few(got[keep])}). Hint: return the original logits of the kept tokens and -inf elsewhere; "
                   "do not softmax, renormalise or rescale them")
    check.passed += 1


def _few(values: torch.Tensor, limit: int = 4) -> str:
    shown = ", ".join(f"{v:.4g}" for v in values.flatten()[:limit].tolist())
    return "[" + shown + (", ...]" if values.numel() > limit else "]")


def _rank_diagnosis(row_logits: torch.Tensor, keep: torch.Tensor, got_keep: torch.Tensor) -> str | None:
    """Messages shared by both filters: the wrong end of the distribution, or the wrong positions."""
    n_expected, n_got = int(keep.sum()), int(got_keep.sum())
    ascending = row_logits.sort(descending=False).indices
    smallest = torch.zeros_like(keep)
    smallest[ascending[:n_got]] = True
    if n_got and torch.equal(got_keep, smallest) and not torch.equal(got_keep, keep):
        return (f"you kept the {n_got} *least* likely tokens. Hint: sort in descending order "
                "(descending=True) so the most likely tokens come first")
    if n_got == n_expected:
        descending = row_logits.sort(descending=True).indices
        if torch.equal(got_keep, torch.arange(len(keep)) < n_expected) and not torch.equal(got_keep, keep):
            return (f"you kept positions 0..{n_expected - 1}, the right number of tokens but in sorted order. "
                    "Hint: after deciding in sorted order, put each decision back at the token's original "
                    f"position (scatter with the sort indices); the most likely token here is {int(descending[0])}")
        return (f"you kept tokens {_ids(got_keep)} but should keep tokens {_ids(keep)}. Hint: keep the most "
                "likely tokens (largest logits) and set the others to -inf")
    return None


def _ids(mask: torch.Tensor, limit: int = 10) -> str:
    ids = mask.nonzero().flatten().tolist()
    return str(ids) if len(ids) <= limit else str(ids[:limit])[:-1] + ", ...]"


# -- Exercise 1: top-k ---------------------------------------------------------------------------

@exercise("Exercise 1 — top-k filter", reference=reference_top_k_filter)
def top_k(check: Check, fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    cases: list[tuple[str, torch.Tensor, int]] = [
        ("logits [1, 3, 2, 5, 4]", torch.tensor([1.0, 3.0, 2.0, 5.0, 4.0]), 2),
        ("a random (4, 50) batch", check.randn(4, 50, scale=2.0), 5),
        ("a random (2, 3, 20) batch", check.randn(2, 3, 20), 3),
        ("a random (3, 30) batch", check.randn(3, 30), 1),
        ("logits [2, 1, 2, 0, 2] (three tied at the top)", torch.tensor([[2.0, 1.0, 2.0, 0.0, 2.0]]), 2),
        ("logits [4, 3, 3, 1] (a tie at the k-th value)", torch.tensor([4.0, 3.0, 3.0, 1.0]), 2),
        ("a random (2, 8) batch with k larger than the vocabulary", check.randn(2, 8), 20),
        ("a random (2, 8) batch with k equal to the vocabulary", check.randn(2, 8), 8),
    ]
    if check.hidden:
        cases += [
            ("a random (1000,) vector", check.randn(1000, scale=3.0), 40),
            ("a random (3, 100) float64 batch", check.randn(3, 100, dtype=torch.float64), 10),
            ("a (2, 6) batch that already holds -inf", torch.tensor([[0.5, -math.inf, 2.0, 1.0, -math.inf, 0.0],
                                                                     [-math.inf] * 5 + [1.0]]), 3),
            ("rounded random logits (many ties)", check.randn(4, 40).round(), 7),
        ]
    for label, logits, k in cases:
        original = logits.clone()
        call = f"top_k_filter({label}, k={k})"

        def diagnose(row: int, row_logits: torch.Tensor, keep: torch.Tensor, got_keep: torch.Tensor, k=k) -> str:
            n_expected, n_got = int(keep.sum()), int(got_keep.sum())
            kth = row_logits.sort(descending=True).values[min(k, len(row_logits)) - 1].item()
            ties = n_expected > k
            ranked = _rank_diagnosis(row_logits, keep, got_keep)
            if ranked and "least" in ranked:
                return ranked
            kth_smallest = row_logits.sort().values[min(k, len(row_logits)) - 1]
            if n_got > n_expected and torch.equal(got_keep, row_logits >= kth_smallest):
                return (f"you kept every logit >= the k-th *smallest* one ({kth_smallest.item():g}), {n_got} tokens "
                        "instead of the k largest. Hint: sort in descending order (descending=True), so "
                        "sorted_logits[..., k - 1] is the k-th largest")
            if ties and n_got == k:
                return (f"{n_expected} tokens have a logit >= the k-th largest ({kth:g}), you kept only {n_got}. "
                        "Hint: tokens tied with the k-th largest logit are all kept: compare each logit with the "
                        "k-th largest value (>=), do not just take k indices")
            if n_got == n_expected + 1 or (n_got > n_expected and not ties):
                return (f"you kept {n_got} tokens, expected {n_expected} for k={k}. Hint: the k-th largest logit "
                        "is sorted_logits[..., k - 1] (0-based indexing), and a token is kept when its logit "
                        "is >= that value")
            if n_got < n_expected:
                return (f"you kept {n_got} tokens, expected {n_expected} for k={k}. Hint: keep every logit >= the "
                        "k-th largest one (sorted_logits[..., k - 1]); when k exceeds the vocabulary, keep all")
            return ranked or f"you kept tokens {_ids(got_keep)}, expected {_ids(keep)}"

        got = check.call(fn, logits, k, what=call)
        check.expect(torch.equal(logits, original), f"{call} changed its input in place; build a new tensor "
                     "(masked_fill, not masked_fill_)")
        _check_filter_output(check, got, original, _top_k_keep(original, k), call, diagnose)


# -- Exercise 2: top-p ---------------------------------------------------------------------------

# Probabilities that are exact in binary, so cumulative sums hit 0.5, 0.75, 0.875 exactly.
_DYADIC = torch.tensor([0.125, 0.5, 0.03125, 0.25, 0.0625, 0.03125])


@exercise("Exercise 2 — top-p (nucleus) filter", reference=reference_top_p_filter)
def top_p(check: Check, fn: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    dyadic_logits = _DYADIC.log()  # softmax gives back exactly the dyadic probabilities
    cases: list[tuple[str, torch.Tensor, float]] = [
        ("logits of probabilities [0.5, 0.3, 0.2]", torch.tensor([0.5, 0.3, 0.2]).log(), 0.6),
        ("a random (4, 50) batch", check.randn(4, 50, scale=2.0), 0.9),
        ("a random (2, 3, 20) batch", check.randn(2, 3, 20), 0.5),
        ("a random (3, 30) batch with a tiny p", check.randn(3, 30), 1e-6),
        ("a random (2, 16) batch with p = 1", check.randn(2, 16), 1.0),
        ("probabilities [.125, .5, .03125, .25, .0625, .03125], p reached exactly after 2 tokens",
         dyadic_logits, 0.75),
        ("probabilities [.125, .5, .03125, .25, .0625, .03125], p reached exactly after 1 token",
         dyadic_logits.unsqueeze(0), 0.5),
    ]
    if check.hidden:
        cases += [
            ("probabilities [.125, .5, .03125, .25, .0625, .03125], p reached exactly after 3 tokens",
             dyadic_logits.repeat(2, 1), 0.875),
            ("a random (1000,) vector", check.randn(1000, scale=3.0), 0.95),
            ("a random (3, 100) float64 batch", check.randn(3, 100, dtype=torch.float64), 0.7),
            ("a random (5, 40) peaked batch", check.randn(5, 40, scale=6.0), 0.3),
        ]
    for label, logits, p in cases:
        original = logits.clone()
        call = f"top_p_filter({label}, p={p:g})"

        def diagnose(row: int, row_logits: torch.Tensor, keep: torch.Tensor, got_keep: torch.Tensor, p=p) -> str:
            n_expected, n_got = int(keep.sum()), int(got_keep.sum())
            order = row_logits.sort(descending=True).indices
            probabilities = row_logits.softmax(-1)[order]
            prefix = torch.arange(len(keep)) < n_got
            got_is_prefix = torch.equal(got_keep[order], prefix)
            ranked = _rank_diagnosis(row_logits, keep, got_keep)
            if ranked and "least" in ranked:
                return ranked
            if got_is_prefix and n_got == n_expected - 1:
                before = probabilities[:n_got].sum().item()
                return (f"you removed the token that takes the total past p: the {n_got} most likely tokens hold "
                        f"{before:.4g} < p={p:g} of the probability, so the next one (probability "
                        f"{probabilities[n_got].item():.4g}) must be kept too. Hint: the nucleus is the smallest "
                        "set whose mass reaches p; keep a token when the mass of the tokens *before* it is < p")
            if got_is_prefix and n_got > n_expected:
                before = probabilities[:n_expected].sum().item()
                return (f"you kept {n_got} tokens, expected {n_expected}: the first {n_expected} already hold "
                        f"{before:.4g} >= p={p:g}. Hint: keep a token only while the mass of the more likely "
                        "tokens before it is strictly less than p")
            if got_is_prefix and n_got < n_expected:
                return (f"you kept {n_got} tokens, expected {n_expected}: the smallest set of most likely tokens "
                        f"whose probabilities reach p={p:g} has {n_expected}. Hint: compare cumulative sums of "
                        "the *probabilities* (softmax of the sorted logits), not of the logits")
            return ranked or f"you kept tokens {_ids(got_keep)}, expected {_ids(keep)}"

        got = check.call(fn, logits, p, what=call)
        check.expect(torch.equal(logits, original), f"{call} changed its input in place; build a new tensor "
                     "(masked_fill, not masked_fill_)")
        _check_filter_output(check, got, original, _top_p_keep(original, p), call, diagnose)


# -- Exercise 3: one cached attention step ---------------------------------------------------------

def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offset: int, *, scale: bool = True,
                      causal: bool = True, top_left: bool = False) -> torch.Tensor:
    """Attention of T_q queries at positions offset.. over T_k keys at 0..; variants for diagnosis."""
    scores = q.double() @ k.double().transpose(-2, -1)
    if scale:
        scores = scores / math.sqrt(q.shape[-1])
    if causal:
        query_positions = torch.arange(q.shape[-2])[:, None] + (0 if top_left else offset)
        allowed = torch.arange(k.shape[-2])[None, :] <= query_positions
        scores = scores.masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1) @ v.double()).to(q.dtype)


def reference_attend_with_cache(q_new: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, cache) -> torch.Tensor:
    """Exercise 3: append to cache.keys / cache.values (dim 2), then causal attention of the new
    queries over everything cached. Shapes: (B, H, T_new, d) -> (B, H, T_new, d)."""
    cache.keys = k_new if cache.keys is None else torch.cat([cache.keys, k_new], dim=2)
    cache.values = v_new if cache.values is None else torch.cat([cache.values, v_new], dim=2)
    return _causal_attention(q_new, cache.keys, cache.values, cache.keys.shape[2] - q_new.shape[2])


def _describe_cache(value) -> str:
    return "None" if value is None else (f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor)
                                         else type(value).__name__)


@exercise("Exercise 3 — one attention step with a KV cache", reference=reference_attend_with_cache)
def attend_with_cache(check: Check, fn: Callable) -> None:
    runs = [((2, 3, 11, 8), (4, 1, 1, 3, 1, 1)), ((1, 2, 6, 4), (1, 1, 1, 1, 1, 1)), ((2, 2, 5, 16), (5,))]
    if check.hidden:
        runs += [((3, 4, 20, 32), (7, 2, 1, 1, 6, 3)), ((1, 1, 9, 2), (2, 3, 4))]
    for (batch, heads, length, head_dim), chunks in runs:
        q, k, v = (check.randn(batch, heads, length, head_dim) for _ in range(3))
        expected_all = _causal_attention(q, k, v, 0)
        cache = SimpleNamespace(keys=None, values=None)
        start = 0
        story = f"a ({batch}, {heads}, {length}, {head_dim}) sequence fed in chunks {list(chunks)}"
        for size in chunks:
            end = start + size
            where = f"chunk {start}:{end} of {story}"
            q_new, k_new, v_new = q[:, :, start:end], k[:, :, start:end], v[:, :, start:end]
            got = check.call(fn, q_new.clone(), k_new.clone(), v_new.clone(), cache, what=where)
            for name, full in (("keys", k), ("values", v)):
                held = getattr(cache, name, None)
                expected_shape = (batch, heads, end, head_dim)
                if not isinstance(held, torch.Tensor) or tuple(held.shape) != expected_shape:
                    check.fail(f"after {where}, cache.{name} should hold the {name} of all {end} tokens seen so "
                               f"far, shape {expected_shape}; it holds {_describe_cache(held)}. Hint: append the "
                               f"new {name} with torch.cat along dim=2 (the time axis) and store the result in "
                               f"cache.{name}")
                if not torch.allclose(held, full[:, :, :end]):
                    check.fail(f"after {where}, cache.{name} does not hold the {name} in order (oldest first). "
                               "Hint: torch.cat([cache.keys, k_new], dim=2), the past before the new")
            if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(q_new.shape):
                shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
                check.fail(f"{where}: expected an output of shape {tuple(q_new.shape)} (one vector per new query), "
                           f"got {shape}")
            expected = expected_all[:, :, start:end]
            if not torch.allclose(got, expected, atol=1e-5, rtol=1e-4):
                check.fail(f"{where}: " + _attention_diagnosis(got, q_new, k[:, :, :end], v[:, :, :end], start))
            check.passed += 1
            start = end


def _attention_diagnosis(got, q_new, keys, values, offset) -> str:
    def matches(**variant) -> bool:
        return torch.allclose(got, _causal_attention(q_new, keys, values, offset, **variant), atol=1e-5, rtol=1e-4)

    new_count = q_new.shape[-2]
    if matches(scale=False):
        return "the scores are not scaled. Hint: divide q @ k^T by sqrt(head_dim) before the softmax"
    if offset == 0 and new_count > 1 and matches(causal=False):
        return (f"the {new_count} new tokens of the prompt can see each other's future. Hint: when several tokens "
                "arrive at once, query i may only attend to keys at positions <= its own")
    if offset > 0 and matches(top_left=True):
        return (f"the causal mask is aligned to the top-left: the first new query sits at position {offset}, so it "
                f"sees keys 0..{offset}, not just key 0 (F.scaled_dot_product_attention with is_causal=True assumes "
                f"the queries start at position 0). Hint: allow key j for new query i when j <= {offset} + i")
    if offset > 0 and torch.allclose(got, _causal_attention(q_new, keys[:, :, offset:], values[:, :, offset:], 0),
                                     atol=1e-5, rtol=1e-4):
        return (f"the new queries attend only to the new keys; the {offset} cached tokens are ignored. Hint: "
                "attend over the concatenation of the cached keys/values and the new ones")
    return ("the output differs from causal attention over the whole sequence. Hint: scores = q_new @ all_keys^T / "
            "sqrt(head_dim), mask key positions after each query's position, softmax over the keys, times all_values")
