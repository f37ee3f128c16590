"""Checks for lesson 23 — sparse attention: DeepSeek-V3.2's lightning indexer and top-k selection.

Every reference is written here from DeepSeek-V3.2's definitions, independently of
`olm_edu.nn.indexer` and `olm_edu.nn.attention` (which the lesson shows equal to the learner's
code and to transformers' DeepseekV32Indexer):

    indexer scores   I(t, s) = sum_h (w_{t,h} / sqrt(H_I)) * ReLU(q_{t,h} . k_s / sqrt(d_I)),
                     computed in float64
    causal top-k     query i of T_q sits at position T_k - T_q + i (the last T_q of T_k tokens);
                     it keeps key s when s <= its position and s is among the k highest scores of
                     the visible keys (every visible key while there are at most k of them)
    sparse attention softmax(scale * q . k) over the selected keys only, per head, in float64;
                     the same selection for every head
    score FLOPs      per layer and token at context T: 2 * min(T, k) * H * (d_qk + d_v) for the
                     attention over the selected keys, plus 2 * T * H_I * (d_I + 1) for the
                     indexer, which still scores every key (q . k per head, then the weighted sum)

When an answer is wrong the check computes the usual mistakes (softmax instead of ReLU, no ReLU,
the ReLU after the weighted sum, a missing 1/sqrt(H_I) or 1/sqrt(d_I), unweighted heads; top-k
over the future keys, top-k before the causal mask, the masked keys kept at early positions, a
mask filled with 0 instead of -inf, a query that does not see itself; the selection applied after
the softmax, ignored, or filled with 0, no scale; dense attention counted, the indexer left out
or counted over k keys only) and names the one the answer matches.

Tolerances (float32 inputs, float64 references): indexer scores atol=1e-5, rtol=1e-5; the
attention output atol=1e-5, rtol=1e-4; masks and FLOP counts exact.
"""

from __future__ import annotations

from typing import Callable

import torch

from olm_edu.grading import Check, exercise
from olm_edu.models.config import ModelConfig

__all__ = [
    "indexer_scores", "causal_top_k", "sparse_attention", "score_flops", "reference_indexer_scores",
    "reference_causal_top_k", "reference_sparse_attention", "reference_score_flops",
]  # fmt: skip

SCORES_TOL = dict(atol=1e-5, rtol=1e-5)
ATTENTION_TOL = dict(atol=1e-5, rtol=1e-4)


# -- references ------------------------------------------------------------------------------------


def reference_indexer_scores(q: torch.Tensor, k: torch.Tensor, head_weights: torch.Tensor) -> torch.Tensor:
    """q (B, T, H_I, d_I), k (B, T_k, d_I), head_weights (B, T, H_I) -> I (B, T, T_k), in q's dtype."""
    heads, dim = q.shape[-2], q.shape[-1]
    dots = torch.einsum("bthd,bsd->bths", q.double(), k.double())  # (B, T, H_I, T_k)
    votes = torch.relu(dots / dim**0.5)
    return torch.einsum("bth,bths->bts", head_weights.double() / heads**0.5, votes).to(q.dtype)


def _visible(t_q: int, t_k: int) -> torch.Tensor:
    """(T_q, T_k) bool: query i (at position T_k - T_q + i) may see key s <= its position."""
    return torch.arange(t_k)[None, :] <= torch.arange(t_k - t_q, t_k)[:, None]


def reference_causal_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """scores (B, T_q, T_k) -> (B, T_q, T_k) bool: each query's k best visible keys."""
    visible = _visible(scores.shape[-2], scores.shape[-1])
    masked = scores.masked_fill(~visible, float("-inf"))
    chosen = masked.topk(min(k, scores.shape[-1]), dim=-1).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter(-1, chosen, True) & visible


def reference_sparse_attention(q, k, v, selected: torch.Tensor, scale: float) -> torch.Tensor:
    """q (B, H, T_q, d), k (B, H, T_k, d), v (B, H, T_k, d_v), selected (B, T_q, T_k) -> (B, H, T_q, d_v)."""
    scores = (q.double() @ k.double().transpose(-1, -2) * scale).masked_fill(~selected[:, None], float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v.double()).to(q.dtype)


