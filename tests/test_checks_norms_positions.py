"""The checks of lesson 21 (olm_edu/checks/norms_positions.py) against plausible wrong answers
and correct answers written differently, as tests/wrong_answers does for notebook lessons: each
wrong answer must fail, visible and hidden, with a message naming its mistake."""

from __future__ import annotations

import math

import pytest
import torch

from olm_edu.checks import norms_positions as checks
from olm_edu.grading import CheckFailed


def block_in_one_line(x, attention, mlp, attn_norm, mlp_norm):
    """Correct, written differently: one expression, the intermediate h named once."""
    return (h := x + attn_norm(attention(x))) + mlp_norm(mlp(h))


def frequencies_by_hand(config, layer):
    """Correct, written differently: float64 powers, exp/log, the pattern through layer_types built by hand."""
    kinds = config.get("layer_types") or [
        "full_attention" if i % config["sliding_window_pattern"] == config["sliding_window_pattern"] - 1
        else "sliding_attention" for i in range(config["num_hidden_layers"])
    ]
    d = config["head_dim"]
    if kinds[layer] == "full_attention":
        base, factor = config["rope_theta"], (config["rope_scaling"] or {}).get("factor", 1.0)
    else:
        base, factor = config["rope_local_base_freq"], 1.0
    j = torch.arange(d // 2, dtype=torch.float64)
    return torch.exp(-2 * j / d * math.log(base)) / factor


def chunked_by_loops(query_positions, key_positions, chunk):
    """Correct, written differently: one entry at a time."""
    out = torch.zeros(len(query_positions), len(key_positions), dtype=torch.bool)
    for a, i in enumerate(query_positions.tolist()):
        for b, j in enumerate(key_positions.tolist()):
            out[a, b] = j <= i and j >= i - i % chunk  # from the start of i's chunk up to i
    return out


def rope_layers_by_hand(config):
    """Correct, written differently."""
    flags = config.get("no_rope_layers") or []
    if flags:
        return [flag == 1 for flag in flags[: config["num_hidden_layers"]]]
    interval = config.get("no_rope_layer_interval", 4)
    return [layer % interval != interval - 1 for layer in range(config["num_hidden_layers"])]


def _pre_norm(x, attention, mlp, attn_norm, mlp_norm):
    h = x + attention(attn_norm(x))
    return h + mlp(mlp_norm(h))


def _post_norm(x, attention, mlp, attn_norm, mlp_norm):
    h = attn_norm(x + attention(x))
    return mlp_norm(h + mlp(h))


def _in_place(x, attention, mlp, attn_norm, mlp_norm):
    x += attn_norm(attention(x))
    return x + mlp_norm(mlp(x))


WRONG_BLOCK = [
    (_pre_norm, "pre-norm"),
    (_post_norm, "2017 post-norm"),
    (lambda x, a, m, na, nm: x + na(a(x)) + nm(m(x)), "your MLP reads x"),
    (lambda x, a, m, na, nm: (h := x + nm(a(x))) + na(m(h)), "swapped the two norms"),
    (_in_place, "changed x in place"),
]


def _freq(base, d, factor=1.0):
    return 1.0 / base ** (torch.arange(0, d, 2) / d) / factor


def _pattern_from_zero(config, layer):
    if layer % config["sliding_window_pattern"] == 0:
        return _freq(config["rope_theta"], config["head_dim"], (config["rope_scaling"] or {}).get("factor", 1.0))
    return _freq(config["rope_local_base_freq"], config["head_dim"])


WRONG_FREQUENCIES = [
    (lambda c, i: _freq(c["rope_theta"], c["head_dim"]) if checks._is_global(c, i)
     else _freq(c["rope_local_base_freq"], c["head_dim"]), "left out the global layers' rope_scaling"),
    (lambda c, i: _freq(c["rope_local_base_freq"] if checks._is_global(c, i) else c["rope_theta"], c["head_dim"]),
     "not rope_theta"),
    (lambda c, i: _freq(c["rope_theta"] if checks._is_global(c, i) else c["rope_local_base_freq"], c["head_dim"],
                        (c["rope_scaling"] or {}).get("factor", 1.0)), "global layers only"),
    (_pattern_from_zero, "counts layers from 1"),
]

WRONG_CHUNKED = [
    (lambda q, k, c: (q[:, None] >= k[None, :]) & (q[:, None] - k[None, :] < c), "sliding window"),
    (lambda q, k, c: (q[:, None] // c) == (k[None, :] // c), "no causal part"),
    (lambda q, k, c: ((q[:, None] + 1) // c == (k[None, :] + 1) // c) & (q[:, None] >= k[None, :]), "shifted by one"),
    (lambda q, k, c: (torch.arange(len(q))[:, None] >= torch.arange(len(k))[None, :])
     & (torch.arange(len(q))[:, None] // c == torch.arange(len(k))[None, :] // c), "row and column indices"),
]
WRONG_SCHEDULE = [
    (lambda cfg: [not f for f in rope_layers_by_hand(cfg)], "inverted"),
    (lambda cfg: [i % cfg.get("no_rope_layer_interval", 4) != 0 for i in range(cfg["num_hidden_layers"])],
     "counts layers from 1"),
    (lambda cfg: [(i + 1) % 4 != 0 for i in range(cfg["num_hidden_layers"])], "ignored no_rope_layer_interval"),
    (lambda cfg: [(i + 1) % cfg.get("no_rope_layer_interval", 4) != 0 for i in range(cfg["num_hidden_layers"])],
     "ignored the no_rope_layers list"),
]


@pytest.mark.parametrize("hidden", [False, True])
def test_correct_answers_written_differently_pass(hidden):
    checks.post_sublayer_block(block_in_one_line, hidden=hidden, seed=0)
    checks.rope_frequencies(frequencies_by_hand, hidden=hidden, seed=0)
    checks.chunked_mask(chunked_by_loops, hidden=hidden, seed=0)
    checks.rope_layers(rope_layers_by_hand, hidden=hidden, seed=0)
    assert all(check.passed for check in (checks.post_sublayer_block, checks.rope_frequencies, checks.chunked_mask,
                                          checks.rope_layers))


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize("check, wrong, fragment", [
    *[(checks.post_sublayer_block, fn, fragment) for fn, fragment in WRONG_BLOCK],
    *[(checks.rope_frequencies, fn, fragment) for fn, fragment in WRONG_FREQUENCIES],
    *[(checks.chunked_mask, fn, fragment) for fn, fragment in WRONG_CHUNKED],
    *[(checks.rope_layers, fn, fragment) for fn, fragment in WRONG_SCHEDULE],
])  # fmt: skip
def test_wrong_answers_fail_naming_the_mistake(check, wrong, fragment, hidden):
    with pytest.raises(CheckFailed, match=fragment):
        check(wrong, hidden=hidden, seed=0)


def test_unfinished_stubs_are_reported_as_not_implemented():
    def stub(*args):
        raise NotImplementedError

    for check in (checks.post_sublayer_block, checks.rope_frequencies, checks.chunked_mask, checks.rope_layers):
        with pytest.raises(NotImplementedError, match="not implemented yet"):
            check(stub)


def test_references_fall_back_for_the_cells_after_an_unfinished_exercise():
    for check in (checks.post_sublayer_block, checks.rope_frequencies, checks.chunked_mask, checks.rope_layers):
        check.passed = False
        assert check.yours_or_reference(None) is check.reference
