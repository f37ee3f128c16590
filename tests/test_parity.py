"""Parity with Hugging Face transformers, the independent reference.

For each family a tiny config switches every special feature on (Llama 3 and YaRN RoPE scaling,
a sliding window shorter than the sequence, soft-caps that bite, head_dim != hidden/heads, QKV
bias, QK-norm, GQA), the transformers model's weights are perturbed away from their init (norm
weights away from 1, biases non-zero), saved with `save_pretrained`, loaded through
`olm_edu.hf.from_pretrained`, and the logits compared in float32 at 1e-5.
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from olm_edu.hf import CheckpointError, from_pretrained, save_pretrained, to_hf_state_dict  # noqa: E402
from olm_edu.models.build import set_attention_implementation  # noqa: E402

TOLERANCE = 1e-5
SEQ_LEN = 12

TINY_CONFIGS = {
    "gpt2": dict(
        model_type="gpt2", vocab_size=97, n_positions=32, n_embd=48, n_layer=2, n_head=4,
        activation_function="gelu_new", layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    ),
    "llama": dict(
        model_type="llama", vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, max_position_embeddings=64, rms_norm_eps=1e-5,
        rope_theta=500000.0, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8},
    ),
    "mistral": dict(
        model_type="mistral", vocab_size=103, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=2, head_dim=12, max_position_embeddings=64, rms_norm_eps=1e-5,
        rope_theta=10000.0, sliding_window=5, tie_word_embeddings=False,
    ),
    "qwen2": dict(
        model_type="qwen2", vocab_size=107, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64, rms_norm_eps=1e-6,
        rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False,
    ),
    "qwen3": dict(
        model_type="qwen3", vocab_size=109, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, max_position_embeddings=64, rms_norm_eps=1e-6,
        rope_theta=1000000.0, tie_word_embeddings=True, attention_bias=False,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    ),
    "gemma2": dict(
        model_type="gemma2", vocab_size=113, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, max_position_embeddings=64, rms_norm_eps=1e-6,
        rope_theta=10000.0, query_pre_attn_scalar=20, sliding_window=4, attn_logit_softcapping=1.5,
        final_logit_softcapping=2.0, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
    ),
}
FAMILIES = list(TINY_CONFIGS)


def perturb_(model: torch.nn.Module, seed: int) -> None:
    """Move every weight away from its init: norms away from 1 (or 0), biases non-zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if "norm" in name or ".ln_" in name:
                parameter.add_(0.3 * noise)
            elif name.endswith("bias"):
                parameter.copy_(0.2 * noise)
            else:
                parameter.copy_(0.15 * noise)


def reference_model(family: str, seed: int = 0):
    config = transformers.AutoConfig.for_model(**TINY_CONFIGS[family])
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    perturb_(model, seed)
    return model.eval()


