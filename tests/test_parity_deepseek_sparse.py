"""DeepSeek-V3.2 (`deepseek_v32`): sparse attention through a lightning indexer, exact against transformers.

The tiny config switches every feature on: the indexer keeps index_topk = 5 keys per query on
sequences of 12 and 24 tokens (so most queries drop keys), 8 indexer heads whose first 8 of 16
dimensions rotate, latent attention with a query latent and YaRN with the mscale correction,
sigmoid routing with a non-zero selection bias, expert groups, shared experts and a dense first
layer given as `mlp_layer_types`. Every parameter (the indexer's LayerNorm bias included) and the
router's selection-bias buffer are moved away from their init; transformers' model is saved with
its own save_pretrained and loaded through olm_edu.hf.from_pretrained; fp32 logits at 1e-5.
"""

from __future__ import annotations

import functools
import tempfile

import pytest
import torch

transformers = pytest.importorskip("transformers")

from olm_edu.analysis import count_params, flops_per_token, kv_cache_bytes  # noqa: E402
from olm_edu.generate import generate  # noqa: E402
from olm_edu.hf import from_pretrained, save_pretrained, to_hf_state_dict  # noqa: E402
from olm_edu.models.build import build, set_attention_implementation, set_mla_mode  # noqa: E402
from olm_edu.models.hf_config import from_hf_config, to_hf_config  # noqa: E402
from olm_edu.models.presets import preset  # noqa: E402
from tests.test_parity import TOLERANCE, perturb_, random_ids  # noqa: E402
from tests.test_parity_moe import YARN_MSCALE  # noqa: E402

TOPK = 5
TINY = dict(
    model_type="deepseek_v32", vocab_size=107, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
    num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=24, q_lora_rank=32,
    qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12, n_routed_experts=8, num_experts_per_tok=3,
    n_shared_experts=1, n_group=4, topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5,
    mlp_layer_types=["dense", "sparse", "sparse"], max_position_embeddings=64, rms_norm_eps=1e-5,
    rope_theta=10000.0, index_topk=TOPK, index_n_heads=8, index_head_dim=16, tie_word_embeddings=False,
)  # fmt: skip


def tiny(**changes) -> dict:
    return {**TINY, "rope_scaling": dict(YARN_MSCALE), **changes}  # transformers edits the dict it is given


def reference_model(seed: int = 0, **changes):
    config = transformers.AutoConfig.for_model(**tiny(**changes))
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    perturb_(model, seed)
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.copy_(0.3 * torch.randn(buffer.shape, generator=generator))
    return model.eval()


@functools.cache
def loaded():
    """(transformers model, ours loaded from transformers' saved folder), built once."""
    reference = reference_model()
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
        return reference, from_pretrained(folder)


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("length", [12, 24])
def test_logits_match_transformers_with_fewer_keys_than_the_sequence(length):
    reference, ours = loaded()
    ids = random_ids(reference.config.vocab_size, length=length)
    with torch.no_grad():
        error = max_error(ours(ids), reference(ids).logits)
    assert error <= TOLERANCE, f"max |Δlogits| = {error:.2e}"


def test_the_indexer_chooses_the_keys_transformers_chooses():
    """Layer 0's selection, compared as sets of keys per query, from the same hidden states."""
    reference, ours = loaded()
    ids = random_ids(reference.config.vocab_size, length=16, seed=9)
    length = ids.shape[1]
    with torch.no_grad():
        hidden = reference.model.embed_tokens(ids)
        layer = reference.model.layers[0]
        normed = layer.input_layernorm(hidden)
        attention = layer.self_attn
        q_resid = attention.q_a_layernorm(attention.q_a_proj(normed))
        positions = torch.arange(length)[None]
        cos_sin = reference.model.rotary_emb(normed, positions)
        causal = torch.ones(length, length, dtype=torch.bool).tril()[None].expand(2, -1, -1)
        theirs = attention.indexer(normed, q_resid, cos_sin, causal, positions)  # (B, T, k) indices
        expected = torch.zeros(2, length, length, dtype=torch.bool).scatter_(-1, theirs.long(), True) & causal

        mine = ours.layers[0].attn.attention
        q_latent = mine.q_norm(mine.q_down_proj(normed))
        got = mine.indexer(normed, q_latent, torch.arange(length), causal[0]) & causal
    assert torch.equal(got, expected)
    assert (got.sum(-1)[:, TOPK:] == TOPK).all() and (got.sum(-1)[:, :TOPK] == torch.arange(1, TOPK + 1)).all()


def test_sparse_selection_changes_the_logits():
    """The feature bites: letting every query read every key (index_topk >= length) moves the logits."""
    reference, ours = loaded()
    ids = random_ids(reference.config.vocab_size, length=12, seed=2)
    with torch.no_grad():
        sparse = ours(ids)
        for layer in ours.layers:
            layer.attn.attention.indexer.topk = 12
        dense = ours(ids)
        for layer in ours.layers:
            layer.attn.attention.indexer.topk = TOPK
    assert max_error(sparse, dense) > 1e-2


