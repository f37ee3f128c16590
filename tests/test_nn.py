"""olm_edu.nn building blocks against independent references (torch and transformers)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

from olm_edu.nn import (
    Attention,
    Block,
    ClassicFFN,
    GatedFFN,
    GeGLUFFN,
    GroupedQueryAttention,
    KVCache,
    LayerNorm,
    MultiQueryAttention,
    OutputHead,
    Repeat,
    Residual,
    RMSNorm,
    SwiGLUFFN,
    gated_hidden_dim,
    get_activation,
    glu,
    repeat_kv,
)

transformers = pytest.importorskip("transformers")


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return module


def test_importing_olm_edu_nn_does_not_import_transformers():
    code = "import sys, olm_edu.nn, olm_edu.models; print('transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


def test_layernorm_matches_torch_with_and_without_bias():
    x = randn(3, 5, 16)
    ours = perturbed(LayerNorm(16, eps=1e-5))
    reference = torch.nn.LayerNorm(16, eps=1e-5)
    reference.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), reference(x))
    no_bias = LayerNorm(16, bias=False)
    assert no_bias.bias is None and [n for n, _ in no_bias.named_parameters()] == ["weight"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_llama_convention_matches_transformers(dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    ours = perturbed(RMSNorm(32, eps=1e-6))
    reference = LlamaRMSNorm(32, eps=1e-6)
    reference.load_state_dict(ours.state_dict())
    ours, reference = ours.to(dtype), reference.to(dtype)
    x = randn(4, 32, dtype=dtype) * 3
    assert torch.equal(ours(x), reference(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_gemma_convention_matches_transformers(dtype):
    from transformers.models.gemma2.modeling_gemma2 import Gemma2RMSNorm

    ours = perturbed(RMSNorm(32, eps=1e-6, convention="gemma"))
    assert torch.count_nonzero(RMSNorm(32, convention="gemma").weight) == 0  # stored as an offset from 1
    reference = Gemma2RMSNorm(32, eps=1e-6)
    reference.load_state_dict(ours.state_dict())
    ours, reference = ours.to(dtype), reference.to(dtype)
    x = randn(4, 32, dtype=dtype) * 3
    assert torch.equal(ours(x), reference(x))


def test_llama_and_gemma_cast_orders_differ_in_bfloat16():
    """The reason the two conventions exist: in bf16 they round differently."""
    x = randn(64, 256, dtype=torch.bfloat16) * 5
    weight = 1 + 0.3 * randn(256, seed=1)
    llama, gemma = RMSNorm(256).to(torch.bfloat16), RMSNorm(256, convention="gemma").to(torch.bfloat16)
    with torch.no_grad():
        llama.weight.copy_(weight)
        gemma.weight.copy_(weight - 1)
    assert not torch.equal(llama(x), gemma(x))
    torch.testing.assert_close(llama(x).float(), gemma(x).float(), atol=0.1, rtol=0.02)


def test_rmsnorm_rejects_an_unknown_convention():
    with pytest.raises(ValueError, match=r"convention='mistral' is not one of \('llama', 'gemma'\)"):
        RMSNorm(8, convention="mistral")


@pytest.mark.parametrize(
    "name, hf_name", [("gelu", "gelu"), ("gelu_tanh", "gelu_new"), ("gelu_tanh", "gelu_pytorch_tanh"), ("silu", "silu"), ("relu", "relu")]
)
def test_activations_match_transformers_registry(name, hf_name):
    from transformers.activations import ACT2FN

    x = randn(1000) * 4
    torch.testing.assert_close(get_activation(name)(x), ACT2FN[hf_name](x), atol=1e-6, rtol=1e-5)


def test_unknown_activation_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"activation='swish' is not one of \('gelu', 'gelu_tanh', 'silu', 'relu'\)"):
        get_activation("swish")


def test_glu_variants_are_act_of_gate_times_up():
    gate, up = randn(5, 8), randn(5, 8, seed=1)
    x = torch.cat([gate, up], dim=-1)
    torch.testing.assert_close(glu(x, "swiglu"), F.silu(gate) * up)
    torch.testing.assert_close(glu(x, "geglu"), F.gelu(gate) * up)
    torch.testing.assert_close(glu(x, "reglu"), F.relu(gate) * up)


@pytest.mark.parametrize(
    "embed_dim, multiple_of, multiplier, expected",
    [(4096, 256, None, 11008), (4096, 1024, 1.3, 14336), (8192, 4096, 1.3, 28672), (16384, 4096, 1.2, 53248)],
)
def test_gated_hidden_dim_reproduces_published_llama_widths(embed_dim, multiple_of, multiplier, expected):
    # Llama 2 7B, Llama 3 8B, Llama 3 70B, Llama 3.1 405B.
    assert gated_hidden_dim(embed_dim, multiple_of, multiplier) == expected


def test_swiglu_and_geglu_match_transformers_mlps():
    from transformers import Gemma2Config, LlamaConfig
    from transformers.models.gemma2.modeling_gemma2 import Gemma2MLP
    from transformers.models.llama.modeling_llama import LlamaMLP

    x = randn(2, 3, 16)
    for ours, reference in [
        (SwiGLUFFN(16, 40), LlamaMLP(LlamaConfig(hidden_size=16, intermediate_size=40, num_attention_heads=2, num_key_value_heads=2, hidden_act="silu"))),
        (GeGLUFFN(16, 40), Gemma2MLP(Gemma2Config(hidden_size=16, intermediate_size=40, num_attention_heads=2, num_key_value_heads=2, head_dim=8, hidden_activation="gelu_pytorch_tanh"))),
    ]:
        reference.load_state_dict(perturbed(ours).state_dict())
        torch.testing.assert_close(ours(x), reference(x))


def test_classic_ffn_matches_its_formula_and_has_two_matrices():
    ffn = perturbed(ClassicFFN(16, 64, activation="gelu_tanh"))
    x = randn(4, 16)
    expected = F.gelu(x @ ffn.up_proj.weight.T + ffn.up_proj.bias, approximate="tanh") @ ffn.down_proj.weight.T + ffn.down_proj.bias
    torch.testing.assert_close(ffn(x), expected)
    assert sum(p.numel() for p in ClassicFFN(16).parameters()) == 2 * 16 * 64 + 64 + 16


def test_gated_ffn_at_eight_thirds_width_matches_the_classic_parameter_count():
    d = 768
    classic = sum(p.numel() for p in ClassicFFN(d, 4 * d, bias=False).parameters())
    gated = sum(p.numel() for p in GatedFFN(d, 8 * d // 3).parameters())
    assert classic == gated


def test_repeat_kv_copies_each_head_for_its_group():
    x = randn(2, 3, 5, 4)
    y = repeat_kv(x, 4)
    assert y.shape == (2, 12, 5, 4)
    for head in range(12):
        assert torch.equal(y[:, head], x[:, head // 4])


def test_gqa_equals_mha_when_kv_heads_equal_heads():
    x = randn(2, 7, 32)
    mha = perturbed(Attention(32, 4, position="rope"))
    gqa = GroupedQueryAttention(32, 4, num_kv_heads=4)
    gqa.load_state_dict(mha.state_dict())
    torch.testing.assert_close(gqa(x), mha(x))


def test_gqa_equals_mha_with_repeated_key_value_weights():
    """GQA is MHA whose query heads in a group share one key/value head."""
    x = randn(2, 7, 32)
    gqa = perturbed(GroupedQueryAttention(32, 8, num_kv_heads=2))
    mha = Attention(32, 8, position="rope")
    state = gqa.state_dict()
    for name in ("k_proj.weight", "v_proj.weight"):
        heads = state[name].view(2, 4, 32)  # (kv_heads, head_dim, embed_dim)
        state[name] = heads.repeat_interleave(4, dim=0).reshape(8 * 4, 32)
    mha.load_state_dict(state)
    torch.testing.assert_close(mha(x), gqa(x))
    assert MultiQueryAttention(32, 8).k_proj.out_features == 4


def test_attention_explicit_equals_sdpa_for_every_option():
    x = randn(2, 9, 48)
    options = [
        dict(position="rope"),
        dict(position="alibi"),
        dict(position="rope", sliding_window=3),
        dict(position="rope", qk_norm=True, num_kv_heads=2),
        dict(position="none", causal=False),
        dict(position="rope", rope_layout="interleaved", partial_rotary_factor=0.5),
    ]
    for option in options:
        attention = perturbed(Attention(48, 4, **option))
        attention.implementation = "explicit"
        explicit = attention(x)
        attention.implementation = "sdpa"
        torch.testing.assert_close(attention(x), explicit, atol=1e-5, rtol=1e-5, msg=str(option))


def test_causal_attention_does_not_see_the_future():
    attention = perturbed(Attention(16, 2, position="rope"))
    x = randn(1, 6, 16)
    changed = x.clone()
    changed[0, 4] += 1.0
    before, after = attention(x), attention(changed)
    assert torch.equal(before[0, :4], after[0, :4]) and not torch.allclose(before[0, 4:], after[0, 4:])


def test_sliding_window_hides_tokens_further_back_than_the_window():
    attention = perturbed(Attention(16, 2, position="rope", sliding_window=3))
    x = randn(1, 8, 16)
    changed = x.clone()
    changed[0, 2] += 1.0  # visible from positions 2, 3, 4 only
    before, after = attention(x), attention(changed)
    assert not torch.allclose(before[0, 2:5], after[0, 2:5])
    assert torch.equal(before[0, 5:], after[0, 5:])


def test_softcap_bounds_attention_logits():
    from olm_edu.nn import softcap

    scores = torch.linspace(-100, 100, 11)
    capped = softcap(scores, 5.0)
    assert capped.abs().max() <= 5.0 and torch.equal(softcap(scores, None), scores)
    small = torch.tensor([0.01, -0.02])
    torch.testing.assert_close(softcap(small, 5.0), small, atol=1e-6, rtol=1e-4)  # near-identity for small logits


def test_attention_rejects_bad_shapes_by_name():
    with pytest.raises(ValueError, match="num_heads=12 must be divisible by num_kv_heads=5"):
        Attention(96, 12, 5)
    with pytest.raises(ValueError, match="embed_dim=100 must be divisible by num_heads=12"):
        Attention(100, 12)
    with pytest.raises(ValueError, match="RoPE needs an even number"):
        Attention(30, 2, head_dim=15, position="rope")
    with pytest.raises(ValueError, match=r"implementation='flash' is not one of \('explicit', 'sdpa'\)"):
        Attention(32, 4, implementation="flash")


def test_block_residual_repeat_compose_like_the_diagram():
    d = 8
    layer = Residual(norm=RMSNorm(d), attention=Attention(d, 2, position="rope"))
    x = randn(1, 4, d)
    torch.testing.assert_close(layer(x), x + layer.attention(layer.norm(x)))
    stack = Repeat(3, lambda i: Block([Residual(Block([RMSNorm(d), Attention(d, 2, layer_index=i)]))]))
    assert [m.layer_index for m in stack.modules() if isinstance(m, Attention)] == [0, 1, 2]
    assert stack(x).shape == x.shape
    with pytest.raises(ValueError, match="either as a list or by keyword"):
        Block([RMSNorm(d)], norm=RMSNorm(d))


def test_tied_output_head_shares_the_embedding_matrix():
    embedding = torch.nn.Embedding(11, 6)
    head = OutputHead(6, 11, tied_to=embedding, softcap=3.0)
    assert list(head.state_dict()) == [] and head.tied
    h = randn(2, 6)
    torch.testing.assert_close(head(h), 3.0 * torch.tanh((h @ embedding.weight.T) / 3.0))


def test_kv_cache_keeps_only_the_window_for_sliding_layers():
    cache = KVCache(num_layers=1)
    for start in range(0, 10, 2):
        keys = randn(1, 1, 2, 4, seed=start)
        positions = torch.arange(start, start + 2)
        all_keys, _, all_positions = cache.update(0, keys, keys, positions, window=3)
        assert all_positions[-1].item() == start + 1
    assert cache.cached_length(0) == 3 and cache.positions[0].tolist() == [7, 8, 9]
    assert cache.nbytes() == 2 * 3 * 4 * 4
