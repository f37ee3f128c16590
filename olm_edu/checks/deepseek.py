"""Checks for lesson 17 — DeepSeek-V3 (MLA's cache, attention from the latent, sigmoid routing
with a selection bias and expert groups, the aux-loss-free bias update).

References: the cache size is `olm_edu.analysis.kv_cache_bytes` on MLA presets and random MLA
configs (exact integers); attention from the latent is written here in float64 from its
definition (per-head keys and values W_UK c and W_UV c, RoPE on the decoupled rope_head_dim
dimensions only, the rotated key shared by all heads, scale 1 / sqrt(head_dim + rope_head_dim),
causal mask), with the lesson's `rope` (rotate_half layout, theta 10,000) re-implemented here;
routing is written here from DeepSeek-V3's definition (as transformers' DeepseekV3TopkRouter and
`olm_edu.nn.Router`, which the lesson compares with right after); the bias update is
b + rate * sign(mean load - load).

When an answer is wrong, the check recomputes the usual mistakes and names the one it matches:
in the cache, the expanded per-head keys and values (or the standard-attention formula), a
missing rotated key, one rotated key per head, a factor 2, the query latent, a missing layer
count, batch or byte width; in the attention, RoPE on the whole key or query, a rotated latent,
an unrotated query or key part, the scale of head_dim alone, a missing causal mask; in the
routing, the biased scores used as weights, the weights not renormalised or not scaled by
routed_scaling_factor, groups scored by their best expert (or all of them) instead of the sum of
their two best, groups scored without the bias, the bias left out of the choice, the group
limit ignored, softmax instead of sigmoid; in the update, the wrong sign (busy experts made more
attractive), a step proportional to the load gap instead of its sign, a bias that moves when the
load is even.

Tolerances: byte counts and expert indices exact; attention outputs atol=1e-5, rtol=1e-4
(float32, any summation order); routing weights and biases atol=1e-6, rtol=1e-5.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable

import torch

from olm_edu import analysis
from olm_edu.grading import Check, allclose, exercise
from olm_edu.models import ModelConfig, preset

ATOL, RTOL = 1e-5, 1e-4
ROUTE_ATOL, ROUTE_RTOL = 1e-6, 1e-5

# -- the library's versions, with the exercises' signatures ------------------------------------
# What the cells after an unfinished exercise use until its check passes
# (`check.<exercise>.yours_or_reference(yours)`): the learner's notebook runs to the end either way.

def reference_mla_cache_bytes(cfg: ModelConfig, seq_len: int, bytes_per_number: int = 2, batch_size: int = 1) -> int:
    """olm_edu.analysis.kv_cache_bytes with the number type named by its size."""
    return analysis.kv_cache_bytes(cfg, seq_len, {1: "fp8", 2: "bf16", 4: "fp32"}[bytes_per_number], batch_size)


def reference_latent_attention(q_content: torch.Tensor, q_rope: torch.Tensor, latent: torch.Tensor, k_rope: torch.Tensor,
                               key_up: torch.Tensor, value_up: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Attention from the latent (the check's float64 reference), in the queries' dtype: (B, H, T, d_v)."""
    return _latent_attention_reference(q_content, q_rope, latent, k_rope, key_up, value_up,
                                       positions).to(q_content.dtype)


