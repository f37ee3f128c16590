"""Checks for lesson 15 — Sliding windows, Mistral and Gemma 2.

Exercise 1 compares the learner's mask with `olm_edu.nn.attention_mask` (query i sees key j when
i - W < j <= i, by absolute positions) on square masks, a window of 1, a window wider than the
sequence and queries that continue a cache. Exercise 2 feeds a sequence to the learner's rolling
update in chunks (a prefill longer than the window included) and compares what the cache keeps
and what each step returns with slices of the whole sequence. Exercise 3 compares Gemma's
RMSNorm with `olm_edu.nn.RMSNorm(convention="gemma")` and the sandwich layer with the same
formula written from library modules (a windowed, soft-capped `Attention` and a GeGLU feed-forward).
Exercise 4 compares a KV-cache size with `olm_edu.analysis.kv_cache_bytes` on published presets.

When an answer is wrong, each check computes what the usual mistakes would give (a window one
too wide, a window that sees the future, evicting the newest keys, w * x instead of (1 + w) * x,
post-norm instead of the sandwich, every layer counted as sliding, ...) and names the one the
answer matches.

Tolerances: masks, cached tensors and byte counts are compared exactly (they are selections and
integers); the norm and the layer at atol=1e-5, rtol=1e-4 (float32, any order of summation).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

import torch

import olm_edu.analysis as analysis
from olm_edu.grading import Check, exercise, shared_module
from olm_edu.models import ModelConfig, preset
from olm_edu.nn import Attention, GeGLUFFN, RMSNorm, attention_mask

NORM_ATOL, NORM_RTOL = 1e-5, 1e-4


# -- the library's versions, with the exercises' signatures ------------------------------------
# What the cells after an unfinished exercise use until its check passes
# (`check.<exercise>.yours_or_reference(yours)`): the learner's notebook runs to the end either way.

def reference_sliding_window_mask(query_positions: torch.Tensor, key_positions: torch.Tensor, window: int) -> torch.Tensor:
    """olm_edu.nn.attention_mask, causal, with the window. Shapes: (T_q,), (T_k,) -> (T_q, T_k) bool."""
    return attention_mask(query_positions, key_positions, causal=True, window=window)


def reference_rolling_update(cache: Any, k_new: torch.Tensor, v_new: torch.Tensor,
                             new_positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Append, return everything the new queries may need, keep the last `cache.window` (what
    olm_edu.nn.KVCache does for a windowed layer)."""
    keys, values, positions = k_new, v_new, new_positions
    if cache.keys is not None:
        keys = torch.cat([cache.keys, k_new], dim=2)  # (B, H, T_cached + T_new, d)
        values = torch.cat([cache.values, v_new], dim=2)
        positions = torch.cat([cache.positions, new_positions])
    cache.keys, cache.values, cache.positions = (keys[:, :, -cache.window:], values[:, :, -cache.window:],
                                                 positions[-cache.window:])
    return keys, values, positions


def reference_gemma2_layer(x: torch.Tensor, attention: torch.nn.Module, mlp: torch.nn.Module,
                           norm_weights: dict[str, torch.Tensor], eps: float = 1e-6) -> torch.Tensor:
    """Gemma 2's sandwich, with olm_edu.nn.RMSNorm(convention="gemma")."""
    return _sandwich(x, attention, mlp, norm_weights, eps)


def reference_windowed_kv_cache_bytes(cfg: ModelConfig, seq_len: int, bytes_per_number: int = 2) -> int:
    """olm_edu.analysis.kv_cache_bytes with the number type named by its size."""
    return analysis.kv_cache_bytes(cfg, seq_len, _DTYPE_OF_BYTES[bytes_per_number])


# -- Exercise 1: the sliding-window causal mask ------------------------------------------------------

