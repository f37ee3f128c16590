"""Lesson 23's checks accept the library's pieces and correct answers written differently, and the
references agree with olm_edu's indexer, attention and FLOP count (built independently of them)."""

from __future__ import annotations

import pytest
import torch

from olm_edu.analysis import flops_per_token
from olm_edu.checks import sparse_attention as check
from olm_edu.models.presets import preset
from olm_edu.nn.attention import attend, attention_mask
from olm_edu.nn.indexer import top_k_mask


def _allowed(scores: torch.Tensor) -> torch.Tensor:
    t_q, t_k = scores.shape[-2:]
    return attention_mask(torch.arange(t_k - t_q, t_k), torch.arange(t_k), True)


def test_indexer_scores_accepts_a_loop_over_heads_with_the_scales_moved():
    def by_heads(q, k, head_weights):
        heads, dim = q.shape[-2:]
        total = 0
        for h in range(heads):  # ReLU(a x) = a ReLU(x) for a > 0: the scales may go anywhere
            total = total + head_weights[..., h, None] * torch.relu(q[:, :, h] @ k.transpose(-1, -2))
        return total / (heads * dim) ** 0.5

    check.indexer_scores(by_heads, hidden=True, seed=0)


def test_causal_top_k_accepts_the_library_mask_anded_with_causality_and_a_sort():
    def library(scores, k):
        allowed = _allowed(scores)
        return top_k_mask(scores, k, allowed) & allowed

    def by_sort(scores, k):  # rank each visible key; keep the ranks below k
        masked = scores.masked_fill(~_allowed(scores), float("-inf"))
        ranks = masked.argsort(dim=-1, descending=True).argsort(dim=-1)
        return (ranks < k) & _allowed(scores)

    check.causal_top_k(library, hidden=True, seed=0)
    check.causal_top_k(by_sort, hidden=True, seed=1)


@pytest.mark.parametrize("implementation", ["explicit", "sdpa"])
def test_sparse_attention_accepts_the_library_attend(implementation):
    def library(q, k, v, selected, scale):
        return attend(q, k, v, selected[:, None], scale=scale, implementation=implementation)

    check.sparse_attention(library, hidden=True, seed=0)


def test_sparse_attention_accepts_renormalised_weights():
    def renormalised(q, k, v, selected, scale):
        weights = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) * selected[:, None]
        return weights / weights.sum(-1, keepdim=True) @ v

    check.sparse_attention(renormalised, hidden=True, seed=0)


def test_score_flops_reference_equals_olm_edu_analysis():
    def from_analysis(cfg, seq_len):
        return flops_per_token(cfg, seq_len)["attention_scores"]

    check.score_flops(from_analysis, hidden=True, seed=0)
    v32 = preset("DeepSeek-V3.2-Exp")
    for seq_len in (1, 2047, 2048, 2049, 131_072):
        assert check.reference_score_flops(v32, seq_len) == from_analysis(v32, seq_len)


def test_the_references_name_no_mistake_that_equals_the_right_answer():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 8, 8, generator=generator) - 0.5
    expected = check.reference_causal_top_k(scores, 3)
    assert all(not torch.equal(wrong, expected) for wrong in check._top_k_mistakes(scores, 3).values())
    q, k, w = torch.randn(1, 5, 4, 8), torch.randn(1, 5, 8), torch.randn(1, 5, 4)
    right = check.reference_indexer_scores(q, k, w)
    assert all(not torch.allclose(wrong.float(), right, atol=1e-4) for wrong in check._indexer_mistakes(q, k, w).values())