def reference_deepseek_route(logits: torch.Tensor, selection_bias: torch.Tensor, k: int, num_groups: int,
                             groups_per_token: int, scaling_factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3's routing (weights in the logits' dtype, experts sorted by index), each (N, k)."""
    weights, experts = _route_reference(logits, selection_bias, k, num_groups, groups_per_token, scaling_factor)
    return weights.to(logits.dtype), experts


def reference_update_selection_bias(bias: torch.Tensor, tokens_per_expert: torch.Tensor, rate: float) -> torch.Tensor:
    """b + rate * sign(mean load - load): idle experts up, busy ones down."""
    load = tokens_per_expert.float()
    return bias + rate * torch.sign(load.mean() - load).to(bias.dtype)


# -- Exercise 1: MLA's cache in bytes -------------------------------------------------------------


def _mla_config(check: Check) -> ModelConfig:
    """A random MLA config (DeepSeek-V2-Lite's knobs, small random sizes)."""
    def draw(low: int, high: int) -> int:
        return int(check.randint(low, high, 1))

    return preset("DeepSeek-V2-Lite").replace(
        name="a random MLA config", vocab_size=100, max_seq_len=64, embed_dim=64, num_layers=draw(2, 7),
        num_heads=draw(2, 9), head_dim=4 * draw(2, 9), rope_head_dim=2 * draw(1, 5), value_head_dim=4 * draw(2, 9),
        kv_latent_dim=4 * draw(3, 12), q_latent_dim=4 * draw(3, 12), hidden_dim=64, num_experts=0,
        experts_per_token=None, expert_hidden_dim=None, num_shared_experts=0, first_dense_layers=0, rope_scaling=None,
    )  # fmt: skip


def _cache_width_slips(cfg: ModelConfig) -> dict[str, int]:
    """Each usual mistake in the numbers cached per token and layer -> the width it gives."""
    latent, rope, heads = cfg.kv_latent_dim, cfg.rope_head_dim, cfg.num_heads
    width = latent + rope
    expanded = heads * (cfg.qk_head_size + cfg.value_head_size)
    slips = {
        f"you counted the expanded per-head keys and values, num_heads * (head_dim + rope_head_dim + value_head_dim) "
        f"= {heads} * ({cfg.head_size} + {rope} + {cfg.value_head_size}) = {expanded:,} numbers a token and layer: "
        f"that is what MLA avoids caching. It caches the latent c (kv_latent_dim = {latent}) and the one shared "
        f"rotated key (rope_head_dim = {rope}): {width} numbers": expanded,
        f"you used the standard-attention formula 2 * kv_heads * head_size = {2 * cfg.kv_heads * cfg.head_size:,}: it "
        f"counts expanded per-head keys and values. MLA caches the latent (kv_latent_dim = {latent}) and the shared "
        f"rotated key (rope_head_dim = {rope}): {width} numbers a token and layer": 2 * cfg.kv_heads * cfg.head_size,
        f"you left out the rotated key k^R: next to the latent (kv_latent_dim = {latent}) every token caches the "
        f"rope_head_dim = {rope} numbers of its rotated key, {width} in all": latent,
        f"you cached one rotated key per head (num_heads * rope_head_dim = {heads * rope}): the rotated key is one "
        f"vector shared by all heads, cached once: kv_latent_dim + rope_head_dim = {width}": latent + heads * rope,
        f"there is no factor 2 in MLA: one latent c gives both the keys and the values, so it is cached once: "
        f"kv_latent_dim + rope_head_dim = {width}": 2 * width,
        f"there is no factor 2 in MLA: one latent c gives both the keys and the values (cached once, {latent} "
        f"numbers), plus the rotated key: {width}": 2 * latent + rope,
    }
    if cfg.q_latent_dim is not None:
        message = (f"you used q_latent_dim = {cfg.q_latent_dim}: queries are never cached. The cache holds the "
                   f"key/value latent (kv_latent_dim = {latent}) and the rotated key (rope_head_dim = {rope})")
        slips[message] = cfg.q_latent_dim + rope
    return {message: value for message, value in slips.items() if value != width}


def _mla_cache_mistakes(cfg: ModelConfig, seq_len: int, bytes_per_number: int, batch_size: int) -> dict[str, int]:
    """One or two usual slips together -> the number of bytes they give."""
    slips = {message: ("width", value) for message, value in _cache_width_slips(cfg).items()}
    slips.update({
        f"you left out num_layers: each of the {cfg.num_layers} layers caches its own latents": ("layers", 1),
        f"you left out batch_size = {batch_size}: every sequence has its own cache": ("batch", 1),
        f"you returned how many numbers are cached, not bytes: multiply by bytes_per_number = {bytes_per_number}":
            ("bytes", 1),
        "you counted bits, not bytes: bytes_per_number is already in bytes (2 for bf16), no factor 8":
            ("bytes", 8 * bytes_per_number),
    })  # fmt: skip
    terms = {"width": cfg.kv_latent_dim + cfg.rope_head_dim, "layers": cfg.num_layers, "tokens": seq_len,
             "batch": batch_size, "bytes": bytes_per_number}
    mistakes: dict[str, int] = {}
    for size in (1, 2):
        for combination in itertools.combinations(slips.items(), size):
            changed = dict(change for _, change in combination)
            if len(changed) == size:  # two slips on the same term cannot both happen
                mistakes.setdefault("; and ".join(message for message, _ in combination),
                                    math.prod({**terms, **changed}.values()))
    return mistakes


@exercise("Exercise 1 — MLA's cache in bytes", reference=reference_mla_cache_bytes)
def mla_cache_bytes(check: Check, fn: Callable[..., int]) -> None:
    check.forbid("olm_edu.analysis.kv_cache_bytes", "olm_edu.analysis.cache_width",
                 reason="Exercise 1 asks you to write the formula yourself (you compare with the library right after)")
    cases = [(preset("DeepSeek-V3"), 131072, 2, 1), (preset("DeepSeek-V2-Lite"), 32768, 2, 1),
             (_mla_config(check), int(check.randint(1, 3000, 1)), 4, 2)]
    if check.hidden:
        cases += [(preset("DeepSeek-V3"), 4096, 1, 8), (_mla_config(check), int(check.randint(1, 5000, 1)), 2, 3),
                  (preset("DeepSeek-V2-Lite"), 1, 4, 1)]
    dtypes = {1: "fp8", 2: "bf16", 4: "fp32"}
    for cfg, seq_len, bytes_per_number, batch_size in cases:
        what = (f"mla_cache_bytes({cfg.name} (num_layers={cfg.num_layers}, num_heads={cfg.num_heads}, "
                f"kv_latent_dim={cfg.kv_latent_dim}, rope_head_dim={cfg.rope_head_dim}, "
                f"q_latent_dim={cfg.q_latent_dim}, head_dim={cfg.head_size}, value_head_dim={cfg.value_head_size}), "
                f"seq_len={seq_len}, "
                f"bytes_per_number={bytes_per_number}, batch_size={batch_size})")
        got = check.call(fn, cfg, seq_len, bytes_per_number, batch_size, what=what)
        expected = analysis.kv_cache_bytes(cfg, seq_len, dtypes[bytes_per_number], batch_size)
        check.count(got, expected, _mla_cache_mistakes(cfg, seq_len, bytes_per_number, batch_size), what=what,
                    hint="num_layers * (kv_latent_dim + rope_head_dim) * seq_len * batch_size * bytes_per_number")


# -- Exercise 2: attention from the latent, with decoupled RoPE -----------------------------------


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def _rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10_000.0) -> torch.Tensor:
    """The lesson's `rope`: rotate the last dim of x (..., T, width) by each position (rotate_half layout)."""
    width = x.shape[-1]
    frequencies = theta ** (-torch.arange(0, width, 2, dtype=torch.float64) / width)  # (width / 2,)
    angles = positions.to(torch.float64)[:, None] * frequencies  # (T, width / 2)
    cos, sin = angles.cos().repeat(1, 2), angles.sin().repeat(1, 2)  # (T, width)
    return x * cos + _rotate_half(x) * sin