def _offsets(query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
    return query_positions[:, None] - key_positions[None, :]  # (T_q, T_k): i - j


def _mask_mistakes(query_positions: torch.Tensor, key_positions: torch.Tensor, window: int) -> dict[str, torch.Tensor]:
    offset = _offsets(query_positions, key_positions)
    rows, columns = torch.arange(len(query_positions)), torch.arange(len(key_positions))
    index_offset = rows[:, None] - columns[None, :]
    mistakes = {
        f"your window is one too wide: query i sees the {window + 1} keys i - W <= j <= i. A window of W={window} "
        "holds the token itself and the W - 1 before it, so keep j > i - W (i - j < W), not j >= i - W":
            (offset >= 0) & (offset <= window),
        f"your window is one too narrow: query i sees only {window - 1} keys. A window of W={window} holds the token "
        "itself and the W - 1 before it: keep i - W < j <= i":
            (offset >= 0) & (offset < window - 1),
        "your window has no causal part: query i also sees keys *after* it (the future). Keep both conditions, "
        "j <= i (causal) and j > i - W (the window)":
            offset.abs() < window,
        "your mask keeps every key up to W positions back but also the whole future: the causal condition j <= i "
        "is missing":
            offset < window,
        "your mask is plain causal attention: it ignores the window. Add the condition j > i - W":
            offset >= 0,
        "your mask is inverted: True must mean 'may attend' (the key is inside the window and not in the future)":
            ~((offset >= 0) & (offset < window)),
        "you built the mask from row and column indices (0, 1, 2, ...) instead of the positions passed in: when "
        "queries continue a cache, the first query is not at position 0. Compare query_positions[:, None] with "
        "key_positions[None, :]":
            (index_offset >= 0) & (index_offset < window),
    }
    if offset.shape[0] == offset.shape[1]:
        mistakes["your mask is transposed: rows are queries and columns are keys, so entry [i, j] is "
                 "'may query i attend to key j', which needs j <= i"] = ((offset >= 0) & (offset < window)).T
    return mistakes


def _mask_description(mask: torch.Tensor, limit: int = 8) -> str:
    rows = ["".join("1" if value else "." for value in row.tolist()) for row in mask[:limit]]
    return " | ".join(rows) + (" | ..." if len(mask) > limit else "")


@exercise("Exercise 1 — the sliding-window causal mask", reference=reference_sliding_window_mask)
def sliding_window_mask(check: Check, fn: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]) -> None:
    cases: list[tuple[str, torch.Tensor, torch.Tensor, int]] = [
        ("8 tokens, window 3", torch.arange(8), torch.arange(8), 3),
        ("6 tokens, window 1 (each token sees only itself)", torch.arange(6), torch.arange(6), 1),
        ("5 tokens, window 10 (wider than the sequence: plain causal)", torch.arange(5), torch.arange(5), 10),
        ("2 new queries at positions 9, 10 over cached keys at positions 6..10, window 4",
         torch.arange(9, 11), torch.arange(6, 11), 4),
    ]
    if check.hidden:
        window = int(check.randint(2, 12, 1))
        cases += [
            (f"40 tokens, window {window}", torch.arange(40), torch.arange(40), window),
            ("1 query at position 100 over keys at positions 92..100, window 8", torch.tensor([100]),
             torch.arange(92, 101), 8),
            ("3 queries at positions 20..22 over keys 13..22, window 5", torch.arange(20, 23), torch.arange(13, 23), 5),
        ]
    for label, query_positions, key_positions, window in cases:
        call = f"sliding_window_mask on {label}"
        got = check.call(fn, query_positions.clone(), key_positions.clone(), window, what=call)
        expected = attention_mask(query_positions, key_positions, causal=True, window=window)
        if not isinstance(got, torch.Tensor):
            check.fail(f"{call}: expected a boolean tensor, got {type(got).__name__}")
        if got.dtype != torch.bool:
            additive = got.is_floating_point() and bool(((got == 0) | (got == float("-inf"))).all())
            check.fail(f"{call}: " + (
                "you returned an additive mask (0 and -inf); this function returns booleans, True where the query "
                "may attend, and the attention code turns them into -inf with masked_fill" if additive else
                f"expected a tensor of dtype torch.bool (True = may attend), got {got.dtype}. Hint: comparisons "
                "such as offset >= 0 already give booleans; combine them with &"))
        check.expect(tuple(got.shape) == tuple(expected.shape),
                     f"{call}: expected shape {tuple(expected.shape)} (one row per query, one column per key), "
                     f"got {tuple(got.shape)}")
        if not torch.equal(got, expected):
            for message, wrong in _mask_mistakes(query_positions, key_positions, window).items():
                if torch.equal(got, wrong):
                    check.fail(f"{call}: {message}")
            check.fail(f"{call}: expected rows {_mask_description(expected)}, got {_mask_description(got)} "
                       "(1 = may attend). Hint: query i may attend to key j when i - W < j <= i")
        check.passed += 1


