"""Wrong answers for lesson 23 — sparse attention: DeepSeek-V3.2."""

_SCORES_HEAD = "def indexer_scores(q, k, head_weights):\n    heads, dim = q.shape[-2], q.shape[-1]\n"
_DOTS = "    dots = torch.einsum('bthd,bsd->bths', q, k) / dim**0.5\n"
_TOPK_HEAD = (
    "def causal_top_k(scores, k):\n"
    "    t_q, t_k = scores.shape[-2:]\n"
    "    visible = torch.arange(t_k)[None, :] <= torch.arange(t_k - t_q, t_k)[:, None]\n"
)
_SCATTER = "    return torch.zeros_like(scores, dtype=torch.bool).scatter(-1, chosen, True)"
_ATTENTION_HEAD = "def sparse_attention(q, k, v, selected, scale):\n    scores = q @ k.transpose(-1, -2) * scale\n"
_FLOPS_HEAD = (
    "def score_flops(cfg, seq_len):\n"
    "    width = cfg.num_heads * (cfg.qk_head_size + cfg.value_head_size)\n"
)

WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "23_sparse_attention.ipynb": {
        "indexer_scores": [
            (
                _SCORES_HEAD + _DOTS + "    return torch.einsum('bth,bths->bts', head_weights / heads**0.5, dots.softmax(-1))\n",
                "you took a softmax over the keys",
            ),
            (
                _SCORES_HEAD + _DOTS + "    return torch.relu(torch.einsum('bth,bths->bts', head_weights / heads**0.5, dots))\n",
                "you applied the ReLU after summing the heads",
            ),
            (
                _SCORES_HEAD + _DOTS + "    return torch.einsum('bth,bths->bts', head_weights, dots.relu())\n",
                "you left out 1/sqrt(H_I)",
            ),
            (
                _SCORES_HEAD + _DOTS + "    return dots.relu().mean(-2)\n",
                "your heads are not weighted",
            ),
        ],
        "causal_top_k": [
            (
                "def causal_top_k(scores, k):\n"
                "    chosen = scores.topk(min(k, scores.shape[-1]), dim=-1).indices\n" + _SCATTER + "\n",
                "your mask keeps keys in the future",
            ),
            (
                _TOPK_HEAD + "    chosen = scores.topk(min(k, t_k), dim=-1).indices\n" + _SCATTER + " & visible\n",
                "you chose the top-k among all the keys and removed the future ones afterwards",
            ),
            (
                _TOPK_HEAD + "    chosen = scores.masked_fill(~visible, float('-inf')).topk(min(k, t_k), dim=-1).indices\n"
                + _SCATTER + "\n",
                "at early positions a query sees fewer than k keys",
            ),
            (
                _TOPK_HEAD + "    chosen = scores.masked_fill(~visible, 0.0).topk(min(k, t_k), dim=-1).indices\n"
                + _SCATTER + " & visible\n",
                "you filled the future keys' scores with 0",
            ),
            (  # k larger than the number of keys: topk raises
                _TOPK_HEAD + "    chosen = scores.masked_fill(~visible, float('-inf')).topk(k, dim=-1).indices\n"
                + _SCATTER + " & visible\n",
                "min(k, T_k)",
            ),
        ],
        "sparse_attention": [
            (
                _ATTENTION_HEAD + "    return (scores.softmax(-1) * selected[:, None]) @ v\n",
                "you zeroed the weights of the unselected keys after the softmax",
            ),
            (
                _ATTENTION_HEAD + "    return scores.masked_fill(~selected[:, None], 0.0).softmax(-1) @ v\n",
                "you filled the unselected scores with 0",
            ),
            (
                "def sparse_attention(q, k, v, selected, scale):\n"
                "    scores = (q @ k.transpose(-1, -2)).masked_fill(~selected[:, None], float('-inf'))\n"
                "    return scores.softmax(-1) @ v\n",
                "you left out the scale",
            ),
            (
                _ATTENTION_HEAD + "    causal = torch.ones(scores.shape[-2:], dtype=torch.bool).tril()\n"
                "    return scores.masked_fill(~causal, float('-inf')).softmax(-1) @ v\n",
                "you used the causal mask instead of the selection",
            ),
        ],
        "score_flops": [
            (
                _FLOPS_HEAD + "    return cfg.num_layers * 2 * seq_len * width\n",
                "you counted dense attention",
            ),
            (
                _FLOPS_HEAD + "    return cfg.num_layers * 2 * min(seq_len, cfg.index_topk) * width\n",
                "you left out the indexer",
            ),
            (
                _FLOPS_HEAD + "    keys = min(seq_len, cfg.index_topk)\n"
                "    return cfg.num_layers * (2 * keys * width + 2 * keys * cfg.index_heads * (cfg.index_head_dim + 1))\n",
                "you counted the indexer over the selected keys only",
            ),
        ],
    },
}

CORRECT_ANSWERS: dict[str, dict[str, list[str]]] = {
    "23_sparse_attention.ipynb": {
        "indexer_scores": [
            "def indexer_scores(q, k, head_weights):\n"
            "    heads, dim = q.shape[-2:]\n"
            "    dots = q @ k[:, None].transpose(-1, -2)  # (B, T, H, T_k): k broadcast over the heads\n"
            "    return (head_weights[..., None] * dots.clamp(min=0)).sum(-2) / (heads * dim) ** 0.5\n",
        ],
        "causal_top_k": [
            "def causal_top_k(scores, k):\n"
            "    t_q, t_k = scores.shape[-2:]\n"
            "    visible = torch.ones(t_k, t_k, dtype=torch.bool).tril()[t_k - t_q:]\n"
            "    ranks = scores.masked_fill(~visible, float('-inf')).argsort(-1, descending=True).argsort(-1)\n"
            "    return (ranks < k) & visible\n",
        ],
        "sparse_attention": [
            "def sparse_attention(q, k, v, selected, scale):\n"
            "    weights = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) * selected[:, None]\n"
            "    return weights @ v / weights.sum(-1, keepdim=True)\n",
        ],
        "score_flops": [
            "def score_flops(cfg, seq_len):\n"
            "    per_layer = 2 * cfg.num_heads * (cfg.qk_head_size + cfg.value_head_size) * min(seq_len, cfg.index_topk)\n"
            "    per_layer += 2 * cfg.index_heads * cfg.index_head_dim * seq_len + 2 * cfg.index_heads * seq_len\n"
            "    return int(per_layer * cfg.num_layers)\n",
        ],
    },
}