def _latent_attention_reference(
    q_content, q_rope, latent, k_rope, key_up, value_up, positions, *, rope_on: str = "decoupled",
    rotate_query: bool = True, rotate_key: bool = True, scale: str = "qk", causal: bool = True,
) -> torch.Tensor:
    """Attention from the latent in float64, or one of the usual mistakes.

    rope_on: "decoupled" (right), "whole" (query and key), "whole_key", "whole_query",
    "whole_rope_first" (whole query and key, with the rotated part first), "latent" (c rotated
    before the up-projection, the decoupled parts rotated as well).
    """
    q_content, q_rope, latent, k_rope = (t.double() for t in (q_content, q_rope, latent, k_rope))
    key_up, value_up = key_up.double(), value_up.double()
    heads, length = q_content.shape[1], q_content.shape[2]
    rotate = lambda x: _rope(x, positions)  # noqa: E731
    k_content = torch.einsum("btc,hdc->bhtd", rotate(latent) if rope_on == "latent" else latent, key_up)
    values = torch.einsum("btc,hdc->bhtd", latent, value_up)
    k_shared = k_rope[:, None].expand(-1, heads, -1, -1)  # (B, H, T, d_R)
    q_part = rotate(q_rope) if rotate_query else q_rope
    k_part = rotate(k_shared) if rotate_key else k_shared
    if rope_on in ("whole", "whole_query"):
        q = rotate(torch.cat([q_content, q_rope], dim=-1))
    elif rope_on == "whole_rope_first":
        q = rotate(torch.cat([q_rope, q_content], dim=-1))
    else:
        q = torch.cat([q_content, q_part], dim=-1)
    if rope_on in ("whole", "whole_key"):
        k = rotate(torch.cat([k_content, k_shared], dim=-1))
    elif rope_on == "whole_rope_first":
        k = rotate(torch.cat([k_shared, k_content], dim=-1))
    else:
        k = torch.cat([k_content, k_part], dim=-1)
    width = {"qk": q.shape[-1], "content": q_content.shape[-1], "none": 1}[scale]
    scores = q @ k.transpose(-2, -1) / math.sqrt(width)  # (B, H, T, T)
    if causal:
        allowed = torch.ones(length, length, dtype=torch.bool).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ values  # (B, H, T, d_v)


