"""Wrong answers for lesson 24 — DeepSeek-V4: compressed attention, hyper-connections, a million tokens."""

_COMPRESS_HEAD = (
    "def compress(kv, gate, position_bias, rate):\n"
    "    batch, length, width = kv.shape\n"
    "    blocks = length // rate\n"
    "    kv_blocks = kv[:, : blocks * rate].reshape(batch, blocks, rate, width)\n"
    "    gate_blocks = gate[:, : blocks * rate].reshape(batch, blocks, rate, width)\n"
)
_SELECTION_HEAD = "def csa_selection(scores, positions, rate, k):\n    entries = scores.shape[-1]\n"
_SELECTION_TAIL = (
    "    masked = scores.masked_fill(~readable, float('-inf'))\n"
    "    chosen = masked.topk(min(k, entries), dim=-1).indices\n"
    "    return torch.zeros_like(scores, dtype=torch.bool).scatter(-1, chosen, True) & readable\n"
)
_SINKHORN_HEAD = "def sinkhorn_knopp(matrix, iterations, eps=1e-6):\n"
_CACHE_HEAD = (
    "def v4_cache_bytes(cfg, seq_len, bytes_per_number=2):\n"
    "    numbers = 0\n"
    "    for layer in range(cfg.num_layers):\n"
    "        kind = cfg.layer_type(layer)\n"
)
_CACHE_WINDOW = "        numbers += min(seq_len, cfg.sliding_window) * cfg.head_dim\n"
_CACHE_HCA = (
    "        elif kind == 'heavily_compressed_attention':\n"
    "            numbers += seq_len // cfg.hca_compress_rate * cfg.head_dim\n"
)
_CACHE_TAIL = "    return numbers * bytes_per_number\n"

WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "24_deepseek_v4.ipynb": {
        "compress": [
            (
                _COMPRESS_HEAD + "    weights = torch.softmax(gate_blocks + position_bias, dim=-1)\n"
                "    return (weights * kv_blocks).sum(dim=2)\n",
                "your softmax runs over the channels",
            ),
            (
                _COMPRESS_HEAD + "    weights = torch.softmax(gate_blocks, dim=2)\n    return (weights * kv_blocks).sum(dim=2)\n",
                "you left out the position bias",
            ),
            (_COMPRESS_HEAD + "    return kv_blocks.mean(dim=2)\n", "plain averages"),
            (
                _COMPRESS_HEAD + "    weights = torch.softmax(gate_blocks + position_bias, dim=2)\n"
                "    return (weights * kv_blocks).mean(dim=2)\n",
                "you divided by m after the softmax",
            ),
            (  # an entry for the unfinished block: ceil instead of floor
                "def compress(kv, gate, position_bias, rate):\n"
                "    batch, length, width = kv.shape\n"
                "    blocks = -(-length // rate)\n"
                "    pad = blocks * rate - length\n"
                "    kv = torch.nn.functional.pad(kv, (0, 0, 0, pad))\n"
                "    gate = torch.nn.functional.pad(gate, (0, 0, 0, pad))\n"
                "    weights = torch.softmax(gate.reshape(batch, blocks, rate, width) + position_bias, dim=2)\n"
                "    return (weights * kv.reshape(batch, blocks, rate, width)).sum(dim=2)\n",
                "you made an entry for the unfinished last block",
            ),
        ],
        "csa_selection": [
            (
                _SELECTION_HEAD + "    chosen = scores.topk(min(k, entries), dim=-1).indices\n"
                "    return torch.zeros_like(scores, dtype=torch.bool).scatter(-1, chosen, True)\n",
                "you selected entries whose block is not complete yet",
            ),
            (
                _SELECTION_HEAD + "    readable = torch.arange(entries)[None, :] < (positions // rate)[:, None]\n" + _SELECTION_TAIL,
                "you used w < t // m",
            ),
            (
                _SELECTION_HEAD + "    readable = torch.arange(entries)[None, :] <= (positions // rate)[:, None]\n"
                + _SELECTION_TAIL,
                "including the one holding the query",
            ),
            (
                _SELECTION_HEAD + "    readable = torch.arange(entries)[None, :] < ((positions + 1) // rate)[:, None]\n"
                "    return readable.expand(scores.shape).clone()\n",
                "CSA keeps only the k with the highest scores",
            ),
            (
                _SELECTION_HEAD + "    readable = torch.arange(entries)[None, :] < ((positions + 1) // rate)[:, None]\n"
                "    masked = scores.masked_fill(~readable, float('inf'))\n"
                "    chosen = masked.topk(min(k, entries), dim=-1, largest=False).indices\n"
                "    return torch.zeros_like(scores, dtype=torch.bool).scatter(-1, chosen, True) & readable\n",
                "you selected the k LOWEST scores",
            ),
        ],
        "sinkhorn_knopp": [
            (
                _SINKHORN_HEAD + "    for _ in range(iterations):\n"
                "        matrix = matrix / (matrix.sum(dim=-1, keepdim=True) + eps)\n"
                "        matrix = matrix / (matrix.sum(dim=-2, keepdim=True) + eps)\n    return matrix\n",
                "you normalised the rows first",
            ),
            (
                _SINKHORN_HEAD + "    for _ in range(iterations):\n"
                "        matrix = matrix / (matrix.sum(dim=-2, keepdim=True) + eps)\n"
                "        matrix = matrix / (matrix.sum(dim=-1, keepdim=True) + eps)\n    return matrix\n",
                "DeepSeek-V4 ends with the columns",
            ),
            (
                _SINKHORN_HEAD + "    matrix = matrix / (matrix.sum(dim=-2, keepdim=True) + eps)\n"
                "    matrix = matrix / (matrix.sum(dim=-1) + eps)\n"
                "    return matrix / (matrix.sum(dim=-2, keepdim=True) + eps)\n",
                "without keepdim=True",
            ),
            (
                _SINKHORN_HEAD + "    return torch.softmax(matrix, dim=-1)\n",
                "you took a softmax",
            ),
        ],
        "v4_cache_bytes": [
            (
                _CACHE_HEAD + _CACHE_WINDOW + "        if kind == 'compressed_sparse_attention':\n"
                "            numbers += seq_len // cfg.csa_compress_rate * cfg.head_dim\n" + _CACHE_HCA + _CACHE_TAIL,
                "you left out the indexer's keys",
            ),
            (
                _CACHE_HEAD + "        if kind == 'sliding_attention':\n" + _CACHE_WINDOW.replace("        ", "            ")
                + "        elif kind == 'compressed_sparse_attention':\n"
                "            numbers += seq_len // cfg.csa_compress_rate * (cfg.head_dim + cfg.index_head_dim)\n"
                + _CACHE_HCA + _CACHE_TAIL,
                "you left out the sliding window on the compressed layers",
            ),
            (
                _CACHE_HEAD + "        numbers += 2 * min(seq_len, cfg.sliding_window) * cfg.head_dim\n"
                "        if kind == 'compressed_sparse_attention':\n"
                "            numbers += seq_len // cfg.csa_compress_rate * (2 * cfg.head_dim + cfg.index_head_dim)\n"
                "        elif kind == 'heavily_compressed_attention':\n"
                "            numbers += seq_len // cfg.hca_compress_rate * 2 * cfg.head_dim\n" + _CACHE_TAIL,
                "you counted keys and values separately",
            ),
            (
                _CACHE_HEAD + _CACHE_WINDOW + "        if kind == 'compressed_sparse_attention':\n"
                "            numbers += -(-seq_len // cfg.csa_compress_rate) * (cfg.head_dim + cfg.index_head_dim)\n"
                "        elif kind == 'heavily_compressed_attention':\n"
                "            numbers += -(-seq_len // cfg.hca_compress_rate) * cfg.head_dim\n" + _CACHE_TAIL,
                "you rounded the number of entries up",
            ),
        ],
    },
}

