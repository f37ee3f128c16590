"""Wrong answers for lesson 13 (Llama 3 assembled)."""


def _layer(attention: str = "Attention(cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, bias=False, "
                            "position='rope', rope_theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling, "
                            "max_seq_len=cfg.max_seq_len)",
           mlp: str = "SwiGLUFFN(cfg.embed_dim, cfg.hidden_dim, bias=False)",
           norm: str = "RMSNorm(cfg.embed_dim, eps=cfg.norm_eps)",
           forward: str = ("        h = x + self.attn(self.attn_norm(x))\n"
                           "        return h + self.mlp(self.mlp_norm(h))\n")) -> str:
    """A LlamaDecoderLayer (lesson 13, exercise 1) with one part replaced."""
    return (
        "class LlamaDecoderLayer(nn.Module):\n"
        "    def __init__(self, cfg):\n"
        "        super().__init__()\n"
        f"        self.attn_norm = {norm}\n"
        f"        self.attn = {attention}\n"
        f"        self.mlp_norm = {norm}\n"
        f"        self.mlp = {mlp}\n"
        "    def forward(self, x):\n"
        + forward
    )


def _model(tie: str = "        if cfg.tie_embeddings:\n            self.lm_head.weight = self.token_embedding.weight\n",
           final_norm: str = "        self.final_norm = RMSNorm(cfg.embed_dim, eps=cfg.norm_eps)\n",
           output: str = "self.lm_head(self.final_norm(h))") -> str:
    """A Llama (lesson 13, exercise 2) with one part replaced."""
    return (
        "class Llama(nn.Module):\n"
        "    def __init__(self, cfg):\n"
        "        super().__init__()\n"
        "        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.embed_dim)\n"
        "        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg) for _ in range(cfg.num_layers))\n"
        + final_norm
        + "        self.lm_head = nn.Linear(cfg.embed_dim, cfg.vocab_size, bias=False)\n"
        + tie
        + "    def forward(self, ids):\n"
        "        h = self.token_embedding(ids)\n"
        "        for layer in self.layers:\n"
        "            h = layer(h)\n"
        f"        return {output}\n"
    )


def _count(kv_heads: str = "config['num_key_value_heads']", width: str = "config['intermediate_size']",
           head: str = "0 if config['tie_word_embeddings'] else vocab_size * d", final_norm: str = "d",
           biases: str = "0") -> str:
    """A llama_params (lesson 13, exercise 3) with one term replaced."""
    return (
        "def llama_params(config):\n"
        "    d, vocab_size = config['hidden_size'], config['vocab_size']\n"
        f"    heads, kv_heads = config['num_attention_heads'], {kv_heads}\n"
        "    head_dim = config.get('head_dim') or d // heads\n"
        "    attention = 2 * d * heads * head_dim + 2 * d * kv_heads * head_dim\n"
        f"    width = {width}\n"
        f"    per_layer = attention + 3 * d * width + 2 * d + {biases}\n"
        f"    return vocab_size * d + config['num_hidden_layers'] * per_layer + {final_norm} + ({head})\n"
    )


def _convert(attn_norm: str = "input_layernorm", mlp_norm: str = "post_attention_layernorm",
             head: str = "hf.get('lm_head.weight', hf['model.embed_tokens.weight'])", transform: str = "",
             mlp_names: str = "(('gate_proj', 'gate_proj'), ('up_proj', 'up_proj'), ('down_proj', 'down_proj'))") -> str:
    """A convert_llama_state_dict (lesson 13, exercise 4) with one mapping replaced."""
    return (
        "def convert_llama_state_dict(hf_state_dict, num_layers):\n"
        "    hf = hf_state_dict\n"
        "    ours = {'token_embedding.weight': hf['model.embed_tokens.weight'],\n"
        "            'final_norm.weight': hf['model.norm.weight'],\n"
        f"            'lm_head.weight': {head}}}\n"
        "    for i in range(num_layers):\n"
        "        theirs, mine = f'model.layers.{i}.', f'layers.{i}.'\n"
        f"        ours[mine + 'attn_norm.weight'] = hf[theirs + '{attn_norm}.weight']\n"
        f"        ours[mine + 'mlp_norm.weight'] = hf[theirs + '{mlp_norm}.weight']\n"
        "        for proj in ('q_proj', 'k_proj', 'v_proj', 'o_proj'):\n"
        f"            ours[mine + f'attn.{{proj}}.weight'] = hf[theirs + f'self_attn.{{proj}}.weight']{transform}\n"
        f"        for mine_proj, their_proj in {mlp_names}:\n"
        f"            ours[mine + f'mlp.{{mine_proj}}.weight'] = hf[theirs + f'mlp.{{their_proj}}.weight']{transform}\n"
        "    return ours\n"
    )


WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "13_llama3.ipynb": {
        "decoder_layer": [
            (_layer(attention="Attention(cfg.embed_dim, cfg.num_heads, None, cfg.head_dim, position='rope', "
                              "rope_theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling, max_seq_len=cfg.max_seq_len)"),
             "You sized the keys and values with num_heads=4; Llama 3 uses grouped-query attention"),
            (_layer(mlp="SwiGLUFFN(cfg.embed_dim, 4 * cfg.embed_dim)"),
             "You made the feed-forward 4 * embed_dim = 128 wide, GPT-2's width"),
            (_layer(attention="Attention(cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, bias=True, "
                              "position='rope', rope_theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling, "
                              "max_seq_len=cfg.max_seq_len)"),
             "Llama 3 has no biases"),
            (_layer(attention="Attention(cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, "
                              "position='rope', rope_theta=cfg.rope_theta, max_seq_len=cfg.max_seq_len)"),
             "RoPE is not scaled"),
            (_layer(forward="        h = x + self.attn(self.attn_norm(x))\n        return h + self.mlp(self.attn_norm(h))\n"),
             "each sub-layer has its own norm"),
            (_layer(norm="nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)"),
             "Llama normalises with RMSNorm"),
            (_layer(norm="RMSNorm(cfg.embed_dim)"), "the norms use eps=1e-6 (RMSNorm's default)"),  # eps not read from cfg
            (_layer(attention="Attention(cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, bias=False, position='rope', "
                              "rope_theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling, max_seq_len=cfg.max_seq_len)"),
             "This config sets head_dim=16"),  # head_dim not read from cfg
            (_layer(attention="Attention(cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, bias=False, "
                              "position='rope', rope_theta=500000.0, rope_scaling=cfg.rope_scaling, "
                              "max_seq_len=cfg.max_seq_len)"),
             "this config's rope_theta is 10000"),  # Llama 3's theta typed in
        ],
        "llama": [
            (_model(output="self.lm_head(h)"), "the final RMSNorm is not applied"),
            (_model(final_norm=""), "has no final_norm: the final RMSNorm is missing"),
            (_model(tie="        self.lm_head.weight = self.token_embedding.weight\n"),
             "this config has tie_embeddings=False (tie_word_embeddings false, as Llama 3.1 8B)"),
            (_model(tie=""), "this config has tie_embeddings=True (as Llama 3.2 1B)"),
        ],
        "llama_params": [
            (_count(head="vocab_size * d"), "tie_word_embeddings is true (as in Llama 3.2 1B)"),
            (_count(head="0"), "tie_word_embeddings is false (as in Llama 3.1 8B)"),
            (_count(kv_heads="config['num_attention_heads']"), "you sized k_proj and v_proj with num_attention_heads"),
            (_count(final_norm="0"), "the final norm is missing"),
            (_count(biases="heads * head_dim + 2 * kv_heads * head_dim + d + 2 * width + d"),
             "you counted biases; Llama has none"),
            (_count(width="4 * d"), "you used 4 * hidden_size for the feed-forward width"),
            (_count().replace("config.get('head_dim') or d // heads", "d // heads"),
             "you took head_dim = hidden_size // num_attention_heads"),
        ],
        "convert_llama_state_dict": [
            (_convert(attn_norm="post_attention_layernorm", mlp_norm="input_layernorm"),
             "post_attention_layernorm is the norm *before* the feed-forward"),
            (_convert(head="hf['model.embed_tokens.weight']"), "this checkpoint has its own lm_head.weight: its head is untied"),
            (_convert(head="hf['lm_head.weight']"), "the dict has no 'lm_head.weight'"),
            (_convert(transform=".t()"), "store every matrix in nn.Linear's own (out, in) layout"),
            (_convert(mlp_names="(('gate_proj', 'up_proj'), ('up_proj', 'gate_proj'), ('down_proj', 'down_proj'))"),
             "gate_proj and up_proj are swapped"),
        ],
    },
}

# Correct answers written differently from the solution: each check must accept them.
CORRECT_ANSWERS: dict[str, dict[str, list[str]]] = {
    "13_llama3.ipynb": {
        "decoder_layer": [  # keyword arguments, the library's own layer norms, a different forward spelling
            _layer(attention="Attention(embed_dim=cfg.embed_dim, num_heads=cfg.num_heads, num_kv_heads=cfg.kv_heads, "
                             "head_dim=cfg.head_size, bias=False, position='rope', rope_theta=cfg.rope_theta, "
                             "rope_scaling=cfg.rope_scaling, max_seq_len=cfg.max_seq_len)",
                   forward="        x = x + self.attn(self.attn_norm(x))\n        x = x + self.mlp(self.mlp_norm(x))\n"
                           "        return x\n"),
        ],
        "llama_params": [
            "def llama_params(config):\n"
            "    d = config['hidden_size']\n"
            "    head_dim = config['head_dim'] if 'head_dim' in config else d // config['num_attention_heads']\n"
            "    q_and_o = 2 * d * config['num_attention_heads'] * head_dim\n"
            "    k_and_v = 2 * d * config['num_key_value_heads'] * head_dim\n"
            "    layer = q_and_o + k_and_v + 3 * d * config['intermediate_size'] + 2 * d\n"
            "    tables = (1 if config['tie_word_embeddings'] else 2) * config['vocab_size'] * d\n"
            "    return tables + config['num_hidden_layers'] * layer + d\n",
        ],
    },
}
