"""Wrong answers for lesson 19 (Reading a model card)."""


def _ffn(dense: str = "3 * d * cfg.hidden_dim", expert: str = "3 * d * cfg.expert_width",
         moe_test: str = "cfg.is_moe_layer(layer)",
         always: str = "cfg.num_experts * d + cfg.num_shared_experts * expert",
         used: str = "always + cfg.experts_per_token * expert") -> str:
    """A moe_ffn_params (lesson 19, exercise 1) with one term replaced."""
    return (
        "def moe_ffn_params(cfg):\n"
        "    d = cfg.embed_dim\n"
        f"    dense = {dense}\n"
        f"    expert = {expert}\n"
        "    total = used = 0\n"
        "    for layer in range(cfg.num_layers):\n"
        f"        if not ({moe_test}):\n"
        "            total, used = total + dense, used + dense\n"
        "            continue\n"
        f"        always = {always}\n"
        "        total += always + cfg.num_experts * expert\n"
        f"        used += {used}\n"
        "    return total, used\n"
    )


def _memory(params: str = "count_params(cfg).total", weights: str = "-(-params * DTYPE_BITS[weight_dtype] // 8)",
            cache: str = "kv_cache_bytes(cfg, seq_len, cache_dtype, batch_size)") -> str:
    """A serving_memory (lesson 19, exercise 2) with one term replaced."""
    return (
        "def serving_memory(cfg, weight_dtype, seq_len, batch_size=1, cache_dtype='bf16'):\n"
        f"    params = {params}\n"
        f"    weights = {weights}\n"
        f"    return weights + {cache}\n"
    )


def _flops(q_width: str = "cfg.num_heads * cfg.head_size", kv: str = "2 * d * kv_width",
           head: str = "cfg.vocab_size * d",
           keys: str = "min(seq_len, cfg.sliding_window) if cfg.layer_type(i) == 'sliding_attention' else seq_len",
           context: str = "4 * q_width * keys", matrices: str = "3 if cfg.ffn == 'glu' else 2") -> str:
    """A forward_flops (lesson 19, exercise 3) with one term replaced."""
    return (
        "def forward_flops(cfg, seq_len):\n"
        f"    d, q_width, kv_width = cfg.embed_dim, {q_width}, cfg.kv_heads * cfg.head_size\n"
        f"    ffn_matrices = {matrices}\n"
        f"    per_layer = 2 * d * q_width + {kv} + ffn_matrices * d * cfg.hidden_dim\n"
        f"    weights = cfg.num_layers * per_layer + {head}\n"
        f"    keys = sum({keys} for i in range(cfg.num_layers))\n"
        f"    return 2 * weights + {context}\n"
    )


WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "19_model_cards.ipynb": {
        "moe_ffn_params": [
            (_ffn(used="always + cfg.num_experts * expert"), "you counted all 8 experts as used"),
            (_ffn(moe_test="cfg.num_experts > 0"), "you treated all 61 layers as MoE layers"),
            (_ffn(expert="3 * d * cfg.hidden_dim"), "you sized each expert with hidden_dim = 6144"),
            (_ffn(always="cfg.num_shared_experts * expert"), "you left out the router"),
            (_ffn(always="cfg.num_experts * d"), "you left out the shared experts"),
            (_ffn(used="cfg.num_experts * d + cfg.experts_per_token * expert"),
             "the shared experts run for every token"),
            (_ffn(dense="2 * d * cfg.hidden_dim", expert="2 * d * cfg.expert_width"),
             "three matrices, gate and up"),
        ],
        "serving_memory": [
            (_memory(weights="params * DTYPE_BITS[weight_dtype]"), "you counted bits, not bytes"),
            (_memory(weights="params * max(DTYPE_BITS[weight_dtype] // 8, 1)"), "int4 is half a byte per parameter"),
            (_memory(params="count_params(cfg).active"), "a mixture of experts must keep every expert in memory"),
            (_memory(cache="kv_cache_bytes(cfg, seq_len, cache_dtype)"), "you counted the cache of one sequence"),
            (_memory(cache="kv_cache_bytes(cfg, seq_len, weight_dtype, batch_size)"),
             "you stored the cache in the weights' dtype"),
            (_memory(weights="params * DTYPE_BITS[weight_dtype] // 8"), "round the weights' bytes UP"),
            (_memory(weights="weight_bytes(cfg, weight_dtype)"), "olm_edu.analysis.weight_bytes, which is not allowed"),
        ],
        "forward_flops": [
            (_flops(context="0"), "you left out attention's context term"),
            (_flops(context="4 * cfg.kv_heads * cfg.head_size * keys"),
             "you computed the scores for the 8 KV heads only"),
            (_flops(keys="seq_len"), "you ignored the sliding windows"),
            (_flops(keys="min(seq_len, cfg.sliding_window or seq_len)"), "you capped every layer at the window"),
            (_flops(head="(0 if cfg.tie_embeddings else cfg.vocab_size * d)"),
             "tying shares the WEIGHTS, not the work"),
            (_flops(kv="2 * d * q_width"), "you sized k_proj and v_proj with num_heads"),
            (_flops(kv="d * kv_width"), "you counted only one of k_proj and v_proj"),
            (_flops(context="4 * q_width * keys // cfg.num_layers"), "the context term is paid in every one"),
            (_flops(q_width="cfg.embed_dim"), "q_proj and o_proj map embed_dim to num_heads * head_size"),
            (_flops(matrices="2"), "a 'glu' feed-forward has 3 matrices"),
        ],
    },
}
