"""Checks for lesson 24 — DeepSeek-V4: compressed sparse attention, hyper-connections, a million tokens.

Every reference is written here from the formulas, in float64, independently of
`olm_edu.nn.compressed_attention`, `olm_edu.nn.hyper_connections` and `olm_edu.analysis` (which the
lesson shows equal to the learner's code and to transformers' deepseek_v4 modules):

    compress        W = T // m complete blocks of m tokens; entry_w = sum_{j in block w}
                    softmax_j(gate_j + position_bias[j mod m]) * kv_j, the softmax per channel over
                    the block's m slots; the < m tokens of an unfinished block make no entry
    csa_selection   entry w (block [w m, (w + 1) m)) is readable by the query at position t when
                    its block is complete, w < (t + 1) // m; of those, the k with the highest
                    indexer scores are selected (all of them when fewer than k are readable)
    sinkhorn_knopp  DeepSeek-V4's order: normalise the columns; then iterations - 1 times the
                    rows, then the columns; every sum gets + eps
    v4_cache_bytes  per layer: the window's keys (= values, one head of head_dim: min(T, window)
                    * head_dim numbers), plus T // m_csa entries of head_dim + index_head_dim on a
                    CSA layer (the entry and the indexer's key), or T // m_hca entries of head_dim
                    on an HCA layer; times bytes_per_number

When an answer is wrong the check computes the usual mistakes (a softmax over the channels, no
position bias, a plain mean, top-k over blocks not yet complete, an off-by-one in the causal
rule, rows before columns, a missing keepdim, the indexer's keys forgotten, keys and values counted
twice, ...) and names the one the answer matches.

Tolerances (float32 inputs, float64 references): compressed entries atol=1e-5, rtol=1e-5;
Sinkhorn-Knopp atol=1e-5, rtol=1e-4 (the eps of 1e-6 in each sum may be left out); masks and
bytes exact.
"""

from __future__ import annotations

from typing import Callable

import torch

from olm_edu.analysis import kv_cache_bytes
from olm_edu.grading import Check, exercise
from olm_edu.models.config import ModelConfig
from olm_edu.nn.compressed_attention import complete_blocks
from olm_edu.nn.hyper_connections import sinkhorn_knopp as library_sinkhorn_knopp
from olm_edu.nn.indexer import top_k_mask

__all__ = [
    "compress", "csa_selection", "sinkhorn_knopp", "v4_cache_bytes", "reference_compress",
    "reference_csa_selection", "reference_sinkhorn_knopp", "reference_v4_cache_bytes",
]  # fmt: skip

COMPRESS_TOL = dict(atol=1e-5, rtol=1e-5)
SINKHORN_TOL = dict(atol=1e-5, rtol=1e-4)
SINKHORN_EPS = 1e-6


# -- independent references (float64, from the formulas) --------------------------------------------

def _compress64(kv: torch.Tensor, gate: torch.Tensor, position_bias: torch.Tensor | None, rate: int, *,
                softmax_dim: int = 2, uniform: bool = False, swap: bool = False) -> torch.Tensor:
    """(B, T, d) -> (B, T // rate, d) in float64; keywords switch on the usual mistakes."""
    kv, gate = kv.double(), gate.double()
    if swap:
        kv, gate = gate, kv
    batch, length, width = kv.shape
    blocks = length // rate
    kv = kv[:, : blocks * rate].reshape(batch, blocks, rate, width)
    gate = gate[:, : blocks * rate].reshape(batch, blocks, rate, width)
    if position_bias is not None:
        gate = gate + position_bias.double()
    weights = torch.full_like(gate, 1 / rate) if uniform else torch.softmax(gate, dim=softmax_dim)
    return (kv * weights).sum(dim=2)


