"""Wrong answers for lessons 02 (embeddings and positions) and 03 (attention)."""

_ONE_HOT = "def one_hot(ids, vocab_size):\n    return (ids[..., None] == torch.arange(vocab_size)).float()\n\n"
_EMBED = "def embed_one_hot(ids, weight):\n    return one_hot(ids, weight.shape[0]) @ weight\n"

_EMBEDDING_INIT = (
    "class GPTEmbedding(nn.Module):\n"
    "    def __init__(self, vocab_size, max_seq_len, embed_dim):\n"
    "        super().__init__()\n"
    "        self.token_embedding = nn.Embedding(vocab_size, embed_dim)\n"
    "        self.position_embedding = nn.Embedding(max_seq_len, embed_dim)\n\n"
)


def _sinusoidal(angle_line: str, fill: str) -> str:
    return (
        "def sinusoidal_positions(max_seq_len, embed_dim):\n"
        "    t = torch.arange(max_seq_len, dtype=torch.float64)[:, None]\n"
        "    i = torch.arange(embed_dim // 2, dtype=torch.float64)\n"
        f"    {angle_line}\n"
        f"{fill}"
    )


_INTERLEAVE = (
    "    table = torch.empty(max_seq_len, embed_dim, dtype=torch.float64)\n"
    "    table[:, 0::2] = angle.{even}()\n"
    "    table[:, 1::2] = angle.{odd}()\n"
    "    return table.float()\n"
)
_RIGHT_ANGLE = "angle = t / 10000.0 ** (2 * i / embed_dim)"

_SDPA = (
    "def scaled_dot_product_attention(q, k, v, mask=None):\n"
    "    scores = {scores}\n"
    "    if mask is not None:\n"
    "        scores = scores.masked_fill({masked}, float('-inf'))\n"
    "    return torch.softmax(scores, dim={dim}) @ v\n"
)


def _sdpa(scores: str = "q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])", masked: str = "~mask", dim: int = -1) -> str:
    return _SDPA.format(scores=scores, masked=masked, dim=dim)


def _multi_head(split: str, attend: str, merge: str, project: str = "self.o_proj(out)") -> str:
    return (
        "from torch import nn\n\n"
        "class MultiHeadAttention(nn.Module):\n"
        "    def __init__(self, embed_dim, num_heads):\n"
        "        super().__init__()\n"
        "        self.num_heads = num_heads\n"
        "        self.head_dim = embed_dim // num_heads\n"
        "        self.q_proj = nn.Linear(embed_dim, embed_dim)\n"
        "        self.k_proj = nn.Linear(embed_dim, embed_dim)\n"
        "        self.v_proj = nn.Linear(embed_dim, embed_dim)\n"
        "        self.o_proj = nn.Linear(embed_dim, embed_dim)\n\n"
        "    def forward(self, x):\n"
        "        B, T, C = x.shape\n"
        f"        q = self.q_proj(x).{split}\n"
        f"        k = self.k_proj(x).{split}\n"
        f"        v = self.v_proj(x).{split}\n"
        f"        out = {attend}\n"
        f"        out = out.{merge}\n"
        f"        return {project}\n"
    )


_SPLIT = "view(B, T, self.num_heads, self.head_dim).transpose(1, 2)"
_ATTEND = "scaled_dot_product_attention(q, k, v, causal_mask(T))"
_MERGE = "transpose(1, 2).reshape(B, T, C)"

WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "02_embeddings.ipynb": {
        "one_hot": [
            (_ONE_HOT + "def embed_one_hot(ids, weight):\n    return weight[ids]\n",
             "reads rows of the weight with weight[ids]"),
            ("def one_hot(ids, vocab_size):\n    return torch.nn.functional.one_hot(ids, vocab_size).float()\n\n" + _EMBED,
             "calls torch.nn.functional.one_hot"),
            ("def one_hot(ids, vocab_size):\n    return (ids[..., None] == torch.arange(int(ids.max()) + 1)).float()\n\n"
             + _EMBED, "not ids.max() + 1"),
            ("def one_hot(ids, vocab_size):\n    return ids[..., None] == torch.arange(vocab_size)\n\n" + _EMBED,
             "must be floating point"),
        ],
        "gpt_embedding": [
            (_EMBEDDING_INIT + "    def forward(self, ids):\n        return self.token_embedding(ids)\n",
             "adds no position information"),
            (_EMBEDDING_INIT + "    def forward(self, ids):\n"
             "        return self.token_embedding(ids) + self.position_embedding(ids)\n",
             "looks up the positions with the token ids"),
            (_EMBEDDING_INIT + "    def forward(self, ids):\n"
             "        positions = torch.arange(ids.shape[0])\n"
             "        return self.token_embedding(ids) + self.position_embedding(positions)\n",
             "positions are torch.arange(T) with T = ids.shape[1]"),
            (_EMBEDDING_INIT.replace("nn.Embedding(max_seq_len, embed_dim)", "nn.Embedding(vocab_size, embed_dim)")
             + "    def forward(self, ids):\n"
             "        return self.token_embedding(ids) + self.position_embedding(torch.arange(ids.shape[1]))\n",
             "position_embedding.weight should have shape (max_seq_len, embed_dim)"),
        ],
        "sinusoidal": [
            (_sinusoidal(_RIGHT_ANGLE, _INTERLEAVE.format(even="cos", odd="sin")), "sin and cos are swapped"),
            (_sinusoidal("angle = t / 10000.0 ** (i / embed_dim)", _INTERLEAVE.format(even="sin", odd="cos")),
             "the exponent is wrong"),
            (_sinusoidal(_RIGHT_ANGLE, "    return torch.cat([angle.sin(), angle.cos()], dim=-1).float()\n"),
             "yours puts all the sines first"),
            ("def sinusoidal_positions(max_seq_len, embed_dim):\n"
             "    t = torch.arange(max_seq_len, dtype=torch.float64)[:, None]\n"
             "    j = torch.arange(embed_dim, dtype=torch.float64)\n"
             "    angle = t / 10000.0 ** (j / embed_dim)\n"
             "    table = torch.where(j % 2 == 0, angle.sin(), angle.cos())\n"
             "    return table.float()\n",
             "the two columns of a pair must share one frequency"),
        ],
    },
    "03_attention.ipynb": {
        "sdpa": [
            (_sdpa(scores="q @ k.transpose(-2, -1)"), "your scores are not divided by sqrt(d)"),
            (_sdpa(dim=-2), "take the softmax over the last dimension (dim=-1), not dim=-2"),
            (_sdpa(masked="mask"), "your mask is inverted"),
            (_sdpa(scores="q @ k.transpose(-2, -1) / q.shape[-1]"), "you divided the scores by d = 8"),
            ("def scaled_dot_product_attention(q, k, v, mask=None):\n"
             "    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)\n",
             "your code calls torch.nn.functional.scaled_dot_product_attention, which is not allowed here"),
            (_sdpa(masked="~mask").replace("float('-inf')", "0.0"), "you filled the masked scores with 0"),
            (_sdpa(scores="q @ k.transpose(-2, -1) / math.sqrt(v.shape[-1])"), "you scaled by sqrt of the value width"),
            ("def scaled_dot_product_attention(q, k, v, mask=None):\n"  # right output, but the caller's q is scaled
             "    q /= math.sqrt(q.shape[-1])\n"
             "    scores = q @ k.transpose(-2, -1)\n"
             "    if mask is not None:\n"
             "        scores = scores.masked_fill(~mask, float('-inf'))\n"
             "    return torch.softmax(scores, dim=-1) @ v\n",
             "changed its input q in place"),
        ],
        "causal_mask": [
            ("def causal_mask(length):\n    return torch.tril(torch.ones(length, length))\n",
             "returned dtype torch.float32"),
            ("def causal_mask(length):\n    return torch.ones(length, length, dtype=torch.bool).triu()\n",
             "position 0 changed when token 1 changed: your mask lets attention see the future"),
            ("def causal_mask(length):\n    return torch.ones(length, length, dtype=torch.bool).triu(diagonal=1)\n",
             "position 0 changed when token 1 changed: your mask lets attention see the future"),
            ("def causal_mask(length):\n    return torch.ones(length, length, dtype=torch.bool).tril(diagonal=-1)\n",
             "row 0 of your mask is all False"),
        ],
        "multi_head": [
            (_multi_head("view(B, T, self.head_dim, self.num_heads).transpose(1, 2)", _ATTEND, _MERGE),
             "your heads are split the wrong way"),
            (_multi_head("view(B, T, self.head_dim, self.num_heads).permute(0, 3, 1, 2)", _ATTEND, _MERGE),
             "your heads are split the wrong way"),
            (_multi_head(_SPLIT, _ATTEND, "reshape(B, T, C)"), "the heads are merged the wrong way"),
            (_multi_head(_SPLIT, "scaled_dot_product_attention(q, k, v)", _MERGE),
             "your attention sees the future; pass causal_mask(T)"),
            (_multi_head(_SPLIT, _ATTEND, _MERGE, project="out"), "must go through the output projection o_proj"),
            (_multi_head("view(B, self.num_heads, T, self.head_dim)", _ATTEND, "reshape(B, T, C)"),
             "without a transpose"),
            (_multi_head("view(B, self.num_heads, T, self.head_dim)", _ATTEND, _MERGE), "without a transpose"),
        ],
    },
}

CORRECT_ANSWERS: dict[str, dict[str, list[str]]] = {
    "03_attention.ipynb": {
        "sdpa": [
            # einsum, rsqrt on q's copy, a where() for the mask: the same maths written differently
            "def scaled_dot_product_attention(q, k, v, mask=None):\n"
            "    scores = torch.einsum('...qd,...kd->...qk', q * torch.rsqrt(torch.tensor(float(q.shape[-1]))), k)\n"
            "    if mask is not None:\n"
            "        scores = torch.where(mask, scores, torch.tensor(float('-inf')))\n"
            "    return torch.softmax(scores, dim=-1) @ v\n",
        ],
        "causal_mask": [
            "def causal_mask(length):\n"
            "    positions = torch.arange(length)\n"
            "    return positions[None, :] <= positions[:, None]\n",
        ],
        "multi_head": [
            _multi_head("unflatten(-1, (self.num_heads, self.head_dim)).permute(0, 2, 1, 3)", _ATTEND,
                        "permute(0, 2, 1, 3).flatten(2)"),
        ],
    },
}