def _attention_mistakes(inputs: tuple, head_dim: int, rope_head_dim: int, length: int) -> dict[str, torch.Tensor]:
    width = head_dim + rope_head_dim
    reference = lambda **options: _latent_attention_reference(*inputs, **options)  # noqa: E731
    only_rope = (f"In MLA only the decoupled rope_head_dim = {rope_head_dim} dims (q_rope and the shared k_rope) are "
                 "rotated; the content parts come out of the latent unrotated, which is what lets W_UK be absorbed. "
                 "Concatenate [q_content, rope(q_rope)] and [k_content, rope(k_rope)]")
    mistakes = {
        f"you applied RoPE to the whole query and the whole key (all head_dim + rope_head_dim = {width} dims). "
        + only_rope: reference(rope_on="whole"),
        f"you applied RoPE to the whole key (all head_dim + rope_head_dim = {width} dims, the content part k_content "
        "too) instead of only the decoupled part. " + only_rope: reference(rope_on="whole_key"),
        f"you applied RoPE to the whole query (all {width} dims) instead of only its decoupled part q_rope. "
        + only_rope: reference(rope_on="whole_query"),
        f"you applied RoPE to the whole query and key (all {width} dims, rotated part first). " + only_rope:
            reference(rope_on="whole_rope_first"),
        "you rotated the latent c before the up-projection: the content keys W_UK c must carry no position (that "
        "is the point of the decoupled RoPE). Rotate only q_rope and k_rope": reference(rope_on="latent"),
        "the query's rope part is not rotated: apply rope(q_rope, positions) as you do for k_rope":
            reference(rotate_query=False),
        "the shared key k_rope is not rotated: apply rope(k_rope, positions) before sharing it across heads":
            reference(rotate_key=False),
        "there is no RoPE at all: rotate q_rope and k_rope with rope(..., positions)":
            reference(rotate_query=False, rotate_key=False),
        f"you scaled the scores by 1/sqrt(head_dim) = 1/sqrt({head_dim}); the query-key dot product runs over "
        f"head_dim + rope_head_dim = {width} dims, so scale by 1/sqrt({width})": reference(scale="content"),
        f"the scores are not scaled: divide by sqrt(head_dim + rope_head_dim) = sqrt({width})": reference(scale="none"),
    }
    if length > 1:
        mistakes["there is no causal mask: query t must not see keys after t. Set the scores where key position > "
                 "query position to -inf before the softmax"] = reference(causal=False)
    return mistakes


