"""The knob diff of DeepSeek-V4: its layer schedule in short form, and the latent knobs it uses."""

from olm_edu.models import preset, render_diff
from olm_edu.models.diff import KnobDiff, format_value


def test_a_pattern_after_a_short_head_is_shown_as_head_pattern_and_tail():
    types = ("sliding_attention",) * 2 + ("compressed_sparse_attention", "heavily_compressed_attention") * 20
    types += ("compressed_sparse_attention",)
    assert format_value(types) == "sliding x 2, [compressed_sparse, heavily_compressed] x 20, compressed_sparse"


def test_a_schedule_without_a_pattern_is_still_shown_as_runs():
    types = ("full_attention",) * 3 + ("sliding_attention",) * 5 + ("full_attention",)
    assert format_value(types) == "full x 3, sliding x 5, full x 1"


def test_v4_diff_shows_the_query_latent_it_uses_but_not_the_kv_latent_it_has_not():
    rows = {knob: (a, b) for knob, a, b in KnobDiff(preset("DeepSeek-V4-Flash"), preset("DeepSeek-V4-Pro")).rows()}
    assert rows["q_latent_dim"] == ("1024", "1536")
    text = render_diff(preset("DeepSeek-V3.2-Exp"), preset("DeepSeek-V4-Flash"))
    kv_row = next(line for line in text.splitlines() if line.startswith("kv_latent_dim"))
    assert kv_row.split()[1:] == ["512", "-"]