def reference_score_flops(cfg: ModelConfig, seq_len: int) -> int:
    """The attention-score FLOPs of the token at position seq_len - 1, over all layers."""
    per_head = cfg.qk_head_size + cfg.value_head_size
    attended = seq_len if cfg.index_topk is None else min(seq_len, cfg.index_topk)
    flops = 2 * attended * cfg.num_heads * per_head
    if cfg.index_topk is not None:
        flops += 2 * seq_len * cfg.index_heads * (cfg.index_head_dim + 1)
    return cfg.num_layers * flops


# -- Exercise 1: the indexer's scores ----------------------------------------------------------------

SOFTMAX_NOT_RELU = ("you took a softmax over the keys; the indexer's heads use ReLU: each head votes for a key "
                    "(q.k > 0) or abstains, and nothing is normalised")
NO_RELU = "you left out the ReLU: a head's vote is ReLU(q_h . k_s / sqrt(d_I)), so negative dot products count 0"
RELU_AFTER_SUM = ("you applied the ReLU after summing the heads; it acts on each head's dot product, before the "
                  "head weights (which may be negative) multiply it")
NO_HEAD_SCALE = "you left out 1/sqrt(H_I): the head weights are divided by the square root of the number of heads"
NO_DIM_SCALE = "you left out 1/sqrt(d_I): each dot product is divided by the square root of the head width"
NO_WEIGHTS = ("your heads are not weighted: multiply head h's votes by its weight w_{t,h} (head_weights[b, t, h], "
              "one per query) before summing")


def _indexer_mistakes(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor) -> dict[str, torch.Tensor]:
    heads, dim = q.shape[-2], q.shape[-1]
    dots = torch.einsum("bthd,bsd->bths", q.double(), k.double()) / dim**0.5
    weights = w.double() / heads**0.5
    weigh = lambda votes, by=weights: torch.einsum("bth,bths->bts", by, votes)  # noqa: E731
    return {
        SOFTMAX_NOT_RELU: weigh(torch.softmax(dots, dim=-1)),
        NO_RELU: weigh(dots),
        RELU_AFTER_SUM: torch.relu(weigh(dots)),
        NO_HEAD_SCALE: weigh(torch.relu(dots), w.double()),
        NO_DIM_SCALE: weigh(torch.relu(dots * dim**0.5)),
        NO_WEIGHTS: torch.relu(dots).sum(-2) / heads**0.5,
        NO_WEIGHTS + " (you averaged the heads' votes)": torch.relu(dots).mean(-2),
        NO_WEIGHTS + " (you added the heads' votes)": torch.relu(dots).sum(-2),
    }


@exercise("Exercise 1 — the indexer's scores", reference=reference_indexer_scores)
def indexer_scores(check: Check, fn: Callable) -> None:
    cases = [  # (B, T, T_k, H_I, d_I, description)
        (2, 6, 6, 4, 8, "a sequence of 6, 4 heads of width 8"),
        (1, 1, 9, 4, 16, "one query (decoding) over 9 keys"),
        (1, 5, 5, 1, 8, "one head"),
    ]
    if check.hidden:
        cases += [(2, 7, 12, 8, 32, "7 queries over 12 keys, 8 heads"), (1, 4, 4, 64, 16, "64 heads, as V3.2")]
    for b, t, t_k, heads, dim, description in cases:
        q, k, w = check.randn(b, t, heads, dim), check.randn(b, t_k, dim), check.randn(b, t, heads)
        originals = q.clone(), k.clone(), w.clone()
        what = f"indexer_scores(q {tuple(q.shape)}, k {tuple(k.shape)}, head_weights {tuple(w.shape)}) [{description}]"
        got = check.call(fn, q, k, w, what=what, hint="return a tensor of shape (B, T, T_k)")
        check.expect(all(torch.equal(a, b) for a, b in zip((q, k, w), originals)), f"{what} changed its inputs")
        check.close_or_diagnose(
            got, reference_indexer_scores(*originals), _indexer_mistakes(*originals), what=what, **SCORES_TOL,
            hint="dots = einsum('bthd,bsd->bths', q, k) / sqrt(d_I); then sum over h of "
                 "head_weights[..., h] / sqrt(H_I) * relu(dots)",
        )


