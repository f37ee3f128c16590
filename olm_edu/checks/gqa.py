"""Checks for lesson 12 — GQA and MQA (repeat_kv, grouped-query attention, KV-cache bytes).

References: repeat_kv is compared with an index_select of KV head h // groups for output head h
(exact: copies must be bit-identical); grouped-query attention with an explicit float64
softmax(q k^T / sqrt(d), causal) v in which query head h reads KV head h // (H / H_kv); the cache
size with `olm_edu.analysis.kv_cache_bytes` on configs without sliding windows (exact integers).

When an answer is wrong, the check recomputes the usual mistakes and names the one that matches:
tiling the heads (`x.repeat`, so head h gets KV head h mod H_kv) instead of interleaving them,
repeating along the wrong dimension, a missing 1/sqrt(d) or causal mask; in the cache size, a
missing factor 2 (keys and values), a missing layer count, batch or byte width, and num_heads (or
embed_dim) where the KV heads belong.

Tolerances: repeat_kv exact; attention outputs atol=1e-5, rtol=1e-4 (float32, any summation
order or softmax formulation); cache sizes exact.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

import torch

from olm_edu import analysis
from olm_edu.grading import Check, exercise
from olm_edu.nn import attend, attention_mask
from olm_edu.nn.attention import repeat_kv as library_repeat_kv
from olm_edu.models import ModelConfig, preset

_REPEAT_INTERLEAVE = ("torch.repeat_interleave", "torch.Tensor.repeat_interleave")
_SDPA = ("torch.nn.functional.scaled_dot_product_attention",)
ATOL, RTOL = 1e-5, 1e-4


def _kv_index(num_heads: int, kv_heads: int, tiled: bool = False) -> torch.Tensor:
    """The KV head each query head reads: h // (H / H_kv), or (the mistake) h mod H_kv."""
    heads = torch.arange(num_heads)
    return heads % kv_heads if tiled else heads // (num_heads // kv_heads)


# -- the library's versions, with the exercises' signatures ------------------------------------
# What the cells after an unfinished exercise use until its check passes
# (`check.<exercise>.yours_or_reference(yours)`): the learner's notebook runs to the end either way.

def reference_repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """olm_edu.nn.repeat_kv. Shapes: (B, H_kv, T, d) -> (B, H_kv * groups, T, d)."""
    return library_repeat_kv(x, groups)