@exercise("Exercise 2 — attention from the latent", reference=reference_latent_attention)
def latent_attention(check: Check, fn: Callable[..., torch.Tensor]) -> None:
    # (B, H, T, head_dim, rope_head_dim, kv_latent_dim, value_head_dim, first position)
    cases = [(2, 4, 6, 8, 4, 12, 6, 0), (1, 3, 5, 16, 8, 24, 16, 7), (2, 2, 1, 4, 2, 6, 4, 3)]
    if check.hidden:
        cases += [(1, 8, 9, 16, 16, 32, 8, 0), (3, 1, 4, 4, 2, 4, 4, 11), (1, 5, 7, 12, 6, 10, 12, 2)]
    for batch, heads, length, head_dim, rope_dim, latent_dim, value_dim, start in cases:
        inputs = (
            check.randn(batch, heads, length, head_dim, scale=1.5),  # q_content
            check.randn(batch, heads, length, rope_dim, scale=1.5),  # q_rope
            check.randn(batch, length, latent_dim),  # the latent c, RMS-normalised: entries of size ~1
            check.randn(batch, length, rope_dim, scale=1.5),  # k_rope
            check.randn(heads, head_dim, latent_dim, scale=latent_dim**-0.5),  # W_UK per head
            check.randn(heads, value_dim, latent_dim, scale=latent_dim**-0.5),  # W_UV per head
            torch.arange(start, start + length),  # positions
        )
        what = (f"B={batch}, H={heads}, T={length}, head_dim={head_dim}, rope_head_dim={rope_dim}, "
                f"kv_latent_dim={latent_dim}, value_head_dim={value_dim}, positions {start}..{start + length - 1}")
        copies = tuple(t.clone() for t in inputs)
        got = check.call(fn, *copies, what=what)
        check.expect(all(torch.equal(a, b) for a, b in zip(copies, inputs)),
                     f"{what}: your function changed one of its inputs in place; build new tensors")
        check.close_or_diagnose(
            got, _latent_attention_reference(*inputs), _attention_mistakes(inputs, head_dim, rope_dim, length),
            what=what, atol=ATOL, rtol=RTOL,
            hint="k_content = W_UK c and values = W_UV c per head; q = [q_content, rope(q_rope)], k = [k_content, "
                 "rope(k_rope) for every head]; softmax(q k^T / sqrt(head_dim + rope_head_dim), causal) @ values",
        )


# -- Exercise 3: sigmoid routing with a selection bias and expert groups ------------------------


