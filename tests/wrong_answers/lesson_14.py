"""Wrong answers for lesson 14 — Qwen and stability."""

_ATTENTION_HEAD = '''
from torch import nn
from torch.nn import functional as F
from olm_edu.nn import RMSNorm, RotaryEmbedding, apply_rotary, repeat_kv


class QKNormAttention(nn.Module):
    def __init__(self, embed_dim, num_heads, num_kv_heads, head_dim, rope_theta=1_000_000.0, eps=1e-6,
                 max_seq_len=4096):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_proj = nn.Linear(embed_dim, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(embed_dim, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(embed_dim, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, embed_dim, bias=False)
        self.q_norm = RMSNorm(head_dim, eps)
        self.k_norm = RMSNorm(head_dim, eps)
        self.rotary = RotaryEmbedding(head_dim, rope_theta, max_seq_len=max_seq_len)

    def forward(self, x):
        B, T, _ = x.shape
        H, H_kv, d = self.num_heads, self.num_kv_heads, self.head_dim
'''
_SPLIT = '''
        q = self.q_proj(x).view(B, T, H, d).transpose(1, 2)
        k = self.k_proj(x).view(B, T, H_kv, d).transpose(1, 2)
'''
_VALUES = "        v = self.v_proj(x).view(B, T, H_kv, d).transpose(1, 2)\n"
_ROPE = '''
        cos, sin = self.rotary(torch.arange(T))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
'''
_ATTEND = '''
        k, v = repeat_kv(k, H // H_kv), repeat_kv(v, H // H_kv)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, H * d))
'''
_Z_LOSS_HEAD = "def z_loss(logits):\n"
_SOFTCAP_HEAD = "def softcap(x, cap):\n    if cap is None:\n        return x\n"

WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "14_qwen_stability.ipynb": {
        "qk_norm_attention": [
            (  # the required one: the norms after the rotation
                _ATTENTION_HEAD + _SPLIT + _VALUES + _ROPE + "        q, k = self.q_norm(q), self.k_norm(k)\n" + _ATTEND,
                "you applied QK-norm AFTER RoPE",
            ),
            (  # one norm for both
                _ATTENTION_HEAD + _SPLIT + _VALUES + "        q, k = self.q_norm(q), self.q_norm(k)\n" + _ROPE + _ATTEND,
                "one norm shared by queries and keys",
            ),
            (  # normalised over the whole projection (all heads together), then the per-head gain
                _ATTENTION_HEAD
                + "        q, k = self.q_proj(x), self.k_proj(x)\n"
                "        q = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + 1e-6)\n"
                "        k = k * torch.rsqrt(k.pow(2).mean(-1, keepdim=True) + 1e-6)\n"
                "        q = q.view(B, T, H, d).transpose(1, 2) * self.q_norm.weight\n"
                "        k = k.view(B, T, H_kv, d).transpose(1, 2) * self.k_norm.weight\n" + _VALUES + _ROPE + _ATTEND,
                "all heads together",
            ),
            (  # tiled instead of grouped key/value heads
                _ATTENTION_HEAD + _SPLIT + _VALUES + "        q, k = self.q_norm(q), self.k_norm(k)\n" + _ROPE
                + "        k, v = k.repeat(1, H // H_kv, 1, 1), v.repeat(1, H // H_kv, 1, 1)\n"
                "        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)\n"
                "        return self.o_proj(out.transpose(1, 2).reshape(B, T, H * d))\n",
                "repeated in the wrong order",
            ),
            (  # the head width taken from embed_dim, not the head_dim argument
                _ATTENTION_HEAD.replace("H, H_kv, d = self.num_heads, self.num_kv_heads, self.head_dim",
                                        "H, H_kv = self.num_heads, self.num_kv_heads\n        d = x.shape[-1] // H")
                + _SPLIT + _VALUES + "        q, k = self.q_norm(q), self.k_norm(k)\n" + _ROPE + _ATTEND,
                "here head_dim=16 is not embed_dim // num_heads = 8",
            ),
        ],
        "z_loss": [
            (_Z_LOSS_HEAD + "    return torch.logsumexp(logits, dim=-1).mean()\n", "you did not square log Z"),
            (_Z_LOSS_HEAD + "    return torch.logsumexp(logits, dim=-1).square().sum()\n", "you summed (log Z)^2"),
            (_Z_LOSS_HEAD + "    return logits.exp().sum(dim=-1).log().square().mean()\n", "exp(100) overflows float32"),
            (_Z_LOSS_HEAD + "    return logits.square().mean()\n", "you penalised the squared logits"),
            (  # stable, but shifts the caller's logits in place
                _Z_LOSS_HEAD + "    top = logits.amax(dim=-1, keepdim=True)\n    logits -= top\n"
                "    return (top.squeeze(-1) + logits.exp().sum(dim=-1).log()).square().mean()\n",
                "changed the logits it was given",
            ),
        ],
        "softcap": [
            (_SOFTCAP_HEAD + "    return cap * torch.tanh(x)\n", "without dividing by the cap"),
            (_SOFTCAP_HEAD + "    return torch.tanh(x / cap)\n", "forgot to multiply by the cap"),
            (_SOFTCAP_HEAD + "    return x.clamp(-cap, cap)\n", "you clamped x"),
            ("def softcap(x, cap):\n    return cap * torch.tanh(x / cap)\n", "models without soft-capping pass cap=None"),
            (_SOFTCAP_HEAD + "    return x.div_(cap).tanh_().mul_(cap)\n", "changed x in place"),
        ],
    },
}

# Correct answers written differently from the solution: each check must accept them.
CORRECT_ANSWERS: dict[str, dict[str, list[str]]] = {
    "14_qwen_stability.ipynb": {
        "qk_norm_attention": [  # unflatten/movedim, explicit attention with a mask, heads merged with flatten
            _ATTENTION_HEAD
            + "        q = self.q_proj(x).unflatten(-1, (H, d)).movedim(2, 1)\n"
            "        k = self.k_proj(x).unflatten(-1, (H_kv, d)).movedim(2, 1)\n"
            "        v = self.v_proj(x).unflatten(-1, (H_kv, d)).movedim(2, 1)\n"
            "        q, k = self.q_norm(q), self.k_norm(k)\n" + _ROPE
            + "        k, v = repeat_kv(k, H // H_kv), repeat_kv(v, H // H_kv)\n"
            "        scores = q @ k.transpose(-2, -1) / d ** 0.5\n"
            "        future = torch.ones(T, T, dtype=torch.bool).triu(1)\n"
            "        weights = scores.masked_fill(future, float('-inf')).softmax(dim=-1)\n"
            "        return self.o_proj((weights @ v).transpose(1, 2).flatten(2))\n",
        ],
        "z_loss": [  # the log-sum-exp written out with the row maximum, on a new tensor
            _Z_LOSS_HEAD + "    top = logits.amax(dim=-1, keepdim=True)\n"
            "    log_z = top.squeeze(-1) + (logits - top).exp().sum(dim=-1).log()\n"
            "    return (log_z * log_z).sum() / log_z.numel()\n",
        ],
        "softcap": [_SOFTCAP_HEAD + "    return cap * (2 * torch.sigmoid(2 * x / cap) - 1)\n"],  # tanh t = 2 sigmoid(2t) - 1
    },
}
