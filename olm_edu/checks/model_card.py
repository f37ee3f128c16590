"""Checks for lesson 19 — Reading a model card (the feed-forward of a mixture of experts, total and
per token; the memory to serve a model; the forward FLOPs per token).

References: `olm_edu.analysis` on the published presets and on random configs, exact integers:
- Exercise 1: the "ffn" component of `count_params` and the part of it a token uses (the sum over
  layers of the library's per-layer feed-forward count);
- Exercise 2: `weight_bytes(cfg, weight_dtype) + kv_cache_bytes(cfg, seq_len, cache_dtype, batch_size)`;
- Exercise 3: `flops_per_token(cfg, seq_len)["forward"]`.
While the learner's function runs, the library functions the exercise asks them to write raise
(`Check.forbid`: their code objects are swapped for a refusal, so it holds however they were imported).

When an answer is wrong, the check recomputes the usual mistakes, alone and two at a time, and
names the one the answer matches:
- Exercise 1: every expert counted as used (or the idle ones counted instead of the chosen), the
  first dense layers taken for MoE layers (or sized with the expert width), experts sized with
  hidden_dim, two matrices instead of three, the router or the shared experts left out (of the
  total, or of what a token uses);
- Exercise 2: bits counted as bytes, int4 as a whole byte, the weight dtype ignored, the active
  parameters of a mixture of experts stored instead of all of them, a half byte rounded down (or
  left as a fraction), the cache left out, stored in the weights' dtype, or for one sequence
  instead of batch_size; an answer in GB or GiB;
- Exercise 3: no factor 2 for a multiply-add, the context term left out or halved, the scores
  computed for the KV heads only (or embed_dim wide), the sliding windows ignored (or applied to
  the global layers too), the context term or the weights counted for one layer, k and v
  projections sized with num_heads or only one of them counted, q and o sized embed_dim wide, the
  wrong number of feed-forward matrices or a 4 * embed_dim width, the head left out (a tied head
  shares weights, not work), the embedding lookup counted as a matmul.

Tolerances: none; every answer is a whole number and must be exact.
"""

from __future__ import annotations

import itertools
import numbers
from typing import Any, Callable

from olm_edu import analysis
from olm_edu.grading import Check, exercise
from olm_edu.models import ModelConfig, preset

GB, GIB = 1e9, 2**30


# -- shared helpers ---------------------------------------------------------------------------


def _slips(terms: dict[str, Any], slips: dict[str, tuple[str, Any]], compute: Callable[[dict[str, Any]], Any],
           together: int = 2) -> dict[str, Any]:
    """Each slip alone, then two slips on different terms -> what `compute` gives with them.

    slips: {message naming the mistake: (term, the value the mistake puts there)}.
    """
    mistakes: dict[str, Any] = {}
    for size in range(1, together + 1):
        for combination in itertools.combinations(slips.items(), size):
            changed = dict(change for _, change in combination)
            if len(changed) == size:  # two slips on one term cannot both happen
                mistakes.setdefault("; and ".join(message for message, _ in combination), compute({**terms, **changed}))
    return mistakes


def _pick(check: Check, options: list) -> Any:
    return options[int(check.randint(0, len(options), 1))]


# -- the library's versions, with the exercises' signatures ------------------------------------
# What the cells after an unfinished exercise use until its check passes
# (`check.<exercise>.yours_or_reference(yours)`): the learner's notebook runs to the end either way.

def reference_moe_ffn_params(cfg: ModelConfig) -> tuple[int, int]:
    """(feed-forward parameters of all layers, those one token uses), from olm_edu.analysis."""
    return _library_ffn(cfg)


def reference_serving_memory(cfg: ModelConfig, weight_dtype: str, seq_len: int, batch_size: int = 1,
                             cache_dtype: str = "bf16") -> int:
    """olm_edu.analysis.weight_bytes + kv_cache_bytes."""
    return analysis.weight_bytes(cfg, weight_dtype) + analysis.kv_cache_bytes(cfg, seq_len, cache_dtype, batch_size)


def reference_forward_flops(cfg: ModelConfig, seq_len: int) -> int:
    """olm_edu.analysis.flops_per_token(cfg, seq_len)["forward"]."""
    return analysis.flops_per_token(cfg, seq_len)["forward"]


