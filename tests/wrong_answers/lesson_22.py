"""Wrong answers for lesson 22 — linear attention and the delta rule."""

_STEP_HEAD = "def delta_rule_step(state, q, k, v, g, beta):\n"


def _step(decay: str = "    state = state * g.exp()[..., None, None]\n",
          predicted: str = "    predicted = torch.einsum('bhkv,bhk->bhv', state, k)\n",
          write: str = "    state = state + k[..., :, None] * (beta[..., None] * (v - predicted))[..., None, :]\n",
          read: str = "    return torch.einsum('bhkv,bhk->bhv', state, q), state\n") -> str:
    """A delta_rule_step (exercise 1) with one line replaced."""
    return _STEP_HEAD + decay + predicted + write + read


_DECAY_HEAD = "def log_decay(a, A_log, dt_bias):\n"


def _chunked(system_tril: str = "tril(-1)", rhs: str = "b_c * v_c - (b_c * G.exp() * k_c) @ state",
             carry: str = "", decay: str = "(G - G.transpose(-1, -2)).masked_fill(~causal, float('-inf')).exp()") -> str:
    """A chunked_delta_rule (exercise 3) with one piece replaced."""
    return (
        "def chunked_delta_rule(q, k, v, g, beta, chunk_size):\n"
        "    batch, heads, length, key_dim = k.shape\n"
        "    state = q.new_zeros(batch, heads, key_dim, v.shape[-1])\n"
        "    outputs = []\n"
        "    for start in range(0, length, chunk_size):\n"
        f"{carry}"
        "        part = slice(start, start + chunk_size)\n"
        "        q_c, k_c, v_c, b_c = q[:, :, part], k[:, :, part], v[:, :, part], beta[:, :, part, None]\n"
        "        G = g[:, :, part].cumsum(dim=-1)[..., None]\n"
        "        size = G.shape[2]\n"
        "        causal = torch.ones(size, size, dtype=torch.bool).tril()\n"
        f"        decay = {decay}\n"
        f"        system = torch.eye(size, dtype=q.dtype) + ((k_c * b_c) @ k_c.transpose(-1, -2) * decay).{system_tril}\n"
        f"        U = torch.linalg.solve_triangular(system, {rhs}, upper=False)\n"
        "        outputs.append((q_c * G.exp()) @ state + (q_c @ k_c.transpose(-1, -2) * decay) @ U)\n"
        "        state = G[:, :, -1:].exp() * state + (k_c * (G[:, :, -1:] - G).exp()).transpose(-1, -2) @ U\n"
        "    return torch.cat(outputs, dim=2), state\n"
    )


_TOKEN_LOOP = (  # right numbers, but token by token: not the chunked form
    "def chunked_delta_rule(q, k, v, g, beta, chunk_size):\n"
    "    state = q.new_zeros(*k.shape[:2], k.shape[-1], v.shape[-1])\n"
    "    outputs = []\n"
    "    for t in range(q.shape[2]):\n"
    "        out, state = delta_rule_step(state, q[:, :, t], k[:, :, t], v[:, :, t], g[:, :, t], beta[:, :, t])\n"
    "        outputs.append(out)\n"
    "    return torch.stack(outputs, dim=2), state\n"
)


def _schedule(full_test: str = "(i + 1) % interval == 0", kimi_shift: str = "layer - 1",
              text: str = "    config = config.get('text_config', config)\n",
              layer_types: str = "    if config.get('layer_types') is not None:\n"
                                 "        return list(config['layer_types'])\n") -> str:
    """A layer_schedule (exercise 4) with one rule replaced."""
    return (
        "def layer_schedule(config):\n"
        f"{text}"
        "    layers = config['num_hidden_layers']\n"
        f"{layer_types}"
        "    if 'linear_attn_config' in config:\n"
        f"        full = {{{kimi_shift} for layer in config['linear_attn_config']['full_attn_layers']}}\n"
        "        return ['full_attention' if i in full else 'linear_attention' for i in range(layers)]\n"
        "    interval = config.get('full_attention_interval', 4)\n"
        f"    return ['full_attention' if {full_test} else 'linear_attention' for i in range(layers)]\n"
    )


WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "22_linear_attention.ipynb": {
        "delta_rule_step": [
            (_step(decay=""), "you never decayed the state"),
            (_step(write="    state = state + k[..., :, None] * (beta[..., None] * v)[..., None, :]\n"),
             "the plain linear-attention write"),
            (_step(predicted="    predicted = torch.einsum('bhkv,bhk->bhv', state, k)\n", decay="",
                   read="    state = state * g.exp()[..., None, None]\n"
                        "    return torch.einsum('bhkv,bhk->bhv', state, q), state\n"),
             "you decayed the state after writing"),
            (_step(predicted="    predicted = torch.einsum('bhkv,bhv->bhk', state, k)\n"), "you read the memory as S k"),
            (_STEP_HEAD + "    state = state * g.exp()[..., None, None]\n"
             "    out = torch.einsum('bhkv,bhk->bhv', state, q)\n"
             "    predicted = torch.einsum('bhkv,bhk->bhv', state, k)\n"
             "    state += k[..., :, None] * (beta[..., None] * (v - predicted))[..., None, :]\n"
             "    return out, state\n", "you read the output before writing this token"),
            (_STEP_HEAD + "    state *= g.exp()[..., None, None]\n"
             "    predicted = torch.einsum('bhkv,bhk->bhv', state, k)\n"
             "    state += k[..., :, None] * (beta[..., None] * (v - predicted))[..., None, :]\n"
             "    return torch.einsum('bhkv,bhk->bhv', state, q), state\n", "changed its inputs"),
        ],
        "log_decay": [
            (_DECAY_HEAD + "    return -A_log * F.softplus(a + dt_bias)\n", "you used A_log as the rate"),
            (_DECAY_HEAD + "    return -A_log.exp() * torch.log(1 + torch.exp(a + dt_bias))\n", "overflows for large x"),
            (_DECAY_HEAD + "    return torch.exp(-A_log.exp() * F.softplus(a + dt_bias))\n",
             "you returned the decay factor exp(g)"),
            (_DECAY_HEAD + "    return -A_log.exp() * F.softplus(a)\n", "you left out dt_bias"),
            (_DECAY_HEAD + "    return A_log.exp() * F.softplus(a + dt_bias)\n", "your log-decay is positive"),
        ],
        "chunked_delta_rule": [
            (_chunked(system_tril="tril()"), "your triangular system keeps its diagonal"),
            (_chunked(rhs="b_c * v_c"), "your corrections ignore the incoming state"),
            (_chunked(carry="        state = torch.zeros_like(state)\n"), "your state does not cross chunks"),
            (_chunked(decay="causal.to(q.dtype)"), "you left out the decay inside the chunk"),
            (_TOKEN_LOOP, "so it still loops token by token"),
        ],
        "layer_schedule": [
            (_schedule(kimi_shift="layer"), "count layers from 1"),
            (_schedule(full_test="i % interval == 0"), "your full layer comes first in each group"),
            (_schedule(layer_types=""), "this config lists its layer_types"),
            (_schedule(text=""), "your code raised KeyError"),
        ],
    },
}

CORRECT_ANSWERS: dict[str, dict[str, list[str]]] = {
    "22_linear_attention.ipynb": {
        "delta_rule_step": [
            # broadcasting and matmuls instead of einsum; the write as a rank-one outer product
            _STEP_HEAD + "    decayed = torch.exp(g).unsqueeze(-1).unsqueeze(-1) * state\n"
            "    predicted = (k.unsqueeze(-2) @ decayed).squeeze(-2)\n"
            "    u = beta.unsqueeze(-1) * (v - predicted)\n"
            "    new_state = decayed + k.unsqueeze(-1) @ u.unsqueeze(-2)\n"
            "    return (q.unsqueeze(-2) @ new_state).squeeze(-2), new_state\n",
        ],
        "log_decay": [
            _DECAY_HEAD + "    x = a + dt_bias\n"
            "    softplus = torch.where(x > 20, x, torch.log1p(torch.exp(x.clamp(max=20))))\n"
            "    return -torch.exp(A_log) * softplus\n",
        ],
        "chunked_delta_rule": [
            # the inverse of the unit triangular system by torch.linalg.inv, the state applied per chunk by einsum
            "def chunked_delta_rule(q, k, v, g, beta, chunk_size):\n"
            "    B, H, T, dk = k.shape\n"
            "    S = torch.zeros(B, H, dk, v.shape[-1])\n"
            "    outs = []\n"
            "    for s in range(0, T, chunk_size):\n"
            "        qc, kc, vc, bc = (x[:, :, s:s + chunk_size] for x in (q, k, v, beta))\n"
            "        G = torch.cumsum(g[:, :, s:s + chunk_size], dim=-1)\n"
            "        n = G.shape[-1]\n"
            "        lower = torch.tril(torch.ones(n, n)).bool()\n"
            "        D = torch.where(lower, torch.exp((G[..., :, None] - G[..., None, :]).clamp(max=0)), torch.zeros(()))\n"
            "        A = torch.einsum('bhtc,bhjc->bhtj', kc, kc) * D * bc[..., None]\n"
            "        Tinv = torch.linalg.inv(torch.eye(n) + torch.tril(A, diagonal=-1))\n"
            "        U = Tinv @ (bc[..., None] * (vc - torch.einsum('bhtc,bhcv->bhtv', kc * torch.exp(G)[..., None], S)))\n"
            "        outs.append(torch.einsum('bhtc,bhcv->bhtv', qc * torch.exp(G)[..., None], S)\n"
            "                    + (torch.einsum('bhtc,bhjc->bhtj', qc, kc) * D) @ U)\n"
            "        S = torch.exp(G[..., -1])[..., None, None] * S + torch.einsum(\n"
            "            'bhjc,bhjv->bhcv', kc * torch.exp(G[..., -1:] - G)[..., None], U)\n"
            "    return torch.cat(outs, dim=2), S\n",
        ],
        "layer_schedule": [
            # Kimi read from its kda_layers list instead; a while-loop over the interval
            "def layer_schedule(config):\n"
            "    if 'text_config' in config:\n"
            "        return layer_schedule(config['text_config'])\n"
            "    n = config['num_hidden_layers']\n"
            "    if config.get('layer_types'):\n"
            "        return [str(kind) for kind in config['layer_types']]\n"
            "    kimi = config.get('linear_attn_config')\n"
            "    if kimi:\n"
            "        linear = set(kimi['kda_layers'])\n"
            "        return ['linear_attention' if i + 1 in linear else 'full_attention' for i in range(n)]\n"
            "    types = ['linear_attention'] * n\n"
            "    i = config.get('full_attention_interval', 4) - 1\n"
            "    while i < n:\n"
            "        types[i] = 'full_attention'\n"
            "        i += config.get('full_attention_interval', 4)\n"
            "    return types\n",
        ],
    },
}