def reference_grouped_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal GQA with olm_edu.nn.attend on repeated keys and values. Shapes: as Exercise 2."""
    groups = q.shape[1] // k.shape[1]
    positions = torch.arange(q.shape[-2], device=q.device)
    return attend(q, library_repeat_kv(k, groups), library_repeat_kv(v, groups), attention_mask(positions, positions),
                  scale=q.shape[-1] ** -0.5, implementation="explicit")


def reference_kv_cache_size(cfg: ModelConfig, seq_len: int, bytes_per_number: int = 2, batch_size: int = 1) -> int:
    """olm_edu.analysis.kv_cache_bytes with the number type named by its size."""
    return analysis.kv_cache_bytes(cfg, seq_len, {1: "fp8", 2: "bf16", 4: "fp32"}[bytes_per_number], batch_size)


# -- Exercise 1: repeat_kv ---------------------------------------------------------------------

def _repeat_kv_reference(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x.index_select(1, _kv_index(x.shape[1] * groups, x.shape[1]))


def _wrong_dim_message(got: Any, x: torch.Tensor, groups: int) -> str | None:
    """Name the dimension a wrongly shaped result was repeated along."""
    if not isinstance(got, torch.Tensor) or groups == 1:
        return None
    batch, kv_heads, length, head_dim = x.shape
    shape = tuple(got.shape)
    if shape == (batch, kv_heads, groups, length, head_dim):
        return (f"your result has shape {shape}: you expanded a new axis of {groups} copies but did not merge it "
                f"with the heads. Reshape to (B, H_kv * groups, T, d) = {(batch, kv_heads * groups, length, head_dim)}")
    names = {0: "the batch", 2: "the time axis", 3: "the head width"}
    for dim, name in names.items():
        wrong = list(x.shape)
        wrong[dim] *= groups
        if shape == tuple(wrong) and shape != (batch, kv_heads * groups, length, head_dim):
            return (f"you repeated along dim {dim} ({name}): the result has shape {shape}. The copies go along "
                    f"dim 1, the KV heads, giving {(batch, kv_heads * groups, length, head_dim)}")
    return None


@exercise("Exercise 1 — repeat_kv by hand", reference=reference_repeat_kv)
def repeat_kv(check: Check, fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    check.forbid(*_REPEAT_INTERLEAVE, reason="Exercise 1 asks you to build the repetition yourself "
                 "(expand + reshape, or indexing)")
    # (B, H_kv, T, d), groups; H_kv > 1 with groups > 1 tells tiling from interleaving
    # the last visible case is a transposed view (keys as attention makes them): `view` refuses it
    cases: list[tuple[tuple[int, ...], int]] = [((2, 2, 5, 4), 3), ((1, 4, 3, 8), 2), ((1, 1, 6, 4), 4),
                                                 ((2, 3, 4, 2), 1), ((2, 3, 5, 4), 2)]
    non_contiguous = {len(cases) - 1}
    if check.hidden:
        cases += [((3, 3, 7, 2), 5), ((1, 8, 9, 16), 4), ((2, 2, 1, 3), 2)]
        non_contiguous.add(len(cases) - 2)
    for index, (shape, groups) in enumerate(cases):
        x = check.randn(*shape)
        if index in non_contiguous:  # (B, T, H_kv, d) transposed to (B, H_kv, T, d), as after a projection
            x = check.randn(shape[0], shape[2], shape[1], shape[3]).transpose(1, 2)
        original = x.clone()
        what = f"repeat_kv(x of shape {tuple(x.shape)}, groups={groups})"
        if index in non_contiguous:
            what += " [a transposed, non-contiguous view]"
        got = check.call(fn, x, groups, what=what,
                         hint="x may be a non-contiguous view (keys come out of a transpose): .view() refuses it, "
                              "use x[:, :, None] or .unsqueeze(2), then .expand(...) and .reshape(...)")
        check.expect(torch.equal(x, original), f"{what} changed its input in place; build a new tensor")
        wrong_dim = _wrong_dim_message(got, x, groups)
        if wrong_dim:
            check.fail(f"{what}: {wrong_dim}")
        batch, kv_heads, length, head_dim = x.shape
        mistakes: dict[str, torch.Tensor] = {}
        if kv_heads > 1 and groups > 1:
            mistakes[
                f"you tiled the heads (what x.repeat(1, groups, 1, 1) or torch.cat([x] * groups, dim=1) give): "
                f"output head h holds KV head h mod {kv_heads}, so head 1 holds KV head 1. But query heads "
                f"0..{groups - 1} form the first group and all share KV head 0: head h must hold KV head "
                f"h // groups. Put each KV head's copies next to each other: "
                f"x[:, :, None].expand(B, H_kv, groups, T, d).reshape(B, H_kv * groups, T, d)"
            ] = x.index_select(1, _kv_index(kv_heads * groups, kv_heads, tiled=True))
            mistakes[
                "you inserted the axis of copies after the time axis (x[:, :, :, None], dim 3) instead of right "
                "after the heads, so the reshape mixed time steps into the heads. Use x[:, :, None] "
                "(a new dim 2), expand it to groups, then reshape"
            ] = x[:, :, :, None].expand(batch, kv_heads, length, groups, head_dim).reshape(
                batch, kv_heads * groups, length, head_dim)
        check.close_or_diagnose(got, _repeat_kv_reference(x, groups), mistakes, what=what, atol=0.0, rtol=0.0,
                                hint="output head h is an exact copy of KV head h // groups")


# -- Exercise 2: grouped-query attention --------------------------------------------------------

def _gqa_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, tiled: bool = False,
                   scale: str = "sqrt", causal: bool = True) -> torch.Tensor:
    """Causal grouped-query attention in float64, or one of the usual mistakes."""
    index = _kv_index(q.shape[1], k.shape[1], tiled)
    q, k, v = q.double(), k.double()[:, index], v.double()[:, index]  # (B, H, T, d) each
    d, length = q.shape[-1], q.shape[-2]
    scores = q @ k.transpose(-2, -1) * {"sqrt": d**-0.5, "none": 1.0, "d": 1.0 / d}[scale]
    if causal:
        allowed = torch.ones(length, length, dtype=torch.bool).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@exercise("Exercise 2 — grouped-query attention", reference=reference_grouped_query_attention)
def grouped_query_attention(check: Check, fn: Callable[..., torch.Tensor]) -> None:
    check.forbid(*_SDPA, reason="Exercise 2 asks you to write attention from matmul and softmax "
                 "(you compare with SDPA right after)")
    # (B, H, H_kv, T, d): GQA, GQA, MHA (H_kv = H), MQA (H_kv = 1)
    cases = [(2, 4, 2, 6, 8), (1, 6, 3, 5, 16), (2, 4, 4, 5, 8), (1, 4, 1, 7, 8)]
    if check.hidden:
        cases += [(3, 8, 2, 9, 4), (1, 12, 4, 1, 8), (2, 6, 2, 12, 32), (1, 8, 8, 3, 2)]
    for batch, heads, kv_heads, length, head_dim in cases:
        kind = "MHA" if kv_heads == heads else "MQA" if kv_heads == 1 else "GQA"
        q = check.randn(batch, heads, length, head_dim, scale=2.0)  # scale 2: a missing 1/sqrt(d) shows
        k = check.randn(batch, kv_heads, length, head_dim, scale=2.0)
        v = check.randn(batch, kv_heads, length, head_dim)
        what = (f"q {tuple(q.shape)}, k and v {tuple(k.shape)} ({kind}: {heads} query heads, "
                f"{kv_heads} KV head{'s' if kv_heads > 1 else ''})")
        inputs = (q.clone(), k.clone(), v.clone())
        got = check.call(fn, *inputs, what=what)
        check.expect(all(torch.equal(a, b) for a, b in zip(inputs, (q, k, v))),
                     f"{what}: your function changed q, k or v in place; build new tensors")
        mistakes = {
            f"the scores are not divided by sqrt(d) (d = {head_dim}, the head width q.shape[-1]): "
            "scores = q @ k.transpose(-2, -1) / math.sqrt(d)": _gqa_reference(q, k, v, scale="none"),
            f"you divided the scores by d = {head_dim}; divide by sqrt(d) = {head_dim ** 0.5:g}":
                _gqa_reference(q, k, v, scale="d"),
        }
        if length > 1:
            mistakes["there is no causal mask: query t must not see keys after t. Set the scores where "
                     "key position > query position to -inf before the softmax"] = _gqa_reference(q, k, v, causal=False)
        if 1 < kv_heads < heads:
            groups = heads // kv_heads
            mistakes[
                f"query head h read KV head h mod {kv_heads} (the heads were tiled, as x.repeat(1, groups, 1, 1) "
                f"does) instead of KV head h // {groups}: query heads 0..{groups - 1} must all read KV head 0. "
                "Check your repeat_kv from Exercise 1, or, with view, split q as (B, H_kv, groups, T, d), "
                "not (B, groups, H_kv, T, d)"
            ] = _gqa_reference(q, k, v, tiled=True)
        check.close_or_diagnose(got, _gqa_reference(q, k, v), mistakes, what=what, atol=ATOL, rtol=RTOL,
                                hint="repeat each KV head for its group of query heads, then softmax(q @ k^T / "
                                     "sqrt(d), causal mask) @ v; the output has one head per query head")


# -- Exercise 3: KV-cache bytes ----------------------------------------------------------------

def _cache_terms(cfg: ModelConfig, seq_len: int, bytes_per_number: int, batch_size: int) -> dict[str, int]:
    return {"two": 2, "layers": cfg.num_layers, "kv_width": cfg.kv_heads * cfg.head_size, "tokens": seq_len,
            "batch": batch_size, "bytes": bytes_per_number}


def _cache_mistakes(cfg: ModelConfig, seq_len: int, bytes_per_number: int, batch_size: int) -> dict[str, int]:
    """Each usual slip (alone or two together) -> the number it gives."""
    kv_width = cfg.kv_heads * cfg.head_size
    slips = {
        "you forgot the factor 2: every layer caches a key AND a value vector per KV head and token":
            ("two", 1),
        f"you left out num_layers: each of the {cfg.num_layers} layers keeps its own keys and values":
            ("layers", 1),
        f"you used num_heads = {cfg.num_heads} where the number of KV heads ({cfg.kv_heads}) belongs: only key/"
        "value heads are cached (query heads are never stored), so the width per token and layer is "
        f"cfg.kv_heads * cfg.head_size = {kv_width}":
            ("kv_width", cfg.num_heads * cfg.head_size),
        f"you used embed_dim = {cfg.embed_dim} as the cached width per token and layer; it is "
        f"cfg.kv_heads * cfg.head_size = {cfg.kv_heads} * {cfg.head_size} = {kv_width}":
            ("kv_width", cfg.embed_dim),
        f"you left out batch_size = {batch_size}: every sequence has its own cache":
            ("batch", 1),
        f"you returned how many numbers are cached, not bytes: multiply by bytes_per_number = {bytes_per_number}":
            ("bytes", 1),
        "you counted bits, not bytes: bytes_per_number is already in bytes (2 for bf16), no factor 8":
            ("bytes", 8 * bytes_per_number),
    }
    if cfg.num_heads * cfg.head_size == cfg.embed_dim:  # the two slips give the same number: one message
        for message in [m for m, (term, _) in slips.items() if term == "kv_width"]:
            del slips[message]
        slips[f"you used num_heads * head_size = embed_dim = {cfg.embed_dim} as the cached width per token and "
              f"layer: that is the width of all {cfg.num_heads} query heads, but only the {cfg.kv_heads} KV heads are "
              f"cached (queries are never stored): use cfg.kv_heads * cfg.head_size = {kv_width}"] = ("kv_width", cfg.embed_dim)
    terms = _cache_terms(cfg, seq_len, bytes_per_number, batch_size)

    def product(changes: dict[str, int]) -> int:
        result = 1
        for name, value in {**terms, **changes}.items():
            result *= value
        return result

    mistakes: dict[str, int] = {}
    for size in (1, 2):
        for combination in itertools.combinations(slips.items(), size):
            changed = dict(change for _, change in combination)
            if len(changed) == size:  # two slips on the same term cannot both happen
                mistakes.setdefault("; and ".join(message for message, _ in combination), product(changed))
    return mistakes


def _describe(cfg: ModelConfig) -> str:
    return (f"{cfg.name} (num_layers={cfg.num_layers}, num_heads={cfg.num_heads}, num_kv_heads={cfg.num_kv_heads}, "
            f"head_size={cfg.head_size}, embed_dim={cfg.embed_dim})")


@exercise("Exercise 3 — KV-cache bytes", reference=reference_kv_cache_size)
def kv_cache_size(check: Check, fn: Callable[..., int]) -> None:
    check.forbid("olm_edu.analysis.kv_cache_bytes", "olm_edu.analysis.cache_width",
                 reason="Exercise 3 asks you to write the formula yourself (you compare with the library right after)")
    custom = ModelConfig(vocab_size=100, max_seq_len=64, embed_dim=48, num_layers=int(check.randint(2, 9, 1)),
                         num_heads=6, num_kv_heads=2, head_dim=20, hidden_dim=64, name="a custom config")
    cases = [(preset("Llama-3.1-8B"), 131072, 2, 1), (preset("gpt2"), 1024, 4, 1), (preset("Qwen3-0.6B"), 8192, 2, 1),
             (preset("Qwen2.5-7B"), 32768, 1, 4)]
    if check.hidden:
        cases += [(preset("Llama-3.1-70B"), 8192, 2, 8), (preset("Llama-3.1-405B"), 131072, 1, 1),
                  (custom, int(check.randint(1, 5000, 1)), 4, 3), (preset("gpt2-xl"), 1024, 2, 2)]
    dtypes = {1: "fp8", 2: "bf16", 4: "fp32"}
    for cfg, seq_len, bytes_per_number, batch_size in cases:
        what = (f"kv_cache_size({_describe(cfg)}, seq_len={seq_len}, bytes_per_number={bytes_per_number}, "
                f"batch_size={batch_size})")
        got = check.call(fn, cfg, seq_len, bytes_per_number, batch_size, what=what,
                         hint="cfg.num_kv_heads is None in a model without GQA (GPT-2); cfg.kv_heads and "
                              "cfg.head_size give the numbers whatever the config says")
        expected = analysis.kv_cache_bytes(cfg, seq_len, dtypes[bytes_per_number], batch_size)
        check.count(got, expected, _cache_mistakes(cfg, seq_len, bytes_per_number, batch_size), what=what,
                    hint="2 (K and V) * num_layers * kv_heads * head_size * seq_len * batch_size * bytes_per_number")
