"""Closed-form analysis: parameter counts, weight and KV-cache bytes, FLOPs per token."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from olm_edu.analysis import count_params, flops_per_token, kv_cache_bytes, weight_bytes
from olm_edu.models.config import ModelConfig
from olm_edu.models.presets import PRESETS, preset

# -- count_params -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PRESETS))
def test_components_sum_to_the_total_and_embedding_plus_rest_is_the_total(name):
    count = count_params(preset(name))
    assert sum(count.by_component.values()) == count.total
    assert count.embedding + count.non_embedding == count.total
    if preset(name).num_experts == 0:
        assert count.active == count.total  # dense: every parameter is used for every token
    else:
        assert count.active < count.total  # a token skips the experts it does not choose
    hyper = {"hyper_connections"} if preset(name).hc_streams > 1 else set()  # DeepSeek-V4's mHC
    assert set(count.by_component) == {"embeddings", "positions", "attention", "ffn", "norms", "head"} | hyper


def test_gpt2_non_embedding_count_is_kaplans_12_layers_d_squared_plus_biases_and_norms():
    d, layers = 768, 12
    # per layer: qkv + o (4 d^2, 4d biases), mlp (8 d^2, 4d + d biases), two layernorms (4d)
    per_layer = 12 * d * d + 13 * d
    assert count_params(preset("gpt2")).non_embedding == layers * per_layer + 2 * d  # + final layernorm


def test_a_tied_head_is_counted_once_and_an_untied_head_twice():
    tied = preset("Llama-3.2-1B")
    untied = tied.replace(tie_embeddings=False)
    table = tied.vocab_size * tied.embed_dim
    assert count_params(untied).total - count_params(tied).total == table
    assert count_params(tied).by_component["head"] == 0


@pytest.mark.parametrize(
    "name, published_non_embedding_billions",
    # the model cards' "Number of Parameters (Non-Embedding)"
    [("Qwen2.5-0.5B", 0.36), ("Qwen2.5-7B", 6.53), ("Qwen3-0.6B", 0.44)],
)
def test_non_embedding_count_matches_the_model_card(name, published_non_embedding_billions):
    assert round(count_params(preset(name)).non_embedding / 1e9, 2) == published_non_embedding_billions


class PlainModel(nn.Module):
    """The parameters `cfg` describes, built from plain torch.nn layers (no forward needed)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, q, kv = cfg.embed_dim, cfg.num_heads * cfg.head_size, cfg.kv_heads * cfg.head_size
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.positions = nn.Embedding(cfg.max_seq_len, d) if cfg.position == "learned" else None
        self.layers = nn.ModuleList()
        for _ in range(cfg.num_layers):
            layer = nn.Module()
            layer.q, layer.k, layer.v = (nn.Linear(d, width, bias=cfg.qkv_bias) for width in (q, kv, kv))
            layer.o = nn.Linear(q, d, bias=cfg.attn_out_bias)
            layer.up = nn.Linear(d, cfg.hidden_dim, bias=cfg.ffn_bias)
            layer.down = nn.Linear(cfg.hidden_dim, d, bias=cfg.ffn_bias)
            if cfg.ffn == "glu":
                layer.gate = nn.Linear(d, cfg.hidden_dim, bias=cfg.ffn_bias)
            norms = 4 if cfg.norm_placement == "sandwich" else 2
            layer.norms = nn.ModuleList(self.norm(cfg, d) for _ in range(norms))
            if cfg.qk_norm:
                layer.q_norm, layer.k_norm = nn.RMSNorm(cfg.head_size), nn.RMSNorm(cfg.head_size)
            self.layers.append(layer)
        self.final_norm = None if cfg.norm_placement == "post" else self.norm(cfg, d)
        self.head = nn.Linear(d, cfg.vocab_size, bias=cfg.lm_head_bias)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight

    @staticmethod
    def norm(cfg: ModelConfig, d: int) -> nn.Module:
        return nn.LayerNorm(d, bias=cfg.norm_bias) if cfg.norm == "layernorm" else nn.RMSNorm(d)


TINY = dict(vocab_size=50, max_seq_len=16, embed_dim=24, num_layers=3, num_heads=4, hidden_dim=40)


@pytest.mark.parametrize(
    "knobs",
    [
        dict(),  # GPT-2 style: layernorm with bias, classic FFN, learned positions, tied
        dict(norm_placement="post", activation="relu", tie_embeddings=False, lm_head_bias=True),
        dict(
            norm="rmsnorm_gemma", norm_bias=False, norm_placement="sandwich", position="rope", ffn="glu",
            num_kv_heads=2, head_dim=10, qk_norm=True, qkv_bias=True, attn_out_bias=False, ffn_bias=True,
            tie_embeddings=False,
        ),
        dict(norm="layernorm", norm_bias=False, ffn="glu", ffn_bias=False, qkv_bias=False, attn_out_bias=True),
    ],
)
def test_count_params_matches_a_model_built_from_plain_torch_layers(knobs):
    cfg = ModelConfig(**TINY, **knobs)
    with torch.device("meta"):
        model = PlainModel(cfg)
    assert count_params(cfg).total == sum(p.numel() for p in model.parameters())


