"""Checks for lesson 21 — Where the norms and the positions go (OLMo, Gemma 3, SmolLM3, Llama 4).

The references are written here from the formulas, independently of the library modules the
lesson then shows equal to the learner's code (and to transformers):

    post-sub-layer block   h = x + attn_norm(attention(x)); out = h + mlp_norm(mlp(h))   (OLMo 2/3)
    Gemma 3's RoPE         layer i is global ("full_attention") when layer_types says so, or,
                           without layer_types, when (i + 1) % sliding_window_pattern == 0;
                           inv_freq_j = 1 / base ** (2j / head_dim), j = 0 .. head_dim/2 - 1, with
                           base = rope_theta on global layers (divided by the factor of a linear
                           rope_scaling) and rope_local_base_freq, unscaled, on local ones
    NoPE schedule          no_rope_layers[i] == 1 means layer i rotates (Llama 4, SmolLM3); when
                           the list is absent or empty, every no_rope_layer_interval-th layer,
                           counting from 1, has no RoPE
    chunked mask           query i sees key j when j <= i and i // C == j // C (absolute positions)

When an answer is wrong each check computes what the usual mistakes would give (pre-norm or the
2017 post-norm instead of OLMo's placement, the two norms swapped, a parallel block; the two RoPE
bases swapped, the scaling on every layer or none, the pattern counted from 0; NoPE at layers 0,
4, 8, flags inverted, the list read as indices; a sliding window instead of a chunk, chunks without
the causal part, chunks counted from row indices) and names the one the answer matches.

Tolerances: the block atol=1e-5, rtol=1e-5 (float32, the learner calls the same float32 modules);
frequencies rtol=1e-5 (float32 against float64); masks and flags exactly.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from olm_edu.grading import Check, exercise, shared_module
from olm_edu.models import hf_config
from olm_edu.models.families import llama4_text
from olm_edu.nn import RMSNorm

__all__ = [
    "post_sublayer_block", "rope_frequencies", "rope_layers", "chunked_mask", "reference_post_sublayer_block",
    "reference_rope_frequencies", "reference_rope_layers", "reference_chunked_mask",
]  # fmt: skip

BLOCK_TOL = dict(atol=1e-5, rtol=1e-5)
FREQ_TOL = dict(atol=1e-12, rtol=1e-5)


# -- Exercise 1: the post-sub-layer norm block (OLMo) ------------------------------------------

def reference_post_sublayer_block(x: torch.Tensor, attention: Callable, mlp: Callable, attn_norm: Callable,
                                  mlp_norm: Callable) -> torch.Tensor:
    """OLMo 2/3's layer: each sub-layer's output normalised inside its residual branch.
    Shapes: x (B, T, d) -> (B, T, d)."""
    h = x + attn_norm(attention(x))
    return h + mlp_norm(mlp(h))


def _block_mistakes(x, attention, mlp, attn_norm, mlp_norm) -> dict[str, torch.Tensor]:
    def two_steps(first, second):
        return second(first(x))

    return {
        "you normalised the sub-layers' inputs (pre-norm, Llama: x + attention(norm(x))); OLMo normalises their "
        "outputs, inside the residual branch: x + attn_norm(attention(x))":
            two_steps(lambda v: v + attention(attn_norm(v)), lambda h: h + mlp(mlp_norm(h))),
        "you normalised after the residual add (the 2017 post-norm: norm(x + attention(x))), which rescales the "
        "stream itself; OLMo normalises only the branch: x + attn_norm(attention(x))":
            two_steps(lambda v: attn_norm(v + attention(v)), lambda h: mlp_norm(h + mlp(h))),
        "you swapped the two norms: attn_norm belongs to the attention branch, mlp_norm to the MLP branch":
            two_steps(lambda v: v + mlp_norm(attention(v)), lambda h: h + attn_norm(mlp(h))),
        "your MLP reads x, not the output of the attention step: the block is sequential, h = x + "
        "attn_norm(attention(x)), then h + mlp_norm(mlp(h))":
            x + attn_norm(attention(x)) + mlp_norm(mlp(x)),
        "you left out the MLP's norm: h + mlp_norm(mlp(h))": two_steps(lambda v: v + attn_norm(attention(v)),
                                                                       lambda h: h + mlp(h)),
        "you left out the attention's norm: x + attn_norm(attention(x))":
            two_steps(lambda v: v + attention(v), lambda h: h + mlp_norm(mlp(h))),
        "the residual is missing: each sub-layer adds its normalised output to its input, x + attn_norm(attention(x))":
            two_steps(lambda v: attn_norm(attention(v)), lambda h: mlp_norm(mlp(h))),
    }


class _StandIn(torch.nn.Module):
    """A nonlinear stand-in for attention or the MLP: activation(h @ w_in) @ w_out * 4."""

    def __init__(self, d: int, width: int, activation: str):
        super().__init__()
        self.w_in, self.w_out = torch.nn.Parameter(torch.zeros(d, width)), torch.nn.Parameter(torch.zeros(width, d))
        self.activation = activation

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        act = torch.tanh if self.activation == "tanh" else torch.nn.functional.silu
        return act(h @ self.w_in) @ self.w_out * 4.0


def _stand_in(d: int, w_in: torch.Tensor, w_out: torch.Tensor, activation: str) -> _StandIn:
    module = shared_module(_StandIn, d, w_in.shape[1], activation)
    with torch.no_grad():
        module.w_in.copy_(w_in)
        module.w_out.copy_(w_out)
    return module


def _sublayers(check: Check, d: int) -> tuple[Callable, Callable, RMSNorm, RMSNorm]:
    """Two nonlinear stand-ins for attention and the MLP (outputs about 10x the input, as in a
    trained model whose weights have grown) and two RMSNorms with distinct random weights."""
    w1, w2 = check.randn(d, 2 * d, scale=3 * d**-0.5), check.randn(2 * d, d, scale=3 * (2 * d) ** -0.5)
    w3, w4 = check.randn(d, 3 * d, scale=3 * d**-0.5), check.randn(3 * d, d, scale=3 * (3 * d) ** -0.5)
    attention, mlp = _stand_in(d, w1, w2, "tanh"), _stand_in(d, w3, w4, "silu")
    norms = []
    for _ in range(2):
        norm = shared_module(RMSNorm, d, eps=1e-6)
        with torch.no_grad():
            norm.weight.copy_(1.0 + check.randn(d, scale=0.5))
        norms.append(norm)
    return attention, mlp, norms[0], norms[1]


@exercise("Exercise 1 — the post-sub-layer norm block (OLMo)", reference=reference_post_sublayer_block)
def post_sublayer_block(check: Check, fn: Callable) -> None:
    cases = [((2, 5, 16), "a batch of 2, 5 tokens, width 16"), ((1, 1, 8), "one token, width 8")]
    if check.hidden:
        cases += [((3, 7, 32), "a batch of 3, 7 tokens, width 32"), ((4, 2, 12), "inputs about 100 times larger")]
    for shape, description in cases:
        d = shape[-1]
        attention, mlp, attn_norm, mlp_norm = _sublayers(check, d)
        x = check.randn(*shape, scale=100.0 if "larger" in description else 1.0)
        original = x.clone()
        what = f"post_sublayer_block(x of shape {shape}, ...) [{description}]"
        with torch.no_grad():
            got = check.call(fn, x, attention, mlp, attn_norm, mlp_norm, what=what, hint="return a tensor shaped like x")
            check.expect(torch.equal(x, original), f"{what} changed x in place (x += ... does); write h = x + ...")
            expected = reference_post_sublayer_block(original, attention, mlp, attn_norm, mlp_norm)
            mistakes = _block_mistakes(original, attention, mlp, attn_norm, mlp_norm)
        check.close_or_diagnose(got, expected, mistakes, what=what, **BLOCK_TOL,
                                hint="h = x + attn_norm(attention(x)); return h + mlp_norm(mlp(h))")


# -- Exercise 2: Gemma 3's per-layer RoPE --------------------------------------------------------

def _is_global(config: dict[str, Any], layer: int) -> bool:
    types = config.get("layer_types")
    if types:
        return types[layer] == "full_attention"
    return (layer + 1) % config["sliding_window_pattern"] == 0


def _linear_factor(config: dict[str, Any]) -> float:
    scaling = config.get("rope_scaling")
    return float(scaling["factor"]) if scaling else 1.0


def _frequencies(base: float, head_dim: int, factor: float = 1.0, *, step: int = 2) -> torch.Tensor:
    exponents = torch.arange(0, head_dim // 2 * step, step, dtype=torch.float64)[: head_dim // 2] / head_dim
    return 1.0 / (base**exponents) / factor


def reference_rope_frequencies(config: dict[str, Any], layer: int) -> torch.Tensor:
    """The inverse frequencies (head_dim // 2,) of layer `layer`'s RoPE in a Gemma 3 config.json, float64."""
    if _is_global(config, layer):
        return _frequencies(float(config["rope_theta"]), config["head_dim"], _linear_factor(config))
    return _frequencies(float(config["rope_local_base_freq"]), config["head_dim"])


def _rope_mistakes(config: dict[str, Any], layer: int) -> dict[str, torch.Tensor]:
    d, factor = config["head_dim"], _linear_factor(config)
    theta, local = float(config["rope_theta"]), float(config["rope_local_base_freq"])
    is_global = _is_global(config, layer)
    from_zero = layer % config["sliding_window_pattern"] == 0
    mistakes = {}
    if config.get("layer_types") and ((layer + 1) % config["sliding_window_pattern"] == 0) != is_global:
        kind = "global" if (layer + 1) % config["sliding_window_pattern"] == 0 else "local"
        mistakes[f"you ignored layer_types: when the config lists them, they decide (layer {layer} is "
                 f"{'global' if is_global else 'local'} here, not {kind})"] = (
            _frequencies(theta, d, factor) if kind == "global" else _frequencies(local, d)
        )
    if not config.get("layer_types") and from_zero != is_global:
        mistakes["your global layers are 0, 6, 12, ...: the pattern counts layers from 1, so layer i is global when "
                 "(i + 1) % sliding_window_pattern == 0 (layers 5, 11, 17, ...)"] = (
            _frequencies(theta, d, factor) if from_zero else _frequencies(local, d)
        )
    if is_global:
        if factor != 1.0:
            mistakes["you left out the global layers' rope_scaling: a linear scaling divides their frequencies "
                      "by its factor"] = _frequencies(theta, d)
            mistakes["the linear scaling divides the frequencies by the factor (positions t / factor), it does "
                     "not multiply them"] = _frequencies(theta, d) * factor
        mistakes["this layer is global: it rotates with rope_theta (1,000,000), not the local base"] = _frequencies(local, d)
        mistakes["this layer is global: it rotates with rope_theta (1,000,000), not the local base (and the "
                 "scaling)"] = _frequencies(local, d, factor)
    else:
        mistakes["this layer is local (sliding): it rotates with rope_local_base_freq (10,000), not rope_theta"] = (
            _frequencies(theta, d, factor))
        mistakes["this layer is local (sliding): it rotates with rope_local_base_freq (10,000), not rope_theta "
                 "(and without the scaling)"] = _frequencies(theta, d)
        if factor != 1.0:
            mistakes["the rope_scaling belongs to the global layers only; local layers rotate with plain "
                     "rope_local_base_freq"] = _frequencies(local, d, factor)
    base = theta if is_global else local
    mistakes["the exponent is 2j / head_dim for j = 0 .. head_dim/2 - 1 (torch.arange(0, head_dim, 2) / head_dim), "
             "not j / head_dim"] = _frequencies(base, d, factor if is_global else 1.0, step=1)
    return mistakes


GEMMA3_1B = {  # the keys of google/gemma-3-1b-pt's config.json that the exercise reads
    "num_hidden_layers": 26, "head_dim": 256, "rope_theta": 1_000_000, "rope_local_base_freq": 10_000,
    "rope_scaling": None, "sliding_window_pattern": 6,
}  # fmt: skip
GEMMA3_27B = {  # and of google/gemma-3-27b-pt's text_config, with Gemma3TextConfig's defaults where it has none
    "num_hidden_layers": 62, "head_dim": 128, "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
    "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window_pattern": 6,
}  # fmt: skip


@exercise("Exercise 2 — Gemma 3's per-layer RoPE", reference=reference_rope_frequencies)
def rope_frequencies(check: Check, fn: Callable[[dict[str, Any], int], torch.Tensor]) -> None:
    cases: list[tuple[str, dict[str, Any], int]] = [
        ("Gemma 3 1B, layer 3 (local)", GEMMA3_1B, 3),
        ("Gemma 3 1B, layer 5 (global)", GEMMA3_1B, 5),
        ("Gemma 3 1B, layer 0 (local)", GEMMA3_1B, 0),
        ("Gemma 3 27B, layer 11 (global, linear scaling x8)", GEMMA3_27B, 11),
        ("Gemma 3 27B, layer 12 (local)", GEMMA3_27B, 12),
        ("4 layers listed in layer_types, layer 1", dict(GEMMA3_27B, num_hidden_layers=4, head_dim=16, layer_types=[
            "sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]), 1),
    ]
    if check.hidden:
        kinds = ["full_attention" if flag else "sliding_attention" for flag in check.randint(0, 2, 8).tolist()]
        layer = int(check.randint(0, 8, 1))
        cases += [
            (f"8 layers listed in layer_types, layer {layer}", dict(GEMMA3_27B, num_hidden_layers=8, head_dim=32,
                                                                      layer_types=kinds), layer),
            ("a pattern of 4, scaling x4, layer 3", dict(GEMMA3_27B, sliding_window_pattern=4, head_dim=64,
                                                          rope_scaling={"rope_type": "linear", "factor": 4.0}), 3),
            ("a pattern of 4, layer 4", dict(GEMMA3_1B, sliding_window_pattern=4, head_dim=8), 4),
        ]
    for label, config, layer in cases:
        what = f"rope_frequencies(config, {layer}) [{label}]"
        got = check.call(fn, dict(config), layer, what=what, hint="return a tensor of head_dim // 2 frequencies")
        check.close_or_diagnose(
            got, reference_rope_frequencies(config, layer), _rope_mistakes(config, layer), what=what, **FREQ_TOL,
            hint="global: 1 / rope_theta ** (arange(0, d, 2) / d) / factor; local: 1 / rope_local_base_freq ** "
                 "(arange(0, d, 2) / d)",
        )


# -- Exercise 3: the NoPE schedule ---------------------------------------------------------------

def reference_rope_layers(config: dict[str, Any]) -> list[bool]:
    """Per layer, whether it rotates (what olm_edu reads from a Llama 4 or SmolLM3 config.json)."""
    keys = hf_config.Keys(config, llama4_text.MODEL_TYPE)
    return llama4_text._rope_flags(keys, config["num_hidden_layers"])


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


@exercise("Exercise 3 — the NoPE schedule from a config", reference=reference_rope_layers)
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


# -- Exercise 4: the chunked mask ------------------------------------------------------------------

def reference_chunked_mask(query_positions: torch.Tensor, key_positions: torch.Tensor, chunk: int) -> torch.Tensor:
    """Query i sees key j when j <= i and both lie in the same block of `chunk` positions.
    Shapes: (T_q,), (T_k,) -> (T_q, T_k) bool."""
    q, k = query_positions[:, None], key_positions[None, :]
    return (k <= q) & (q // chunk == k // chunk)


def _chunk_mistakes(query_positions: torch.Tensor, key_positions: torch.Tensor, chunk: int) -> dict[str, torch.Tensor]:
    q, k = query_positions[:, None], key_positions[None, :]
    causal = q >= k
    rows, columns = torch.arange(len(query_positions))[:, None], torch.arange(len(key_positions))[None, :]
    return {
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


@exercise("Exercise 4 — the chunked mask (Llama 4)", reference=reference_chunked_mask)
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

