"""olm_edu.models: configs, the builder, bad input, and generation with the KV cache."""

from __future__ import annotations

import math

import pytest
import torch

from olm_edu.analysis import count_params
from olm_edu.generate import generate, sample_next
from olm_edu.models import PRESETS, ModelConfig, build, preset, render_diff

TINY = ModelConfig(vocab_size=61, max_seq_len=32, embed_dim=32, num_layers=2, num_heads=4, hidden_dim=64, family="gpt2")
TINY_LLAMA = TINY.replace(
    family="llama", norm="rmsnorm", norm_bias=False, position="rope", ffn="glu", activation="silu",
    ffn_bias=False, qkv_bias=False, attn_out_bias=False, tie_embeddings=False, num_kv_heads=2,
)


def ids(length: int, vocab_size: int = 61, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(PRESETS))
def test_built_preset_holds_exactly_the_counted_parameters(name):
    """Our builder on the meta device (nothing allocated) against the closed-form count."""
    cfg = preset(name)
    layers = min(cfg.num_layers, 4)  # the per-layer structure repeats; keep big presets quick
    small = cfg.replace(
        num_layers=layers,
        layer_types=cfg.layer_types[:layers] if cfg.layer_types else None,
        nope_layers=tuple(i for i in cfg.nope_layers or () if i < layers) or None,
        dense_layers=tuple(i for i in cfg.dense_layers if i < layers),
    )
    with torch.device("meta"):
        model = build(small)
    assert model.num_parameters() == count_params(small).total


def test_gpt2_124m_has_its_published_parameter_count():
    with torch.device("meta"):
        assert build(preset("gpt2")).num_parameters() == 124_439_808


def test_forward_maps_token_ids_to_logits():
    for cfg in (TINY, TINY_LLAMA):
        model = build(cfg)
        assert model(ids(7)).shape == (2, 7, cfg.vocab_size)


def test_scaled_residual_init_shrinks_the_projections_into_the_stream():
    torch.manual_seed(0)
    cfg = TINY.replace(embed_dim=256, hidden_dim=1024, num_layers=8, num_heads=8)
    model = build(cfg)
    layer = model.layers[0]
    assert abs(layer.attn.attention.q_proj.weight.std().item() - 0.02) < 0.002
    expected = 0.02 / math.sqrt(2 * cfg.num_layers)
    assert abs(layer.attn.attention.o_proj.weight.std().item() - expected) < 0.1 * expected
    assert abs(layer.ffn.mlp.down_proj.weight.std().item() - expected) < 0.1 * expected
    assert torch.count_nonzero(layer.attn.attention.q_proj.bias) == 0


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(num_kv_heads=3), "num_heads=4 must be divisible by num_kv_heads=3"),
        (dict(position="rope", head_dim=7, norm="rmsnorm", norm_bias=False), "must be even"),
        (dict(norm="batchnorm"), r"norm='batchnorm' is not one of \('layernorm', 'rmsnorm', 'rmsnorm_gemma'\)"),
        (dict(position="relative"), r"position='relative' is not one of"),
        (dict(ffn="moe"), r"ffn='moe' is not one of \('classic', 'glu'\)"),
        (dict(activation="swish"), r"activation='swish' is not one of"),
        (dict(embed_dim=30), "embed_dim=30 must be divisible by num_heads=4"),
        (dict(layer_types=("full_attention",)), "layer_types has 1 entries; num_layers=2"),
        (dict(layer_types=("sliding_attention", "full_attention")), "sliding_window is None"),
        (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "needs position='rope'"),
        (dict(vocab_size=0), "vocab_size=0 must be a positive int"),
        (dict(attn_logit_softcap=-1.0), "attn_logit_softcap=-1.0 must be positive"),
    ],
)
def test_invalid_configs_fail_with_a_message_naming_the_knob(changes, message):
    with pytest.raises(ValueError, match=message):
        TINY.replace(**changes)


def test_unknown_rope_scaling_type_is_rejected_when_building():
    cfg = TINY_LLAMA.replace(rope_scaling={"rope_type": "longest", "factor": 2.0})
    with pytest.raises(ValueError, match="longest"):
        build(cfg)