def _selection(scores: torch.Tensor, readable: torch.Tensor, k: int, *, largest: bool = True) -> torch.Tensor:
    """The k best readable entries of each row (all readable ones when fewer), by sorting in float64."""
    sign = 1.0 if largest else -1.0
    keyed = (sign * scores.double()).masked_fill(~readable, float("-inf"))
    order = keyed.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(scores.shape[-1]).expand_as(order))
    return (ranks < k) & readable


def _readable(positions: torch.Tensor, entries: int, rate: int, shift: int = 1) -> torch.Tensor:
    """(T, C): w < (t + shift) // rate."""
    return torch.arange(entries)[None, :] < torch.div(positions + shift, rate, rounding_mode="floor")[:, None]


def _sinkhorn64(matrix: torch.Tensor, iterations: int, *, order: str = "columns first", eps: float = SINKHORN_EPS,
                keepdim: bool = True) -> torch.Tensor:
    """DeepSeek-V4's Sinkhorn-Knopp in float64; `order` and `keepdim` switch on the usual mistakes."""
    m = matrix.double()

    def rows(x):  # without keepdim the (..., n) row sums broadcast along the last axis: (i, j) / sum of row j
        return x / ((x.sum(dim=-1, keepdim=True) if keepdim else x.sum(dim=-1).unsqueeze(-2)) + eps)

    def columns(x):
        return x / (x.sum(dim=-2, keepdim=True) + eps)

    if order == "columns first":  # the reference: columns, then (rows, columns) x (iterations - 1)
        m = columns(m)
        for _ in range(iterations - 1):
            m = columns(rows(m))
    elif order == "rows first":  # (rows, columns) x iterations
        for _ in range(iterations):
            m = columns(rows(m))
    elif order == "ends with rows":  # (columns, rows) x iterations
        for _ in range(iterations):
            m = rows(columns(m))
    elif order == "once":
        m = columns(rows(m))
    return m


def _layer_numbers(cfg: ModelConfig, seq_len: int, *, index_keys: str = "csa", window_on_compressed: bool = True,
                   sliding_capped: bool = True, kv_copies: int = 1, block_rounding: str = "floor",
                   swap_rates: bool = False) -> int:
    """Numbers the whole model caches after seq_len tokens; keywords switch on the usual mistakes."""
    csa_rate, hca_rate = cfg.csa_compress_rate, cfg.hca_compress_rate
    if swap_rates:
        csa_rate, hca_rate = hca_rate, csa_rate

    def blocks(rate: int) -> int:
        return seq_len // rate if block_rounding == "floor" else -(-seq_len // rate)

    total = 0
    for layer in range(cfg.num_layers):
        kind = cfg.layer_type(layer)
        compressed = kind != "sliding_attention"
        window = min(seq_len, cfg.sliding_window) if sliding_capped else seq_len
        numbers = kv_copies * window * cfg.head_size if (window_on_compressed or not compressed) else 0
        if kind == "compressed_sparse_attention":
            numbers += blocks(csa_rate) * (kv_copies * cfg.head_size + (cfg.index_head_dim if index_keys else 0))
        elif kind == "heavily_compressed_attention":
            index = cfg.index_head_dim if index_keys == "all" else 0
            numbers += blocks(hca_rate) * (kv_copies * cfg.head_size + index)
        total += numbers
    return total


# -- the library's versions, with the exercises' signatures ------------------------------------
# What the cells after an unfinished exercise use until its check passes
# (`check.<exercise>.yours_or_reference(yours)`): the learner's notebook runs to the end either way.

def reference_compress(kv: torch.Tensor, gate: torch.Tensor, position_bias: torch.Tensor, rate: int) -> torch.Tensor:
    """olm_edu.nn.KVCompressor's gated average before its norm and RoPE: (B, T, d) -> (B, T // rate, d)."""
    batch, length, width = kv.shape
    blocks = length // rate
    kv_blocks = kv[:, : blocks * rate].reshape(batch, blocks, rate, width)
    gate_blocks = gate[:, : blocks * rate].reshape(batch, blocks, rate, width) + position_bias
    return (kv_blocks * gate_blocks.softmax(dim=2)).sum(dim=2)