def random_ids(vocab_size: int, length: int = SEQ_LEN, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    """(family, transformers model, olm_edu model loaded from its saved checkpoint)."""
    family = request.param
    reference = reference_model(family)
    folder = tmp_path_factory.mktemp(family)
    reference.save_pretrained(folder)
    return family, reference, from_pretrained(folder)


def test_logits_match_transformers(pair):
    family, reference, ours = pair
    ids = random_ids(reference.config.vocab_size)
    with torch.no_grad():
        expected = reference(ids).logits
        got = ours(ids)
    error = (got - expected).abs().max().item()
    assert error <= TOLERANCE, f"{family}: max |Δlogits| = {error:.2e}"


def test_explicit_attention_equals_sdpa(pair):
    family, reference, ours = pair
    ids = random_ids(reference.config.vocab_size, seed=2)
    with torch.no_grad():
        explicit = set_attention_implementation(ours, "explicit")(ids)
        sdpa = set_attention_implementation(ours, "sdpa")(ids)
    assert (explicit - sdpa).abs().max().item() <= TOLERANCE


def test_cached_decoding_equals_full_forward(pair):
    family, reference, ours = pair
    ids = random_ids(reference.config.vocab_size, length=SEQ_LEN + 4, seed=3)
    with torch.no_grad():
        full = ours(ids)
        cache = ours.new_cache()
        steps = [ours(ids[:, :5], cache=cache)]  # a prompt, then one token at a time
        steps += [ours(ids[:, t : t + 1], cache=cache) for t in range(5, ids.shape[1])]
    assert (torch.cat(steps, dim=1) - full).abs().max().item() <= TOLERANCE
    window = ours.config.sliding_window
    if window is not None:  # the rolling cache of a sliding layer never holds more than the window
        sliding = [i for i in range(ours.config.num_layers) if ours.config.layer_type(i) == "sliding_attention"]
        assert sliding and all(cache.cached_length(i) == window for i in sliding)


def test_weights_written_back_load_into_transformers_unchanged(pair, tmp_path):
    family, reference, ours = pair
    save_pretrained(ours, tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = random_ids(reference.config.vocab_size, seed=4)
    with torch.no_grad():
        assert (reloaded(ids).logits - reference(ids).logits).abs().max().item() <= TOLERANCE
    names = set(to_hf_state_dict(ours))
    assert names <= set(reference.state_dict())


def test_special_features_bite():
    """The tiny configs must exercise what they claim: caps clip, windows cut, scalings change RoPE."""
    from olm_edu.models.hf_config import from_hf_config

    gemma = from_hf_config(TINY_CONFIGS["gemma2"])
    assert gemma.layer_type(0) == "sliding_attention" and gemma.sliding_window < SEQ_LEN
    assert from_hf_config(TINY_CONFIGS["mistral"]).sliding_window < SEQ_LEN
    llama = from_hf_config(TINY_CONFIGS["llama"])
    assert llama.head_size * llama.num_heads != llama.embed_dim and llama.rope_scaling["rope_type"] == "llama3"
    assert from_hf_config(TINY_CONFIGS["qwen2"]).qkv_bias
    assert from_hf_config(TINY_CONFIGS["qwen3"]).qk_norm

    reference = reference_model("gemma2")
    ids = random_ids(reference.config.vocab_size)
    with torch.no_grad():
        capped = reference(ids).logits
        reference.config.final_logit_softcapping = None
        reference.config.attn_logit_softcapping = None
        uncapped = reference(ids).logits
    assert uncapped.abs().max() > 2.0 >= capped.abs().max()
    assert (capped - uncapped).abs().max() > 1e-2


def test_gpt2_hub_layout_with_bare_names_shards_and_mask_buffers(tmp_path):
    """The original GPT-2 files: no `transformer.` prefix, no lm_head, `attn.bias` buffers, shards."""
    from safetensors.torch import save_file

    reference = reference_model("gpt2", seed=5)
    weights = {name.removeprefix("transformer."): tensor.contiguous() for name, tensor in reference.state_dict().items()}
    weights.pop("lm_head.weight")
    for i in range(reference.config.n_layer):
        weights[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2], "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    for file, shard_names in shards.items():
        save_file({name: weights[name] for name in shard_names}, tmp_path / file)
    index = {"metadata": {}, "weight_map": {name: file for file, group in shards.items() for name in group}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    reference.config.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    ids = random_ids(reference.config.vocab_size, seed=6)
    with torch.no_grad():
        assert (ours(ids) - reference(ids).logits).abs().max().item() <= TOLERANCE


def test_missing_and_unexpected_checkpoint_keys_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    reference = reference_model("llama", seed=7)
    reference.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights.pop("model.layers.1.mlp.up_proj.weight")
    weights["model.layers.1.mlp.extra.weight"] = torch.zeros(2)
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing layers\.1\.ffn\.mlp\.up_proj\.weight; unexpected .*mlp\.extra"):
        from_pretrained(tmp_path)


def test_pickled_checkpoints_are_refused(tmp_path):
    reference = reference_model("gpt2")
    reference.config.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="safetensors only"):
        from_pretrained(tmp_path)