# -- Exercise 2: the rolling KV cache ------------------------------------------------------------------

def _span(first: int, end: int) -> str:
    return f"positions {first}..{end - 1}" if end > first else "nothing"


def _check_held(check: Check, name: str, held: object, full: torch.Tensor, start: int, end: int, window: int,
                where: str) -> None:
    """cache.keys / cache.values after feeding tokens [start, end) must hold the last `window` of them."""
    first = max(0, end - window)
    expected = full[:, :, first:end]
    if not isinstance(held, torch.Tensor):
        check.fail(f"after {where}, cache.{name} should be a tensor holding {_span(first, end)}, it holds "
                   f"{type(held).__name__}. Hint: store the trimmed tensor back in cache.{name}")
    if tuple(held.shape) == tuple(expected.shape) and torch.equal(held, expected):
        return
    length = held.shape[2] if held.dim() == 4 else None
    if length == min(window + 1, end) and torch.equal(held, full[:, :, end - length:end]):
        check.fail(f"after {where}, cache.{name} holds {length} tokens, one more than the window={window}. Keep "
                   f"exactly the last {window}: {name}[:, :, -window:]")
    if length == end and end > window:
        check.fail(f"after {where}, cache.{name} holds all {end} tokens: nothing was evicted. A sliding layer keeps "
                   f"only the last window={window}: after concatenating, keep {name}[:, :, -window:]")
    if length == min(window, end) and torch.equal(held, full[:, :, :length]) and end > window:
        check.fail(f"after {where}, cache.{name} holds positions 0..{length - 1}, the *oldest* tokens: you evicted "
                   f"the newest instead of the oldest. The window slides forward: keep the last {window} "
                   f"({name}[:, :, -window:]), i.e. {_span(first, end)}")
    if length == window - 1 and torch.equal(held, full[:, :, end - length:end]):
        check.fail(f"after {where}, cache.{name} holds {length} tokens, one fewer than the window={window}: the next "
                   f"query still needs the key {window - 1} positions back. Keep {name}[:, :, -window:]")
    if length == end - first and torch.equal(held, torch.cat([full[:, :, start:end], full[:, :, first:start]], dim=2)):
        check.fail(f"after {where}, cache.{name} holds the right tokens in the wrong order (new before old). "
                   "Concatenate the past first: torch.cat([cache.keys, k_new], dim=2)")
    check.fail(f"after {where}, cache.{name} should have shape {tuple(expected.shape)} and hold {_span(first, end)} "
               f"(the last window={window} tokens, oldest first); it has shape {tuple(held.shape)}. Hint: concatenate "
               f"along dim=2 (the time axis), then keep [:, :, -window:]")


