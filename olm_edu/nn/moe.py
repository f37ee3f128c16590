"""Mixture of experts: many feed-forwards per layer, a router sends each token to a few of them.

A dense layer runs one feed-forward on every token. A mixture-of-experts (MoE) layer holds E
expert feed-forwards and a router; each token runs through only k of them (its "top-k"), so the
parameters grow with E while the work per token grows with k:

    y = shared(x) + sum_{e in chosen(x)} w_e(x) * expert_e(x)

`shared` is the optional always-on part (DeepSeek's shared experts: one feed-forward whose width
is num_shared_experts expert widths). The router scores the experts with one matrix W_r
(num_experts, embed_dim): logits = x W_r^T, and the families differ only in what follows.

    Mixtral, Qwen3-MoE   s = softmax(logits); choose the k largest s; w = s_chosen / sum(s_chosen)
                         (renormalised: Mixtral always, Qwen3 when norm_topk_prob is set)
    DeepSeek-V2          s = softmax(logits); choose the k largest; w = s_chosen, not renormalised,
                         times routed_scaling_factor. Group-limited variant: the experts form G
                         groups, a group is scored by its best expert, and a token may choose only
                         within its best M groups (experts spread over devices: bounded traffic)
    DeepSeek-V3          s = sigmoid(logits); choose the k largest s + b, where b is a per-expert
                         bias used for *choosing only* (it never scales an output); groups scored
                         by the sum of their two best s + b; w = s_chosen / sum(s_chosen), times
                         routed_scaling_factor
    gpt-oss              logits = x W_r^T + b (a learned router bias); choose the k largest logits;
                         w = softmax over those k logits, which is softmax(logits)_chosen
                         renormalised: the Mixtral router plus a bias

`Router` does all of these with options (scoring, renormalize, num_groups, groups_per_token,
group_score, selection_bias, scaling_factor, bias). The router works in float32 (as DeepSeek's does;
Mixtral and Qwen compute the logits in the activations' dtype, which differs only in bf16).

Keeping the experts busy
------------------------
Nothing stops a router from sending every token to the same few experts (the others then never
learn, and in a real deployment the busy ones become the bottleneck). Three remedies:

- Switch load-balancing loss: with f_e the fraction of tokens that chose expert e (over the k
  choices, so sum_e f_e = k) and P_e the mean router probability of e,
      L_balance = E * sum_e f_e P_e
  f is a count (no gradient); the gradient flows through P and pushes probability away from
  busy experts. It equals k when routing is perfectly uniform (transformers' convention:
  `load_balancing_loss_func` of a single layer gives the same number).
- Router z-loss (ST-MoE): L_z = mean over tokens of (logsumexp(logits))^2 keeps the logits
  small, so the softmax stays out of its saturated, unstable range.
- Aux-loss-free balance (DeepSeek-V3): after each training step, nudge the selection bias,
      b_e += gamma * sign(mean load - load_e)
  busy experts become a little harder to choose and idle ones easier, with no loss term
  competing with the language-modelling objective.

`MoE` records what its router did in the last forward (`last_routing`: logits, scores, chosen
experts and weights) and, in training mode, counts the tokens each expert received since the
last bias update. The model sums the losses over its MoE layers (`Transformer.aux_loss`).

Running the experts
-------------------
`Experts` stores the weights of all experts as 3-D tensors (gate_proj and up_proj
(num_experts, hidden_dim, embed_dim), down_proj (num_experts, embed_dim, hidden_dim)), and runs
them two ways that agree to float rounding (gpt-oss adds biases to each expert's three projections
and clamps its SwiGLU, see `clamped_swiglu`):
- "loop": for each expert, gather its tokens, run its feed-forward, add the weighted result
  back (the readable version, and what transformers does);
- "batched": sort the (token, choice) pairs by expert, pad each expert's tokens to the busiest
  expert's count, and run all experts at once with three batched matmuls (faster with many
  small experts; the padding costs memory when the routing is very uneven).

Shapes: x (B, T, embed_dim) -> (B, T, embed_dim)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from olm_edu.choices import check_choice, checked_choice
from olm_edu.nn.activations import get_activation
from olm_edu.nn.ffn import ClassicFFN, GatedFFN

__all__ = [
    "Routing", "Router", "Experts", "MoE", "load_balancing_loss", "router_z_loss", "clamped_swiglu",
    "SCORINGS", "GROUP_SCORES", "MOE_IMPLEMENTATIONS",
]  # fmt: skip

SCORINGS = ("softmax", "sigmoid")
GROUP_SCORES = ("max", "top2_sum")
MOE_IMPLEMENTATIONS = ("loop", "batched")


class Routing(NamedTuple):
    """What a router decided for N tokens.

    weights (N, k) float32: how much each chosen expert's output counts.
    experts (N, k) int64: the chosen experts.
    logits (N, E) float32: x W_r^T, before any scoring.
    scores (N, E) float32: softmax or sigmoid of the logits (without the selection bias).
    """

    weights: torch.Tensor
    experts: torch.Tensor
    logits: torch.Tensor
    scores: torch.Tensor


class Router(nn.Module):
    """Scores the experts for each token and picks `experts_per_token` of them.

    weight: (num_experts, embed_dim); bias: (num_experts,) learned logit bias or None (gpt-oss);
    selection_bias: (num_experts,) buffer or None (it is moved by `MoE.update_bias`, never by
    gradients).

    Shapes: x (N, embed_dim) -> Routing with (N, k) weights and experts
    """

    def __init__(
        self,
        embed_dim: int,
        num_experts: int,
        experts_per_token: int,
        *,
        scoring: str = "softmax",
        renormalize: bool = True,
        num_groups: int = 1,
        groups_per_token: int = 1,
        group_score: str = "max",
        selection_bias: bool = False,
        scaling_factor: float = 1.0,
        bias: bool = False,
    ):
        super().__init__()
        check_choice("scoring", scoring, SCORINGS)
        check_choice("group_score", group_score, GROUP_SCORES)
        if not 1 <= experts_per_token <= num_experts:
            raise ValueError(f"experts_per_token={experts_per_token} must be in [1, num_experts={num_experts}]")
        if num_experts % num_groups or not 1 <= groups_per_token <= num_groups:
            raise ValueError(
                f"num_groups={num_groups} must divide num_experts={num_experts} and "
                f"groups_per_token={groups_per_token} must be in [1, num_groups]"
            )
        self.num_experts, self.experts_per_token = num_experts, experts_per_token
        self.scoring, self.renormalize, self.scaling_factor = scoring, renormalize, scaling_factor
        self.num_groups, self.groups_per_token, self.group_score = num_groups, groups_per_token, group_score
        self.weight = nn.Parameter(torch.empty(num_experts, embed_dim))
        nn.init.normal_(self.weight, std=0.02)
        self.bias = nn.Parameter(torch.zeros(num_experts)) if bias else None
        self.register_buffer("selection_bias", torch.zeros(num_experts) if selection_bias else None)

    def _apply(self, fn, recurse: bool = True):
        # The selection bias moves in steps of ~1e-3, which bfloat16 would round away: like
        # transformers, keep it in float32 whatever dtype the model is cast to (devices still move).
        bias = self.selection_bias
        super()._apply(fn, recurse)
        if bias is not None:
            self.selection_bias = bias.to(device=self.weight.device, dtype=torch.float32)
        return self

    def forward(self, x: torch.Tensor) -> Routing:
        bias = None if self.bias is None else self.bias.float()
        logits = F.linear(x.float(), self.weight.float(), bias)  # (N, E)
        scores = logits.softmax(dim=-1) if self.scoring == "softmax" else logits.sigmoid()
        choosing = scores if self.selection_bias is None else scores + self.selection_bias
        if self.num_groups > 1:
            choosing = self._only_best_groups(choosing)
        experts = choosing.topk(self.experts_per_token, dim=-1).indices  # (N, k)
        weights = scores.gather(-1, experts)  # the bias chose them; the plain scores weigh them
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return Routing(weights * self.scaling_factor, experts, logits, scores)

    def _only_best_groups(self, choosing: torch.Tensor) -> torch.Tensor:
        """Group-limited routing: -inf for every expert outside the token's best groups."""
        grouped = choosing.view(-1, self.num_groups, self.num_experts // self.num_groups)  # (N, G, E/G)
        if self.group_score == "max":
            group_scores = grouped.max(dim=-1).values  # (N, G)
        else:  # DeepSeek-V3: the sum of the group's two best
            group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
        best_groups = group_scores.topk(self.groups_per_token, dim=-1).indices  # (N, M)
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best_groups, True)
        return grouped.masked_fill(~keep[..., None], float("-inf")).flatten(1)  # (N, E)

    def extra_repr(self) -> str:
        parts = [f"experts={self.num_experts}", f"top_k={self.experts_per_token}", f"scoring={self.scoring!r}"]
        parts.append(f"renormalize={self.renormalize}")
        if self.num_groups > 1:
            parts.append(f"groups={self.num_groups}, groups_per_token={self.groups_per_token}")
            parts.append(f"group_score={self.group_score!r}")
        if self.selection_bias is not None:
            parts.append("selection_bias=True")
        if self.bias is not None:
            parts.append("bias=True")
        if self.scaling_factor != 1.0:
            parts.append(f"scaling_factor={self.scaling_factor}")
        return ", ".join(parts)