def _route_reference(
    logits: torch.Tensor, bias: torch.Tensor, k: int, num_groups: int, groups_per_token: int, scaling: float, *,
    scoring: str = "sigmoid", weigh_with_bias: bool = False, renormalize: bool = True, scaled: bool = True,
    group_score: str = "top2_sum", group_bias: bool = True, choose_with_bias: bool = True, groups: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3's routing, or one of the usual mistakes -> (weights, experts), each (N, k),
    sorted by expert index so that the order of the chosen experts does not matter."""
    scores = logits.sigmoid() if scoring == "sigmoid" else logits.softmax(dim=-1)
    biased = scores + bias
    choosing = biased if choose_with_bias else scores
    num_tokens, num_experts = logits.shape
    if groups and num_groups > 1:
        grouped = (biased if group_bias else scores).view(num_tokens, num_groups, num_experts // num_groups)
        if group_score == "top2_sum":
            group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
        elif group_score == "max":
            group_scores = grouped.max(dim=-1).values
        else:  # the sum of every expert of the group
            group_scores = grouped.sum(dim=-1)
        best = group_scores.topk(groups_per_token, dim=-1).indices  # (N, M)
        keep = torch.zeros(num_tokens, num_groups, dtype=torch.bool).scatter(1, best, True)
        keep = keep.repeat_interleave(num_experts // num_groups, dim=1)  # (N, E)
        choosing = choosing.masked_fill(~keep, float("-inf"))
    experts = choosing.topk(k, dim=-1).indices
    weights = (biased if weigh_with_bias else scores).gather(1, experts)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    if scaled:
        weights = weights * scaling
    return _by_expert(weights, experts)


def _by_expert(weights: torch.Tensor, experts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = experts.argsort(dim=-1)
    return weights.gather(1, order), experts.gather(1, order)


def _route_mistakes(args: tuple, scaling: float) -> dict[str, dict[str, Any]]:
    bias_message = ("you weighed the chosen experts with the biased scores s + b: the selection bias only decides "
                    "WHICH experts are chosen; their weights come from the plain sigmoid scores s (gather from s, "
                    "not from s + b), so the bias never changes what a token computes, only where it goes")
    return {
        bias_message: dict(weigh_with_bias=True),
        bias_message + " (and renormalise them)": dict(weigh_with_bias=True, renormalize=False),
        "you forgot to renormalise the weights: divide the k chosen sigmoid scores by their sum (sigmoid scores "
        "do not sum to 1 on their own), then multiply by routed_scaling_factor": dict(renormalize=False),
        f"you forgot routed_scaling_factor: after renormalising, multiply the weights by scaling_factor = {scaling:g}":
            dict(scaled=False),
        "you neither renormalised the weights nor applied routed_scaling_factor: w = s_chosen / sum(s_chosen) * "
        "scaling_factor": dict(renormalize=False, scaled=False),
        "you scored each group by its best expert (max); DeepSeek-V3 scores a group by the sum of its two best "
        "biased scores (s + b): grouped.topk(2, dim=-1).values.sum(-1)": dict(group_score="max"),
        "you scored each group by the sum of all its experts; DeepSeek-V3 sums only the two best biased scores "
        "of each group: grouped.topk(2, dim=-1).values.sum(-1)": dict(group_score="sum"),
        "you scored the groups with the plain scores s; the groups are chosen with the biased scores s + b, as "
        "the experts are (the bias must be able to steer tokens to idle groups too)": dict(group_bias=False),
        "the selection bias did not change the choice: choose the top-k of s + b (the bias is for choosing), then "
        "weigh with s": dict(choose_with_bias=False, group_bias=False),
        "the selection bias is missing from the choice of experts (the groups used it, the top-k did not): choose "
        "the top-k of s + b": dict(choose_with_bias=False),
        "you ignored the group limit: first keep only the groups_per_token best groups (each scored by the sum of "
        "its two best s + b), set every other expert to -inf, then take the top-k": dict(groups=False),
        "you scored the experts with a softmax; DeepSeek-V3 uses a sigmoid per expert, s = sigmoid(logits)":
            dict(scoring="softmax"),
    }


@exercise("Exercise 3 — sigmoid routing with a selection bias and groups", reference=reference_deepseek_route)
def deepseek_route(check: Check, fn: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> None:
    # (tokens, experts, k, groups, groups per token, routed_scaling_factor)
    cases = [(64, 16, 3, 4, 2, 2.5), (48, 32, 4, 8, 3, 2.5), (32, 8, 2, 1, 1, 1.0)]
    if check.hidden:
        cases += [(64, 256, 8, 8, 4, 2.5), (20, 12, 1, 3, 1, 1.5), (40, 64, 6, 8, 4, 16.0)]
    for tokens, num_experts, k, num_groups, groups_per_token, scaling in cases:
        logits = check.randn(tokens, num_experts, scale=1.5)
        bias = check.randn(num_experts, scale=0.3)  # large enough to change some choices
        args = (logits, bias, k, num_groups, groups_per_token, scaling)
        what = (f"{tokens} tokens, {num_experts} experts in {num_groups} group{'s' * (num_groups > 1)}, "
                f"k={k}, groups_per_token={groups_per_token}, scaling_factor={scaling:g}")
        inputs = (logits.clone(), bias.clone())
        got = check.call(fn, *inputs, k, num_groups, groups_per_token, scaling, what=what)
        check.expect(torch.equal(inputs[0], logits) and torch.equal(inputs[1], bias),
                     f"{what}: your function changed logits or selection_bias in place; build new tensors")
        if not (isinstance(got, tuple) and len(got) == 2 and all(isinstance(t, torch.Tensor) for t in got)):
            check.fail(f"{what}: expected a tuple (weights, experts) of two tensors, got {type(got).__name__}")
        weights, experts = got
        if tuple(weights.shape) != (tokens, k) or tuple(experts.shape) != (tokens, k):
            check.fail(f"{what}: weights and experts must both have shape (N, k) = {(tokens, k)}, got "
                       f"{tuple(weights.shape)} and {tuple(experts.shape)}")
        if experts.dtype.is_floating_point:
            check.fail(f"{what}: experts must hold integer expert indices (int64, as topk's .indices), "
                       f"got {experts.dtype}")
        got_weights, got_experts = _by_expert(weights.float(), experts.long())
        expected_weights, expected_experts = _route_reference(*args)
        right = torch.equal(got_experts, expected_experts) and allclose(
            got_weights, expected_weights, atol=ROUTE_ATOL, rtol=ROUTE_RTOL)
        if not right:
            for message, options in _route_mistakes(args, scaling).items():
                wrong_weights, wrong_experts = _route_reference(*args, **options)
                if torch.equal(got_experts, wrong_experts) and allclose(
                        got_weights, wrong_weights, atol=ROUTE_ATOL, rtol=ROUTE_RTOL):
                    check.fail(f"{what}: {message}")
            token = int((got_experts != expected_experts).any(dim=1).nonzero()[0]) if not torch.equal(
                got_experts, expected_experts) else None
            if token is not None:
                check.fail(f"{what}: token {token} should go to experts {expected_experts[token].tolist()}, yours "
                           f"went to {got_experts[token].tolist()}. Hint: s = sigmoid(logits); keep the "
                           "groups_per_token groups with the largest sum of their two best s + b; top-k of s + b "
                           "inside them")
            check.close(got_weights, expected_weights, what=f"{what}: the weights (sorted by expert index)",
                        atol=ROUTE_ATOL, rtol=ROUTE_RTOL,
                        hint="w = s_chosen / s_chosen.sum(-1, keepdim=True) * scaling_factor, with s the plain "
                             "sigmoid scores")
        check.passed += 1


# -- Exercise 4: the aux-loss-free bias update ------------------------------------------------------


def _counts(check: Check, num_experts: int, tokens: int, even: bool = False) -> torch.Tensor:
    """Tokens per expert (int64); no expert sits exactly at the mean unless the load is even."""
    if even:
        return torch.full((num_experts,), tokens // num_experts, dtype=torch.long)
    counts = check.randint(0, 2 * tokens // num_experts + 1, num_experts)
    if int(counts.sum()) % num_experts == 0:  # a non-integer mean: no expert exactly at it
        counts[0] += 1
    return counts


@exercise("Exercise 4 — the bias update", reference=reference_update_selection_bias)
def update_selection_bias(check: Check, fn: Callable[..., torch.Tensor]) -> None:
    cases = [(16, 512, 0.001, False), (8, 100, 0.01, False), (4, 40, 0.05, True)]
    if check.hidden:
        cases += [(256, 4096, 0.001, False), (2, 7, 0.1, False), (64, 640, 0.002, True)]
    for num_experts, tokens, rate, even in cases:
        bias = check.randn(num_experts, scale=0.1)
        counts = _counts(check, num_experts, tokens, even)
        what = (f"{num_experts} experts, tokens_per_expert={counts.tolist() if num_experts <= 16 else '...'}, "
                f"rate={rate:g}")
        inputs = (bias.clone(), counts.clone())
        got = check.call(fn, *inputs, rate, what=what,
                         hint="tokens_per_expert holds int64 counts: .float() them before taking the mean")
        check.expect(torch.equal(inputs[0], bias) and torch.equal(inputs[1], counts),
                     f"{what}: your function changed bias or tokens_per_expert in place; return a new tensor")
        load = counts.double()
        gap = load.mean() - load  # > 0: below the mean (idle), < 0: busy
        expected = bias.double() + rate * torch.sign(gap)
        mistakes = {
            "the sign is the wrong way round: your update raises the bias of the BUSY experts (load above the "
            "mean), which makes them even more attractive, and the load collapses onto them. Busy experts must "
            "get b - rate, idle ones b + rate: b + rate * sign(mean - load)": bias.double() - rate * torch.sign(gap),
            "your step is proportional to the load gap; DeepSeek-V3 moves every bias by the same fixed step: "
            "b + rate * sign(mean - load)": bias.double() + rate * gap,
            "your step is proportional to the relative load gap; DeepSeek-V3 moves every bias by the same fixed "
            "step: b + rate * sign(mean - load)": bias.double() + rate * gap / load.mean(),
        }
        if even:
            mistakes["with an even load (every expert got exactly the mean) the bias must not move: use "
                     "torch.sign(mean - load), which is 0 there, rather than a two-way choice such as "
                     "torch.where(load > mean, -rate, rate)"] = bias.double() + rate * torch.where(gap < 0, -1.0, 1.0)
            mistakes["with an even load (every expert got exactly the mean) the bias must not move: use "
                     "torch.sign(mean - load), which is 0 there, rather than a two-way choice such as "
                     "torch.where(load < mean, rate, -rate)"] = bias.double() + rate * torch.where(gap > 0, 1.0, -1.0)
        check.close_or_diagnose(got, expected, mistakes, what=what, atol=ROUTE_ATOL, rtol=ROUTE_RTOL,
                                hint="b + rate * sign(mean load - load): -rate for experts above the mean, "
                                     "+rate below it, 0 exactly at it")