@exercise("Exercise 2 — the rolling KV cache", reference=reference_rolling_update)
def rolling_update(check: Check, fn: Callable) -> None:
    runs = [((1, 1, 2), 3, (7, 1, 1, 2)), ((2, 2, 4), 4, (3, 1, 1, 1, 1, 1)), ((1, 2, 8), 1, (1, 1, 1, 2)),
            ((2, 1, 3), 6, (2, 2, 2, 3))]
    if check.hidden:
        runs += [((3, 4, 16), 5, (12, 3, 1, 1, 6)), ((1, 2, 4), 16, (4, 4, 4)), ((2, 2, 2), 2, (1, 5, 1))]
    for (batch, heads, head_dim), window, chunks in runs:
        length = sum(chunks)
        keys, values = check.randn(batch, heads, length, head_dim), check.randn(batch, heads, length, head_dim)
        cache = SimpleNamespace(window=window, keys=None, values=None, positions=None)
        story = f"a ({batch}, {heads}, {length}, {head_dim}) sequence fed in chunks {list(chunks)} with window={window}"
        start = 0
        for size in chunks:
            end = start + size
            where = f"chunk {start}:{end} of {story}"
            result = check.call(fn, cache, keys[:, :, start:end].clone(), values[:, :, start:end].clone(),
                                torch.arange(start, end), what=where)
            if not (isinstance(result, tuple) and len(result) == 3 and all(isinstance(t, torch.Tensor) for t in result)):
                check.fail(f"{where}: rolling_update should return a tuple of three tensors (keys, values, "
                           f"positions), got {type(result).__name__}")
            _check_held(check, "keys", cache.keys, keys, start, end, window, where)
            _check_held(check, "values", cache.values, values, start, end, window, where)
            first = max(0, end - window)
            held = cache.positions
            if not isinstance(held, torch.Tensor):
                check.fail(f"after {where}, cache.positions should be a tensor of the positions of the cached keys "
                           f"({_span(first, end)}), it holds {type(held).__name__}")
            if not torch.equal(held.long(), torch.arange(first, end)):
                renumbered = torch.equal(held.long(), torch.arange(end - first))
                check.fail(f"after {where}, cache.positions holds {held.tolist()}, expected {list(range(first, end))}" + (
                    ": your positions restart at 0, like indices into the cache. Store the absolute positions "
                    "(new_positions, concatenated and trimmed like the keys): the mask needs to know where each "
                    "cached key sits in the sequence" if renumbered else
                    ". Hint: concatenate new_positions to cache.positions and keep the last window, like the keys"))
            returned_keys, returned_values, returned_positions = result
            attend_first = max(0, start - window)
            if not (tuple(returned_keys.shape) == tuple(keys[:, :, attend_first:end].shape)
                    and torch.equal(returned_keys, keys[:, :, attend_first:end])
                    and torch.equal(returned_values, values[:, :, attend_first:end])):
                if returned_keys.shape == cache.keys.shape and torch.equal(returned_keys, cache.keys):
                    needed = max(0, start - window + 1)
                    if first > needed:
                        check.fail(f"{where}: you returned only what the cache keeps ({_span(first, end)}), but the "
                                   f"earliest of the {size} new queries, at position {start}, still needs the keys "
                                   f"back to position {needed}, which this step evicts. Return the concatenation "
                                   "*before* trimming, and store the trimmed copy in the cache")
                    check.fail(f"{where}: you returned only what the cache keeps ({_span(first, end)}); step 3 asks "
                               f"for the concatenation before trimming ({_span(attend_first, end)}). With one new "
                               "token the mask hides the extra key anyway, but when several tokens arrive at once "
                               "(a prompt longer than the window) the earliest needs keys that trimming removes")
                check.fail(f"{where}: the returned keys and values should be everything this step may attend to: "
                           f"what the cache held before ({_span(attend_first, start)}) followed by the new tokens "
                           f"({_span(start, end)}), shape {tuple(keys[:, :, attend_first:end].shape)}; got shape "
                           f"{tuple(returned_keys.shape)}")
            if not torch.equal(returned_positions.long(), torch.arange(attend_first, end)):
                check.fail(f"{where}: the returned positions should be {list(range(attend_first, end))} (those of the "
                           f"returned keys), got {returned_positions.tolist()}")
            check.passed += 1
            start = end


# -- Exercise 3: Gemma's RMSNorm and the sandwich layer -----------------------------------------------