def clamped_swiglu(gate: torch.Tensor, up: torch.Tensor, limit: float, alpha: float = 1.702) -> torch.Tensor:
    """gpt-oss's SwiGLU: (clamp(up, -limit, limit) + 1) * g * sigmoid(alpha * g), g = min(gate, limit).

    The clamps bound what one expert can write (a gate above the limit stops growing; the up
    projection is kept in [-limit, limit]); alpha = 1.702 makes g * sigmoid(alpha g) the sigmoid
    approximation of GELU; the + 1 lets the up projection start as an identity-like gain.
    """
    gate = gate.clamp(max=limit)
    up = up.clamp(min=-limit, max=limit)
    return (up + 1) * (gate * torch.sigmoid(alpha * gate))


class Experts(nn.Module):
    """num_experts feed-forwards, their weights stacked in 3-D tensors.

    Gated (default): expert_e(x) = down_e(act(gate_e x) * up_e x), as `GatedFFN`;
    gated=False: down_e(act(up_e x)), as `ClassicFFN`. bias=True adds per-expert biases
    gate_proj_bias, up_proj_bias (num_experts, hidden_dim) and down_proj_bias (num_experts,
    embed_dim) (gpt-oss); swiglu_limit replaces act(gate) * up by `clamped_swiglu`.

    Shapes: x (N, embed_dim), experts and weights (N, k) -> (N, embed_dim)
    """

    def __init__(
        self, num_experts: int, embed_dim: int, hidden_dim: int, activation: str = "silu", gated: bool = True,
        *, bias: bool = False, swiglu_limit: float | None = None, swiglu_alpha: float = 1.702,
    ):  # fmt: skip
        super().__init__()
        if swiglu_limit is not None and not gated:
            raise ValueError("swiglu_limit clamps a gated feed-forward: it needs gated=True")
        self.num_experts, self.embed_dim, self.hidden_dim = num_experts, embed_dim, hidden_dim
        self.activation, self.act = activation, get_activation(activation)
        self.swiglu_limit, self.swiglu_alpha = swiglu_limit, swiglu_alpha
        self.gate_proj = nn.Parameter(torch.empty(num_experts, hidden_dim, embed_dim)) if gated else None
        self.up_proj = nn.Parameter(torch.empty(num_experts, hidden_dim, embed_dim))
        self.down_proj = nn.Parameter(torch.empty(num_experts, embed_dim, hidden_dim))
        for weight in (self.gate_proj, self.up_proj, self.down_proj):
            if weight is not None:
                nn.init.normal_(weight, std=0.02)
        self.gate_proj_bias = nn.Parameter(torch.zeros(num_experts, hidden_dim)) if bias and gated else None
        self.up_proj_bias = nn.Parameter(torch.zeros(num_experts, hidden_dim)) if bias else None
        self.down_proj_bias = nn.Parameter(torch.zeros(num_experts, embed_dim)) if bias else None

    def _hidden(self, gate: torch.Tensor | None, up: torch.Tensor) -> torch.Tensor:
        """The expert's hidden activations from its gate and up projections (gate None: classic)."""
        if gate is None:
            return self.act(up)
        if self.swiglu_limit is not None:
            return clamped_swiglu(gate, up, self.swiglu_limit, self.swiglu_alpha)
        return self.act(gate) * up

    @staticmethod
    def _bias(bias: torch.Tensor | None, index: int | torch.Tensor) -> torch.Tensor | None:
        return None if bias is None else bias[index]

    def expert(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Expert `index` on the tokens x (n, embed_dim) -> (n, embed_dim)."""
        up = F.linear(x, self.up_proj[index], self._bias(self.up_proj_bias, index))
        gate = None
        if self.gate_proj is not None:
            gate = F.linear(x, self.gate_proj[index], self._bias(self.gate_proj_bias, index))
        return F.linear(self._hidden(gate, up), self.down_proj[index], self._bias(self.down_proj_bias, index))

    def forward(
        self, x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor, implementation: str = "loop"
    ) -> torch.Tensor:
        check_choice("implementation", implementation, MOE_IMPLEMENTATIONS)
        if implementation == "loop":
            return self._loop(x, experts, weights)
        return self._batched(x, experts, weights)

    def _loop(self, x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for index in experts.unique().tolist():  # only the experts some token chose
            token, slot = torch.where(experts == index)  # which tokens, and which of their k choices
            out.index_add_(0, token, self.expert(index, x[token]) * weights[token, slot, None])
        return out

    def _batched(self, x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        k = experts.shape[1]
        expert_of_pair = experts.flatten()  # (N k,): one (token, choice) pair per routed slot
        order = expert_of_pair.argsort(stable=True)  # pairs grouped by expert
        sorted_expert = expert_of_pair[order]
        counts = torch.bincount(expert_of_pair, minlength=self.num_experts)  # tokens per expert
        first = counts.cumsum(0) - counts  # where each expert's block starts in `order`
        row = torch.arange(order.numel(), device=x.device) - first[sorted_expert]  # place inside the block
        token = order // k
        padded = x.new_zeros(self.num_experts, int(counts.max()), self.embed_dim)  # (E, C, d)
        padded[sorted_expert, row] = x[token]
        up = self._add_bias(padded @ self.up_proj.transpose(1, 2), self.up_proj_bias)  # (E, C, F)
        gate = None
        if self.gate_proj is not None:
            gate = self._add_bias(padded @ self.gate_proj.transpose(1, 2), self.gate_proj_bias)
        y = self._add_bias(self._hidden(gate, up) @ self.down_proj.transpose(1, 2), self.down_proj_bias)  # (E, C, d)
        contribution = y[sorted_expert, row] * weights.flatten()[order, None]  # (N k, d)
        return torch.zeros_like(x).index_add_(0, token, contribution)

    @staticmethod
    def _add_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """(E, C, n) + each expert's bias (E, n) (padding rows get it too; they are never read)."""
        return y if bias is None else y + bias[:, None, :]

    def extra_repr(self) -> str:
        kind = "gated" if self.gate_proj is not None else "classic"
        sizes = f"experts={self.num_experts}, embed_dim={self.embed_dim}, hidden_dim={self.hidden_dim}"
        extras = "" if self.up_proj_bias is None else ", bias=True"
        if self.swiglu_limit is not None:
            extras += f", swiglu_limit={self.swiglu_limit}, swiglu_alpha={self.swiglu_alpha}"
        return f"{sizes}, {kind}, activation={self.activation!r}{extras}"


class MoE(nn.Module):
    """Router + routed experts (+ shared experts): a drop-in replacement for a feed-forward.

    Returns a tensor, so it sits inside `Residual` like any FFN; what the router did is kept on
    the side in `last_routing` (see `Routing`), and `load_balancing_loss()`, `z_loss()`,
    `expert_load()` read it. In training mode `tokens_per_expert` counts the routed tokens since
    the last `update_bias` (the aux-loss-free balance of DeepSeek-V3).

    Shapes: x (B, T, embed_dim) -> (B, T, embed_dim)
    """

    implementation = checked_choice("implementation", MOE_IMPLEMENTATIONS)

    def __init__(
        self,
        embed_dim: int,
        num_experts: int,
        experts_per_token: int,
        hidden_dim: int,
        *,
        num_shared_experts: int = 0,
        activation: str = "silu",
        gated: bool = True,
        shared_bias: bool = False,
        scoring: str = "softmax",
        renormalize: bool = True,
        num_groups: int = 1,
        groups_per_token: int = 1,
        group_score: str = "max",
        selection_bias: bool = False,
        scaling_factor: float = 1.0,
        implementation: str = "loop",
        router_bias: bool = False,
        expert_bias: bool = False,
        swiglu_limit: float | None = None,
        swiglu_alpha: float = 1.702,
    ):
        super().__init__()
        self.router = Router(
            embed_dim, num_experts, experts_per_token, scoring=scoring, renormalize=renormalize,
            num_groups=num_groups, groups_per_token=groups_per_token, group_score=group_score,
            selection_bias=selection_bias, scaling_factor=scaling_factor, bias=router_bias,
        )  # fmt: skip
        self.experts = Experts(
            num_experts, embed_dim, hidden_dim, activation, gated, bias=expert_bias, swiglu_limit=swiglu_limit,
            swiglu_alpha=swiglu_alpha,
        )  # fmt: skip
        self.shared_experts = None
        if num_shared_experts:
            kind = GatedFFN if gated else ClassicFFN
            self.shared_experts = kind(embed_dim, num_shared_experts * hidden_dim, activation=activation, bias=shared_bias)
        self.implementation = implementation
        self.last_routing: Routing | None = None
        self.register_buffer("tokens_per_expert", torch.zeros(num_experts, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # (N, d), N = B * T
        routing = self.router(flat)
        self.last_routing = routing
        if self.training:
            self.tokens_per_expert += torch.bincount(routing.experts.flatten(), minlength=self.router.num_experts)
        out = self.experts(flat, routing.experts, routing.weights.to(x.dtype), self.implementation)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        return out.view_as(x)

    def _routing(self) -> Routing:
        if self.last_routing is None:
            raise RuntimeError("this MoE layer has not run yet: call the model on a batch first")
        return self.last_routing

    def expert_load(self) -> torch.Tensor:
        """(num_experts,) fraction of the last forward's routed choices each expert received (sums to 1)."""
        experts = self._routing().experts
        return torch.bincount(experts.flatten(), minlength=self.router.num_experts) / experts.numel()

    def load_balancing_loss(self) -> torch.Tensor:
        """The Switch loss of the last forward (see `load_balancing_loss`)."""
        routing = self._routing()
        return load_balancing_loss(routing.scores, routing.experts)

    def z_loss(self) -> torch.Tensor:
        """The router z-loss of the last forward (see `router_z_loss`)."""
        return router_z_loss(self._routing().logits)

    @torch.no_grad()
    def update_bias(self, rate: float) -> None:
        """Aux-loss-free balance: b_e += rate * sign(mean load - load_e), over the tokens counted
        since the last update; then start counting again. Needs selection_bias=True."""
        bias = self.router.selection_bias
        if bias is None:
            raise ValueError("update_bias needs a router with selection_bias=True (DeepSeek-V3's router)")
        load = self.tokens_per_expert.float()
        bias += rate * torch.sign(load.mean() - load)
        self.tokens_per_expert.zero_()

    def extra_repr(self) -> str:
        return f"implementation={self.implementation!r}"


def load_balancing_loss(scores: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Switch Transformer's auxiliary loss for one layer: E * sum_e f_e P_e.

    scores (N, E): router scores (softmax; sigmoid scores are normalised to sum to 1 per token
    first, as DeepSeek does). experts (N, k): the chosen experts.
    f_e = (tokens that chose e) / N (sums to k); P_e = mean normalised score of e.
    Uniform routing gives k; sending every token to the same k experts, with all the
    probability on them, gives E (its largest value).

    Shapes: -> () float32
    """
    num_tokens, num_experts = scores.shape
    fraction = torch.bincount(experts.flatten(), minlength=num_experts).to(scores.dtype) / num_tokens  # (E,)
    probability = (scores / scores.sum(dim=-1, keepdim=True)).mean(dim=0)  # (E,)
    return num_experts * (fraction * probability).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE's router z-loss: mean over tokens of logsumexp(logits)^2. Shapes: (N, E) -> ()."""
    return torch.logsumexp(logits, dim=-1).square().mean()
