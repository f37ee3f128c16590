"""Wrong answers for lesson 15 (sliding windows, Mistral and Gemma 2)."""

_MASK = "def sliding_window_mask(query_positions, key_positions, window):\n"

_ROLLING_START = (
    "def rolling_update(cache, k_new, v_new, new_positions):\n"
    "    keys, values, positions = k_new, v_new, new_positions\n"
    "    if cache.keys is not None:\n"
    "        keys = torch.cat([cache.keys, k_new], dim=2)\n"
    "        values = torch.cat([cache.values, v_new], dim=2)\n"
    "        positions = torch.cat([cache.positions, new_positions])\n"
)

_NORM = (
    "def gemma_rms_norm(x, weight, eps=1e-6):\n"
    "    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * (1.0 + weight)\n\n"
)


def _layer(body: str) -> str:
    return (_NORM + "def gemma2_layer(x, attention, mlp, norm_weights, eps=1e-6):\n"
            "    n = lambda t, name: gemma_rms_norm(t, norm_weights[name], eps)\n" + body)


def _kv(tokens_line: str, width: str = "cfg.kv_heads * cfg.head_size", factor: str = "2") -> str:
    return (
        "def windowed_kv_cache_bytes(cfg, seq_len, bytes_per_number=2):\n"
        "    tokens_kept = 0\n"
        "    for layer in range(cfg.num_layers):\n"
        "        sliding = cfg.layer_type(layer) == 'sliding_attention'\n"
        f"        {tokens_line}\n"
        f"    return {factor} * {width} * tokens_kept * bytes_per_number\n"
    )


WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "15_sliding_windows.ipynb": {
        "sliding_window_mask": [
            (
                _MASK + "    offset = query_positions[:, None] - key_positions[None, :]\n"
                "    return (offset >= 0) & (offset <= window)\n",
                "your window is one too wide",
            ),
            (
                _MASK + "    offset = query_positions[:, None] - key_positions[None, :]\n"
                "    return offset.abs() < window\n",
                "your window has no causal part",
            ),
            (
                _MASK + "    rows = torch.arange(len(query_positions))[:, None]\n"
                "    columns = torch.arange(len(key_positions))[None, :]\n"
                "    return (rows - columns >= 0) & (rows - columns < window)\n",
                "instead of the positions passed in",
            ),
            (
                _MASK + "    offset = query_positions[:, None] - key_positions[None, :]\n"
                "    allowed = (offset >= 0) & (offset < window)\n"
                "    return torch.zeros(allowed.shape).masked_fill(~allowed, float('-inf'))\n",
                "you returned an additive mask",
            ),
        ],
        "rolling_update": [
            (
                _ROLLING_START
                + "    cache.keys, cache.values = keys[:, :, :cache.window], values[:, :, :cache.window]\n"
                "    cache.positions = positions[:cache.window]\n"
                "    return keys, values, positions\n",
                "you evicted the newest instead of the oldest",
            ),
            (
                _ROLLING_START
                + "    keep = slice(-cache.window, None)\n"
                "    cache.keys, cache.values, cache.positions = keys[:, :, keep], values[:, :, keep], positions[keep]\n"
                "    return cache.keys, cache.values, cache.positions\n",
                "you returned only what the cache keeps",
            ),
            (
                _ROLLING_START
                + "    keep = slice(-cache.window, None)\n"
                "    cache.keys, cache.values = keys[:, :, keep], values[:, :, keep]\n"
                "    cache.positions = torch.arange(cache.keys.shape[2])\n"
                "    return keys, values, positions\n",
                "your positions restart at 0",
            ),
            (
                _ROLLING_START
                + "    keep = slice(-(cache.window + 1), None)\n"
                "    cache.keys, cache.values, cache.positions = keys[:, :, keep], values[:, :, keep], positions[keep]\n"
                "    return keys, values, positions\n",
                "one more than the window",
            ),
        ],
        "gemma2_layer": [
            (  # the residuals added into the caller's x
                _layer("    x += n(attention(n(x, 'pre_attention')), 'post_attention')\n"
                       "    x += n(mlp(n(x, 'pre_feedforward')), 'post_feedforward')\n"
                       "    return x\n"),
                "changed x in place",
            ),
            (  # the norm computed into its input
                "def gemma_rms_norm(x, weight, eps=1e-6):\n"
                "    return x.mul_(torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)).mul_(1.0 + weight)\n\n"
                "def gemma2_layer(x, attention, mlp, norm_weights, eps=1e-6):\n"
                "    n = lambda t, name: gemma_rms_norm(t, norm_weights[name], eps)\n"
                "    h = x + n(attention(n(x, 'pre_attention')), 'post_attention')\n"
                "    return h + n(mlp(n(h, 'pre_feedforward')), 'post_feedforward')\n",
                "changed x or weight in place",
            ),
            (
                "def gemma_rms_norm(x, weight, eps=1e-6):\n"
                "    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight\n\n"
                "def gemma2_layer(x, attention, mlp, norm_weights, eps=1e-6):\n"
                "    n = lambda t, name: gemma_rms_norm(t, norm_weights[name], eps)\n"
                "    h = x + n(attention(n(x, 'pre_attention')), 'post_attention')\n"
                "    return h + n(mlp(n(h, 'pre_feedforward')), 'post_feedforward')\n",
                "you multiplied by weight (w * x)",
            ),
            (
                _layer("    h = n(x + attention(x), 'post_attention')\n"
                       "    return n(h + mlp(h), 'post_feedforward')\n"),
                "you applied post-norm in place of the sandwich",
            ),
            (
                _layer("    h = n(x + attention(n(x, 'pre_attention')), 'post_attention')\n"
                       "    return n(h + mlp(n(h, 'pre_feedforward')), 'post_feedforward')\n"),
                "normalises the residual stream",
            ),
            (
                _layer("    h = x + attention(n(x, 'pre_attention'))\n"
                       "    return h + mlp(n(h, 'pre_feedforward'))\n"),
                "you left out the post-norms",
            ),
        ],
        "windowed_kv_cache_bytes": [
            (
                _kv("tokens_kept += min(seq_len, cfg.sliding_window) if cfg.sliding_window else seq_len"),
                "you treated every layer as sliding",
            ),
            (
                _kv("tokens_kept += cfg.sliding_window if sliding else seq_len"),
                "never holds more tokens than it has seen",
            ),
            (
                _kv("tokens_kept += min(seq_len, cfg.sliding_window) if sliding else seq_len",
                    width="cfg.num_heads * cfg.head_size"),
                "you used num_heads",
            ),
            (
                _kv("tokens_kept += min(seq_len, cfg.sliding_window) if sliding else seq_len", factor="1"),
                "a factor 2",
            ),
        ],
    },
}

# Correct answers written differently from the solution: each check must accept them.
CORRECT_ANSWERS: dict[str, dict[str, list[str]]] = {
    "15_sliding_windows.ipynb": {
        "gemma2_layer": [  # division by a square root, the residual stream kept in one name
            "def gemma_rms_norm(x, weight, eps=1e-6):\n"
            "    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * (weight + 1)\n\n"
            "def gemma2_layer(x, attention, mlp, norm_weights, eps=1e-6):\n"
            "    def sandwich(h, sublayer, before, after):\n"
            "        return h + gemma_rms_norm(sublayer(gemma_rms_norm(h, norm_weights[before], eps)),\n"
            "                                  norm_weights[after], eps)\n"
            "    h = sandwich(x, attention, 'pre_attention', 'post_attention')\n"
            "    return sandwich(h, mlp, 'pre_feedforward', 'post_feedforward')\n",
        ],
    },
}
