"""Checks for lesson 21 — Where the norms and the positions go (Llama 4's part; draft).

Exercise "the chunked mask" compares the learner's mask with `olm_edu.nn.attention_mask(...,
chunk=C)` (query i sees key j when j <= i and i // C == j // C, by absolute positions) on square
masks, a chunk of 1, a chunk longer than the sequence and queries that continue a cache across a
chunk boundary. Exercise "the NoPE schedule" compares the learner's per-layer RoPE flags, read from
a config.json dict, with what `olm_edu.models.families.llama4_text` reads (Llama 4 and SmolLM3 share
the convention: `no_rope_layers[i] == 1` means layer i rotates; without the list, every
`no_rope_layer_interval`-th layer, counting from 1, has no RoPE).

When an answer is wrong, each check computes what the usual mistakes would give (a sliding window
instead of a chunk, chunks without the causal part, chunks counted from indices, NoPE at layers
0, 4, 8 instead of 3, 7, 11, the flags inverted, the list read as indices, the interval ignored)
and names the one the answer matches. Masks and flags are compared exactly.

The lesson's other exercises (the post-sub-layer norm block, Gemma 3's per-layer RoPE) are to be
added with the notebook.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from olm_edu.grading import Check, exercise
from olm_edu.models import hf_config
from olm_edu.models.families import llama4_text
from olm_edu.nn import attention_mask


def reference_chunked_mask(query_positions: torch.Tensor, key_positions: torch.Tensor, chunk: int) -> torch.Tensor:
    """olm_edu.nn.attention_mask, causal, with the chunk. Shapes: (T_q,), (T_k,) -> (T_q, T_k) bool."""
    return attention_mask(query_positions, key_positions, causal=True, chunk=chunk)


def reference_rope_layers(config: dict[str, Any]) -> list[bool]:
    """Per layer, whether it rotates (what olm_edu reads from a Llama 4 or SmolLM3 config.json)."""
    keys = hf_config.Keys(config, llama4_text.MODEL_TYPE)
    return llama4_text._rope_flags(keys, config["num_hidden_layers"])


# -- the chunked mask --------------------------------------------------------------------------

def _chunk_mistakes(query_positions: torch.Tensor, key_positions: torch.Tensor, chunk: int) -> dict[str, torch.Tensor]:
    q, k = query_positions[:, None], key_positions[None, :]
    causal = q >= k
    rows, columns = torch.arange(len(query_positions))[:, None], torch.arange(len(key_positions))[None, :]
    mistakes = {
        f"your mask is a sliding window of {chunk}, not a chunk: query i sees the {chunk} keys before it wherever "
        f"they are. A chunk is a fixed block of positions [c * {chunk}, (c + 1) * {chunk}): a query sees only keys "
        "of its own block, so keep i // C == j // C":
            causal & (q - k < chunk),
        "your mask has no causal part: a query also sees the later keys of its chunk (the future). Keep j <= i too":
            (q // chunk) == (k // chunk),
        "your mask is plain causal attention: it ignores the chunks. Add the condition i // C == j // C":
            causal,
        "your mask is inverted: True must mean 'may attend' (same chunk, not in the future)":
            ~(causal & ((q // chunk) == (k // chunk))),
        "your chunks are shifted by one: (i + 1) // C puts position C - 1 in the second chunk. Chunk c holds "
        "positions c * C .. c * C + C - 1, so compare i // C with j // C":
            causal & (((q + 1) // chunk) == ((k + 1) // chunk)),
        "you built the mask from row and column indices (0, 1, 2, ...) instead of the positions passed in: when "
        "queries continue a cache, the first query is not at position 0, and its chunk is position // C":
            (rows >= columns) & ((rows // chunk) == (columns // chunk)),
    }
    return mistakes


@exercise("Exercise — the chunked mask (Llama 4)", reference=reference_chunked_mask)
def chunked_mask(check: Check, fn: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]) -> None:
    cases: list[tuple[str, torch.Tensor, torch.Tensor, int]] = [
        ("8 tokens, chunks of 3", torch.arange(8), torch.arange(8), 3),
        ("5 tokens, chunks of 1 (each token sees only itself)", torch.arange(5), torch.arange(5), 1),
        ("5 tokens, chunks of 10 (longer than the sequence: plain causal)", torch.arange(5), torch.arange(5), 10),
        ("2 new queries at positions 7, 8 over cached keys at positions 4..8, chunks of 4",
         torch.arange(7, 9), torch.arange(4, 9), 4),
    ]
    if check.hidden:
        chunk = int(check.randint(2, 9, 1))
        cases += [
            (f"30 tokens, chunks of {chunk}", torch.arange(30), torch.arange(30), chunk),
            ("1 query at position 16 (a chunk's first) over keys 9..16, chunks of 8", torch.tensor([16]),
             torch.arange(9, 17), 8),
        ]
    for label, query_positions, key_positions, chunk in cases:
        call = f"chunked_mask on {label}"
        got = check.call(fn, query_positions.clone(), key_positions.clone(), chunk, what=call)
        expected = reference_chunked_mask(query_positions, key_positions, chunk)
        if not isinstance(got, torch.Tensor) or got.dtype != torch.bool:
            check.fail(f"{call}: expected a boolean tensor (True = may attend), got "
                       f"{got.dtype if isinstance(got, torch.Tensor) else type(got).__name__}")
        check.expect(tuple(got.shape) == tuple(expected.shape),
                     f"{call}: expected shape {tuple(expected.shape)} (one row per query, one column per key), "
                     f"got {tuple(got.shape)}")
        if not torch.equal(got, expected):
            for message, wrong in _chunk_mistakes(query_positions, key_positions, chunk).items():
                if torch.equal(got, wrong):
                    check.fail(f"{call}: {message}")
            check.fail(f"{call}: the mask differs from 'j <= i and i // C == j // C' at "
                       f"{(got != expected).nonzero()[0].tolist()} (query, key)")
        check.passed += 1


# -- the NoPE schedule -------------------------------------------------------------------------

def _schedule_mistakes(config: dict[str, Any]) -> dict[str, list[bool]]:
    layers = config["num_hidden_layers"]
    interval = config.get("no_rope_layer_interval", 4)
    listed = config.get("no_rope_layers")
    right = reference_rope_layers(config)
    mistakes = {
        "your flags are inverted: True must mean 'this layer rotates (RoPE)'; the NoPE layers are False":
            [not flag for flag in right],
        f"your NoPE layers are 0, {interval}, {2 * interval}, ...: the schedule counts layers from 1, so layer i "
        f"has no RoPE when (i + 1) % {interval} == 0 (layers {interval - 1}, {2 * interval - 1}, ...)":
            [index % interval != 0 for index in range(layers)],
    }
    if listed:  # checked first: with the default interval, ignoring the list looks like ignoring the interval
        mistakes["you ignored the no_rope_layers list: when it is given, it decides (1 = RoPE, 0 = NoPE)"] = [
            (index + 1) % interval != 0 for index in range(layers)
        ]
        mistakes["you read no_rope_layers as the indices of the NoPE layers; it is one flag per layer, "
                 "1 where the layer uses RoPE"] = [index not in listed for index in range(layers)]
    mistakes["you ignored no_rope_layer_interval and always used 4"] = [(index + 1) % 4 != 0 for index in range(layers)]
    return mistakes


@exercise("Exercise — the NoPE schedule from a config", reference=reference_rope_layers)
def rope_layers(check: Check, fn: Callable[[dict[str, Any]], list[bool]]) -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("Llama 4 Scout (48 layers, no list: every 4th layer NoPE)", {"num_hidden_layers": 48}),
        ("8 layers, no_rope_layer_interval=3", {"num_hidden_layers": 8, "no_rope_layer_interval": 3}),
        ("6 layers, no_rope_layers=[1, 0, 1, 1, 0, 0]",
         {"num_hidden_layers": 6, "no_rope_layers": [1, 0, 1, 1, 0, 0]}),
        ("4 layers, an empty no_rope_layers list (the interval decides)",
         {"num_hidden_layers": 4, "no_rope_layers": []}),
    ]
    if check.hidden:
        flags = [int(v) for v in check.randint(0, 2, 10).tolist()]
        cases += [(f"10 layers, no_rope_layers={flags}", {"num_hidden_layers": 10, "no_rope_layers": flags}),
                  ("36 layers, no_rope_layer_interval=5", {"num_hidden_layers": 36, "no_rope_layer_interval": 5})]
    for label, config in cases:
        call = f"rope_layers on {label}"
        got = check.call(fn, dict(config), what=call)
        expected = reference_rope_layers(config)
        if not isinstance(got, (list, tuple)) or len(got) != len(expected):
            check.fail(f"{call}: expected a list of {len(expected)} booleans (one per layer), got {got!r}")
        got = [bool(flag) for flag in got]
        if got != expected:
            for message, wrong in _schedule_mistakes(config).items():
                if got == wrong:
                    check.fail(f"{call}: {message}")
            first = next(index for index, (a, b) in enumerate(zip(got, expected)) if a != b)
            check.fail(f"{call}: layer {first} should be {'RoPE' if expected[first] else 'NoPE'}")
        check.passed += 1
