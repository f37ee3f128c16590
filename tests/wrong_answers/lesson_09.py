"""Wrong answers for lesson 09 (RMSNorm; Llama's and Gemma's precision conventions)."""

_RMS_NORM = '''
class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)){extra}

    def forward(self, x):
        {body}
'''


def _rms_norm(body: str, extra: str = "") -> str:
    return _RMS_NORM.format(body=body.strip().replace("\n", "\n        "), extra=extra)


def _function(name: str, body: str) -> str:
    lines = body.strip().replace("\n", "\n    ")
    return f"def {name}(x, weight, eps=1e-6):\n    x32 = x.float()\n    {lines}\n"


NORMALISED = "normalised = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)"

WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "09_rmsnorm.ipynb": {
        "rms_norm": [
            (_rms_norm("x = x - x.mean(dim=-1, keepdim=True)\n"
                       "return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight"),
             "you subtracted the mean: that is LayerNorm"),
            (_rms_norm("return x / (torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True)) + self.eps) * self.weight"),
             "you added eps outside the square root"),
            (_rms_norm("return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True)) * self.weight"),
             "you left eps out"),
            (_rms_norm("return F.normalize(x, dim=-1) * x.shape[-1] ** 0.5 * self.weight"),
             "you left eps out"),
            (_rms_norm("return x / (x.norm(dim=-1, keepdim=True) + self.eps) * self.weight"),
             "you divided by the L2 norm"),
            (_rms_norm("return x * torch.rsqrt(x.pow(2).mean(dim=0, keepdim=True) + self.eps) * self.weight"),
             "you normalised over dimension 0"),
            (_rms_norm("return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight + self.bias",
                       extra="\n        self.bias = nn.Parameter(torch.zeros(dim))"),
             "RMSNorm has no bias"),
            (_rms_norm("return F.rms_norm(x, x.shape[-1:], self.weight, self.eps)"),
             "which is not allowed here"),
        ],
        "llama_rms_norm": [
            (_function("llama_rms_norm", f"{NORMALISED}\nreturn (normalised * weight.float()).to(x.dtype)"),
             "that is Gemma's order"),
            (_function("llama_rms_norm", "return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight"),
             "you computed in x's own dtype"),
            (_function("llama_rms_norm", f"{NORMALISED}\nreturn weight * normalised"),
             "your output is torch.float32, it should be torch.bfloat16"),
            (_function("llama_rms_norm", "x32.mul_(torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps))\n"
                       "return weight * x32.to(x.dtype)"),
             "changed its input x in place"),
            (_function("llama_rms_norm", "x32 = x32 - x32.mean(dim=-1, keepdim=True)\n"
                       f"{NORMALISED}\nreturn weight * normalised.to(x.dtype)"),
             "you subtracted the mean: that is LayerNorm"),
        ],
        "gemma_rms_norm": [
            (_function("gemma_rms_norm", f"{NORMALISED}\nreturn (normalised * weight.float()).to(x.dtype)"),
             "you multiplied by weight; Gemma stores the scale as an offset from 1"),
            (_function("gemma_rms_norm", f"{NORMALISED}\nreturn normalised.to(x.dtype) * (1 + weight)"),
             "you cast the normalised x to x.dtype before multiplying"),
            (_function("gemma_rms_norm", f"{NORMALISED}\nreturn (normalised * (1 + weight).float()).to(x.dtype)"),
             "you computed 1 + weight in bfloat16"),
            (_function("gemma_rms_norm", f"{NORMALISED}\nreturn normalised * (1.0 + weight.float())"),
             "your output is torch.float32, it should be torch.bfloat16"),
        ],
    },
}