# -- Exercise 1: the feed-forward of a mixture of experts ---------------------------------------

def _library_ffn(cfg: ModelConfig) -> tuple[int, int]:
    """(feed-forward parameters of all layers, those one token uses), from the library."""
    per_layer = [analysis._ffn_params(cfg, index) for index in range(cfg.num_layers)]
    return sum(total for total, _ in per_layer), sum(used for _, used in per_layer)


def _ffn_terms(cfg: ModelConfig) -> dict[str, Any]:
    moe_layers = sum(cfg.is_moe_layer(index) for index in range(cfg.num_layers))
    return {"moe_layers": moe_layers, "matrices": 3,
            "dense_width": cfg.hidden_dim, "expert_width": cfg.expert_width, "router": True, "shared": True,
            "used_experts": cfg.experts_per_token or 0, "shared_used": True, "router_used": True}


def _ffn_from_terms(cfg: ModelConfig, terms: dict[str, Any]) -> tuple[int, int]:
    d = cfg.embed_dim
    dense = terms["matrices"] * d * terms["dense_width"]
    expert = terms["matrices"] * d * terms["expert_width"]
    router = cfg.num_experts * d
    shared = cfg.num_shared_experts * expert
    total_layer = router * terms["router"] + shared * terms["shared"] + cfg.num_experts * expert
    used_layer = (router * terms["router"] * terms["router_used"] + shared * terms["shared"] * terms["shared_used"]
                  + terms["used_experts"] * expert)
    dense_part = (cfg.num_layers - terms["moe_layers"]) * dense
    return dense_part + terms["moe_layers"] * total_layer, dense_part + terms["moe_layers"] * used_layer


def _ffn_slips(cfg: ModelConfig, for_used: bool) -> dict[str, tuple[str, Any]]:
    d, E, k, S = cfg.embed_dim, cfg.num_experts, cfg.experts_per_token, cfg.num_shared_experts
    F, F_e, L, first = cfg.hidden_dim, cfg.expert_width, cfg.num_layers, cfg.first_dense_layers
    slips: dict[str, tuple[str, Any]] = {}
    if E and first:
        slips[f"you treated all {L} layers as MoE layers, but the first first_dense_layers = {first} "
              f"(first_k_dense_replace in config.json) keep a dense feed-forward hidden_dim = {F} wide. Hint: "
              "cfg.is_moe_layer(i) says which layers have experts"] = ("moe_layers", L)
        if F != F_e:
            slips[f"the first {first} dense layer(s) have a feed-forward hidden_dim = {F} wide (intermediate_size), "
                  f"not expert_width = {F_e}"] = ("dense_width", F_e)
    if E and F != F_e:
        slips[f"you sized each expert with hidden_dim = {F} (intermediate_size, the width of a dense layer); an "
              f"expert is cfg.expert_width = {F_e} wide (moe_intermediate_size in config.json)"] = ("expert_width", F)
    slips["each feed-forward here is gated (SwiGLU): three matrices, gate and up (embed_dim x width) and down "
          "(width x embed_dim), so 3 * embed_dim * width parameters, not 2 *"] = ("matrices", 2)
    if E:
        slips[f"you left out the router: every MoE layer has one, a num_experts x embed_dim = {E} x {d} matrix that "
              "scores the experts"] = ("router", False)
    if S:
        slips[f"you left out the shared experts: every MoE layer has num_shared_experts = {S} always-on expert(s), "
              f"expert_width = {F_e} wide each"] = ("shared", False)
    if for_used and E:
        slips[f"you counted all {E} experts as used: a token runs only its experts_per_token = {k} chosen experts "
              "(the rest of the experts sit in memory, unused for this token)"] = ("used_experts", E)
        if E - k != k:
            slips[f"you counted the {E - k} experts a token does NOT use; it uses its experts_per_token = {k}"] = (
                "used_experts", E - k)
        if S:
            slips["the shared experts run for every token: count them in what a token uses as well as in the "
                  "total"] = ("shared_used", False)
        slips["the router runs for every token (it scores every expert to choose the top-k): count it in what a "
              "token uses as well"] = ("router_used", False)
    return slips