# -- Exercise 2: the causal top-k mask ----------------------------------------------------------------

NOT_BOOL = "return a bool tensor (True where the query keeps the key), e.g. from torch.zeros(..., dtype=torch.bool)"
FUTURE_KEYS = ("your mask keeps keys in the future of their query: take the top-k among the visible keys only "
               "(fill the scores of keys s > position with -inf before topk, and keep only visible keys)")
TOPK_BEFORE_MASK = ("you chose the top-k among all the keys and removed the future ones afterwards, so a query "
                    "keeps fewer than k keys when future keys scored high: mask the future with -inf first, "
                    "then take the top-k")
MASKED_KEPT = ("at early positions a query sees fewer than k keys, and topk then picks masked (-inf) keys too: "
               "AND the result with the causal mask, or take min(k, number of visible keys)")
ZERO_FILL = ("you filled the future keys' scores with 0, but indexer scores can be negative, so a future key "
             "with score 0 beats them: fill with float('-inf')")
NO_SELF = ("a query may read its own key: key s is visible to the query at position p when s <= p, "
           "not s < p")
K_TOO_LARGE = "k may exceed the number of keys T_k; topk needs min(k, T_k)"


def _top_k_mistakes(scores: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    t_q, t_k = scores.shape[-2:]
    visible, kk = _visible(t_q, t_k), min(k, t_k)
    strict = torch.arange(t_k)[None, :] < torch.arange(t_k - t_q, t_k)[:, None]

    def keep(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(scores, dtype=torch.bool).scatter(-1, values.topk(kk, dim=-1).indices, True)

    inf = float("-inf")
    mistakes = {
        FUTURE_KEYS: keep(scores),
        TOPK_BEFORE_MASK: keep(scores) & visible,
        MASKED_KEPT: keep(scores.masked_fill(~visible, inf)),
        ZERO_FILL: keep(scores.masked_fill(~visible, 0.0)) & visible,
        NO_SELF: keep(scores.masked_fill(~strict, inf)) & strict,
    }
    return mistakes


def _describe_difference(got: torch.Tensor, expected: torch.Tensor, scores: torch.Tensor, k: int) -> str:
    """Where the first wrong row goes wrong, without giving away the answer."""
    t_q, t_k = scores.shape[-2:]
    visible = _visible(t_q, t_k).expand_as(got)
    rows = (got != expected).any(-1).nonzero()[0].tolist()  # (b, i): the first wrong query
    b, i = rows
    position = t_k - t_q + i
    row_got, row_visible = got[b, i], visible[b, i]
    if (row_got & ~row_visible).any():
        return f"query {i} (position {position}) keeps a key after its position: {FUTURE_KEYS}"
    wanted = min(k, position + 1)
    if int(row_got.sum()) != wanted:
        return (f"query {i} (position {position}) keeps {int(row_got.sum())} keys; it sees {position + 1} keys "
                f"and should keep min(k, {position + 1}) = {wanted}")
    return (f"query {i} (position {position}) keeps the right number of keys, but not the ones with the "
            f"{wanted} highest scores among the keys 0..{position}")


@exercise("Exercise 2 — the causal top-k mask", reference=reference_causal_top_k)
def causal_top_k(check: Check, fn: Callable) -> None:
    cases = [  # (B, T_q, T_k, k, description)
        (2, 8, 8, 3, "a sequence of 8, k = 3 (queries 0-2 see fewer than 3 keys)"),
        (1, 1, 10, 4, "one query (decoding) at position 9 over 10 keys"),
        (1, 4, 9, 5, "the last 4 queries of 9 tokens (a prefill after a cached prompt)"),
        (1, 6, 6, 8, "k = 8 larger than the 6 keys"),
    ]
    if check.hidden:
        cases += [(3, 12, 12, 1, "k = 1"), (1, 16, 16, 15, "k = 15 of 16 keys"), (2, 5, 20, 7, "5 queries of 20")]
    for b, t_q, t_k, k, description in cases:
        scores = check.randn(b, t_q, t_k) - 0.5  # indexer scores can be negative
        original = scores.clone()
        what = f"causal_top_k(scores {tuple(scores.shape)}, k={k}) [{description}]"
        got = check.call(fn, scores, k, what=what, hint=K_TOO_LARGE if k > t_k else "")
        check.expect(torch.equal(scores, original), f"{what} changed the scores; compute on a new tensor")
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(scores.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            check.fail(f"{what}: expected a tensor of shape {tuple(scores.shape)}, got {shape}")
        check.expect(got.dtype == torch.bool, f"{what}: got dtype {got.dtype}: {NOT_BOOL}")
        expected = reference_causal_top_k(original, k)
        if not torch.equal(got, expected):
            for message, wrong in _top_k_mistakes(original, k).items():
                if torch.equal(got, wrong) and not torch.equal(wrong, expected):
                    check.fail(f"{what}: {message}")
            check.fail(f"{what}: {_describe_difference(got, expected, original, k)}")
        check.passed += 1


# -- Exercise 3: attention over the selected keys -------------------------------------------------------

MASK_AFTER_SOFTMAX = ("you zeroed the weights of the unselected keys after the softmax, so each row sums to "
                      "less than 1: mask the scores with -inf before the softmax (or renormalise)")
SELECTION_IGNORED = ("your output does not depend on the selection: every query must attend only to the keys "
                     "where selected[b, t] is True")
CAUSAL_ONLY = ("you used the causal mask instead of the selection: the selected keys are a subset of the visible "
               "ones, so use `selected` (it is already causal)")
SELECTION_ZERO_FILL = ("you filled the unselected scores with 0; a score of 0 still gets weight exp(0): fill "
                       "with float('-inf')")
NO_SCALE = "you left out the scale: the scores are q . k * scale"


def _attention_mistakes(q, k, v, selected, scale) -> dict[str, torch.Tensor]:
    q64, k64, v64 = q.double(), k.double(), v.double()
    scores = q64 @ k64.transpose(-1, -2) * scale
    chosen = selected[:, None]
    t_q, t_k = selected.shape[-2:]
    return {
        MASK_AFTER_SOFTMAX: (torch.softmax(scores, dim=-1) * chosen) @ v64,
        SELECTION_IGNORED: torch.softmax(scores, dim=-1) @ v64,
        CAUSAL_ONLY: torch.softmax(scores.masked_fill(~_visible(t_q, t_k), float("-inf")), dim=-1) @ v64,
        SELECTION_ZERO_FILL: torch.softmax(scores.masked_fill(~chosen, 0.0), dim=-1) @ v64,
        NO_SCALE: torch.softmax((q64 @ k64.transpose(-1, -2)).masked_fill(~chosen, float("-inf")), dim=-1) @ v64,
    }


@exercise("Exercise 3 — attention over the selected keys", reference=reference_sparse_attention)
def sparse_attention(check: Check, fn: Callable) -> None:
    cases = [  # (B, H, T_q, T_k, d, d_v, k, description)
        (2, 4, 8, 8, 8, 6, 3, "8 tokens, 4 heads, top-3"),
        (1, 2, 1, 12, 16, 16, 5, "one query (decoding) over 12 keys, top-5"),
        (1, 3, 6, 6, 8, 8, 6, "top-6 of 6 (the causal mask alone)"),
    ]
    if check.hidden:
        cases += [(2, 8, 10, 16, 24, 12, 4, "10 queries of 16 keys, 8 heads"), (1, 1, 7, 7, 4, 4, 1, "top-1")]
    for b, h, t_q, t_k, d, d_v, k, description in cases:
        q, key, v = check.randn(b, h, t_q, d), check.randn(b, h, t_k, d), check.randn(b, h, t_k, d_v)
        selected = reference_causal_top_k(check.randn(b, t_q, t_k), k)
        scale = d**-0.5
        originals = tuple(t.clone() for t in (q, key, v, selected))
        what = (f"sparse_attention(q {tuple(q.shape)}, k {tuple(key.shape)}, v {tuple(v.shape)}, "
                f"selected {tuple(selected.shape)}, scale={scale:.3g}) [{description}]")
        got = check.call(fn, q, key, v, selected, scale, what=what, hint="return a tensor of shape (B, H, T_q, d_v)")
        check.expect(all(torch.equal(a, o) for a, o in zip((q, key, v, selected), originals)),
                     f"{what} changed its inputs")
        mistakes = _attention_mistakes(*originals, scale)
        if k >= t_k:  # the selection is the causal mask: those two mistakes give the right answer
            mistakes = {m: w for m, w in mistakes.items() if m not in (CAUSAL_ONLY,)}
        check.close_or_diagnose(
            got, reference_sparse_attention(*originals, scale), mistakes, what=what, **ATTENTION_TOL,
            hint="scores = q @ k.transpose(-1, -2) * scale, masked_fill(~selected[:, None], -inf), softmax, @ v",
        )


# -- Exercise 4: what the attention costs per token -------------------------------------------------------

DENSE_COUNTED = ("you counted dense attention: with sparse attention each query reads only min(T, index_topk) "
                 "keys")
NO_INDEXER = ("you left out the indexer: it still scores every one of the T keys, 2 * T * index_heads * "
              "(index_head_dim + 1) FLOPs per layer")
INDEXER_ON_TOPK = ("you counted the indexer over the selected keys only; it has to score all T keys to choose "
                   "them")
NO_HEAD_SUM = ("you left out the indexer's weighted sum over its heads: 2 * T * index_heads FLOPs per layer, "
               "the + 1 in (index_head_dim + 1)")
NO_MIN = "a query at position T - 1 sees T keys: it reads min(T, index_topk) of them, not always index_topk"


def _flops_mistakes(cfg: ModelConfig, seq_len: int) -> dict[str, int]:
    per_head = cfg.qk_head_size + cfg.value_head_size
    topk, heads, dim = cfg.index_topk, cfg.index_heads, cfg.index_head_dim
    attended = min(seq_len, topk)
    attention = lambda keys: 2 * keys * cfg.num_heads * per_head  # noqa: E731
    layers = cfg.num_layers
    return {
        DENSE_COUNTED: layers * (attention(seq_len) + 2 * seq_len * heads * (dim + 1)),
        DENSE_COUNTED + ", as V3 (and add the indexer)": layers * attention(seq_len),
        NO_INDEXER: layers * attention(attended),
        INDEXER_ON_TOPK: layers * (attention(attended) + 2 * attended * heads * (dim + 1)),
        NO_HEAD_SUM: layers * (attention(attended) + 2 * seq_len * heads * dim),
        NO_MIN: layers * (attention(topk) + 2 * seq_len * heads * (dim + 1)),
    }


@exercise("Exercise 4 — what the attention costs per token", reference=reference_score_flops)
def score_flops(check: Check, fn: Callable) -> None:
    from olm_edu.models.presets import preset

    v32 = preset("DeepSeek-V3.2-Exp")
    cases = [(v32, 128_000, "DeepSeek-V3.2-Exp at 128k tokens"), (v32, 1000, "at 1,000 tokens (fewer than 2048)"),
             (v32.replace(index_topk=512, num_layers=4), 4096, "index_topk=512, 4 layers")]
    if check.hidden:
        cases += [(v32, 2048, "exactly index_topk tokens"), (v32.replace(index_heads=16, index_head_dim=64), 9000,
                                                             "16 indexer heads of 64")]
    for cfg, seq_len, description in cases:
        what = f"score_flops(cfg, {seq_len}) [{description}]"
        got = check.call(fn, cfg, seq_len, what=what, hint="return an int")
        check.count(got, reference_score_flops(cfg, seq_len), _flops_mistakes(cfg, seq_len), what=what,
                    hint="per layer: 2 * min(T, index_topk) * num_heads * (qk_head_size + value_head_size) "
                         "+ 2 * T * index_heads * (index_head_dim + 1); times num_layers")
