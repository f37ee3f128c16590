"""Wrong answers for lesson 16 — Mixture of Experts and Mixtral."""

_ROUTE_HEAD = "def route(logits, k, renormalize=True):\n"
_MOE_HEAD = (
    "from torch.nn import functional as F\n\n"
    "def moe_forward(x, router_weight, gate_proj, up_proj, down_proj, k):\n"
    "    flat = x.reshape(-1, x.shape[-1])\n"
)
_MOE_LOOP = (
    "    out = torch.zeros_like(flat)\n"
    "    for expert in experts.unique().tolist():\n"
    "        tokens, slot = torch.where(experts == expert)\n"
    "        h = flat[tokens]\n"
)
_SWIGLU = "F.linear(F.silu(F.linear(h, gate_proj[expert])) * F.linear(h, up_proj[expert]), down_proj[expert])"
_MOE_TAIL = "    return out.reshape(x.shape)\n"
_BALANCE_HEAD = (
    "def load_balancing_loss(logits, k):\n"
    "    num_tokens, num_experts = logits.shape\n"
    "    probabilities = torch.softmax(logits, dim=-1)\n"
    "    chosen = probabilities.topk(k, dim=-1).indices\n"
)

WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "16_moe.ipynb": {
        "route": [
            (  # renormalize ignored: the plain probabilities
                _ROUTE_HEAD + "    return torch.softmax(logits, dim=-1).topk(k, dim=-1)\n",
                "you did not renormalise the k chosen weights",
            ),
            (  # Mistral's reference order, top-k logits then softmax, used for every family
                _ROUTE_HEAD + "    top_logits, experts = logits.topk(k, dim=-1)\n"
                "    return torch.softmax(top_logits, dim=-1), experts\n",
                "you took the softmax over the chosen logits only",
            ),
            (
                _ROUTE_HEAD + "    weights, experts = logits.topk(k, dim=-1)\n"
                "    if renormalize:\n"
                "        weights = weights / weights.sum(dim=-1, keepdim=True)\n"
                "    return weights, experts\n",
                "raw logits",
            ),
            (
                _ROUTE_HEAD + "    weights, experts = torch.softmax(logits, dim=-1).topk(k, dim=-1)\n"
                "    if renormalize:\n"
                "        weights = weights / weights.sum(dim=-1, keepdim=True)\n"
                "    return weights.detach(), experts\n",
                "no gradient reaches the router logits",
            ),
        ],
        "moe_forward": [
            (
                _MOE_HEAD + "    weights, experts = route(flat @ router_weight.T, k)\n" + _MOE_LOOP
                + f"        out = out.index_add(0, tokens, {_SWIGLU})\n" + _MOE_TAIL,
                "without their routing weights",
            ),
            (
                _MOE_HEAD + "    weights, experts = route(flat @ router_weight.T, k, renormalize=False)\n" + _MOE_LOOP
                + f"        out = out.index_add(0, tokens, {_SWIGLU} * weights[tokens, slot, None])\n" + _MOE_TAIL,
                "without renormalising them",
            ),
            (
                _MOE_HEAD + "    weights, experts = route(flat @ router_weight.T, k)\n" + _MOE_LOOP
                + "        y = F.linear(F.linear(h, gate_proj[expert]) * F.silu(F.linear(h, up_proj[expert])), "
                "down_proj[expert])\n"
                "        out = out.index_add(0, tokens, y * weights[tokens, slot, None])\n" + _MOE_TAIL,
                "you applied SiLU to the up projection",
            ),
            (
                _MOE_HEAD + "    weights, experts = route(flat @ router_weight.T, k)\n" + _MOE_LOOP
                + "        h = h * weights[tokens, slot, None]\n"
                + f"        out = out.index_add(0, tokens, {_SWIGLU})\n" + _MOE_TAIL,
                "you scaled each expert's INPUT",
            ),
            (  # the notebook's global top_k = 2 instead of the argument k
                _MOE_HEAD + "    weights, experts = route(flat @ router_weight.T, top_k)\n" + _MOE_LOOP
                + f"        out = out.index_add(0, tokens, {_SWIGLU} * weights[tokens, slot, None])\n" + _MOE_TAIL,
                "but this case passes k=3: route with the argument k",
            ),
            (  # overwrite instead of add, looping over the experts
                _MOE_HEAD + "    weights, experts = route(flat @ router_weight.T, k)\n" + _MOE_LOOP
                + f"        out[tokens] = {_SWIGLU} * weights[tokens, slot, None]\n" + _MOE_TAIL,
                "you assigned (out[tokens] = ...) where you must add",
            ),
            (  # overwrite instead of add, looping over the k slots
                _MOE_HEAD + "    weights, experts = route(flat @ router_weight.T, k)\n"
                "    out = torch.zeros_like(flat)\n"
                "    for slot in range(k):\n"
                "        for t in range(flat.shape[0]):\n"
                "            expert, h = int(experts[t, slot]), flat[t]\n"
                f"            out[t] = {_SWIGLU} * weights[t, slot]\n" + _MOE_TAIL,
                "its last slot, the smallest weight",
            ),
            (  # every expert on every token, weight 0 off the chosen ones: right values, not sparse
                _MOE_HEAD + "    weights, experts = route(flat @ router_weight.T, k)\n"
                "    gates = torch.zeros(flat.shape[0], router_weight.shape[0]).scatter(1, experts, weights)\n"
                "    out = torch.zeros_like(flat)\n"
                "    for expert in range(router_weight.shape[0]):\n"
                "        h = flat\n"
                f"        out = out + gates[:, expert, None] * {_SWIGLU}\n" + _MOE_TAIL,
                "you ran every expert on every token",
            ),
            (  # scales x in place through the flattened view
                _MOE_HEAD + "    weights, experts = route(flat @ router_weight.T, k)\n"
                "    out = torch.zeros_like(flat)\n"
                "    for expert in experts.unique().tolist():\n"
                "        tokens, slot = torch.where(experts == expert)\n"
                "        h = flat[tokens]\n"
                f"        out.index_add_(0, tokens, {_SWIGLU} * weights[tokens, slot, None])\n"
                "    flat.copy_(out)\n"
                "    return flat.reshape(x.shape)\n",
                "changed its input x",
            ),
            (
                _MOE_HEAD + "    with torch.no_grad():\n"
                "        weights, experts = route(flat @ router_weight.T, k)\n" + _MOE_LOOP
                + f"        out = out.index_add(0, tokens, {_SWIGLU} * weights[tokens, slot, None])\n" + _MOE_TAIL,
                "no gradient reaches router_weight",
            ),
        ],
        "load_balancing_loss": [
            (
                _BALANCE_HEAD + "    fraction = torch.bincount(chosen.flatten(), minlength=num_experts) / num_tokens\n"
                "    return (fraction * probabilities.mean(dim=0)).sum()\n",
                "you left out the factor E",
            ),
            (
                _BALANCE_HEAD + "    counts = torch.bincount(chosen.flatten(), minlength=num_experts)\n"
                "    return num_experts * (counts * probabilities.mean(dim=0)).sum()\n",
                "you used token counts instead of fractions",
            ),
            (
                _BALANCE_HEAD
                + "    fraction = torch.bincount(chosen.flatten(), minlength=num_experts) / (num_tokens * k)\n"
                "    return num_experts * (fraction * probabilities.mean(dim=0)).sum()\n",
                "you divided the counts by N * k",
            ),
            (  # the notebook's global top_k = 2 instead of the argument k
                _BALANCE_HEAD.replace("topk(k,", "topk(top_k,")
                + "    fraction = torch.bincount(chosen.flatten(), minlength=num_experts) / num_tokens\n"
                "    return num_experts * (fraction * probabilities.mean(dim=0)).sum()\n",
                "but this case passes k=1: use the argument k",
            ),
            (  # exp by hand: overflows for logits about 100
                "def load_balancing_loss(logits, k):\n"
                "    num_tokens, num_experts = logits.shape\n"
                "    probabilities = logits.exp() / logits.exp().sum(dim=-1, keepdim=True)\n"
                "    chosen = logits.topk(k, dim=-1).indices\n"
                "    fraction = torch.bincount(chosen.flatten(), minlength=num_experts) / num_tokens\n"
                "    return num_experts * (fraction * probabilities.mean(dim=0)).sum()\n",
                "exp overflows unless you use torch.softmax",
            ),
            (
                _BALANCE_HEAD + "    fraction = torch.bincount(chosen.flatten(), minlength=num_experts) / num_tokens\n"
                "    return num_experts * (fraction * probabilities.mean(dim=0).detach()).sum()\n",
                "no gradient reaches the router logits",
            ),
        ],
        "router_z_loss": [
            (
                "def router_z_loss(logits):\n    return torch.logsumexp(logits, dim=-1).mean()\n",
                "you did not square the log-sum-exp",
            ),
            (
                "def router_z_loss(logits):\n    return torch.logsumexp(logits, dim=-1).square().sum()\n",
                "you summed over the tokens",
            ),
            (
                "def router_z_loss(logits):\n    return logits.square().mean()\n",
                "you squared the logits themselves",
            ),
            (
                "def router_z_loss(logits):\n    return logits.exp().sum(dim=-1).log().square().mean()\n",
                "exp(logits).sum(-1)) overflows",
            ),
        ],
    },
}

