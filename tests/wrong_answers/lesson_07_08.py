"""Wrong answers for lessons 07 (generation) and 08 (real GPT-2 weights)."""

# Pieces of a correct convert_gpt2_state_dict (lesson 08, exercise 3), to build wrong ones from.

_CONVERT_START = (
    "def convert_gpt2_state_dict(hf_state_dict, n_layer):\n"
    "    hf = hf_state_dict\n"
    "    n_embd = hf['transformer.wte.weight'].shape[1]\n"
    "    ours = {\n"
    "        'token_embedding.weight': hf['transformer.wte.weight'],\n"
    "        'position_embedding.weight': hf['transformer.wpe.weight'],\n"
    "        'final_norm.weight': hf['transformer.ln_f.weight'],\n"
    "        'final_norm.bias': hf['transformer.ln_f.bias'],\n"
)
_CONVERT_NORMS = (
    "    for i in range(n_layer):\n"
    "        theirs, mine = f'transformer.h.{i}.', f'blocks.{i}.'\n"
    "        for kind in ('weight', 'bias'):\n"
    "            ours[mine + f'norm1.{kind}'] = hf[theirs + f'ln_1.{kind}']\n"
    "            ours[mine + f'norm2.{kind}'] = hf[theirs + f'ln_2.{kind}']\n"
)
_CONVERT_QKV = (
    "        parts = split_qkv(hf[theirs + 'attn.c_attn.weight'], hf[theirs + 'attn.c_attn.bias'], n_embd)\n"
    "        for name, (weight, bias) in zip(('q_proj', 'k_proj', 'v_proj'), parts):\n"
    "            ours[mine + f'attn.{name}.weight'] = weight\n"
    "            ours[mine + f'attn.{name}.bias'] = bias\n"
)


def _convert_projections(transform: str) -> str:
    """The Conv1D projections and the return; `transform` is the code that makes each weight."""
    return (
        "        for hf_name, my_name in (('attn.c_proj', 'attn.out_proj'), ('mlp.c_fc', 'mlp.up_proj'), ('mlp.c_proj', 'mlp.down_proj')):\n"
        f"            ours[mine + f'{{my_name}}.weight'] = {transform}\n"
        "            ours[mine + f'{my_name}.bias'] = hf[theirs + f'{hf_name}.bias']\n"
        "    return ours\n"
    )


_WITH_HEAD = "        'lm_head.weight': hf['transformer.wte.weight'],\n    }\n"
_WITHOUT_HEAD = "    }\n"


WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "07_generation.ipynb": {
        "top_k_filter": [
            (
                "def top_k_filter(logits, k):\n    kth = torch.topk(logits, min(k + 1, logits.shape[-1]), dim=-1).values[..., -1:]\n"
                "    return logits.masked_fill(logits < kth, float('-inf'))\n",
                "the k-th largest logit is sorted_logits[..., k - 1]",
            ),
            (
                "def top_k_filter(logits, k):\n    kth = logits.sort(dim=-1).values[..., min(k, logits.shape[-1]) - 1:min(k, logits.shape[-1])]\n"
                "    return logits.masked_fill(logits < kth, float('-inf'))\n",
                "k-th *smallest*",
            ),
            (
                "def top_k_filter(logits, k):\n    values, indices = torch.topk(logits, min(k, logits.shape[-1]), dim=-1)\n"
                "    return torch.full_like(logits, float('-inf')).scatter(-1, indices, values)\n",
                "tokens tied with the k-th largest logit are all kept",
            ),
            (
                "def top_k_filter(logits, k):\n    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]\n"
                "    return logits.masked_fill_(logits < kth, float('-inf'))\n",
                "changed its input in place",
            ),
            (
                "def top_k_filter(logits, k):\n    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]\n"
                "    return logits.masked_fill(logits < kth, 0.0)\n",
                "the removed tokens are 0, not -inf",
            ),
        ],
        "top_p_filter": [
            (
                "def top_p_filter(logits, p):\n    sorted_logits, order = logits.sort(dim=-1, descending=True)\n"
                "    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)\n"
                "    sorted_logits = sorted_logits.masked_fill(cumulative > p, float('-inf'))\n"
                "    return torch.empty_like(logits).scatter(-1, order, sorted_logits)\n",
                "you removed the token that takes the total past p",
            ),
            (
                "def top_p_filter(logits, p):\n    sorted_logits, order = logits.sort(dim=-1)\n"
                "    probabilities = sorted_logits.softmax(dim=-1)\n"
                "    mass_before = probabilities.cumsum(dim=-1) - probabilities\n"
                "    sorted_logits = sorted_logits.masked_fill(mass_before >= p, float('-inf'))\n"
                "    return torch.empty_like(logits).scatter(-1, order, sorted_logits)\n",
                "least* likely tokens",
            ),
            (
                "def top_p_filter(logits, p):\n    sorted_logits, order = logits.sort(dim=-1, descending=True)\n"
                "    probabilities = sorted_logits.softmax(dim=-1)\n"
                "    mass_before = probabilities.cumsum(dim=-1) - probabilities\n"
                "    return sorted_logits.masked_fill(mass_before >= p, float('-inf'))\n",
                "put each decision back at the token's original position",
            ),
            (
                "def top_p_filter(logits, p):\n    sorted_logits, order = logits.sort(dim=-1, descending=True)\n"
                "    probabilities = sorted_logits.softmax(dim=-1)\n"
                "    mass_before = probabilities.cumsum(dim=-1) - probabilities\n"
                "    sorted_logits = sorted_logits.masked_fill(mass_before > p, float('-inf'))\n"
                "    return torch.empty_like(logits).scatter(-1, order, sorted_logits)\n",
                "strictly less than p",
            ),
        ],
        "attend_with_cache": [
            (
                "def attend_with_cache(q_new, k_new, v_new, cache):\n"
                "    cache.keys = k_new if cache.keys is None else torch.cat([cache.keys, k_new], dim=2)\n"
                "    cache.values = v_new if cache.values is None else torch.cat([cache.values, v_new], dim=2)\n"
                "    return torch.nn.functional.scaled_dot_product_attention(q_new, cache.keys, cache.values, is_causal=True)\n",
                "aligned to the top-left",
            ),
            (
                "def attend_with_cache(q_new, k_new, v_new, cache):\n"
                "    keys = k_new if cache.keys is None else torch.cat([cache.keys, k_new], dim=2)\n"
                "    values = v_new if cache.values is None else torch.cat([cache.values, v_new], dim=2)\n"
                "    past = keys.shape[2] - q_new.shape[2]\n"
                "    scores = q_new @ keys.transpose(-2, -1) / math.sqrt(q_new.shape[-1])\n"
                "    allowed = torch.arange(keys.shape[2])[None, :] <= past + torch.arange(q_new.shape[2])[:, None]\n"
                "    return scores.masked_fill(~allowed, float('-inf')).softmax(dim=-1) @ values\n",
                "should hold the keys of all",
            ),
            (
                "def attend_with_cache(q_new, k_new, v_new, cache):\n"
                "    cache.keys = k_new if cache.keys is None else torch.cat([cache.keys, k_new], dim=2)\n"
                "    cache.values = v_new if cache.values is None else torch.cat([cache.values, v_new], dim=2)\n"
                "    scores = q_new @ cache.keys.transpose(-2, -1) / math.sqrt(q_new.shape[-1])\n"
                "    return scores.softmax(dim=-1) @ cache.values\n",
                "can see each other's future",
            ),
            (
                "def attend_with_cache(q_new, k_new, v_new, cache):\n"
                "    cache.keys = k_new if cache.keys is None else torch.cat([cache.keys, k_new], dim=2)\n"
                "    cache.values = v_new if cache.values is None else torch.cat([cache.values, v_new], dim=2)\n"
                "    past = cache.keys.shape[2] - q_new.shape[2]\n"
                "    scores = q_new @ cache.keys.transpose(-2, -1)\n"
                "    allowed = torch.arange(cache.keys.shape[2])[None, :] <= past + torch.arange(q_new.shape[2])[:, None]\n"
                "    return scores.masked_fill(~allowed, float('-inf')).softmax(dim=-1) @ cache.values\n",
                "divide q @ k^T by sqrt(head_dim)",
            ),
        ],
    },
    "08_gpt2_weights.ipynb": {
        "conv1d_to_linear": [
            ("def conv1d_to_linear(weight):\n    return weight\n", "returned it in the Conv1D layout"),
            ("def conv1d_to_linear(weight):\n    return weight.reshape(weight.shape[1], weight.shape[0])\n",
             "you reshaped the weight"),
            ("def conv1d_to_linear(weight):\n    return weight if weight.shape[0] == weight.shape[1] else weight.t()\n",
             "silently computes nonsense"),
        ],
        "split_qkv": [
            ("def split_qkv(c_attn_weight, c_attn_bias, n_embd):\n"
             "    weights = c_attn_weight.chunk(3, dim=0)\n    biases = c_attn_bias.chunk(3)\n"
             "    return tuple((w.t(), b) for w, b in zip(weights, biases))\n",
             "split along dim 1, then transpose each block"),
            ("def split_qkv(c_attn_weight, c_attn_bias, n_embd):\n"
             "    weights = c_attn_weight.view(n_embd, n_embd, 3)\n    biases = c_attn_bias.view(n_embd, 3)\n"
             "    return tuple((weights[..., i].t(), biases[:, i]) for i in range(3))\n",
             "an interleaved split"),
            ("def split_qkv(c_attn_weight, c_attn_bias, n_embd):\n"
             "    weights = c_attn_weight.split(n_embd, dim=1)\n    biases = c_attn_bias.split(n_embd)\n"
             "    return tuple(zip(weights, biases))\n",
             "in the Conv1D layout, not transposed"),
        ],
        "convert_gpt2_state_dict": [
            (_CONVERT_START + _WITHOUT_HEAD + _CONVERT_NORMS + _CONVERT_QKV + _convert_projections("conv1d_to_linear(hf[theirs + f'{hf_name}.weight'])"),
             "lm_head.weight is missing"),
            (_CONVERT_START + _WITH_HEAD + _CONVERT_NORMS + _CONVERT_QKV + _convert_projections("hf[theirs + f'{hf_name}.weight']"),
             "blocks.0.attn.out_proj.weight is wrong: you gave transformer.h.0.attn.c_proj.weight as stored"),
            (_CONVERT_START + _WITH_HEAD + _CONVERT_NORMS
             + "        weight = hf[theirs + 'attn.c_attn.weight'].t()\n"
               "        bias = hf[theirs + 'attn.c_attn.bias']\n"
               "        for j, name in enumerate(('q_proj', 'k_proj', 'v_proj')):\n"
               "            ours[mine + f'attn.{name}.weight'] = weight[:, j * n_embd:(j + 1) * n_embd]\n"
               "            ours[mine + f'attn.{name}.bias'] = bias[j * n_embd:(j + 1) * n_embd]\n"
             + _convert_projections("conv1d_to_linear(hf[theirs + f'{hf_name}.weight'])"),
             "q/k/v split along the wrong axis"),
            (_CONVERT_START + _WITH_HEAD
             + "    for i in range(n_layer):\n"
               "        theirs, mine = f'h.{i}.', f'blocks.{i}.'\n"
               "        for kind in ('weight', 'bias'):\n"
               "            ours[mine + f'norm1.{kind}'] = hf[theirs + f'ln_1.{kind}']\n"
               "            ours[mine + f'norm2.{kind}'] = hf[theirs + f'ln_2.{kind}']\n"
             + _CONVERT_QKV + _convert_projections("conv1d_to_linear(hf[theirs + f'{hf_name}.weight'])"),
             "with the 'transformer.' prefix"),
        ],
    },
}