def reference_csa_selection(scores: torch.Tensor, positions: torch.Tensor, rate: int, k: int) -> torch.Tensor:
    """What olm_edu.nn.CompressedIndexer keeps: (B, T, C) scores -> (B, T, C) bool."""
    complete = complete_blocks(positions, scores.shape[-1], rate)  # (T, C)
    return top_k_mask(scores, k, complete) & complete


def reference_sinkhorn_knopp(matrix: torch.Tensor, iterations: int, eps: float = SINKHORN_EPS) -> torch.Tensor:
    """olm_edu.nn.hyper_connections.sinkhorn_knopp."""
    return library_sinkhorn_knopp(matrix, iterations, eps)


def reference_v4_cache_bytes(cfg: ModelConfig, seq_len: int, bytes_per_number: int = 2) -> int:
    """olm_edu.analysis.kv_cache_bytes, in a dtype of bytes_per_number bytes."""
    dtype = {1: "fp8", 2: "bf16", 4: "fp32"}[bytes_per_number]
    return kv_cache_bytes(cfg, seq_len, dtype)


# -- Exercise 1: the compressor on a toy sequence ---------------------------------------------------

SOFTMAX_OVER_CHANNELS = ("your softmax runs over the channels of each token (dim=-1); it runs over the m SLOTS of each "
                         "block, separately for every channel: reshape to (B, W, m, d) and take softmax(dim=2)")
NO_POSITION_BIAS = ("you left out the position bias: each slot j of a block adds position_bias[j] (shape (m, d)) to "
                    "its gate before the softmax")
PLAIN_MEAN = ("your entries are plain averages of the block's kv: the weights come from softmax(gate + position_bias) "
              "over the block's slots, not 1/m")
SWAPPED = "you swapped kv and gate: the softmax weights come from the gate, and they weigh kv"
SOFTMAX_OVER_SEQUENCE = ("your softmax runs over the whole sequence; each block has its own softmax over its m slots "
                         "(reshape to (B, T // m, m, d) first)")


def _compress_mistakes(kv, gate, bias, rate) -> dict[str, torch.Tensor]:
    batch, length, width = kv.shape
    blocks = length // rate
    whole = torch.softmax((gate.double()[:, : blocks * rate].reshape(batch, blocks, rate, width) + bias.double())
                          .reshape(batch, blocks * rate, width), dim=1).reshape(batch, blocks, rate, width)
    over_sequence = (kv.double()[:, : blocks * rate].reshape(batch, blocks, rate, width) * whole).sum(2)
    return {
        SOFTMAX_OVER_CHANNELS: _compress64(kv, gate, bias, rate, softmax_dim=3),
        NO_POSITION_BIAS: _compress64(kv, gate, None, rate),
        PLAIN_MEAN: _compress64(kv, gate, bias, rate, uniform=True),
        SWAPPED: _compress64(kv, gate, bias, rate, swap=True),
        SOFTMAX_OVER_SEQUENCE: over_sequence,
        "you divided by m after the softmax: the softmax weights already add up to 1 over each block, so the "
        "weighted SUM is the average": _compress64(kv, gate, bias, rate) / rate,
    }