def _gemma_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    norm = RMSNorm(x.shape[-1], eps, convention="gemma").to(x.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
        return norm(x)


def _norm_mistakes(x: torch.Tensor, weight: torch.Tensor, eps: float) -> dict[str, torch.Tensor]:
    rms = lambda t: torch.sqrt(t.pow(2).mean(-1, keepdim=True) + eps)
    normed = x / rms(x)
    centred = x - x.mean(-1, keepdim=True)
    return {
        "you multiplied by weight (w * x); Gemma stores its norm weight as an offset from 1 (a new layer holds "
        "zeros), so multiply by (1 + weight)": normed * weight,
        "you did not apply the weight at all: multiply the normalised x by (1 + weight)": normed,
        "you subtracted the mean (that is LayerNorm); RMSNorm divides x itself by its root mean square":
            centred / rms(centred) * (1 + weight),
        "eps is outside the square root: divide by sqrt(mean(x**2) + eps)":
            x / (torch.sqrt(x.pow(2).mean(-1, keepdim=True)) + eps) * (1 + weight),
        "you divided by the root of the *sum* of squares; RMSNorm uses the mean, x.pow(2).mean(dim=-1, keepdim=True)":
            x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + eps) * (1 + weight),
        "you multiplied by the root mean square instead of dividing by it": x * rms(x) * (1 + weight),
    }


def _sandwich(x, attention, mlp, weights, eps, norm=_gemma_norm):
    h = x + norm(attention(norm(x, weights["pre_attention"], eps)), weights["post_attention"], eps)
    return h + norm(mlp(norm(h, weights["pre_feedforward"], eps)), weights["post_feedforward"], eps)


def _layer_mistakes(x, attention, mlp, w, eps) -> dict[str, torch.Tensor]:
    n = lambda t, name: _gemma_norm(t, w[name], eps)
    post_norm_layouts = []
    for first, second in (("post_attention", "post_feedforward"), ("pre_attention", "pre_feedforward")):
        h = n(x + attention(x), first)
        post_norm_layouts.append(n(h + mlp(h), second))
    h = n(x + attention(n(x, "pre_attention")), "post_attention")
    stream_normed = n(h + mlp(n(h, "pre_feedforward")), "post_feedforward")
    h = x + attention(n(x, "pre_attention"))
    pre_only = h + mlp(n(h, "pre_feedforward"))
    h = x + n(attention(x), "post_attention")
    post_only = h + n(mlp(h), "post_feedforward")
    swapped = {"pre_attention": w["post_attention"], "post_attention": w["pre_attention"],
               "pre_feedforward": w["post_feedforward"], "post_feedforward": w["pre_feedforward"]}
    parallel = (x + n(attention(n(x, "pre_attention")), "post_attention")
                + n(mlp(n(x, "pre_feedforward")), "post_feedforward"))
    post_norm = ("you applied post-norm in place of the sandwich: norm(x + sublayer(x)){}. Gemma 2 keeps the "
                 "pre-norm layout and adds a second norm on the sub-layer's output: x + post_norm(sublayer(pre_norm(x)))")
    return {
        post_norm.format(" with the post-norm weights"): post_norm_layouts[0],
        post_norm.format(" with the pre-norm weights"): post_norm_layouts[1],
        "your post-norm normalises the residual stream (post_norm(x + ...)); in Gemma 2 it normalises only the "
        "sub-layer's output, before the add: x + post_norm(attention(pre_norm(x)))": stream_normed,
        "you left out the post-norms: that is the Llama (pre-norm) layer. Gemma 2 normalises each sub-layer's output "
        "too: x + post_norm(attention(pre_norm(x)))": pre_only,
        "you left out the pre-norms: each sub-layer must read a normalised input, "
        "x + post_norm(attention(pre_norm(x)))": post_only,
        "you swapped the pre- and post-norm weights: 'pre_attention' normalises the attention's input, "
        "'post_attention' its output (likewise for the feed-forward)": _sandwich(x, attention, mlp, swapped, eps),
        "your feed-forward reads the layer's input x instead of the stream after the attention sub-layer (that is a "
        "parallel block): compute h = x + ... first, then h + post_norm(mlp(pre_norm(h)))": parallel,
    }


def _module(generator: torch.Generator, module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) / parameter.shape[-1] ** 0.5)
    return module.eval()


@exercise("Exercise 3 — Gemma 2's layer: (1 + w) RMSNorm and sandwich norms", reference=reference_gemma2_layer,
          helpers=(_gemma_norm,))