def _describe_moe(cfg: ModelConfig) -> str:
    if not cfg.num_experts:
        return (f"{cfg.name} [dense: num_layers={cfg.num_layers}, embed_dim={cfg.embed_dim}, "
                f"hidden_dim={cfg.hidden_dim}]")
    return (f"{cfg.name} [num_layers={cfg.num_layers}, first_dense_layers={cfg.first_dense_layers}, "
            f"embed_dim={cfg.embed_dim}, hidden_dim={cfg.hidden_dim}, num_experts={cfg.num_experts}, "
            f"experts_per_token={cfg.experts_per_token}, expert_width={cfg.expert_width}, "
            f"num_shared_experts={cfg.num_shared_experts}]")


def _random_moe(check: Check) -> ModelConfig:
    experts = _pick(check, [4, 6, 8, 16, 32])
    layers = int(check.randint(2, 7, 1))
    return preset("Mixtral-8x7B-v0.1").replace(
        name="a random MoE config", family="custom", vocab_size=100, max_seq_len=64, embed_dim=_pick(check, [32, 48, 64]),
        num_layers=layers, num_heads=4, num_kv_heads=2, head_dim=None, hidden_dim=_pick(check, [96, 128, 160]),
        num_experts=experts, experts_per_token=int(check.randint(1, min(experts, 6) + 1, 1)),
        expert_hidden_dim=_pick(check, [None, 16, 24, 40]), num_shared_experts=int(check.randint(0, 3, 1)),
        first_dense_layers=int(check.randint(0, layers, 1)), sliding_window=None,
    )  # fmt: skip


_FFN_LIBRARY = tuple(f"olm_edu.analysis.{name}" for name in ("count_params", "flops_per_token", "_ffn_params",
                                                              "_dense_ffn_params"))


@exercise("Exercise 1 — the feed-forward of a mixture of experts", reference=reference_moe_ffn_params)
def moe_ffn_params(check: Check, fn: Callable[[ModelConfig], tuple[int, int]]) -> None:
    check.forbid(*_FFN_LIBRARY, reason="Exercise 1 asks you to count the feed-forward from the config's knobs")
    cases = [preset(name) for name in ("Mixtral-8x7B-v0.1", "Qwen3-30B-A3B", "DeepSeek-V3", "DeepSeek-V2-Lite",
                                       "Llama-3.1-8B")]
    if check.hidden:
        cases += [_random_moe(check) for _ in range(4)] + [preset("Qwen3-0.6B")]
    for cfg in cases:
        what = f"moe_ffn_params({_describe_moe(cfg)})"
        got = check.call(fn, cfg, what=what, hint="cfg.is_moe_layer(i), cfg.num_experts, cfg.experts_per_token, "
                                                  "cfg.expert_width, cfg.num_shared_experts")
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            check.fail(f"{what}: expected a pair (total, used), got {type(got).__name__} {got!r}")
        total, used = (check.whole_number(value, what=f"{what}[{i}]") for i, value in enumerate(got))
        expected_total, expected_used = _library_ffn(cfg)
        terms = _ffn_terms(cfg)
        total_mistakes = _slips(terms, _ffn_slips(cfg, for_used=False), lambda t: _ffn_from_terms(cfg, t)[0])
        check.count(total, expected_total, total_mistakes, what=f"{what}, the total (first value)",
                    hint="per MoE layer: router (num_experts * embed_dim) + shared experts + num_experts experts, each "
                    "3 * embed_dim * expert_width; per dense layer: 3 * embed_dim * hidden_dim")
        # what a token uses, among the mistakes that leave the (correct) total as it is
        both = _slips(terms, _ffn_slips(cfg, for_used=True), lambda t: _ffn_from_terms(cfg, t))
        used_mistakes = {message: pair[1] for message, pair in both.items() if pair[0] == total}
        check.count(used, expected_used, used_mistakes, what=f"{what}, the part one token uses (second value)",
                    hint="per MoE layer a token uses the router, the shared experts and experts_per_token experts; "
                    "dense layers are used whole")


