"""Lesson 21: plausible wrong answers, and correct answers written differently."""

_BLOCK = "def post_sublayer_block(x, attention, mlp, attn_norm, mlp_norm):\n"
_FREQ = "def rope_frequencies(config, layer):\n"
_FREQ_KIND = (
    "    if config.get('layer_types'):\n"
    "        is_global = config['layer_types'][layer] == 'full_attention'\n"
    "    else:\n"
    "        is_global = (layer + 1) % config['sliding_window_pattern'] == 0\n"
    "    d = config['head_dim']\n"
    "    factor = config['rope_scaling']['factor'] if config['rope_scaling'] else 1.0\n"
    "    e = torch.arange(0, d, 2) / d\n"
)
_LAYERS = "def rope_layers(config):\n    n = config['num_hidden_layers']\n    interval = config.get('no_rope_layer_interval', 4)\n"
_MASK = "def chunked_mask(query_positions, key_positions, chunk):\n    q, k = query_positions[:, None], key_positions[None, :]\n"

WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "21_norms_positions.ipynb": {
        "post_sublayer_block": [
            (_BLOCK + "    h = x + attention(attn_norm(x))\n    return h + mlp(mlp_norm(h))\n",
             "you normalised the sub-layers' inputs (pre-norm"),
            (_BLOCK + "    h = attn_norm(x + attention(x))\n    return mlp_norm(h + mlp(h))\n",
             "you normalised after the residual add"),
            (_BLOCK + "    return x + attn_norm(attention(x)) + mlp_norm(mlp(x))\n", "your MLP reads x"),
            (_BLOCK + "    h = x + mlp_norm(attention(x))\n    return h + attn_norm(mlp(h))\n", "you swapped the two norms"),
            (_BLOCK + "    x += attn_norm(attention(x))\n    return x + mlp_norm(mlp(x))\n", "changed x in place"),
        ],
        "rope_frequencies": [
            (_FREQ + _FREQ_KIND + "    return 1 / config['rope_theta'] ** e / factor if is_global "
             "else 1 / config['rope_local_base_freq'] ** e / factor\n",
             "the rope_scaling belongs to the global layers only"),
            (_FREQ + _FREQ_KIND + "    return 1 / config['rope_theta'] ** e if is_global else 1 / config['rope_local_base_freq'] ** e\n",
             "you left out the global layers' rope_scaling"),
            (_FREQ + _FREQ_KIND + "    return 1 / config['rope_local_base_freq'] ** e if is_global else 1 / config['rope_theta'] ** e / factor\n",
             "it rotates with rope_local_base_freq (10,000), not rope_theta"),
            (_FREQ + _FREQ_KIND.replace("(layer + 1) % config['sliding_window_pattern'] == 0",
                                        "layer % config['sliding_window_pattern'] == 0")
             + "    return 1 / config['rope_theta'] ** e / factor if is_global else 1 / config['rope_local_base_freq'] ** e\n",
             "the pattern counts layers from 1"),
            (_FREQ + _FREQ_KIND.replace("torch.arange(0, d, 2) / d", "torch.arange(d // 2) / d")
             + "    return 1 / config['rope_theta'] ** e / factor if is_global else 1 / config['rope_local_base_freq'] ** e\n",
             "not j / head_dim"),
        ],
        "rope_layers": [
            (_LAYERS + "    if config.get('no_rope_layers'):\n        return [f == 0 for f in config['no_rope_layers'][:n]]\n"
             "    return [(i + 1) % interval == 0 for i in range(n)]\n", "your flags are inverted"),
            (_LAYERS + "    if config.get('no_rope_layers'):\n        return [f == 1 for f in config['no_rope_layers'][:n]]\n"
             "    return [i % interval != 0 for i in range(n)]\n", "counts layers from 1"),
            (_LAYERS + "    if config.get('no_rope_layers'):\n        return [f == 1 for f in config['no_rope_layers'][:n]]\n"
             "    return [(i + 1) % 4 != 0 for i in range(n)]\n", "you ignored no_rope_layer_interval"),
            (_LAYERS + "    return [(i + 1) % interval != 0 for i in range(n)]\n", "you ignored the no_rope_layers list"),
        ],
        "chunked_mask": [
            (_MASK + "    return (k <= q) & (q - k < chunk)\n", "sliding window"),
            (_MASK + "    return q // chunk == k // chunk\n", "no causal part"),
            (_MASK + "    rows = torch.arange(len(query_positions))[:, None]\n"
             "    cols = torch.arange(len(key_positions))[None, :]\n"
             "    return (cols <= rows) & (rows // chunk == cols // chunk)\n", "row and column indices"),
            (_MASK + "    return ((k <= q) & (q // chunk == k // chunk)).int()\n", "expected a boolean tensor"),
        ],
    },
}

CORRECT_ANSWERS: dict[str, dict[str, list[str]]] = {
    "21_norms_positions.ipynb": {
        "post_sublayer_block": [
            _BLOCK + "    x = x + attn_norm(attention(x))\n    x = x + mlp_norm(mlp(x))\n    return x\n",
        ],
        "rope_frequencies": [
            _FREQ + "    import math\n"
            "    kinds = config.get('layer_types') or ['full_attention' if (i + 1) % config['sliding_window_pattern'] == 0\n"
            "                                          else 'sliding_attention' for i in range(config['num_hidden_layers'])]\n"
            "    d = config['head_dim']\n"
            "    if kinds[layer] == 'full_attention':\n"
            "        base, factor = config['rope_theta'], (config['rope_scaling'] or {}).get('factor', 1.0)\n"
            "    else:\n"
            "        base, factor = config['rope_local_base_freq'], 1.0\n"
            "    j = torch.arange(d // 2, dtype=torch.float64)\n"
            "    return torch.exp(-2 * j / d * math.log(base)) / factor\n",
        ],
        "rope_layers": [
            "def rope_layers(config):\n"
            "    flags = config.get('no_rope_layers') or []\n"
            "    if len(flags) > 0:\n"
            "        return [bool(flags[i]) for i in range(config['num_hidden_layers'])]\n"
            "    every = config.get('no_rope_layer_interval', 4)\n"
            "    return [i % every != every - 1 for i in range(config['num_hidden_layers'])]\n",
        ],
        "chunked_mask": [
            "def chunked_mask(query_positions, key_positions, chunk):\n"
            "    start = query_positions - query_positions % chunk  # where each query's chunk begins\n"
            "    k = key_positions[None, :]\n"
            "    return (k <= query_positions[:, None]) & (k >= start[:, None])\n",
        ],
    },
}