@exercise("Exercise 1 — the compressor on a toy sequence", reference=reference_compress)
def compress(check: Check, fn: Callable) -> None:
    cases = [  # (B, T, d, rate, description)
        (1, 16, 6, 4, "16 tokens, blocks of 4"),
        (2, 11, 8, 4, "11 tokens: two complete blocks and 3 tokens waiting"),
        (1, 12, 4, 3, "blocks of 3"),
    ]
    if check.hidden:
        cases += [(2, 7, 5, 8, "fewer tokens than one block: no entry yet"), (3, 40, 16, 8, "blocks of 8"),
                  (1, 9, 3, 1, "rate 1: every token is its own entry")]
    for batch, length, width, rate, description in cases:
        kv, gate = check.randn(batch, length, width), check.randn(batch, length, width, scale=2.0)
        bias = check.randn(rate, width)
        originals = kv.clone(), gate.clone(), bias.clone()
        what = (f"compress(kv, gate of shape {(batch, length, width)}, position_bias {(rate, width)}, rate={rate}) "
                f"[{description}]")
        got = check.call(fn, kv, gate, bias, rate, what=what, hint="return (B, T // rate, d)")
        check.expect(all(torch.equal(a, b) for a, b in zip((kv, gate, bias), originals)), f"{what} changed its inputs")
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (batch, -(-length // rate), width) and length % rate:
            check.fail(f"{what}: got {got.shape[1]} entries, expected {length // rate}: you made an entry for the "
                       f"unfinished last block. Only complete blocks of {rate} tokens make an entry (T // rate); the "
                       "others wait for more tokens")
        check.close_or_diagnose(got, _compress64(*originals, rate), _compress_mistakes(*originals, rate), what=what,
                                **COMPRESS_TOL, hint="reshape kv and gate + position_bias to (B, T // m, m, d), softmax "
                                                     "over dim 2, multiply, sum over dim 2")


# -- Exercise 2: the CSA top-k selection mask -------------------------------------------------------

def _as_mask(check: Check, got, shape: tuple[int, ...], what: str) -> torch.Tensor:
    if not isinstance(got, torch.Tensor):
        check.fail(f"{what}: expected a torch.Tensor of booleans, got {type(got).__name__}")
    if tuple(got.shape) != shape:
        check.fail(f"{what}: expected shape {shape}, got {tuple(got.shape)}")
    if got.dtype != torch.bool:
        check.fail(f"{what}: expected a bool tensor, got {got.dtype}. Hint: compare (<) or use a bool tensor and "
                   "scatter True into it")
    return got


@exercise("Exercise 2 — the CSA top-k selection mask", reference=reference_csa_selection)
def csa_selection(check: Check, fn: Callable) -> None:
    check.forbid("olm_edu.nn.indexer.top_k_mask", "olm_edu.nn.compressed_attention.complete_blocks",
                 reason="write the selection yourself")
    cases = [  # (B, T, first position, entries C, rate, k, description)
        (1, 12, 0, 3, 4, 2, "12 tokens in blocks of 4, top-2 (early queries have fewer than 2 complete blocks)"),
        (2, 6, 30, 9, 4, 3, "6 queries at positions 30-35 (a cache holds the earlier blocks), top-3"),
        (1, 1, 99, 25, 4, 5, "decoding: one query at position 99, top-5 of 25 entries"),
    ]
    if check.hidden:
        cases += [(2, 20, 0, 6, 3, 2, "blocks of 3"), (1, 16, 0, 4, 4, 8, "k larger than the number of entries"),
                  (3, 5, 63, 16, 4, 1, "top-1")]
    for batch, length, first, entries, rate, k, description in cases:
        scores = check.randn(batch, length, entries)
        positions = torch.arange(first, first + length)
        originals = scores.clone(), positions.clone()
        what = (f"csa_selection(scores {(batch, length, entries)}, positions {first}..{first + length - 1}, "
                f"rate={rate}, k={k}) [{description}]")
        got = _as_mask(check, check.call(fn, scores, positions, rate, k, what=what), (batch, length, entries), what)
        unchanged = torch.equal(scores, originals[0]) and torch.equal(positions, originals[1])
        check.expect(unchanged, f"{what} changed its inputs")
        readable = _readable(positions, entries, rate)
        expected = _selection(scores, readable, k)
        if torch.equal(got, expected):
            check.passed += 1
            continue
        mistakes = {
            "you selected entries whose block is not complete yet: query t may read entry w only when "
            "w < (t + 1) // m (the block [w m, (w + 1) m) lies in its past); mask the others out before the top-k":
                _selection(scores, torch.ones_like(readable), k),
            "you selected the blocks up to and including the one holding the query, which is not complete until "
            "its last token; the rule is w < (t + 1) // m":
                _selection(scores, _readable(positions, entries, rate, rate), k),
            "you used w < t // m, which misses the block that ends exactly at the query (t = w m + m - 1 has "
            "finished block w): the rule is w < (t + 1) // m":
                _selection(scores, _readable(positions, entries, rate, 0), k),
            "you selected every complete block; CSA keeps only the k with the highest scores": readable.expand_as(got),
            "you selected the k LOWEST scores: the indexer keeps the highest":
                _selection(scores, readable, k, largest=False),
        }
        for message, wrong in mistakes.items():
            if torch.equal(got, wrong.expand_as(got)):
                check.fail(f"{what}: {message}")
        b, t, c = (int(i) for i in (got != expected).nonzero()[0])
        check.fail(f"{what}: batch {b}, query {t} (position {first + t}), entry {c}: expected {bool(expected[b, t, c])}, "
                   f"got {bool(got[b, t, c])}. Hint: readable = w < (t + 1) // m; among the readable entries, the k "
                   "highest scores (fewer rows may have fewer than k readable: then all of them)")


# -- Exercise 3: Sinkhorn-Knopp -----------------------------------------------------------------------

def _sinkhorn_inputs(check: Check, shape: tuple[int, ...], kind: str) -> torch.Tensor:
    logits = check.randn(*shape, scale=2.0)
    if kind == "softmax":  # what the hyper-connection hands over: row-softmax of logits, + eps
        return torch.softmax(logits, dim=-1) + SINKHORN_EPS
    return torch.exp(logits)


@exercise("Exercise 3 — Sinkhorn-Knopp", reference=reference_sinkhorn_knopp)
def sinkhorn_knopp(check: Check, fn: Callable) -> None:
    check.forbid("olm_edu.nn.hyper_connections.sinkhorn_knopp", reason="write the iterations yourself")
    cases = [  # (shape, iterations, kind, description)
        ((4, 4), 1, "exp", "one 4 x 4 matrix, 1 iteration (columns only)"),
        ((4, 4), 2, "exp", "2 iterations"),
        ((2, 3, 4, 4), 20, "softmax", "a (B, T) batch of row-softmax matrices, 20 iterations as V4"),
        ((3, 3), 3, "exp", "3 x 3, 3 iterations"),
    ]
    if check.hidden:
        cases += [((5, 6, 6), 4, "exp", "6 x 6 matrices, 4 iterations"), ((2, 2), 50, "exp", "50 iterations")]
    for shape, iterations, kind, description in cases:
        matrix = _sinkhorn_inputs(check, shape, kind)
        original = matrix.clone()
        what = f"sinkhorn_knopp(matrix of shape {shape}, iterations={iterations}) [{description}]"
        got = check.call(fn, matrix, iterations, what=what, hint="return a tensor shaped like matrix")
        check.expect(torch.equal(matrix, original), f"{what} changed its input; divide into new tensors (no /=)")
        mistakes = {
            "you normalised the rows first; DeepSeek-V4 starts with the columns: one column normalisation, then "
            "iterations - 1 rounds of rows-then-columns (so the result's columns sum to 1 exactly)":
                _sinkhorn64(original, iterations, order="rows first"),
            "your last step normalises the rows; DeepSeek-V4 ends with the columns: columns, then iterations - 1 "
            "rounds of rows-then-columns": _sinkhorn64(original, iterations, order="ends with rows"),
            "you divided by the row sums without keepdim=True: matrix.sum(dim=-1) has shape (..., n) and broadcasts "
            "along the LAST axis, so entry (i, j) was divided by the sum of row j":
                _sinkhorn64(original, iterations, keepdim=False),
            "your answer does one round whatever `iterations` is; repeat rows-then-columns iterations - 1 times "
            "after the first column normalisation": _sinkhorn64(original, iterations, order="once"),
            "you took a softmax: the matrix is already positive; Sinkhorn-Knopp only divides by row and column sums":
                torch.softmax(original.double(), dim=-1),
        }
        check.close_or_diagnose(got, _sinkhorn64(original, iterations), mistakes, what=what, **SINKHORN_TOL,
                                hint="m = m / (m.sum(-2, keepdim=True) + eps); then iterations - 1 times: rows "
                                     "(sum over dim -1), columns (dim -2)")
        column_sums = got.detach().double().sum(dim=-2)
        check.expect(bool(((column_sums - 1).abs() < 1e-4).all()),
                     f"{what}: the columns of your result do not sum to 1 (they must: the last step normalises them)")


# -- Exercise 4: the V4 KV-cache bytes at a million tokens --------------------------------------------

@exercise("Exercise 4 — the V4 KV-cache bytes at a million tokens", reference=reference_v4_cache_bytes)
def v4_cache_bytes(check: Check, fn: Callable) -> None:
    from olm_edu.models.presets import preset

    check.forbid("olm_edu.analysis.kv_cache_bytes", "olm_edu.analysis.kv_cache_by_layer_type",
                 reason="count the cache yourself")
    flash, pro = preset("DeepSeek-V4-Flash"), preset("DeepSeek-V4-Pro")
    cases = [(flash, 2**20, 2, "1M tokens in bf16"), (pro, 2**20, 2, "1M tokens in bf16"),
             (flash, 1_000_000, 1, "a million tokens in fp8 (not a multiple of 128)"),
             (flash, 100, 2, "100 tokens, fewer than the window")]
    if check.hidden:
        cases += [(pro, 131_072, 1, "128k tokens in fp8"),
                  (flash.replace(csa_compress_rate=8, index_head_dim=64, sliding_window=256, name="a modified Flash"),
                   300_001, 2, "CSA rate 8, a window of 256")]
    for cfg, seq_len, per_number, description in cases:
        what = f"v4_cache_bytes({cfg.name}, seq_len={seq_len:,}, bytes_per_number={per_number}) [{description}]"
        got = check.call(fn, cfg, seq_len, per_number, what=what, hint="return a whole number of bytes")
        count = lambda **mistake: _layer_numbers(cfg, seq_len, **mistake) * per_number  # noqa: E731
        mistakes = {
            "you left out the indexer's keys: a CSA layer also caches one index_head_dim key per compressed entry "
            "(what the lightning indexer scores)": count(index_keys=None),
            "you gave the HCA layers indexer keys too; only CSA layers have an indexer": count(index_keys="all"),
            "you left out the sliding window on the compressed layers: every layer, CSA and HCA included, also keeps "
            "the last sliding_window tokens' keys": count(window_on_compressed=False),
            "your window keeps every token: a layer keeps only the last min(seq_len, sliding_window) keys":
                count(sliding_capped=False),
            "you counted keys and values separately; V4's one key-value head is both (K = V): head_dim numbers a "
            "cached token or entry": count(kv_copies=2),
            "you rounded the number of entries up: the tokens of an unfinished block make no entry yet "
            "(seq_len // rate)": count(block_rounding="ceil"),
            "you swapped the rates: CSA compresses 4 tokens into one entry (csa_compress_rate), HCA 128 "
            "(hca_compress_rate)": count(swap_rates=True),
            "bytes_per_number is ignored: multiply the numbers by it": _layer_numbers(cfg, seq_len) * 2,
        }
        check.count(got, count(), mistakes, what=what,
                    hint="for each layer: min(T, window) * head_dim, plus T // 4 * (head_dim + index_head_dim) on CSA "
                         "layers or T // 128 * head_dim on HCA layers (cfg.layer_type(i)); times bytes_per_number")