def test_token_ids_out_of_range_are_named():
    model = build(TINY)
    bad = ids(5)
    bad[1, 3] = 61
    with pytest.raises(ValueError, match=r"token id 61 is out of range: vocab_size=61 \(ids 0..60\)"):
        model(bad)
    with pytest.raises(ValueError, match=r"integer tensor of shape \(batch, length\)"):
        model(torch.zeros(5, dtype=torch.long))


def test_sequences_longer_than_the_learned_positions_are_refused():
    model = build(TINY)
    with pytest.raises(ValueError, match="beyond max_seq_len=32"):
        model(ids(33))
    cache = model.new_cache()
    model(ids(32, batch=1), cache=cache)
    with pytest.raises(ValueError, match="beyond max_seq_len=32"):
        model(ids(1, batch=1), cache=cache)


def test_rope_models_may_run_past_max_seq_len():
    assert build(TINY_LLAMA)(ids(40)).shape == (2, 40, 61)


@pytest.mark.parametrize("cfg", [TINY, TINY_LLAMA.replace(sliding_window=4)], ids=["gpt2", "sliding"])
def test_greedy_generation_is_identical_with_and_without_the_cache(cfg):
    model = build(cfg).eval()
    prompt = ids(3, batch=2, seed=1)
    with_cache = generate(model, prompt, 20, temperature=0.0, use_cache=True)
    without = generate(model, prompt, 20, temperature=0.0, use_cache=False)
    assert with_cache.shape == (2, 23) and torch.equal(with_cache, without)


def test_generation_past_a_position_table_fails_up_front_naming_the_lengths():
    model = build(TINY).eval()  # learned positions, max_seq_len=32
    with pytest.raises(ValueError, match=r"prompt length 30 \+ max_new_tokens=3 = 33 is more than max_seq_len=32"):
        generate(model, ids(30, batch=1), 3)
    assert generate(model, ids(30, batch=1), 2, temperature=0.0).shape == (1, 32)  # exactly fills the table
    assert generate(build(TINY_LLAMA).eval(), ids(30, batch=1), 5, temperature=0.0).shape == (1, 35)  # RoPE: no table


def test_sampling_with_the_same_generator_is_reproducible():
    model = build(TINY).eval()
    prompt = ids(3, batch=1)
    first = generate(model, prompt, 10, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(3))
    second = generate(model, prompt, 10, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, second)


def test_top_k_and_top_p_keep_only_the_allowed_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    generator = torch.Generator().manual_seed(0)
    top_k = {sample_next(logits, top_k=2, generator=generator).item() for _ in range(200)}
    top_p = {sample_next(logits, top_p=0.75, generator=generator).item() for _ in range(200)}
    assert top_k == {0, 1} and top_p == {0, 1}  # 0.5 < 0.75 <= 0.5 + 0.3
    assert sample_next(logits, temperature=0.0).item() == 0
    with pytest.raises(ValueError, match=r"top_p=1.5 must be in \(0, 1\]"):
        sample_next(logits, top_p=1.5)


def test_diff_of_gpt2_and_llama_shows_the_knobs_that_changed():
    table = render_diff(preset("gpt2"), preset("Llama-3.1-8B"))
    for knob in ("norm", "position", "ffn", "activation", "qkv_bias", "tie_embeddings", "num_kv_heads"):
        assert knob in table
    assert "causal" not in table


def test_the_model_traces_as_one_graph_for_torch_compile():
    """The input checks (ids in range, positions in the table) are skipped while compiling, so
    torch.compile sees one graph; eager calls still refuse bad ids with a clear error."""
    from olm_edu.models import build
    from olm_edu.models.presets import preset

    cfg = preset("gpt2").replace(num_layers=2, embed_dim=32, num_heads=2, hidden_dim=64, vocab_size=50)
    model = build(cfg)
    explained = torch._dynamo.explain(model)(torch.randint(0, 50, (2, 8)))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    with pytest.raises(ValueError, match="token id 60 is out of range: vocab_size=50"):
        model(torch.tensor([[1, 60]]))
