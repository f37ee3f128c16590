"""Wrong answers for lesson 20 — gpt-oss: sinks, windows and clamped experts."""

_SINK_HEAD = "def sink_softmax(scores, sinks):\n"
_SWIGLU_HEAD = "def clamped_swiglu(gate, up, limit, alpha=1.702):\n"
_EXPERTS_HEAD = (
    "def gpt_oss_experts(x, router_weight, router_bias, gate_up_proj, gate_up_bias, down_proj, down_bias, k, limit):\n"
)
_ROUTE = (
    "    logits = x @ router_weight.T + router_bias\n"
    "    top_logits, experts = logits.topk(k, dim=-1)\n"
    "    weights = torch.softmax(top_logits, dim=-1)\n"
)
_LOOP = (
    "    out = torch.zeros_like(x)\n"
    "    for expert in experts.unique().tolist():\n"
    "        tokens, slot = torch.where(experts == expert)\n"
    "        h = x[tokens] @ gate_up_proj[expert] + gate_up_bias[expert]\n"
)
_ADD = "        out = out.index_add(0, tokens, y * weights[tokens, slot, None])\n    return out\n"
_Y = "        y = clamped_swiglu(h[..., 0::2], h[..., 1::2], limit) @ down_proj[expert] + down_bias[expert]\n"
_CARD_HEAD = (
    "def card_bytes(cfg):\n"
    "    experts = cfg.num_layers * cfg.num_experts * 3 * cfg.embed_dim * cfg.expert_width\n"
    "    total = count_params(cfg).total\n"
)

WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "20_gpt_oss.ipynb": {
        "sink_softmax": [
            (_SINK_HEAD + "    return torch.softmax(scores, dim=-1)\n", "the sink is missing from the denominator"),
            (
                _SINK_HEAD + "    sink = sinks.view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)\n"
                "    return torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)\n",
                "drop the sink's column",
            ),
            (
                _SINK_HEAD + "    e = scores.exp()\n    return e / (e.sum(-1, keepdim=True) + sinks.view(1, -1, 1, 1))\n",
                "you added the sink logit itself to the denominator",
            ),
            (  # the sink added to every score: a shift the softmax does not see
                _SINK_HEAD + "    return torch.softmax(scores + sinks.view(1, -1, 1, 1), dim=-1)\n",
                "the sink is missing from the denominator",
            ),
        ],
        "clamped_swiglu": [
            (_SWIGLU_HEAD + "    return (up + 1) * gate * torch.sigmoid(alpha * gate)\n", "you did not clamp at all"),
            (
                _SWIGLU_HEAD + "    gate = gate.clamp(-limit, limit)\n    up = up.clamp(-limit, limit)\n"
                "    return (up + 1) * gate * torch.sigmoid(alpha * gate)\n",
                "you clamped the gate on both sides",
            ),
            (
                _SWIGLU_HEAD + "    gate = gate.clamp(max=limit)\n    up = up.clamp(-limit, limit)\n"
                "    return up * gate * torch.sigmoid(alpha * gate)\n",
                "you left out the + 1",
            ),
            (
                _SWIGLU_HEAD + "    gate = gate.clamp(max=limit)\n    up = up.clamp(-limit, limit)\n"
                "    return (up + 1) * torch.nn.functional.silu(gate)\n",
                "you left out alpha",
            ),
            (
                _SWIGLU_HEAD + "    gate.clamp_(max=limit)\n    up.clamp_(-limit, limit)\n"
                "    return (up + 1) * gate * torch.sigmoid(alpha * gate)\n",
                "changed gate or up in place",
            ),
        ],
        "gpt_oss_experts": [
            (
                _EXPERTS_HEAD + _ROUTE + _LOOP
                + "        gate, up = h.chunk(2, dim=-1)\n"
                "        y = clamped_swiglu(gate, up, limit) @ down_proj[expert] + down_bias[expert]\n" + _ADD,
                "you split gate_up into halves",
            ),
            (
                _EXPERTS_HEAD + _ROUTE.replace(" + router_bias", "") + _LOOP + _Y + _ADD,
                "you left out the router bias",
            ),
            (
                _EXPERTS_HEAD + "    logits = x @ router_weight.T + router_bias\n"
                "    weights, experts = torch.softmax(logits, dim=-1).topk(k, dim=-1)\n" + _LOOP + _Y + _ADD,
                "softmax over all experts",
            ),
            (
                _EXPERTS_HEAD + _ROUTE + _LOOP
                + "        y = clamped_swiglu(h[..., 0::2], h[..., 1::2], limit) @ down_proj[expert]\n" + _ADD,
                "you left out the down projection's bias",
            ),
        ],
        "card_bytes": [
            ("def card_bytes(cfg):\n    return 2 * count_params(cfg).total\n", "everything in bf16"),
            (_CARD_HEAD + "    return experts // 2 + 2 * (total - experts)\n", "forgot the scales"),
            (_CARD_HEAD + "    return -(-total // 32) * 17\n", "you stored every parameter in MXFP4"),
        ],
    },
}
