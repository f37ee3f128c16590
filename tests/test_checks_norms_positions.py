"""The draft checks of lesson 21 (olm_edu/checks/norms_positions.py) against plausible wrong answers
and correct answers written differently, as tests/wrong_answers does for notebook lessons: each
wrong answer must fail, visible and hidden, with a message naming its mistake."""

from __future__ import annotations

import pytest
import torch

from olm_edu.checks import norms_positions as checks
from olm_edu.grading import CheckFailed


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
    checks.chunked_mask(chunked_by_loops, hidden=hidden, seed=0)
    checks.rope_layers(rope_layers_by_hand, hidden=hidden, seed=0)
    assert checks.chunked_mask.passed and checks.rope_layers.passed


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize("check, wrong, fragment", [
    *[(checks.chunked_mask, fn, fragment) for fn, fragment in WRONG_CHUNKED],
    *[(checks.rope_layers, fn, fragment) for fn, fragment in WRONG_SCHEDULE],
])  # fmt: skip
def test_wrong_answers_fail_naming_the_mistake(check, wrong, fragment, hidden):
    with pytest.raises(CheckFailed, match=fragment):
        check(wrong, hidden=hidden, seed=0)


def test_unfinished_stubs_are_reported_as_not_implemented():
    def stub(*args):
        raise NotImplementedError

    for check in (checks.chunked_mask, checks.rope_layers):
        with pytest.raises(NotImplementedError, match="not implemented yet"):
            check(stub)