def gemma2_layer(check: Check, norm_fn: Callable, layer_fn: Callable) -> None:
    check.forbid("torch.nn.functional.rms_norm", "torch.rms_norm",
                 reason="Exercise 3 asks you to write Gemma's RMSNorm from a mean, a square root and (1 + weight)")
    norm_hint = "x / sqrt(mean(x**2 over the last dimension) + eps) * (1 + weight)"
    norm_cases = [
        ("a random (2, 5, 16) tensor", check.randn(2, 5, 16, scale=3.0), 0.5 * check.randn(16), 1e-6),
        ("rows with a large mean (4, 12)", 5.0 + check.randn(4, 12), 0.5 * check.randn(12), 1e-6),
        ("a (3, 8) tensor with weight 0 (a fresh Gemma norm)", check.randn(3, 8), torch.zeros(8), 1e-6),
        ("small rows (3, 10) with eps=0.1, where eps matters", 0.1 * check.randn(3, 10), 0.5 * check.randn(10), 0.1),
    ]
    if check.hidden:
        norm_cases += [("a float64 (3, 4, 5, 32) tensor", check.randn(3, 4, 5, 32, dtype=torch.float64),
                        0.5 * check.randn(32, dtype=torch.float64), 1e-6)]
    for label, x, weight, eps in norm_cases:
        what = f"gemma_rms_norm on {label} (eps={eps:g})"
        given = (x.clone(), weight.clone())
        got = check.call(norm_fn, *given, eps, what=what, hint=norm_hint)
        check.expect(torch.equal(given[0], x) and torch.equal(given[1], weight),
                     f"{what} changed x or weight in place (mul_, *=, +=): return a new tensor")
        check.close_or_diagnose(got, _gemma_norm(x, weight, eps), _norm_mistakes(x, weight, eps), what=what,
                                atol=NORM_ATOL, rtol=NORM_RTOL, hint=norm_hint)

    layer_hint = "h = x + norm(attention(norm(x, pre_attention)), post_attention), then the same with mlp on h"
    sizes = [(32, 4, 2, 8, 3, 10), (16, 2, 1, 8, 4, 7)]
    if check.hidden:
        sizes += [(64, 8, 4, 8, 5, 12)]
    for embed_dim, heads, kv_heads, head_dim, window, length in sizes:
        attention = _module(check.generator, shared_module(
            Attention, embed_dim, heads, kv_heads, head_dim, position="rope", sliding_window=window, logit_softcap=2.0,
            implementation="explicit"))
        mlp = _module(check.generator, shared_module(GeGLUFFN, embed_dim, 2 * embed_dim))
        weights = {name: 0.5 * check.randn(embed_dim) for name in
                   ("pre_attention", "post_attention", "pre_feedforward", "post_feedforward")}
        x = check.randn(2, length, embed_dim)
        what = f"gemma2_layer on a (2, {length}, {embed_dim}) input"
        with torch.no_grad():
            given = x.clone()
            got = check.call(layer_fn, given, attention, mlp, dict(weights), 1e-6, what=what, hint=layer_hint)
        check.expect(torch.equal(given, x), f"{what} changed x in place (x += ... adds the residual into the "
                     "caller's tensor): write h = x + ..., a new tensor")
        with torch.no_grad():
            expected = _sandwich(x, attention, mlp, weights, 1e-6)
            mistakes = _layer_mistakes(x, attention, mlp, weights, 1e-6)
        check.close_or_diagnose(got, expected, mistakes, what=what, atol=NORM_ATOL, rtol=NORM_RTOL, hint=layer_hint)


# -- Exercise 4: the KV cache with windowed layers ------------------------------------------------------

_DTYPE_OF_BYTES = {1: "fp8", 2: "bf16", 4: "fp32"}


