"""Wrong answers for lesson 17 (DeepSeek-V3)."""


def _cache(body: str) -> str:
    return f"def mla_cache_bytes(cfg, seq_len, bytes_per_number=2, batch_size=1):\n    return {body}\n"


_REST = "* seq_len * batch_size * bytes_per_number"


def _attention(queries: str, keys: str, *, scale: str = "math.sqrt(q.shape[-1])", latent: str = "latent",
               masked: bool = True) -> str:
    """latent_attention with the given query and key assembly (`k_content`, `k_shared` unrotated and
    `heads`, `length` are in scope) and score scale."""
    mask = ("    causal = torch.ones(length, length, dtype=torch.bool).tril()\n"
            "    scores = scores.masked_fill(~causal, float('-inf'))\n") if masked else ""
    return ("def latent_attention(q_content, q_rope, latent, k_rope, key_up, value_up, positions):\n"
            "    heads, length = q_content.shape[1], q_content.shape[2]\n"
            f"    k_content = torch.einsum('btc,hdc->bhtd', {latent}, key_up)\n"
            "    values = torch.einsum('btc,hdc->bhtd', latent, value_up)\n"
            "    k_shared = k_rope[:, None].expand(-1, heads, -1, -1)\n"
            f"    q = {queries}\n"
            f"    k = {keys}\n"
            f"    scores = q @ k.transpose(-2, -1) / {scale}\n"
            f"{mask}"
            "    return torch.softmax(scores, dim=-1) @ values\n")


_Q = "torch.cat([q_content, rope(q_rope, positions)], dim=-1)"
_K = "torch.cat([k_content, rope(k_shared, positions)], dim=-1)"


def _route(scores: str = "logits.sigmoid()", group: str = "choosing.topk(2, dim=-1).values.sum(dim=-1)",
           choose: str = "scores + selection_bias", weigh: str = "scores",
           finish: str = "weights / weights.sum(dim=-1, keepdim=True) * scaling_factor", groups: bool = True) -> str:
    limit = ("    group_scores = " + group + "\n"
             "    best = group_scores.topk(groups_per_token, dim=-1).indices\n"
             "    keep = torch.zeros(n, num_groups, dtype=torch.bool).scatter(1, best, True)\n"
             "    choosing = choosing.masked_fill(~keep[..., None], float('-inf'))\n") if groups else ""
    return ("def deepseek_route(logits, selection_bias, k, num_groups, groups_per_token, scaling_factor):\n"
            "    n, e = logits.shape\n"
            f"    scores = {scores}\n"
            f"    choosing = ({choose}).view(n, num_groups, e // num_groups)\n"
            f"{limit}"
            "    experts = choosing.view(n, e).topk(k, dim=-1).indices\n"
            f"    weights = ({weigh}).gather(1, experts)\n"
            f"    return {finish}, experts\n")


def _update(body: str) -> str:
    return f"def update_selection_bias(bias, tokens_per_expert, rate):\n{body}"


WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "17_deepseek_v3.ipynb": {
        "mla_cache_bytes": [
            (_cache(f"cfg.num_layers * cfg.num_heads * (cfg.qk_head_size + cfg.value_head_size) {_REST}"),
             "you counted the expanded per-head keys and values"),
            (_cache(f"2 * cfg.num_layers * cfg.kv_heads * cfg.head_size {_REST}"), "the standard-attention formula"),
            (_cache(f"cfg.num_layers * cfg.kv_latent_dim {_REST}"), "you left out the rotated key k^R"),
            (_cache(f"cfg.num_layers * (cfg.kv_latent_dim + cfg.num_heads * cfg.rope_head_dim) {_REST}"),
             "you cached one rotated key per head"),
            (_cache(f"2 * cfg.num_layers * (cfg.kv_latent_dim + cfg.rope_head_dim) {_REST}"),
             "there is no factor 2 in MLA"),
            (_cache(f"cfg.num_layers * (cfg.q_latent_dim + cfg.rope_head_dim) {_REST}"), "queries are never cached"),
            (_cache(f"(cfg.kv_latent_dim + cfg.rope_head_dim) {_REST}"), "you left out num_layers"),
            ("from olm_edu.analysis import kv_cache_bytes\n\n\n"
             + _cache("kv_cache_bytes(cfg, seq_len, 'bf16', batch_size)"),
             "calls olm_edu.analysis.kv_cache_bytes, which is not allowed"),
        ],
        "latent_attention": [
            (_attention("rope(torch.cat([q_content, q_rope], dim=-1), positions)",
                        "rope(torch.cat([k_content, k_shared], dim=-1), positions)"),
             "you applied RoPE to the whole query and the whole key"),
            (_attention(_Q, "rope(torch.cat([k_content, k_shared], dim=-1), positions)"),
             "you applied RoPE to the whole key"),
            (_attention(_Q, _K, latent="rope(latent, positions)"), "you rotated the latent c"),
            (_attention("torch.cat([q_content, q_rope], dim=-1)", _K), "the query's rope part is not rotated"),
            (_attention(_Q, _K, scale="math.sqrt(q_content.shape[-1])"), "scaled the scores by 1/sqrt(head_dim)"),
            (_attention(_Q, _K, masked=False), "there is no causal mask"),
        ],
        "deepseek_route": [
            (_route(weigh="scores + selection_bias"), "you weighed the chosen experts with the biased scores"),
            (_route(finish="weights * scaling_factor"), "you forgot to renormalise"),
            (_route(finish="weights / weights.sum(dim=-1, keepdim=True)"), "you forgot routed_scaling_factor"),
            (_route(group="choosing.max(dim=-1).values"), "scored each group by its best expert (max)"),
            (_route(choose="scores"), "the selection bias did not change the choice"),
            (_route(groups=False), "you ignored the group limit"),
            (_route(scores="logits.softmax(dim=-1)"), "you scored the experts with a softmax"),
        ],
        "update_selection_bias": [
            (_update("    load = tokens_per_expert.float()\n    return bias + rate * torch.sign(load - load.mean())\n"),
             "the sign is the wrong way round"),
            (_update("    load = tokens_per_expert.float()\n    return bias + rate * (load.mean() - load)\n"),
             "your step is proportional to the load gap"),
            (_update("    load = tokens_per_expert.float()\n"
                     "    return bias + torch.where(load > load.mean(), -rate, rate)\n"),
             "with an even load"),
            (_update("    load = tokens_per_expert.float()\n"
                     "    bias += rate * torch.sign(load.mean() - load)\n    return bias\n"),
             "changed bias or tokens_per_expert in place"),
            (_update("    return bias + rate * torch.sign(tokens_per_expert.mean() - tokens_per_expert)\n"),
             "tokens_per_expert holds int64 counts"),
        ],
    },
}