# -- Exercise 2: the memory to serve a model ----------------------------------------------------

_CACHE_DTYPES = ("bf16", "fp8", "fp32", "int4")


def _memory_terms(cfg: ModelConfig, weight_dtype: str, seq_len: int, batch_size: int, cache_dtype: str) -> dict:
    return {"params": analysis.count_params(cfg).total, "bits": analysis.DTYPE_BITS[weight_dtype], "divisor": 8,
            "round_up": True, "cache": True, "cache_dtype": cache_dtype, "batch": batch_size}


def _memory_from_terms(cfg: ModelConfig, seq_len: int, terms: dict) -> int | float:
    bits = terms["params"] * terms["bits"]
    weights = -(-bits // terms["divisor"]) if terms["round_up"] else bits // terms["divisor"]
    cache = analysis.kv_cache_bytes(cfg, seq_len, terms["cache_dtype"], terms["batch"]) if terms["cache"] else 0
    return weights + cache


def _memory_slips(cfg: ModelConfig, weight_dtype: str, batch_size: int, cache_dtype: str) -> dict[str, tuple]:
    bits = analysis.DTYPE_BITS[weight_dtype]
    count = analysis.count_params(cfg)
    slips: dict[str, tuple] = {
        f"you counted bits, not bytes: a {weight_dtype} parameter takes {bits} bits = {bits / 8:g} byte(s); "
        "divide by 8": ("divisor", 1),
        "you left out the KV cache: serving needs the weights AND the cache of every sequence "
        "(kv_cache_bytes(cfg, seq_len, cache_dtype, batch_size))": ("cache", False),
    }
    if weight_dtype == "int4":
        slips["int4 is half a byte per parameter (two 4-bit values share a byte), not a whole byte"] = ("bits", 8)
    if bits != 16:
        slips[f"you stored the weights in 16 bits; weight_dtype = {weight_dtype!r} is {bits} bits a "
              "parameter"] = ("bits", 16)
    if count.active != count.total:
        slips[f"you stored only the active parameters ({count.active:,}); a mixture of experts must keep every "
              f"expert in memory, all {count.total:,} parameters (the active count sets the compute per token, not "
              "the memory)"] = ("params", count.active)
    if count.total * bits % 8:
        slips["an odd number of 4-bit values still needs its last byte: round the weights' bytes UP (-(-n // 8), or "
              "math.ceil)"] = ("round_up", False)
    if batch_size != 1:
        slips[f"you counted the cache of one sequence: each of the batch_size = {batch_size} sequences keeps its own "
              "(pass batch_size to kv_cache_bytes)"] = ("batch", 1)
    if cache_dtype != weight_dtype and analysis.DTYPE_BITS[cache_dtype] != bits:
        slips[f"you stored the cache in the weights' dtype {weight_dtype!r}; it is in cache_dtype = {cache_dtype!r} "
              "(weights and cache are quantised separately)"] = ("cache_dtype", weight_dtype)
    return slips


def _odd_config() -> ModelConfig:
    """A tiny config with an odd number of parameters (so int4 leaves half a byte)."""
    cfg = ModelConfig(vocab_size=51, max_seq_len=32, embed_dim=16, num_layers=2, num_heads=4, num_kv_heads=2,
                      hidden_dim=40, norm="rmsnorm", norm_bias=False, position="rope", ffn="glu", activation="silu",
                      ffn_bias=False, qkv_bias=False, attn_out_bias=False, lm_head_bias=True, tie_embeddings=False,
                      name="a tiny config with an odd parameter count")
    assert analysis.count_params(cfg).total % 2 == 1
    return cfg


@exercise("Exercise 2 — the memory to serve a model", reference=reference_serving_memory)
def serving_memory(check: Check, fn: Callable[..., int]) -> None:
    # only weight_bytes: count_params and kv_cache_bytes (and the helpers they call) are allowed
    check.forbid("olm_edu.analysis.weight_bytes",
                 reason="Exercise 2 asks you to turn the parameter count into bytes yourself")
    odd = _odd_config()
    cases = [("Llama-3.1-8B", "bf16", 8192, 1, "bf16"), ("Mixtral-8x7B-v0.1", "int4", 32768, 4, "fp8"),
             ("DeepSeek-V3", "fp8", 131072, 1, "bf16"), ("gemma-2-9b", "fp8", 8192, 8, "fp8"),
             ("Mistral-7B-v0.1", "int4", 32768, 2, "bf16"), (odd, "int4", 20, 3, "fp32")]
    if check.hidden:
        cases += [("Qwen3-30B-A3B", "int4", 40960, 16, "bf16"), ("Llama-3.1-405B", "fp8", 131072, 1, "fp8"),
                  ("gpt2", "fp32", 1024, 8, "fp32"), (odd, "int4", 1, 1, "int4"), ("DeepSeek-V2-Lite", "bf16",
                  int(check.randint(1, 163841, 1)), int(check.randint(1, 9, 1)), "fp8")]
    for name, weight_dtype, seq_len, batch_size, cache_dtype in cases:
        cfg = preset(name) if isinstance(name, str) else name
        what = (f"serving_memory({cfg.name}, weight_dtype={weight_dtype!r}, seq_len={seq_len}, batch_size={batch_size}, "
                f"cache_dtype={cache_dtype!r})")
        got = check.call(fn, cfg, weight_dtype, seq_len, batch_size, cache_dtype, what=what,
                         hint="count_params(cfg).total, DTYPE_BITS[weight_dtype] and kv_cache_bytes may be used")
        expected = analysis.weight_bytes(cfg, weight_dtype) + analysis.kv_cache_bytes(cfg, seq_len, cache_dtype, batch_size)
        terms = _memory_terms(cfg, weight_dtype, seq_len, batch_size, cache_dtype)
        if isinstance(got, numbers.Real) and not isinstance(got, (bool, numbers.Integral)):
            if abs(got - expected / GB) <= 1e-6 * expected / GB or abs(got - expected / GIB) <= 1e-6 * expected / GIB:
                check.fail(f"{what}: got {got!r}, which looks like GB or GiB: return bytes, an int ({expected:,} here)")
            exact = terms["params"] * terms["bits"] / 8 + analysis.kv_cache_bytes(cfg, seq_len, cache_dtype, batch_size)
            if got == exact and not float(got).is_integer():
                check.fail(f"{what}: got {got!r}: an odd number of 4-bit values leaves half a byte, but memory comes in "
                           "whole bytes: round the weights' bytes up (-(-n // 8), or math.ceil) and return an int")
        mistakes = _slips(terms, _memory_slips(cfg, weight_dtype, batch_size, cache_dtype),
                          lambda t: _memory_from_terms(cfg, seq_len, t))
        check.count(got, expected, mistakes, what=what,
                    hint="bytes of the weights = ceil(total parameters * bits / 8); plus kv_cache_bytes(cfg, seq_len, "
                    "cache_dtype, batch_size)")


# -- Exercise 3: forward FLOPs per token ---------------------------------------------------------

def _flops_terms(cfg: ModelConfig, seq_len: int) -> dict[str, int]:
    keys = sum(min(seq_len, cfg.sliding_window) if cfg.layer_type(index) == "sliding_attention" else seq_len
               for index in range(cfg.num_layers))
    return {"per_multiply_add": 2, "weight_layers": cfg.num_layers, "q_width": cfg.num_heads * cfg.head_size,
            "kv_width": cfg.kv_heads * cfg.head_size, "kv_matrices": 2,
            "ffn_matrices": 2 if cfg.ffn == "classic" else 3,
            "ffn_width": cfg.hidden_dim, "head": cfg.vocab_size * cfg.embed_dim, "lookup": 0, "score_factor": 4,
            "score_width": cfg.num_heads * cfg.head_size, "keys": keys}


def _flops_from_terms(cfg: ModelConfig, terms: dict[str, int]) -> int:
    d = cfg.embed_dim
    layer = (2 * d * terms["q_width"] + terms["kv_matrices"] * d * terms["kv_width"]
             + terms["ffn_matrices"] * d * terms["ffn_width"])
    weights = terms["weight_layers"] * layer + terms["head"] + terms["lookup"]
    return terms["per_multiply_add"] * weights + terms["score_factor"] * terms["score_width"] * terms["keys"]


def _flops_slips(cfg: ModelConfig, seq_len: int) -> dict[str, tuple[str, int]]:
    d, heads, kv_heads, head_size = cfg.embed_dim, cfg.num_heads, cfg.kv_heads, cfg.head_size
    q_width, layers, vocab = heads * head_size, cfg.num_layers, cfg.vocab_size
    kinds = [cfg.layer_type(index) for index in range(layers)]
    window = cfg.sliding_window
    slips: dict[str, tuple[str, int]] = {
        "a multiply-add is 2 FLOPs: each weight a token meets costs 2 FLOPs (2 * the matmul weights)":
            ("per_multiply_add", 1),
        "you left out attention's context term: each layer's query meets every cached key (q . k) and sums as many "
        "values, 4 * keys * num_heads * head_size FLOPs": ("score_factor", 0),
        "the context term has two matmuls, the scores q . k^T AND the weighted sum of the values, each 2 FLOPs a "
        "multiply-add: 4 * keys * num_heads * head_size, not 2 *": ("score_factor", 2),
        f"the context term is paid in every one of the {layers} layers: sum the keys seen over the layers":
            ("keys", seq_len if "full_attention" in kinds else min(seq_len, window or seq_len)),
        f"the projections and the feed-forward are in every one of the {layers} layers: multiply a layer's weights "
        "by num_layers": ("weight_layers", 1),
        "you counted only one of k_proj and v_proj: a layer has both, 2 * embed_dim * num_kv_heads * head_size "
        "weights": ("kv_matrices", 1),
        "the embedding lookup is not a matmul (it copies a row, no arithmetic): count the vocab_size x embed_dim "
        "matrix once, for the head": ("lookup", vocab * d),
    }
    if cfg.tie_embeddings:
        slips["you left out the head because it is tied to the embedding: tying shares the WEIGHTS, not the work; "
              f"the logits still cost 2 * vocab_size * embed_dim = {2 * vocab * d:,} FLOPs a token"] = ("head", 0)
    else:
        slips["you left out the head: the logits cost 2 * vocab_size * embed_dim FLOPs a token"] = ("head", 0)
    if kv_heads != heads:
        slips[f"you computed the scores for the {kv_heads} KV heads only: every one of the {heads} query heads scores "
              "the keys (GQA shares the keys and values, not the work): score width num_heads * head_size = "
              f"{q_width}"] = ("score_width", kv_heads * head_size)
        slips[f"you sized k_proj and v_proj with num_heads = {heads}; with GQA they map embed_dim to num_kv_heads * "
              f"head_size = {kv_heads * head_size}"] = ("kv_width", q_width)
    if q_width != d:
        slips[f"q_proj and o_proj map embed_dim to num_heads * head_size = {q_width} here, not embed_dim = {d} "
              "(cfg.head_size is set on its own)"] = ("q_width", d)
        slips[f"the scores are num_heads * head_size = {q_width} wide here, not embed_dim = {d}"] = ("score_width", d)
    if window is not None and window < seq_len:
        if "sliding_attention" in kinds:
            slips[f"you ignored the sliding windows: on a sliding layer a query meets only min(seq_len, "
                  f"sliding_window) = {window} keys (cfg.layer_type(i) says which layers slide)"] = ("keys", layers * seq_len)
        if "full_attention" in kinds:
            slips[f"you capped every layer at the window: only the sliding layers keep {window} keys; the "
                  f"full-attention layers meet all seq_len = {seq_len}"] = ("keys", layers * window)
    matrices = 2 if cfg.ffn == "classic" else 3
    slips[f"a {cfg.ffn!r} feed-forward has {matrices} matrices ("
          + ("up and down" if matrices == 2 else "gate, up and down") + f"), not {5 - matrices}"] = ("ffn_matrices", 5 - matrices)
    if cfg.hidden_dim != 4 * d:
        slips[f"the feed-forward is hidden_dim = {cfg.hidden_dim} wide, not 4 * embed_dim = {4 * d}"] = ("ffn_width", 4 * d)
    return slips


def _describe_dense(cfg: ModelConfig) -> str:
    sliding = sum(cfg.layer_type(index) == "sliding_attention" for index in range(cfg.num_layers))
    window = f", sliding_window={cfg.sliding_window} on {sliding} layers" if cfg.sliding_window else ""
    return (f"{cfg.name} [num_layers={cfg.num_layers}, embed_dim={cfg.embed_dim}, num_heads={cfg.num_heads}, "
            f"kv_heads={cfg.kv_heads}, head_size={cfg.head_size}, ffn={cfg.ffn!r}, hidden_dim={cfg.hidden_dim}, "
            f"vocab_size={cfg.vocab_size}, tie_embeddings={cfg.tie_embeddings}{window}]")


def _random_dense(check: Check) -> ModelConfig:
    layers = int(check.randint(2, 7, 1))
    heads = _pick(check, [2, 4, 8])
    windowed = bool(check.randint(0, 2, 1))
    return ModelConfig(
        name="a random dense config", vocab_size=int(check.randint(50, 500, 1)), max_seq_len=256,
        embed_dim=_pick(check, [32, 48, 64]), num_layers=layers, num_heads=heads,
        num_kv_heads=_pick(check, [k for k in (1, 2, heads) if heads % k == 0]), head_dim=_pick(check, [None, 8, 24]),
        hidden_dim=_pick(check, [40, 96, 128]), norm="rmsnorm", norm_bias=False, position="rope",
        ffn=_pick(check, ["classic", "glu"]), activation="silu", tie_embeddings=bool(check.randint(0, 2, 1)),
        sliding_window=int(check.randint(4, 40, 1)) if windowed else None,
        layer_types=tuple(_pick(check, ["full_attention", "sliding_attention"]) for _ in range(layers)) if windowed else None,
    )  # fmt: skip


_FLOPS_LIBRARY = tuple(f"olm_edu.analysis.{name}" for name in ("flops_per_token", "count_params", "_attention_params",
                                                                "_ffn_params", "_dense_ffn_params", "_tokens_seen"))


@exercise("Exercise 3 — forward FLOPs per token", reference=reference_forward_flops)
def forward_flops(check: Check, fn: Callable[[ModelConfig, int], int]) -> None:
    check.forbid(*_FLOPS_LIBRARY, reason="Exercise 3 asks you to add up the FLOPs yourself")
    windowed = ModelConfig(vocab_size=97, max_seq_len=64, embed_dim=32, num_layers=4, num_heads=4, num_kv_heads=2,
                           head_dim=12, hidden_dim=48, norm="rmsnorm", norm_bias=False, position="rope",
                           sliding_window=6, layer_types=("sliding_attention", "full_attention") * 2,
                           name="a tiny windowed config")
    cases = [("gpt2", 1024), ("Llama-3.1-8B", 8192), ("Mistral-7B-v0.1", 32768), ("gemma-2-9b", 8192),
             ("gemma-2-9b", 2048), ("Qwen3-0.6B", 4096), (windowed, 40), (windowed, 3)]
    if check.hidden:
        cases += [("Llama-3.1-405B", 131072), ("gpt2-xl", 1), ("Llama-3.2-1B", 1), ("Qwen2.5-7B", 32768),
                  ("Mistral-7B-v0.1", 4097)] + [(_random_dense(check), int(check.randint(1, 257, 1))) for _ in range(4)]
    for name, seq_len in cases:
        cfg = preset(name) if isinstance(name, str) else name
        what = f"forward_flops({_describe_dense(cfg)}, seq_len={seq_len})"
        got = check.call(fn, cfg, seq_len, what=what, hint="cfg.layer_type(i), cfg.sliding_window, cfg.kv_heads and "
                                                           "cfg.head_size give the numbers")
        expected = analysis.flops_per_token(cfg, seq_len)["forward"]
        mistakes = _slips(_flops_terms(cfg, seq_len), _flops_slips(cfg, seq_len), lambda t: _flops_from_terms(cfg, t))
        check.count(got, expected, mistakes, what=what,
                    hint="2 * (num_layers * (q, k, v, o and feed-forward weights) + vocab_size * embed_dim) + 4 * num_heads * "
                    "head_size * (keys seen, summed over layers)")