# -- weight_bytes -------------------------------------------------------------------------


def test_weight_bytes_scale_with_the_bits_of_the_dtype():
    total = 124_439_808  # GPT-2 small
    gpt2 = preset("gpt2")
    assert weight_bytes(gpt2, torch.float32) == 4 * total
    assert weight_bytes(gpt2, "bf16") == weight_bytes(gpt2, torch.bfloat16) == 2 * total
    assert weight_bytes(gpt2, "fp8") == total
    assert weight_bytes(gpt2, "int4") == total // 2


def test_weight_bytes_rejects_an_unknown_dtype_name_and_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="int4") as error:
        weight_bytes(preset("gpt2"), "int3")
    assert "int3" in str(error.value) and "bf16" in str(error.value)


# -- kv_cache_bytes -----------------------------------------------------------------------


def test_kv_cache_of_llama_3_1_8b_at_8k_tokens_in_bf16():
    assert kv_cache_bytes(preset("Llama-3.1-8B"), 8192) == 2 * 32 * 8 * 128 * 8192 * 2  # 1 GiB


def test_kv_cache_grows_with_batch_and_shrinks_with_the_dtype():
    llama = preset("Llama-3.1-8B")
    one = kv_cache_bytes(llama, 1000)
    assert kv_cache_bytes(llama, 1000, batch_size=3) == 3 * one
    assert kv_cache_bytes(llama, 1000, dtype="fp8") == one // 2
    assert kv_cache_bytes(llama, 1000, dtype="int4") == one // 4


def test_gemma2_sliding_layers_cache_at_most_the_window():
    gemma = preset("gemma-2-9b")  # 42 layers, every other one slides over 4096 tokens
    per_token = 2 * 8 * 256 * 2  # k and v, 8 kv heads of 256, bf16
    assert kv_cache_bytes(gemma, 8192) == per_token * (21 * 8192 + 21 * 4096)
    assert kv_cache_bytes(gemma, 4096) == per_token * 42 * 4096  # below the window nothing is capped


def test_mistral_caps_every_layer_at_its_window():
    mistral = preset("Mistral-7B-v0.1")
    assert kv_cache_bytes(mistral, 32_768) == kv_cache_bytes(mistral, 4096) == 2 * 32 * 8 * 128 * 4096 * 2


@pytest.mark.parametrize("seq_len", [0, -5])
def test_kv_cache_and_flops_reject_a_sequence_shorter_than_one_token(seq_len):
    with pytest.raises(ValueError, match="seq_len"):
        kv_cache_bytes(preset("gpt2"), seq_len)
    with pytest.raises(ValueError, match="seq_len"):
        flops_per_token(preset("gpt2"), seq_len)


# -- flops_per_token ----------------------------------------------------------------------


def test_gpt2_forward_flops_are_twice_the_matmul_weights_plus_the_attention_term():
    d, layers, vocab, seq_len = 768, 12, 50257, 1024
    matmul_weights = layers * 12 * d * d + vocab * d  # projections, MLP, and the logits
    attention = layers * 2 * 2 * seq_len * d  # q.k^T and the weighted sum of v
    flops = flops_per_token(preset("gpt2"), seq_len)
    assert flops["forward"] == 2 * matmul_weights + attention
    assert flops["training"] == 3 * flops["forward"]


def test_sliding_layers_stop_the_attention_flops_growing_past_the_window():
    mistral = preset("Mistral-7B-v0.1")
    at_window, far_beyond = flops_per_token(mistral, 4096), flops_per_token(mistral, 32_768)
    assert far_beyond["attention_scores"] == at_window["attention_scores"]
    llama = preset("Llama-3.1-8B")
    assert flops_per_token(llama, 32_768)["attention_scores"] == 8 * flops_per_token(llama, 4096)["attention_scores"]


# -- mixture of experts and latent attention --------------------------------------------------


def test_mixtral_active_parameters_are_the_shared_part_plus_two_experts_a_layer():
    mixtral = preset("Mixtral-8x7B-v0.1")
    count = count_params(mixtral)
    expert = 3 * 4096 * 14336
    assert count.total - count.active == 32 * (8 - 2) * expert  # each layer skips six experts
    assert count.by_component["ffn"] == 32 * (8 * expert + 8 * 4096)  # experts and the router


def test_moe_ffn_flops_count_the_experts_a_token_uses():
    mixtral = preset("Mixtral-8x7B-v0.1")
    router_and_two_experts = 8 * 4096 + 2 * 3 * 4096 * 14336
    assert flops_per_token(mixtral, 1)["ffn"] == 2 * 32 * router_and_two_experts
    dense = mixtral.replace(num_experts=0, experts_per_token=None)
    assert flops_per_token(dense, 1)["ffn"] == 2 * 32 * 3 * 4096 * 14336


def test_latent_attention_scores_read_the_qk_and_value_widths():
    v3 = preset("DeepSeek-V3")
    scores = flops_per_token(v3, 1000)["attention_scores"]
    assert scores == 61 * 2 * 1000 * 128 * (192 + 128)
