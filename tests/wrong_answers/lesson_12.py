"""Wrong answers for lesson 12 (GQA and MQA)."""


def _attention(prepare: str, scores: str = "q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])",
               masked: bool = True) -> str:
    """grouped_query_attention with `prepare` (lines that make k, v have H heads) and the given scores."""
    mask = ("    causal = torch.ones(q.shape[2], q.shape[2], dtype=torch.bool).tril()\n"
            "    scores = scores.masked_fill(~causal, float('-inf'))\n") if masked else ""
    return ("def grouped_query_attention(q, k, v):\n"
            "    groups = q.shape[1] // k.shape[1]\n"
            f"{prepare}"
            f"    scores = {scores}\n"
            f"{mask}"
            "    return torch.softmax(scores, dim=-1) @ v\n")


_REPEAT = "    k, v = repeat_kv(k, groups), repeat_kv(v, groups)\n"


def _cache(body: str) -> str:
    return f"def kv_cache_size(cfg, seq_len, bytes_per_number=2, batch_size=1):\n    return {body}\n"


WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "12_gqa.ipynb": {
        "repeat_kv": [
            ("def repeat_kv(x, groups):\n    return x.repeat(1, groups, 1, 1)\n", "you tiled the heads"),
            ("def repeat_kv(x, groups):\n    return torch.cat([x] * groups, dim=1)\n", "you tiled the heads"),
            ("def repeat_kv(x, groups):\n    return torch.cat([x] * groups, dim=2)\n", "along dim 2 (the time axis)"),
            ("def repeat_kv(x, groups):\n    b, h, t, d = x.shape\n"
             "    return x[:, :, :, None].expand(b, h, t, groups, d).reshape(b, h * groups, t, d)\n",
             "after the time axis"),
            ("def repeat_kv(x, groups):\n    b, h, t, d = x.shape\n"
             "    return x[:, :, None].expand(b, h, groups, t, d)\n",
             "did not merge it with the heads"),
            ("def repeat_kv(x, groups):\n    return x.repeat_interleave(groups, dim=1)\n",
             "torch.Tensor.repeat_interleave, which is not allowed"),
            ("def repeat_kv(x, groups):\n    b, h, t, d = x.shape\n"  # view: refuses a transposed input
             "    heads = x.view(b, h, 1, t * d)  # each head as one row\n"
             "    return heads.expand(b, h, groups, t * d).reshape(b, h * groups, t, d)\n",
             ".view() refuses it"),
        ],
        "grouped_query_attention": [
            (_attention("    k, v = k.repeat(1, groups, 1, 1), v.repeat(1, groups, 1, 1)\n"),
             "(the heads were tiled"),
            ("def grouped_query_attention(q, k, v):\n"
             "    b, h, t, d = q.shape\n"
             "    grouped = q.view(b, h // k.shape[1], k.shape[1], t, d)  # (B, g, H_kv, T, d): the wrong split\n"
             "    scores = grouped @ k[:, None].transpose(-2, -1) / math.sqrt(d)\n"
             "    causal = torch.ones(t, t, dtype=torch.bool).tril()\n"
             "    weights = torch.softmax(scores.masked_fill(~causal, float('-inf')), dim=-1)\n"
             "    return (weights @ v[:, None]).reshape(b, h, t, d)\n",
             "not (B, groups, H_kv, T, d)"),
            (_attention(_REPEAT, scores="q @ k.transpose(-2, -1)"), "not divided by sqrt(d)"),
            (_attention(_REPEAT, masked=False), "there is no causal mask"),
            ("def grouped_query_attention(q, k, v):\n"
             "    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)\n",
             "scaled_dot_product_attention, which is not allowed"),
        ],
        "kv_cache_size": [
            (_cache("cfg.num_layers * cfg.kv_heads * cfg.head_size * seq_len * batch_size * bytes_per_number"),
             "you forgot the factor 2"),
            (_cache("2 * cfg.kv_heads * cfg.head_size * seq_len * batch_size * bytes_per_number"),
             "you left out num_layers"),
            (_cache("2 * cfg.num_layers * cfg.num_heads * cfg.head_size * seq_len * batch_size * bytes_per_number"),
             "only the 8 KV heads are cached"),
            (_cache("2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_size * seq_len * batch_size * bytes_per_number"),
             "cfg.num_kv_heads is None"),
            (_cache("2 * cfg.num_layers * cfg.kv_heads * cfg.head_size * seq_len * bytes_per_number"),
             "you left out batch_size"),
            (_cache("2 * cfg.num_layers * cfg.kv_heads * cfg.head_size * seq_len * batch_size * bytes_per_number * 8"),
             "you counted bits, not bytes"),
            (_cache("cfg.num_layers * cfg.num_heads * cfg.head_size * seq_len * batch_size * bytes_per_number"),
             "you forgot the factor 2: every layer caches a key AND a value vector per KV head and token; and you "
             "used num_heads * head_size"),
            ("from olm_edu.analysis import kv_cache_bytes\n\n\n" + _cache("kv_cache_bytes(cfg, seq_len, 'bf16', batch_size)"),
             "calls olm_edu.analysis.kv_cache_bytes, which is not allowed here: Exercise 3 asks you to write"),
        ],
    },
}

# Correct answers written differently from the solution: each check must accept them.
CORRECT_ANSWERS: dict[str, dict[str, list[str]]] = {
    "12_gqa.ipynb": {
        "repeat_kv": [
            "def repeat_kv(x, groups):\n    return x[:, torch.arange(x.shape[1] * groups) // groups]\n",
            "def repeat_kv(x, groups):\n    b, h, t, d = x.shape\n"
            "    return x.unsqueeze(2).repeat(1, 1, groups, 1, 1).flatten(1, 2)\n",
        ],
    },
}