CORRECT_ANSWERS: dict[str, dict[str, list[str]]] = {
    "24_deepseek_v4.ipynb": {
        "compress": [  # a log-sum-exp softmax written out, einsum
            "def compress(kv, gate, position_bias, rate):\n"
            "    b, t, d = kv.shape\n"
            "    blocks = t // rate\n"
            "    c = kv[:, : blocks * rate].view(b, blocks, rate, d)\n"
            "    z = gate[:, : blocks * rate].view(b, blocks, rate, d) + position_bias[None, None]\n"
            "    w = torch.exp(z - torch.logsumexp(z, dim=2, keepdim=True))\n"
            "    return torch.einsum('bwmd,bwmd->bwd', w, c)\n",
        ],
        "csa_selection": [  # rank every entry by sorting; readable by comparing block ends with positions
            "def csa_selection(scores, positions, rate, k):\n"
            "    ends = (torch.arange(scores.shape[-1]) + 1) * rate - 1\n"
            "    readable = ends[None, :] <= positions[:, None]\n"
            "    keyed = torch.where(readable, scores, torch.full_like(scores, -float('inf')))\n"
            "    order = keyed.argsort(dim=-1, descending=True)\n"
            "    ranks = order.argsort(dim=-1)\n"
            "    return (ranks < k) & readable\n",
        ],
        "sinkhorn_knopp": [  # reciprocals and in-loop order written differently, eps left out
            "def sinkhorn_knopp(matrix, iterations, eps=1e-6):\n"
            "    out = matrix.clone()\n"
            "    for step in range(2 * iterations - 1):\n"
            "        dim = -2 if step % 2 == 0 else -1\n"
            "        out = out * torch.reciprocal(out.sum(dim=dim, keepdim=True))\n"
            "    return out\n",
        ],
        "v4_cache_bytes": [  # count by layer type, then multiply
            "def v4_cache_bytes(cfg, seq_len, bytes_per_number=2):\n"
            "    kinds = [cfg.layer_type(i) for i in range(cfg.num_layers)]\n"
            "    window = min(seq_len, cfg.sliding_window) * cfg.head_dim * len(kinds)\n"
            "    csa = kinds.count('compressed_sparse_attention') * (seq_len // cfg.csa_compress_rate)\n"
            "    hca = kinds.count('heavily_compressed_attention') * (seq_len // cfg.hca_compress_rate)\n"
            "    return int((window + csa * (cfg.head_dim + cfg.index_head_dim) + hca * cfg.head_dim) * bytes_per_number)\n",
        ],
    },
}