# Correct answers written differently from the solution: each check must accept them.
CORRECT_ANSWERS: dict[str, dict[str, list[str]]] = {
    "16_moe.ipynb": {
        "moe_forward": [
            # a loop over the tokens and their k slots, adding in place into a fresh tensor
            _MOE_HEAD + "    weights, experts = route(flat @ router_weight.T, k)\n"
            "    out = flat.new_zeros(flat.shape)\n"
            "    rows = []\n"
            "    for t in range(flat.shape[0]):\n"
            "        total = 0\n"
            "        for slot in range(k):\n"
            "            expert, h = int(experts[t, slot]), flat[t]\n"
            f"            total = total + weights[t, slot] * {_SWIGLU}\n"
            "        rows.append(total)\n"
            "    return torch.stack(rows).reshape(x.shape)\n",
            # a loop over every expert (an empty token set is fine), matmuls instead of F.linear, += into out
            _MOE_HEAD + "    weights, experts = route(flat @ router_weight.T, k)\n"
            "    out = torch.zeros_like(flat)\n"
            "    for expert in range(router_weight.shape[0]):\n"
            "        mask = experts == expert\n"
            "        tokens = mask.any(dim=-1).nonzero().flatten()\n"
            "        if len(tokens) == 0:\n"
            "            continue\n"
            "        w = (weights * mask).sum(dim=-1)[tokens, None]\n"
            "        h = flat[tokens]\n"
            "        g = h @ gate_proj[expert].T\n"
            "        y = (g * torch.sigmoid(g) * (h @ up_proj[expert].T)) @ down_proj[expert].T\n"
            "        out[tokens] += w * y\n"
            "    return out.view(*x.shape)\n",
        ],
        "load_balancing_loss": [
            # one-hot counts instead of bincount, a log-softmax route to the probabilities
            "def load_balancing_loss(logits, k):\n"
            "    num_tokens, num_experts = logits.shape\n"
            "    probabilities = torch.log_softmax(logits, dim=-1).exp()\n"
            "    chosen = torch.nn.functional.one_hot(logits.topk(k, dim=-1).indices, num_experts).sum(dim=1)\n"
            "    fraction = chosen.float().mean(dim=0)\n"
            "    return num_experts * torch.dot(fraction.to(probabilities.dtype), probabilities.mean(dim=0))\n",
        ],
    },
}
