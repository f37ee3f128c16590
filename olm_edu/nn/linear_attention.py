"""Linear attention with the gated delta rule: Gated DeltaNet (Qwen3-Next, Qwen3.5) and Kimi Delta Attention.

Softmax attention keeps every past key and value and compares the query with all of them: the
cache grows with the context and each token costs O(T). Drop the softmax and the sum
o_t = sum_{s<=t} (q_t . k_s) v_s regroups as o_t = S_t^T q_t with S_t = sum_{s<=t} k_s v_s^T: a
fixed-size matrix state (d_k, d_v) per head, updated once per token. That is linear attention.

The delta rule: write the correction, not the value
---------------------------------------------------
Read S as an associative memory that should map each key to its value. Adding k v^T blindly
piles new values on top of whatever the memory already returns for k. The delta rule is one step
of online least squares on the loss L(S) = 1/2 ||S^T k_t - v_t||^2, with learning rate beta_t:

    S_t = S_{t-1} - beta_t k_t (S_{t-1}^T k_t - v_t)^T
        = S_{t-1} + k_t u_t^T,    u_t = beta_t (v_t - S_{t-1}^T k_t)      (the correction)

With a unit-norm key and beta_t = 1 the memory then returns exactly v_t for k_t: the old
association is overwritten, not accumulated. beta_t = sigmoid(b_t) is computed per token and
head ("write strength").

Gating: forget, then correct
----------------------------
A memory that never forgets fills up. The gated delta rule first decays the state, then applies
the delta rule on the decayed state:

    S'_t = diag(alpha_t) S_{t-1}                         alpha_t = exp(g_t) in (0, 1]
    S_t  = S'_t + k_t u_t^T,  u_t = beta_t (v_t - S'_t^T k_t)
    o_t  = S_t^T q_t

g_t is a log-decay (<= 0), computed as in Mamba-2 from a per-token projection a_t:

    g_t = -exp(A_log) * softplus(a_t + dt_bias)

- Gated DeltaNet (Qwen3-Next, Qwen3.5; decay="per_head"): one scalar per head and token, so
  alpha_t multiplies the whole state.
- Kimi Delta Attention (decay="per_channel"): one decay per head, token *and key channel*
  (d_k of them), so each row of the state forgets at its own rate; a_t comes from a low-rank
  projection (embed_dim -> d_k -> heads * d_k).

Around the core: the queries, keys and values first pass a short causal depthwise convolution
(kernel 4, each channel mixes its own last 4 inputs, then SiLU); queries and keys are
L2-normalised per head (q also scaled by d_k^-1/2), which keeps the delta rule stable. The
output of each head goes through a gated RMSNorm, norm(o) * weight * act(gate), with a gate
projected from the input (SiLU for Qwen, sigmoid for Kimi), then o_proj mixes the heads.
Grouped heads (Qwen): num_value_heads may be a multiple of num_key_heads; each query/key head
then serves num_value_heads // num_key_heads consecutive value heads.

Two ways to compute the same thing
----------------------------------
`recurrent_delta_rule`: the loop above, one token at a time. It is how decoding runs (one new
token, the state carried in the cache) and the definition the other form is tested against.

`chunked_delta_rule`: for training and prefill, cut the sequence into chunks of C tokens. Inside
a chunk, with G_t the cumulative log-decay since the chunk started and S_0 the incoming state,
the corrections satisfy a triangular linear system

    u_t + sum_{j<t} beta_t (k_t . k_j)_{decayed by G_t - G_j} u_j = beta_t v_t - beta_t (e^{G_t} k_t)^T S_0

so U = T^{-1}(beta V) - T^{-1}(beta e^{G} K) S_0 with T unit lower triangular (solved with a
triangular solve, in matmuls). Then, for every token of the chunk at once,

    o_t = (e^{G_t} q_t)^T S_0 + sum_{j<=t} (q_t . k_j)_{decayed by G_t - G_j} u_j
    S_C = e^{G_C} S_0 + sum_j e^{G_C - G_j} k_j u_j^T

Only the chunks are sequential: T/C steps of matmuls instead of T steps of vector operations.
Both forms agree to float32 rounding (tested), for any chunk size and any sequence length.

Shapes: x (B, T, embed_dim) -> (B, T, embed_dim). Inside: q, k (B, H, T, d_k), v (B, H, T, d_v)
with H = num_value_heads; log-decay g (B, H, T) per head or (B, H, T, d_k) per channel;
beta (B, H, T); state (B, H, d_k, d_v); conv state (B, channels, kernel - 1).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from olm_edu.choices import check_choice, checked_choice
from olm_edu.nn.activations import get_activation
from olm_edu.nn.blocks import Context

__all__ = [
    "LinearAttention", "GatedRMSNorm", "recurrent_delta_rule", "chunked_delta_rule", "l2_normalize",
    "DECAYS", "LINEAR_IMPLEMENTATIONS", "VARIANTS",
]  # fmt: skip

DECAYS = ("per_head", "per_channel")
LINEAR_IMPLEMENTATIONS = ("chunked", "recurrent")
# The option bundles of the published mixers (config knob `linear_attention`).
VARIANTS = {
    "gated_deltanet": dict(decay="per_head", gate_activation="silu", low_rank=False),  # Qwen3-Next, Qwen3.5
    "kimi_delta": dict(decay="per_channel", gate_activation="sigmoid", low_rank=True),  # Kimi Linear
}


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum(x^2) + eps) over the last dimension (the eps inside the root, as FLA's kernels)."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def _per_channel(g: torch.Tensor) -> torch.Tensor:
    """Log-decay (B, H, T) or (B, H, T, d_k) -> (B, H, T, d_k or 1), broadcastable over key channels."""
    return g[..., None] if g.dim() == 3 else g


def recurrent_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule one token at a time (q, k already normalised and q scaled).

    For each t: S <- diag(exp(g_t)) S;  u = beta_t (v_t - S^T k_t);  S <- S + k_t u^T;  o_t = S^T q_t.

    Shapes: q, k (B, H, T, d_k), v (B, H, T, d_v), g (B, H, T) or (B, H, T, d_k), beta (B, H, T),
        state (B, H, d_k, d_v) or None (zeros) -> out (B, H, T, d_v), final state (B, H, d_k, d_v)
    All in float32.
    """
    batch, heads, length, key_dim = k.shape
    if state is None:
        state = q.new_zeros(batch, heads, key_dim, v.shape[-1])
    decay = _per_channel(g).exp()  # (B, H, T, d_k or 1)
    outputs = []
    for t in range(length):
        state = state * decay[:, :, t, :, None]  # forget: each key row scaled by its decay
        predicted = (state * k[:, :, t, :, None]).sum(dim=-2)  # S^T k: what the memory returns for k_t
        correction = beta[:, :, t, None] * (v[:, :, t] - predicted)  # (B, H, d_v)
        state = state + k[:, :, t, :, None] * correction[:, :, None, :]
        outputs.append((state * q[:, :, t, :, None]).sum(dim=-2))  # S^T q_t
    return torch.stack(outputs, dim=2), state


