"""Lesson 20's checks accept correct answers written differently from the solutions."""

from __future__ import annotations

import torch

from olm_edu.analysis import count_params
from olm_edu.checks import gpt_oss as check
from olm_edu.nn.attention import _softmax_with_sink
from olm_edu.nn.moe import clamped_swiglu as library_swiglu


def test_sink_softmax_accepts_a_log_sum_exp_formulation_and_the_library():
    def by_logsumexp(scores: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
        log_denominator = torch.logaddexp(torch.logsumexp(scores, -1, keepdim=True), sinks.view(1, -1, 1, 1))
        return torch.exp(scores - log_denominator)

    check.sink_softmax(by_logsumexp, hidden=True, seed=0)
    check.sink_softmax(_softmax_with_sink, hidden=True, seed=1)


def test_clamped_swiglu_accepts_minimum_and_maximum_and_the_library():
    def by_min_max(gate, up, limit, alpha=1.702):
        g = torch.minimum(gate, torch.tensor(limit))
        u = torch.maximum(torch.minimum(up, torch.tensor(limit)), torch.tensor(-limit))
        return u * g * torch.sigmoid(alpha * g) + g * torch.sigmoid(alpha * g)

    check.clamped_swiglu(by_min_max, hidden=True, seed=0)
    check.clamped_swiglu(library_swiglu, hidden=True, seed=1)


def test_gpt_oss_experts_accepts_a_dense_renormalised_formulation():
    def dense(x, router_weight, router_bias, gate_up_proj, gate_up_bias, down_proj, down_bias, k, limit):
        probabilities = torch.softmax(x @ router_weight.T + router_bias, dim=-1)  # all experts, then renormalise
        chosen, experts = probabilities.topk(k, dim=-1)
        gates = torch.zeros_like(probabilities).scatter(1, experts, chosen / chosen.sum(-1, keepdim=True))
        h = torch.einsum("nd,edf->enf", x, gate_up_proj) + gate_up_bias[:, None]
        y = torch.einsum("enf,efd->end", library_swiglu(h[..., ::2], h[..., 1::2], limit), down_proj) + down_bias[:, None]
        return torch.einsum("ne,end->nd", gates, y)

    check.gpt_oss_experts(dense, hidden=True, seed=0)


def test_card_bytes_accepts_a_count_by_component():
    def by_component(cfg) -> int:
        count = count_params(cfg)
        expert_values = cfg.num_layers * cfg.num_experts * 3 * cfg.embed_dim * cfg.expert_width
        rest = count.total - expert_values
        return int(17 * ((expert_values + 31) // 32) + 2 * rest)

    check.card_bytes(by_component, hidden=True, seed=0)
