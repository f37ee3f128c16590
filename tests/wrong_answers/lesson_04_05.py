"""Wrong answers for lessons 04 (the block) and 05 (GPT-2)."""

_LAYER_NORM = '''
class LayerNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        {body}
'''


def _layer_norm(body: str) -> str:
    return _LAYER_NORM.format(body=body.strip().replace("\n", "\n        "))


_MLP = '''
class MLP(nn.Module):
    def __init__(self, embed_dim, hidden_dim=None):
        super().__init__()
        hidden_dim = {width} if hidden_dim is None else hidden_dim
        self.up_proj = nn.Linear(embed_dim, hidden_dim)
        self.down_proj = nn.Linear(hidden_dim, embed_dim)
        self.act = {act}

    def forward(self, x):
        return {body}
'''


def _mlp(body: str = "self.down_proj(self.act(self.up_proj(x)))", act: str = "gelu_tanh",
         width: str = "4 * embed_dim") -> str:
    return _MLP.format(body=body, act=act, width=width)


_BLOCK = '''
class PreNormBlock(nn.Module):
    def __init__(self, embed_dim, num_heads):
        super().__init__()
        self.ln1 = LayerNorm(embed_dim)
        self.attn = Attention(embed_dim, num_heads{attention_options})
        self.ln2 = LayerNorm(embed_dim)
        self.mlp = MLP(embed_dim)

    def forward(self, x):
        {body}
'''


def _block(body: str, attention_options: str = ", bias=True") -> str:
    return _BLOCK.format(body=body.strip().replace("\n", "\n        "), attention_options=attention_options)


PRE_NORM = "x = x + self.attn(self.ln1(x))\nreturn x + self.mlp(self.ln2(x))"

_GPT2 = '''
class GPT2(nn.Module):
    def __init__(self, vocab_size, max_seq_len, embed_dim, num_layers, num_heads):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, embed_dim)
        self.position_embedding = nn.Embedding(max_seq_len, embed_dim)
        self.blocks = nn.ModuleList(GPT2Block(embed_dim, num_heads) for _ in range(num_layers))
        self.final_norm = LayerNorm(embed_dim)
        self.lm_head = nn.Linear(embed_dim, vocab_size, bias=False)
        {tie}

    def forward(self, ids):
        positions = {positions}
        h = self.token_embedding(ids){add_positions}
        for block in self.blocks:
            h = block(h)
        return {output}
'''


def _gpt2(tie: str = "self.lm_head.weight = self.token_embedding.weight",
          positions: str = "torch.arange(ids.shape[1], device=ids.device)",
          add_positions: str = " + self.position_embedding(positions)",
          output: str = "self.lm_head(self.final_norm(h))") -> str:
    return _GPT2.format(tie=tie, positions=positions, add_positions=add_positions, output=output)


_INIT = '''
def init_gpt2_(model):
    residual_std = 0.02 / math.sqrt({layers})
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            std = residual_std if {residual} else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                {bias}
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, {norm}):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
'''


def _init(layers: str = "2 * len(model.blocks)", residual: str = 'name.endswith(("o_proj", "down_proj"))',
          bias: str = "nn.init.zeros_(module.bias)", norm: str = "LayerNorm") -> str:
    return _INIT.format(layers=layers, residual=residual, bias=bias, norm=norm)


_COUNT = '''
def gpt2_params(vocab_size, max_seq_len, embed_dim, num_layers):
    d = embed_dim
    attention = {attention}
    mlp = {mlp}
    norms = 4 * d
    return vocab_size * d + max_seq_len * d + num_layers * (attention + mlp + norms){rest}
'''


def _count(attention: str = "4 * d * d + 4 * d", mlp: str = "8 * d * d + 5 * d", rest: str = " + 2 * d") -> str:
    return _COUNT.format(attention=attention, mlp=mlp, rest=rest)

WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "04_block.ipynb": {
        "layer_norm": [
            (
                _layer_norm("mean = x.mean(dim=-1, keepdim=True)\nvariance = x.var(dim=-1, keepdim=True, unbiased=False)\n"
                            "return (x - mean) / torch.sqrt(variance) * self.weight + self.bias"),
                "on rows whose entries are all equal (variance 0)",
            ),
            (
                _layer_norm("mean = x.mean(dim=-1, keepdim=True)\nvariance = x.var(dim=-1, keepdim=True)\n"
                            "return (x - mean) / torch.sqrt(variance + self.eps) * self.weight + self.bias"),
                "you divided by d - 1 (the unbiased variance",
            ),
            (
                _layer_norm("mean = x.mean(dim=0, keepdim=True)\nvariance = x.var(dim=0, keepdim=True, unbiased=False)\n"
                            "return (x - mean) / torch.sqrt(variance + self.eps) * self.weight + self.bias"),
                "you normalised over dimension 0",
            ),
            (
                _layer_norm("mean = x.mean(dim=-1, keepdim=True)\nstd = x.std(dim=-1, keepdim=True, unbiased=False)\n"
                            "return (x - mean) / (std + self.eps) * self.weight + self.bias"),
                "on rows with a tiny variance",
            ),
            (
                _layer_norm("return torch.nn.functional.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)"),
                "your code calls torch.nn.functional.layer_norm, which is not allowed here",
            ),
        ],
        "gelu_tanh": [
            (
                "def gelu_tanh(x):\n    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))\n",
                "this is the exact GELU",
            ),
            (
                "def gelu_tanh(x):\n    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 * math.pi) * (x + 0.044715 * x**3)))\n",
                "compute 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi)",
            ),
            (
                "def gelu_tanh(x):\n    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**2)))\n",
                "gelu_tanh of evenly spaced points from -6 to 6",
            ),
            (
                "def gelu_tanh(x):\n    return torch.nn.functional.gelu(x, approximate='tanh')\n",
                "your code calls torch.nn.functional.gelu, which is not allowed here",
            ),
        ],
        "mlp": [
            (_mlp(body="self.down_proj(self.up_proj(x))"), "has no activation between its two layers"),
            (_mlp(act="nn.ReLU()"), "you used ReLU"),
            (_mlp(act="nn.GELU()"), "you used the exact GELU"),
            (_mlp(width="embed_dim"), "with hidden_dim = 4 * embed_dim"),
        ],
        "block": [
            (_block("x = self.ln1(x + self.attn(x))\nreturn self.ln2(x + self.mlp(x))"), "(post-norm"),
            (_block("x = self.attn(self.ln1(x))\nreturn self.mlp(self.ln2(x))"), "no residual connections"),
            (_block("x = x + self.attn(self.ln1(x))\nreturn x + self.mlp(self.ln1(x))"), "your MLP sub-layer uses ln1"),
            (_block(PRE_NORM, attention_options=""), "Missing or with another shape: attn.q_proj.bias"),
        ],
    },
    "05_gpt2.ipynb": {
        "gpt2": [
            (_gpt2(tie="pass"), "the head must be tied to the embedding"),
            (_gpt2(add_positions=""), "your logits do not depend on the position table"),
            (_gpt2(output="self.lm_head(h)"), "the final LayerNorm is missing"),
            (_gpt2(positions="torch.arange(self.position_embedding.num_embeddings)"),
             "the positions of T tokens are torch.arange(T)"),
            (_gpt2(output="self.lm_head(self.final_norm(h)).softmax(dim=-1)"), "you returned probabilities"),
        ],
        "init": [
            (_init(residual="False"), "the plain 0.02"),
            (_init(layers="len(model.blocks)"), "= 0.02 / sqrt(num_layers)"),
            (_init(residual="True"), "only the projections into the residual stream"),
            (_init(bias="pass"), "GPT-2 starts every bias at 0"),
            (_init(norm="nn.LayerNorm"), "olm_edu.nn.LayerNorm is not an nn.Linear"),
            (
                "def init_gpt2_(model):\n    for module in model.modules():\n"
                "        if isinstance(module, (nn.Linear, nn.Embedding)):\n"
                "            module.weight = nn.Parameter(0.02 * torch.randn_like(module.weight))\n",
                "is no longer token_embedding.weight",
            ),
        ],
        "gpt2_params": [
            (_count(rest=" + 2 * d + vocab_size * d"), "it is tied to the token embedding"),
            (_count(rest=""), "the final LayerNorm is missing"),
            (_count(attention="4 * d * d", mlp="8 * d * d"), "the biases of the linear layers are missing"),
            (_count(rest=" + 2 * d + 0.0"), "return an int"),
            (
                "def gpt2_params(vocab_size, max_seq_len, embed_dim, num_layers):\n"
                "    from olm_edu.analysis import count_params\n    from olm_edu.models import ModelConfig\n"
                "    cfg = ModelConfig(vocab_size=vocab_size, max_seq_len=max_seq_len, embed_dim=embed_dim,\n"
                "                      num_layers=num_layers, num_heads=1, hidden_dim=4 * embed_dim)\n"
                "    return count_params(cfg).total\n",
                "your code calls olm_edu.analysis.count_params, which is not allowed here",
            ),
        ],
    },
}
