"""DeepSeek-V4 (`deepseek_v4`): compressed sparse attention, hyper-connections and hash routing, exact.

The tiny config has every feature on: all three attention layer types (a sliding-only layer,
two CSA layers compressing every 2 tokens with the indexer keeping 2 entries, an HCA layer
compressing every 4), a window of 4, sequences up to 21 tokens (longer than the window and than
several blocks), YaRN on the compressed RoPE, partial RoPE (8 of 16 dims), 3 hyper-connection
streams with 5 Sinkhorn iterations, hash routing on the first two layers (a random table) and
sqrtsoftplus routing with a non-zero selection bias on the others, a tight SwiGLU clamp (0.5),
sinks, grouped low-rank output. Every parameter is moved off its init (sinks, position biases,
hyper-connection weights, scales and biases included). transformers' model is saved with its own
save_pretrained (DeepSeek's checkpoint naming) and loaded through olm_edu.hf.from_pretrained.
"""

from __future__ import annotations

import functools
import tempfile

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

from olm_edu.analysis import count_params, kv_cache_by_layer_type, kv_cache_bytes  # noqa: E402
from olm_edu.generate import generate  # noqa: E402
from olm_edu.hf import from_pretrained, save_pretrained, to_hf_state_dict  # noqa: E402
from olm_edu.models.build import build  # noqa: E402
from olm_edu.models.hf_config import from_hf_config, to_hf_config  # noqa: E402
from olm_edu.models.presets import preset  # noqa: E402
from olm_edu.nn.hyper_connections import HyperConnection, sinkhorn_knopp  # noqa: E402
from tests.test_parity import TOLERANCE, perturb_, random_ids  # noqa: E402

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 32, "beta_slow": 1}
LAYER_TYPES = ["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention", "compressed_sparse_attention"]
TINY = dict(
    model_type="deepseek_v4", vocab_size=101, hidden_size=32, moe_intermediate_size=24, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=1, head_dim=16, q_lora_rank=24, num_experts_per_tok=2, n_routed_experts=6,
    n_shared_experts=1, routed_scaling_factor=1.5, max_position_embeddings=256, rope_theta=10000.0,
    compress_rope_theta=40000.0, layer_types=LAYER_TYPES,
    compress_rates={"compressed_sparse_attention": 2, "heavily_compressed_attention": 4}, hc_mult=3, hc_sinkhorn_iters=5,
    mlp_layer_types=["hash_moe", "hash_moe", "moe", "moe"], swiglu_limit=0.5, sliding_window=4, o_groups=2,
    o_lora_rank=8, index_n_heads=4, index_head_dim=12, index_topk=2, partial_rotary_factor=0.5, rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)  # fmt: skip


def tiny(**changes) -> dict:
    return {**TINY, "rope_parameters": dict(YARN), **changes}  # transformers edits the dicts it is given


def reference_model(seed: int = 0, **changes):
    config = transformers.AutoConfig.for_model(**tiny(**changes))
    model = transformers.AutoModelForCausalLM.from_config(config)
    perturb_(model, seed)
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.copy_(0.3 * torch.randn(buffer.shape, generator=generator))
            if name.endswith("tid2eid"):  # a random hash table: two distinct experts per token id
                experts = torch.rand(buffer.shape[0], config.n_routed_experts, generator=generator).argsort(dim=-1)
                buffer.copy_(experts[:, : buffer.shape[1]])
    return model.eval()


@functools.cache
def loaded():
    reference = reference_model()
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
        return reference, from_pretrained(folder)


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("length", [3, 9, 21])
def test_logits_match_transformers(length):
    """3 tokens: inside the window and a CSA block short of an HCA one; 9 and 21: past all of them."""
    reference, ours = loaded()
    ids = random_ids(reference.config.vocab_size, length=length)
    with torch.no_grad():
        error = max_error(ours(ids), reference(ids).logits)
    assert error <= TOLERANCE, f"max |Δlogits| = {error:.2e}"


def test_every_special_feature_changes_the_logits():
    """Switching each feature off moves the logits, so the parity above covers it."""
    _, ours = loaded()
    ids = random_ids(ours.config.vocab_size, length=21, seed=2)
    attention = ours.layers[1].attn.attention
    moe = ours.layers[0].ffn.mlp
    with torch.no_grad():
        expected = ours(ids)

        def changed() -> float:
            return max_error(ours(ids), expected)

        attention.indexer.topk = 100  # every complete block instead of the top 2
        assert changed() > 1e-3
        attention.indexer.topk = 2
        sinks = attention.sinks.clone()
        attention.sinks.fill_(-1e4)  # a sink that takes no weight
        assert changed() > 1e-3
        attention.sinks.copy_(sinks)
        moe.experts.swiglu_limit = moe.shared_experts.limit = None
        assert changed() > 1e-3
        moe.experts.swiglu_limit = moe.shared_experts.limit = 0.5
        table = moe.router.token_to_experts.clone()
        moe.router.token_to_experts.copy_(table.roll(1, dims=0))
        assert changed() > 1e-3
        moe.router.token_to_experts.copy_(table)
        assert changed() == 0.0