def test_every_implementation_gives_the_same_logits():
    """explicit vs SDPA, and latent attention naive vs absorbed vs expanded, all with the top-k mask."""
    _, ours = loaded()
    ids = random_ids(ours.config.vocab_size, length=14, seed=3)
    with torch.no_grad():
        expected = ours(ids)
        try:
            for implementation in ("explicit", "sdpa"):
                for mode in ("naive", "absorbed", "expanded"):
                    set_attention_implementation(ours, implementation), set_mla_mode(ours, mode)
                    error = max_error(ours(ids), expected)
                    assert error <= TOLERANCE, f"{implementation}/{mode} differs by {error:.2e}"
        finally:
            set_attention_implementation(ours, "sdpa"), set_mla_mode(ours, "naive")


@pytest.mark.parametrize("mode", ["naive", "absorbed", "expanded"])
def test_cached_decoding_equals_recomputation(mode):
    _, ours = loaded()
    ids = random_ids(ours.config.vocab_size, length=16, seed=4)
    set_mla_mode(ours, mode)
    try:
        with torch.no_grad():
            full = ours(ids)
            cache = ours.new_cache()
            steps = [ours(ids[:, :7], cache=cache)]  # a prompt longer than index_topk, then one token at a time
            steps += [ours(ids[:, t : t + 1], cache=cache) for t in range(7, ids.shape[1])]
    finally:
        set_mla_mode(ours, "naive")
    assert max_error(torch.cat(steps, dim=1), full) <= TOLERANCE
    assert cache.extras[0]["index_keys"].shape == (2, ids.shape[1], ours.config.index_head_dim)


def test_cached_generation_matches_transformers():
    reference, ours = loaded()
    prompt = random_ids(reference.config.vocab_size, length=4, batch=1, seed=5)
    with torch.no_grad():
        mask = torch.ones_like(prompt)
        expected = reference.generate(prompt, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
        got = generate(ours, prompt, 10, temperature=0.0)
    assert torch.equal(got, expected)


def test_weights_written_back_load_into_transformers_unchanged(tmp_path):
    reference, ours = loaded()
    save_pretrained(ours, tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = random_ids(reference.config.vocab_size, length=12, seed=6)
    with torch.no_grad():
        assert max_error(reloaded(ids).logits, reference(ids).logits) <= TOLERANCE
    memory, expected = to_hf_state_dict(ours), reference.state_dict()
    assert set(memory) <= set(expected) and all(torch.equal(memory[name], expected[name]) for name in memory)


def test_config_round_trips_and_bad_keys_are_refused():
    cfg = from_hf_config(tiny())
    assert (cfg.index_topk, cfg.index_heads, cfg.index_head_dim, cfg.first_dense_layers) == (TOPK, 8, 16, 1)
    assert cfg.rope_layout == "interleaved" and from_hf_config(to_hf_config(cfg)) == cfg
    with pytest.raises(ValueError, match="mlp_layer_types"):
        from_hf_config(tiny(mlp_layer_types=["sparse", "dense", "sparse"]))
    with pytest.raises(ValueError, match="q_lora_rank"):
        from_hf_config(tiny(q_lora_rank=None))
    with pytest.raises(ValueError, match="index_head_dim"):
        cfg.replace(index_head_dim=None)
    with pytest.raises(ValueError, match="rope_head_dim"):
        cfg.replace(index_head_dim=4)
    with pytest.raises(ValueError, match="q_latent_dim"):
        cfg.replace(q_latent_dim=None)


def test_a_built_model_has_exactly_the_parameters_count_params_predicts():
    cfg = from_hf_config(tiny())
    model = build(cfg)
    assert model.num_parameters() == count_params(cfg).total == sum(p.numel() for p in loaded()[0].parameters())


# -- the published DeepSeek-V3.2-Exp ------------------------------------------------------------


def test_published_v32_count_equals_transformers_on_the_meta_device():
    cfg = preset("DeepSeek-V3.2-Exp")
    config = transformers.AutoConfig.for_model(**to_hf_config(cfg))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    count = count_params(cfg)
    assert count.total == sum(p.numel() for p in model.parameters())
    # active: every parameter but the routed experts a token does not choose (8 of 256)
    experts = sum(p.numel() for name, p in model.named_parameters() if ".mlp.experts." in name)
    assert count.active == count.total - experts * (256 - 8) // 256
    indexers = sum(p.numel() for name, p in model.named_parameters() if ".indexer." in name)
    assert count.total - count_params(preset("DeepSeek-V3")).total == indexers == 61 * 13_959_424


def test_sparse_attention_caps_the_attention_flops_and_adds_the_indexer():
    v32, v3 = preset("DeepSeek-V3.2-Exp"), preset("DeepSeek-V3")
    short, long = flops_per_token(v32, 1024), flops_per_token(v32, 131_072)
    indexer_per_key = 2 * 64 * (128 + 1) * 61
    assert short["attention_scores"] == flops_per_token(v3, 1024)["attention_scores"] + 1024 * indexer_per_key
    assert long["attention_scores"] == flops_per_token(v3, 2048)["attention_scores"] + 131_072 * indexer_per_key
    assert long["attention_scores"] < flops_per_token(v3, 131_072)["attention_scores"] / 4
    # the cache holds the indexer's 128-wide key beside the 576 numbers of the latent
    assert kv_cache_bytes(v32, 1000, "bf16") == kv_cache_bytes(v3, 1000, "bf16") * (576 + 128) // 576
