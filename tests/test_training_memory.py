"""olm_edu.analysis.training_bytes_per_rank: the ZeRO paper's 16 bytes per parameter, sharded."""

import pytest

from olm_edu.analysis import training_bytes_per_rank
from olm_edu.models import preset

LLAMA_8B = 8_030_261_248  # Llama-3.1-8B's published parameter count


def test_ddp_holds_16_bytes_per_parameter_on_every_rank():
    got = training_bytes_per_rank(preset("Llama-3.1-8B"), 8, "ddp")
    assert got == {"parameters": 2 * LLAMA_8B, "gradients": 2 * LLAMA_8B, "optimizer": 12 * LLAMA_8B,
                   "total": 16 * LLAMA_8B}


@pytest.mark.parametrize("world_size", [8, 64])
def test_each_zero_stage_shards_one_more_part(world_size):
    n, shard = LLAMA_8B, -(-LLAMA_8B // world_size)
    at = lambda sharding: training_bytes_per_rank(preset("Llama-3.1-8B"), world_size, sharding)["total"]
    assert at("zero1") == 4 * n + 12 * shard
    assert at("zero2") == 2 * n + 14 * shard
    assert at("fsdp") == 16 * shard
    assert at("ddp") > at("zero1") > at("zero2") > at("fsdp")


def test_deepseek_v3_does_not_fit_80_gb_per_gpu_even_fully_sharded_on_64():
    per_rank = training_bytes_per_rank(preset("DeepSeek-V3"), 64, "fsdp")["total"]
    assert 671e9 * 16 / 64 < per_rank < 672e9 * 16 / 64  # 671B parameters (MTP module not counted)
    assert per_rank > 80e9


def test_bad_sharding_and_world_size_are_refused_by_name():
    with pytest.raises(ValueError, match="sharding='zero3'"):
        training_bytes_per_rank(preset("gpt2"), 8, "zero3")
    with pytest.raises(ValueError, match="world_size=0"):
        training_bytes_per_rank(preset("gpt2"), 0)