def chunked_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule chunk by chunk (see the module doc); equal to `recurrent_delta_rule`.

    The last chunk may be shorter than chunk_size: nothing is padded.
    Shapes as `recurrent_delta_rule`.
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive int")
    batch, heads, length, key_dim = k.shape
    if state is None:
        state = q.new_zeros(batch, heads, key_dim, v.shape[-1])
    per_channel = g.dim() == 4
    outputs = []
    for start in range(0, length, chunk_size):
        part = slice(start, min(start + chunk_size, length))
        q_c, k_c, v_c, b_c = q[:, :, part], k[:, :, part], v[:, :, part], beta[:, :, part, None]
        size = q_c.shape[2]
        cum = _per_channel(g[:, :, part]).cumsum(dim=2)  # G_t: (B, H, C, d_k or 1)
        causal = torch.ones(size, size, dtype=torch.bool, device=q.device).tril()  # j <= t
        if per_channel:  # (q_t . k_j) weighted channel by channel by exp(G_t - G_j)
            between = (cum[:, :, :, None, :] - cum[:, :, None, :, :]).masked_fill(~causal[..., None], float("-inf")).exp()

            def decayed_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                return torch.einsum("bhtc,bhjc,bhtjc->bhtj", a, b, between)
        else:  # one scalar per token: exp(G_t - G_j) factors out of the dot product
            between = (cum[..., 0, None] - cum[..., 0][:, :, None, :]).masked_fill(~causal, float("-inf")).exp()

            def decayed_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                return (a @ b.transpose(-1, -2)) * between

        # T = I + strictly-lower(beta_t (k_t . k_j)_decayed); U = T^{-1} (beta V) - T^{-1} (beta e^G K) S_0
        system = decayed_dot(k_c * b_c, k_c).tril(-1) + torch.eye(size, dtype=q.dtype, device=q.device)
        values = torch.linalg.solve_triangular(system, v_c * b_c, upper=False, unitriangular=True)
        keys_read = torch.linalg.solve_triangular(system, k_c * b_c * cum.exp(), upper=False, unitriangular=True)
        corrections = values - keys_read @ state  # U: (B, H, C, d_v)
        outputs.append((q_c * cum.exp()) @ state + decayed_dot(q_c, k_c) @ corrections)
        to_end = (cum[:, :, -1:] - cum).exp()  # exp(G_C - G_j)
        state = state * cum[:, :, -1, :, None].exp() + (k_c * to_end).transpose(-1, -2) @ corrections
    return torch.cat(outputs, dim=2), state


