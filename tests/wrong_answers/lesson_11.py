"""Wrong answers for lesson 11 — Gated feed-forwards."""

_SWIGLU = '''
class SwiGLU(nn.Module):
    def __init__(self, embed_dim, hidden_dim, bias=False):
        super().__init__()
        self.gate_proj = nn.Linear(embed_dim, hidden_dim, bias=bias)
        self.up_proj = nn.Linear(embed_dim, hidden_dim, bias=bias)
        self.down_proj = nn.Linear(hidden_dim, embed_dim, bias=bias)

    def forward(self, x):
        gate, up = self.gate_proj(x), self.up_proj(x)
        return {body}
'''

_GEGLU = '''
class GeGLU(nn.Module):
    def __init__(self, embed_dim, hidden_dim, approximate="tanh", bias=False):
        super().__init__()
        self.approximate = approximate
        self.gate_proj = nn.Linear(embed_dim, hidden_dim, bias=bias)
        self.up_proj = nn.Linear(embed_dim, hidden_dim, bias=bias)
        self.down_proj = nn.Linear(hidden_dim, embed_dim, bias=bias)

    def forward(self, x):
        gate, up = self.gate_proj(x), self.up_proj(x)
        return {body}
'''

_WIDTH = '''
import math

def gated_hidden_dim(embed_dim, multiple_of=256, ffn_dim_multiplier=None):
    hidden = {start}
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return {end}
'''


def _swiglu(body: str) -> str:
    return _SWIGLU.format(body=body)


def _geglu(body: str) -> str:
    return _GEGLU.format(body=body)


def _width(start: str = "int(2 * 4 * embed_dim / 3)", end: str = "multiple_of * math.ceil(hidden / multiple_of)") -> str:
    return _WIDTH.format(start=start, end=end)


WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "11_gated_ffn.ipynb": {
        "swiglu": [
            (_swiglu("self.down_proj(up * torch.sigmoid(up) * gate)"), "gate_proj and up_proj swapped"),
            (_swiglu("self.down_proj(gate * up * torch.sigmoid(gate * up))"), "after the product"),
            (_swiglu("self.down_proj(torch.sigmoid(gate) * up)"), "plain sigmoid"),
            (_swiglu("self.down_proj(F.silu(gate) * up)"), "calls torch.nn.functional.silu"),
            (_swiglu("self.down_proj(nn.SiLU()(gate) * up)"), "calls torch.nn.functional.silu"),
            (
                _SWIGLU.replace("bias=bias)", "bias=True)").format(body="self.down_proj(gate * torch.sigmoid(gate) * up)"),
                "not expected: gate_proj.bias",
            ),
            (  # the bias argument ignored
                _SWIGLU.replace("bias=bias)", "bias=False)").format(body="self.down_proj(gate * torch.sigmoid(gate) * up)"),
                "made no biases although bias=True was passed",
            ),
        ],
        "geglu": [
            (_geglu("self.down_proj(F.gelu(gate) * up)"), "exact GELU (erf) where approximate='tanh'"),
            (_geglu("self.down_proj(F.gelu(gate, approximate='tanh') * up)"), "tanh form where approximate='none'"),
            (_geglu("self.down_proj(F.gelu(up, approximate=self.approximate) * gate)"), "gate_proj and up_proj swapped"),
            (_geglu("self.down_proj(F.gelu(gate * up, approximate=self.approximate))"), "after the product"),
            (  # the bias argument ignored
                _GEGLU.replace("bias=bias)", "bias=False)").format(
                    body="self.down_proj(F.gelu(gate, approximate=self.approximate) * up)"),
                "made no biases although bias=True was passed",
            ),
        ],
        "gated_hidden_dim": [
            (_width(end="hidden"), "you did not round"),
            (_width(end="multiple_of * (hidden // multiple_of)"), "you rounded down"),
            (_width(end="multiple_of * round(hidden / multiple_of)"), "nearest multiple"),
            (_width(end="multiple_of * (hidden // multiple_of + 1)"), "already a multiple"),
            (_width(start="4 * embed_dim"), "the classic MLP's width"),
            (_width(start="int(8 * embed_dim / 3)").replace("    if ffn_dim_multiplier is not None:\n"
                                                             "        hidden = int(ffn_dim_multiplier * hidden)\n", ""),
             "you ignored ffn_dim_multiplier"),
            (_width(end="multiple_of * math.ceil(hidden / multiple_of) * 1.0"), "return an int"),
            ("from olm_edu.nn import gated_hidden_dim\n", "calls olm_edu.nn.gated_hidden_dim, which is not allowed"),
            (
                "from olm_edu.nn import gated_hidden_dim as library_rule\n\n"
                "def gated_hidden_dim(embed_dim, multiple_of=256, ffn_dim_multiplier=None):\n"
                "    return library_rule(embed_dim, multiple_of, ffn_dim_multiplier)\n",
                "calls olm_edu.nn.gated_hidden_dim, which is not allowed here: Exercise 3 asks you to write Llama's rule",
            ),
            (
                "import math\n\n"
                "def gated_hidden_dim(embed_dim, multiple_of=256, ffn_dim_multiplier=None):\n"
                "    hidden = multiple_of * math.ceil(int(8 * embed_dim / 3) / multiple_of)\n"
                "    return hidden if ffn_dim_multiplier is None else int(ffn_dim_multiplier * hidden)\n",
                "after rounding",
            ),
        ],
    }
}

# Correct answers written differently from the solution: each check must accept them.
CORRECT_ANSWERS: dict[str, dict[str, list[str]]] = {
    "11_gated_ffn.ipynb": {
        "swiglu": [_swiglu("self.down_proj(gate / (1 + torch.exp(-gate)) * up)")],
        "geglu": [_geglu(
            "self.down_proj((0.5 * gate * (1 + torch.tanh(math.sqrt(2 / math.pi) * (gate + 0.044715 * gate ** 3))) "
            "if self.approximate == 'tanh' else 0.5 * gate * (1 + torch.erf(gate / math.sqrt(2)))) * up)")],
    },
}
