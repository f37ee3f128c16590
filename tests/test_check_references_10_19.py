"""The library fallbacks of lessons 10-19 pass their own checks, hidden cases included.

Each `reference_<exercise>` in olm_edu/checks/<topic>.py is what the cells after an unfinished
exercise use until the learner's version passes; a fallback the check rejects would make the
rest of the lesson wrong. The checks forbid the library while learner code runs; here the
library is the point, so `Check.forbid` is switched off.
"""

import contextlib

import pytest

from olm_edu.checks import ablation, deepseek, gated_ffn, gqa, llama, model_card, moe, rope, stability, windows
from olm_edu.grading import Check
from olm_edu.nn.positions import rotate_half

CASES = {  # check function -> the objects it is given
    "rope.rope_frequencies": (rope.rope_frequencies, (rope.reference_rope_frequencies,)),
    "rope.apply_rope": (rope.apply_rope, (rotate_half, rope.reference_apply_rope)),
    "rope.apply_rope_interleaved": (rope.apply_rope_interleaved, (rope.reference_apply_rope_interleaved,)),
    "rope.interleaved_to_half": (rope.interleaved_to_half, (rope.reference_interleaved_to_half,)),
    "rope.llama3_frequencies": (rope.llama3_frequencies, (rope.reference_llama3_frequencies,)),
    "gated_ffn.swiglu": (gated_ffn.swiglu, (gated_ffn.reference_swiglu,)),
    "gated_ffn.geglu": (gated_ffn.geglu, (gated_ffn.reference_geglu,)),
    "gated_ffn.gated_hidden_dim": (gated_ffn.gated_hidden_dim, (gated_ffn.reference_gated_hidden_dim,)),
    "gqa.repeat_kv": (gqa.repeat_kv, (gqa.reference_repeat_kv,)),
    "gqa.grouped_query_attention": (gqa.grouped_query_attention, (gqa.reference_grouped_query_attention,)),
    "gqa.kv_cache_size": (gqa.kv_cache_size, (gqa.reference_kv_cache_size,)),
    "llama.decoder_layer": (llama.decoder_layer, (llama.ReferenceLlamaDecoderLayer,)),
    "llama.llama": (llama.llama, (llama.ReferenceLlama,)),
    "llama.param_count": (llama.param_count, (llama.reference_llama_params,)),
    "llama.convert_state_dict": (llama.convert_state_dict, (llama.reference_convert_llama_state_dict, llama.ReferenceLlama)),
    "stability.qk_norm_attention": (stability.qk_norm_attention, (stability.reference_qk_norm_attention,)),
    "stability.z_loss": (stability.z_loss, (stability.reference_z_loss,)),
    "stability.softcap": (stability.softcap, (stability.reference_softcap,)),
    "windows.sliding_window_mask": (windows.sliding_window_mask, (windows.reference_sliding_window_mask,)),
    "windows.rolling_update": (windows.rolling_update, (windows.reference_rolling_update,)),
    "windows.gemma2_layer": (windows.gemma2_layer, (windows._gemma_norm, windows.reference_gemma2_layer)),
    "windows.windowed_kv_cache_bytes": (windows.windowed_kv_cache_bytes, (windows.reference_windowed_kv_cache_bytes,)),
    "moe.route": (moe.route, (moe.reference_route,)),
    "moe.moe_forward": (moe.moe_forward, (moe.reference_moe_forward,)),
    "moe.load_balancing_loss": (moe.load_balancing_loss, (moe.reference_load_balancing_loss,)),
    "moe.router_z_loss": (moe.router_z_loss, (moe.reference_router_z_loss,)),
    "deepseek.mla_cache_bytes": (deepseek.mla_cache_bytes, (deepseek.reference_mla_cache_bytes,)),
    "deepseek.latent_attention": (deepseek.latent_attention, (deepseek.reference_latent_attention,)),
    "deepseek.deepseek_route": (deepseek.deepseek_route, (deepseek.reference_deepseek_route,)),
    "deepseek.update_selection_bias": (deepseek.update_selection_bias, (deepseek.reference_update_selection_bias,)),
    "ablation.matched_hidden_dim": (ablation.matched_hidden_dim, (ablation.reference_matched_hidden_dim,)),
    "ablation.seed_summary": (ablation.seed_summary, (ablation.reference_seed_summary,)),
    "ablation.real_differences": (ablation.real_differences, (ablation.reference_real_differences,)),
    "ablation.tokens_per_second": (ablation.tokens_per_second, (ablation.reference_tokens_per_second,)),
    "model_card.moe_ffn_params": (model_card.moe_ffn_params, (model_card.reference_moe_ffn_params,)),
    "model_card.serving_memory": (model_card.serving_memory, (model_card.reference_serving_memory,)),
    "model_card.forward_flops": (model_card.forward_flops, (model_card.reference_forward_flops,)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_library_fallback_passes_its_own_check_with_the_hidden_cases(name, monkeypatch):
    monkeypatch.setattr(Check, "forbid", lambda self, *names, reason="": None)
    monkeypatch.setattr(llama, "_counting_by_hand", contextlib.nullcontext)  # Exercise 3's own ban on count_params
    check, objects = CASES[name]
    check(*objects, hidden=True, seed=1234)  # the hidden run repeats the visible cases and adds its own
