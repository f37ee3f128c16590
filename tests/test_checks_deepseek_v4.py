"""Lesson 24's checks accept the library's own computation, name a mistake, and their independent
cache count agrees with olm_edu.analysis on the published cards (the fallbacks passing their checks
is tests/test_check_references.py's)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from olm_edu.analysis import kv_cache_bytes
from olm_edu.checks import deepseek_v4 as check
from olm_edu.grading import CheckFailed
from olm_edu.models.presets import preset
from olm_edu.nn import RotaryEmbedding
from olm_edu.nn.compressed_attention import KVCompressor


def test_compress_accepts_the_library_compressor_sum_read_before_its_norm():
    def through_the_library(kv, gate, position_bias, rate):
        width = kv.shape[-1]
        rotary = RotaryEmbedding(2, 10000.0)  # any rotation: it acts after the sum we read
        compressor = KVCompressor(width, width, rate, overlap=False, rotary=rotary)
        with torch.no_grad():  # identity projections: the compressor sees kv and gate as they are
            compressor.kv_proj.weight.copy_(torch.eye(width))
            compressor.position_bias.copy_(position_bias)
        recorded = []
        compressor.kv_norm.register_forward_pre_hook(lambda module, args: recorded.append(args[0]))
        compressor.gate_proj.forward = lambda x: gate  # the gate as given (the projection is bypassed)
        with torch.no_grad():
            compressor(kv)
        return recorded[0] if recorded else kv.new_zeros(kv.shape[0], 0, width)

    check.compress(through_the_library, hidden=True, seed=3)
    assert check.compress.passed


def test_sinkhorn_check_names_rows_first():
    def rows_first(matrix, iterations, eps=1e-6):
        for _ in range(iterations):
            matrix = matrix / matrix.sum(-1, keepdim=True)
            matrix = matrix / matrix.sum(-2, keepdim=True)
        return matrix

    with pytest.raises(CheckFailed, match="rows first"), contextlib.redirect_stdout(None):
        check.sinkhorn_knopp(rows_first, seed=0)


@pytest.mark.parametrize("name", ["DeepSeek-V4-Flash", "DeepSeek-V4-Pro"])
@pytest.mark.parametrize("seq_len", [1, 127, 128, 1000, 131_072, 1_000_000, 2**20])
def test_independent_cache_count_agrees_with_analysis(name, seq_len):
    cfg = preset(name)
    assert check._layer_numbers(cfg, seq_len) * 2 == kv_cache_bytes(cfg, seq_len, "bf16")