def test_hyper_connection_weights_match_transformers_and_mixing_is_doubly_stochastic():
    reference, ours = loaded()
    theirs, mine = reference.model.layers[2].attn_hc, ours.layers[2].attn.connection
    streams = torch.randn(2, 7, 3, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        post, comb, collapsed = theirs(streams)
        pre, my_post, mix = mine(streams)
    assert max_error(my_post, post) <= 1e-6 and max_error(mix, comb) <= 1e-6
    assert max_error((pre[..., None] * streams).sum(-2), collapsed) <= 1e-6
    assert torch.allclose(mix.sum(-2), torch.ones(2, 7, 3), atol=1e-5)  # columns exactly (last step)
    assert torch.allclose(mix.sum(-1), torch.ones(2, 7, 3), atol=1e-2)  # rows nearly, after 5 iterations


def test_sinkhorn_knopp_converges_to_doubly_stochastic():
    positive = torch.rand(5, 4, 4, generator=torch.Generator().manual_seed(0)) + 0.05
    projected = sinkhorn_knopp(positive, 50, eps=0.0)
    assert torch.allclose(projected.sum(-1), torch.ones(5, 4), atol=1e-5)
    assert torch.allclose(projected.sum(-2), torch.ones(5, 4), atol=1e-6)
    with pytest.raises(ValueError, match="iterations"):
        sinkhorn_knopp(positive, 0)
    connection = HyperConnection(8, 2, sinkhorn_iters=1)
    assert connection.fn.shape == ((2 + 2) * 2, 2 * 8)


def chunks(length: int, first: int):
    """A prompt of `first` tokens, then steps of 1 and 2 tokens (crossing block boundaries unevenly)."""
    yield 0, first
    start = first
    while start < length:
        step = 1 if start % 3 else 2
        yield start, min(start + step, length)
        start += step


@pytest.mark.parametrize("first", [1, 7])
def test_cached_decoding_equals_recomputation(first):
    _, ours = loaded()
    ids = random_ids(ours.config.vocab_size, length=21, seed=4)
    with torch.no_grad():
        full = ours(ids)
        cache = ours.new_cache()
        steps = [ours(ids[:, a:b], cache=cache) for a, b in chunks(ids.shape[1], first)]
    assert max_error(torch.cat(steps, dim=1), full) <= TOLERANCE


def test_cached_generation_matches_transformers():
    reference, ours = loaded()
    prompt = random_ids(reference.config.vocab_size, length=5, batch=1, seed=5)
    with torch.no_grad():
        mask = torch.ones_like(prompt)
        expected = reference.generate(prompt, attention_mask=mask, max_new_tokens=15, do_sample=False, pad_token_id=0)
        got = generate(ours, prompt, 15, temperature=0.0)
    assert torch.equal(got, expected)


def test_the_cache_holds_what_the_analysis_counts():
    """Measured: the window's keys and the compressed entries the cache holds after 21 tokens
    equal kv_cache_by_layer_type's numbers (fp32, batch 1)."""
    _, ours = loaded()
    ids = random_ids(ours.config.vocab_size, length=21, batch=1, seed=6)
    with torch.no_grad():
        cache = ours.new_cache()
        ours(ids[:, :10], cache=cache), ours(ids[:, 10:], cache=cache)
    expected = kv_cache_by_layer_type(ours.config, 21, torch.float32)
    for layer, kind in enumerate(LAYER_TYPES):
        extras = cache.extras[layer]
        held = cache.keys[layer].numel() + sum(extras[name].numel() for name in extras if name.endswith("entries"))
        assert held * 4 == expected[kind]["bytes_per_layer"], kind
    assert kv_cache_bytes(ours.config, 21, torch.float32) == sum(e["layers"] * e["bytes_per_layer"] for e in expected.values())


def test_weights_written_back_load_into_transformers_unchanged(tmp_path):
    reference, ours = loaded()
    save_pretrained(ours, tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = random_ids(reference.config.vocab_size, length=13, seed=7)
    with torch.no_grad():
        assert max_error(reloaded(ids).logits, reference(ids).logits) <= TOLERANCE
    memory, expected = to_hf_state_dict(ours), reference.state_dict()
    assert set(memory) <= set(expected) and all(torch.equal(memory[name], expected[name]) for name in memory)


def test_deepseek_checkpoint_names_load(tmp_path):
    """DeepSeek's own files name tensors without the model. prefix (embed.weight, hc_head_fn,
    layers.0.attn.wq_a.weight, ...) and carry the MTP module (mtp.*), which is skipped."""
    reference, ours = loaded()
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
        saved = load_file(f"{folder}/model.safetensors")
        (tmp_path / "config.json").write_text(open(f"{folder}/config.json").read())
    renames = {"embed_tokens.weight": "embed.weight", "hc_head.hc_fn": "hc_head_fn", "hc_head.hc_base": "hc_head_base",
               "hc_head.hc_scale": "hc_head_scale"}  # fmt: skip
    weights = {}
    for name, tensor in saved.items():
        bare = name.removeprefix("model.")
        weights[renames.get(bare, bare)] = tensor
    assert "layers.1.attn.wq_a.weight" in weights and "layers.0.ffn.experts.0.w1.weight" in weights
    weights["mtp.0.enorm.weight"] = torch.ones(32)
    save_file(weights, tmp_path / "model.safetensors")
    ids = random_ids(reference.config.vocab_size, length=9, seed=8)
    with torch.no_grad():
        assert max_error(from_pretrained(tmp_path)(ids), ours(ids)) == 0.0


def test_config_round_trips_and_bad_keys_are_refused():
    cfg = from_hf_config(tiny())
    assert cfg.layer_types == tuple(LAYER_TYPES) and cfg.hash_routed_layers == (0, 1) and cfg.rope_head_dim == 8
    assert (cfg.csa_compress_rate, cfg.hca_compress_rate, cfg.hc_streams, cfg.swiglu_limit) == (2, 4, 3, 0.5)
    assert from_hf_config(to_hf_config(cfg)) == cfg
    legacy = from_hf_config(  # the keys older V4 configs ship, folded in as transformers folds them
        tiny(layer_types=None, compress_ratios=[0, 4, 128, 4], compress_rates=None, compress_rate_csa=2, compress_rate_hca=4,
             mlp_layer_types=None, num_hash_layers=2, partial_rotary_factor=None, qk_rope_head_dim=8)
    )  # fmt: skip
    assert legacy == cfg
    with pytest.raises(ValueError, match="num_key_value_heads"):
        from_hf_config(tiny(num_key_value_heads=2))
    with pytest.raises(ValueError, match="hc_mult"):
        from_hf_config(tiny(hc_mult=1))
    with pytest.raises(ValueError, match="mlp_layer_types"):
        from_hf_config(tiny(mlp_layer_types=["hash_moe", "dense", "moe", "moe"]))
    with pytest.raises(ValueError, match="scoring_func"):
        from_hf_config(tiny(scoring_func="relu"))
    with pytest.raises(ValueError, match="compress_rope_theta"):
        cfg.replace(compress_rope_theta=None)
    with pytest.raises(ValueError, match="attention='compressed'"):
        cfg.replace(attention="mla", kv_latent_dim=8)


def test_a_built_model_has_the_parameters_of_transformers_and_count_params():
    cfg = from_hf_config(tiny())
    assert build(cfg).num_parameters() == count_params(cfg).total == sum(p.numel() for p in loaded()[0].parameters())


# -- the published DeepSeek-V4 cards ------------------------------------------------------------


@pytest.mark.parametrize("name, billions", [("DeepSeek-V4-Flash", (284, 13)), ("DeepSeek-V4-Pro", (1600, 49))])
def test_published_v4_counts_equal_transformers_on_the_meta_device(name, billions):
    cfg = preset(name)
    config = transformers.AutoConfig.for_model(**to_hf_config(cfg))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    count = count_params(cfg)
    assert count.total == sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for n, p in model.named_parameters() if ".mlp.experts." in n)
    unused = cfg.num_experts - cfg.experts_per_token
    assert count.active == count.total - experts * unused // cfg.num_experts
    total, active = billions  # the model cards: 284B-A13B and 1.6T-A49B (DeepSeek counts active without the embedding)
    assert abs(count.total / 1e9 - total) / total < 0.02
    assert abs(count.active_without_input_embedding / 1e9 - active) < 0.5


def test_v4_cache_at_a_million_tokens_is_a_fraction_of_v3s():
    v4, v3 = preset("DeepSeek-V4-Flash"), preset("DeepSeek-V3")
    by_type = kv_cache_by_layer_type(v4, 1 << 20, "bf16")
    assert by_type["sliding_attention"]["bytes_per_layer"] == 128 * 512 * 2  # the window only
    assert by_type["compressed_sparse_attention"]["bytes_per_layer"] == 128 * 512 * 2 + (1 << 18) * (512 + 128) * 2
    assert by_type["heavily_compressed_attention"]["bytes_per_layer"] == 128 * 512 * 2 + (1 << 13) * 512 * 2
    assert kv_cache_bytes(v4, 1 << 20, "bf16") < kv_cache_bytes(v3, 1 << 20, "bf16") / 8