class GatedRMSNorm(nn.Module):
    """RMSNorm of each head's output, times act(gate): y = x / rms(x) * weight * act(gate).

    activation "silu" (Qwen3-Next, Qwen3.5: the weight multiplies after the cast back to x's
    dtype) or "sigmoid" (Kimi: everything in float32, cast at the end). The same in float32.

    Shapes: x, gate (..., dim) -> (..., dim)
    """

    def __init__(self, dim: int, eps: float = 1e-6, activation: str = "silu"):
        super().__init__()
        check_choice("activation", activation, ("silu", "sigmoid"))
        self.eps, self.activation = eps, activation
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.activation == "silu":
            return (self.weight * normed.to(x.dtype) * F.silu(gate.float())).to(x.dtype)
        return (self.weight.float() * normed * torch.sigmoid(gate.float())).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, activation={self.activation!r}"


class LinearAttention(nn.Module):
    """The gated delta rule as a token mixer, in the attention slot of a layer (see the module doc).

    num_key_heads query/key heads of key_head_dim, num_value_heads value heads of value_head_dim
    (a multiple of num_key_heads). decay: "per_head" (Gated DeltaNet) or "per_channel" (Kimi
    Delta Attention). low_rank: the decay and output-gate projections go through a bottleneck of
    key_head_dim (Kimi) instead of straight from embed_dim (Qwen). gate_activation: of the gated
    norm. chunk_size: of the chunked form. implementation: "chunked" or "recurrent" (a single
    cached token always runs the recurrence).

    Parameters: q_proj, k_proj, v_proj; conv1d (one depthwise kernel per q/k/v channel, in that
    order); beta_proj; decay_proj (or decay_down, decay_up), A_log (H,), dt_bias (H, or H * d_k
    per channel); gate_proj (or gate_down, gate_up); norm (GatedRMSNorm over d_v); o_proj.
    """

    uses_context = True

    def __init__(
        self,
        embed_dim: int,
        num_key_heads: int,
        num_value_heads: int | None = None,
        key_head_dim: int = 128,
        value_head_dim: int | None = None,
        *,
        conv_kernel: int = 4,
        activation: str = "silu",
        decay: str = "per_head",
        low_rank: bool = False,
        gate_activation: str = "silu",
        norm_eps: float = 1e-6,
        chunk_size: int = 64,
        implementation: str = "chunked",
        layer_index: int = 0,
    ):
        super().__init__()
        num_value_heads = num_key_heads if num_value_heads is None else num_value_heads
        value_head_dim = key_head_dim if value_head_dim is None else value_head_dim
        check_choice("decay", decay, DECAYS)
        if num_value_heads % num_key_heads:
            raise ValueError(f"num_value_heads={num_value_heads} must be a multiple of num_key_heads={num_key_heads}")
        if not isinstance(conv_kernel, int) or conv_kernel < 1:
            raise ValueError(f"conv_kernel={conv_kernel!r} must be a positive int")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size!r} must be a positive int")
        self.num_key_heads, self.num_value_heads = num_key_heads, num_value_heads
        self.key_head_dim, self.value_head_dim = key_head_dim, value_head_dim
        self.decay, self.low_rank, self.chunk_size, self.layer_index = decay, low_rank, chunk_size, layer_index
        self.conv_kernel, self.activation, self.act = conv_kernel, activation, get_activation(activation)
        self.implementation = implementation  # validated by the setter
        key_width, value_width = num_key_heads * key_head_dim, num_value_heads * value_head_dim
        decay_width = num_value_heads * (key_head_dim if decay == "per_channel" else 1)

        self.q_proj = nn.Linear(embed_dim, key_width, bias=False)
        self.k_proj = nn.Linear(embed_dim, key_width, bias=False)
        self.v_proj = nn.Linear(embed_dim, value_width, bias=False)
        channels = 2 * key_width + value_width
        self.conv1d = nn.Conv1d(channels, channels, conv_kernel, groups=channels, bias=False)
        self.beta_proj = nn.Linear(embed_dim, num_value_heads, bias=False)
        if low_rank:
            self.decay_down = nn.Linear(embed_dim, key_head_dim, bias=False)
            self.decay_up = nn.Linear(key_head_dim, decay_width, bias=False)
            self.gate_down = nn.Linear(embed_dim, value_head_dim, bias=False)
            self.gate_up = nn.Linear(value_head_dim, value_width, bias=False)
        else:
            self.decay_proj = nn.Linear(embed_dim, decay_width, bias=False)
            self.gate_proj = nn.Linear(embed_dim, value_width, bias=False)
        # Mamba-2's initialisation: A in [1, 16] (decay rates), dt_bias = 1 (transformers' Qwen3-Next init)
        self.A_log = nn.Parameter(torch.empty(num_value_heads).uniform_(1.0, 16.0).log())
        self.dt_bias = nn.Parameter(torch.ones(decay_width))
        self.norm = GatedRMSNorm(value_head_dim, norm_eps, gate_activation)
        self.o_proj = nn.Linear(value_width, embed_dim, bias=False)

    implementation = checked_choice("implementation", LINEAR_IMPLEMENTATIONS)

    @property
    def conv_channels(self) -> int:
        return self.conv1d.weight.shape[0]

    def log_decay(self, x: torch.Tensor) -> torch.Tensor:
        """g = -exp(A_log) * softplus(a + dt_bias), in float32. (B, T, d) -> (B, H, T) or (B, H, T, d_k)."""
        a = self.decay_up(self.decay_down(x)) if self.low_rank else self.decay_proj(x)
        batch, length, _ = x.shape
        a = a.float().view(batch, length, self.num_value_heads, -1)  # (B, T, H, 1 or d_k)
        bias = self.dt_bias.float().view(self.num_value_heads, -1)
        g = -self.A_log.float().exp()[:, None] * F.softplus(a + bias)
        g = g.transpose(1, 2)  # (B, H, T, 1 or d_k)
        return g[..., 0] if self.decay == "per_head" else g

    def _convolve(self, mixed: torch.Tensor, conv_state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal depthwise conv + activation. mixed (B, C, T); conv_state (B, C, K-1): the last
        K-1 inputs before this call (zeros at the start). Returns (out (B, C, T), new conv state)."""
        batch, channels, length = mixed.shape
        if conv_state is None:
            conv_state = mixed.new_zeros(batch, channels, self.conv_kernel - 1)
        padded = torch.cat([conv_state.to(mixed.dtype), mixed], dim=-1)  # (B, C, K - 1 + T)
        out = F.conv1d(padded, self.conv1d.weight, groups=channels)  # (B, C, T)
        return self.act(out), padded[:, :, padded.shape[-1] - (self.conv_kernel - 1) :]

    def forward(self, x: torch.Tensor, context: Context | None = None) -> torch.Tensor:
        batch, length, _ = x.shape
        cache = context.cache if context is not None else None
        conv_state, state = cache.get_state(self.layer_index) if cache is not None else (None, None)

        mixed = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1).transpose(1, 2)  # (B, C, T)
        mixed, conv_state = self._convolve(mixed, conv_state)
        key_width = self.num_key_heads * self.key_head_dim
        q, k, v = mixed.transpose(1, 2).split([key_width, key_width, self.num_value_heads * self.value_head_dim], dim=-1)
        q = q.reshape(batch, length, self.num_key_heads, self.key_head_dim).transpose(1, 2).float()
        k = k.reshape(batch, length, self.num_key_heads, self.key_head_dim).transpose(1, 2).float()
        v = v.reshape(batch, length, self.num_value_heads, self.value_head_dim).transpose(1, 2).float()
        groups = self.num_value_heads // self.num_key_heads  # each q/k head serves `groups` consecutive value heads
        if groups > 1:
            q, k = q.repeat_interleave(groups, dim=1), k.repeat_interleave(groups, dim=1)
        q = l2_normalize(q) * self.key_head_dim**-0.5
        k = l2_normalize(k)
        beta = torch.sigmoid(self.beta_proj(x)).float().transpose(1, 2)  # (B, H, T)
        g = self.log_decay(x)

        if self.implementation == "recurrent" or (state is not None and length == 1):
            out, state = recurrent_delta_rule(q, k, v, g, beta, state)
        else:
            out, state = chunked_delta_rule(q, k, v, g, beta, state, self.chunk_size)
        if cache is not None:
            cache.set_state(self.layer_index, conv_state, state)

        out = out.transpose(1, 2).to(x.dtype)  # (B, T, H, d_v)
        gate = self.gate_up(self.gate_down(x)) if self.low_rank else self.gate_proj(x)
        out = self.norm(out, gate.view(batch, length, self.num_value_heads, self.value_head_dim))
        return self.o_proj(out.reshape(batch, length, -1))

    def state_numel(self, batch_size: int = 1) -> int:
        """Numbers a cache keeps for this layer, whatever the context length: the conv state
        (channels * (kernel - 1)) plus the recurrent state (H * d_k * d_v), per sequence."""
        conv = self.conv_channels * (self.conv_kernel - 1)
        return batch_size * (conv + self.num_value_heads * self.key_head_dim * self.value_head_dim)

    def extra_repr(self) -> str:
        return (
            f"key_heads={self.num_key_heads}, value_heads={self.num_value_heads}, key_head_dim={self.key_head_dim}, "
            f"value_head_dim={self.value_head_dim}, decay={self.decay!r}, low_rank={self.low_rank}, "
            f"chunk_size={self.chunk_size}, implementation={self.implementation!r}"
        )