def _kv(cfg: ModelConfig, seq_len: int, bytes_per_number: int, *, all_sliding=False, no_window=False,
        no_min=False, factor=2, per_token_width=None, extra=0) -> int:
    width = per_token_width if per_token_width is not None else cfg.kv_heads * cfg.head_size
    tokens = 0
    for layer in range(cfg.num_layers):
        sliding = cfg.sliding_window is not None and (all_sliding or cfg.layer_type(layer) == "sliding_attention")
        if sliding and not no_window:
            window = cfg.sliding_window + extra
            tokens += window if no_min else min(seq_len, window)
        else:
            tokens += seq_len
    return factor * width * tokens * bytes_per_number


def _kv_mistakes(cfg: ModelConfig, seq_len: int, bytes_per_number: int) -> dict[str, int]:
    kv = lambda **options: _kv(cfg, seq_len, bytes_per_number, **options)
    return {
        "you treated every layer as sliding; only the layers whose cfg.layer_type(i) is 'sliding_attention' keep "
        "a window (Gemma 2 alternates sliding and global layers)": kv(all_sliding=True),
        "you counted every layer as global: a layer whose cfg.layer_type(i) is 'sliding_attention' keeps only "
        "min(seq_len, sliding_window) tokens": kv(no_window=True),
        "a sliding layer never holds more tokens than it has seen: it keeps min(seq_len, sliding_window), not "
        "sliding_window, when the sequence is shorter than the window": kv(no_min=True),
        "you counted the keys only (or the values only): the cache holds both, a factor 2": kv(factor=1),
        "you used num_heads; the cache holds the key/value heads only, cfg.kv_heads (grouped-query attention "
        "shares them)": kv(per_token_width=cfg.num_heads * cfg.head_size),
        "you used embed_dim as the width of one token's keys; it is cfg.kv_heads * cfg.head_size":
            kv(per_token_width=cfg.embed_dim),
        "your window holds one token too many: a window of W keeps the last W tokens": kv(extra=1),
        "you forgot to multiply by bytes_per_number (you returned a count of numbers, not bytes)": kv() // bytes_per_number,
    }


@exercise("Exercise 4 — the KV cache with windowed layers", reference=reference_windowed_kv_cache_bytes)
def windowed_kv_cache_bytes(check: Check, fn: Callable[[ModelConfig, int, int], int]) -> None:
    check.forbid("olm_edu.analysis.kv_cache_bytes", "olm_edu.analysis.cache_width", "olm_edu.analysis._tokens_seen",
                 reason="Exercise 4 asks you to add up the layers yourself")
    tiny = ModelConfig(vocab_size=50, max_seq_len=64, embed_dim=32, num_layers=4, num_heads=4, num_kv_heads=2,
                       hidden_dim=64, norm="rmsnorm", norm_bias=False, position="rope", sliding_window=5,
                       layer_types=("full_attention", "sliding_attention", "sliding_attention", "full_attention"),
                       name="a tiny config")
    cases = [("gemma-2-9b", 8192, 2), ("gemma-2-9b", 2048, 2), ("gemma-2-9b", 4096, 2), ("Mistral-7B-v0.1", 32768, 2),
             ("Mistral-7B-v0.1", 1000, 2), ("gpt2", 1024, 4), (tiny, 9, 4), (tiny, 3, 4)]
    if check.hidden:
        cases += [("gemma-2-9b", 4097, 1), ("Llama-3.1-8B", 131072, 2), ("Qwen2.5-7B", 5000, 2), (tiny, 5, 1),
                  ("Mistral-7B-v0.1", 4095, 4)]
    for name, seq_len, bytes_per_number in cases:
        cfg = preset(name) if isinstance(name, str) else name
        what = f"windowed_kv_cache_bytes({cfg.name}, seq_len={seq_len}, bytes_per_number={bytes_per_number})"
        got = check.call(fn, cfg, seq_len, bytes_per_number, what=what)
        expected = analysis.kv_cache_bytes(cfg, seq_len, _DTYPE_OF_BYTES[bytes_per_number])
        check.count(got, expected, _kv_mistakes(cfg, seq_len, bytes_per_number), what=what,
                    hint="for each layer, tokens kept = seq_len, or min(seq_len, sliding_window) on a sliding layer; "
                         "bytes = 2 * kv_heads * head_size * tokens * bytes_per_number, summed over layers")
