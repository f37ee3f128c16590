"""Each exercise's library reference (what later cells use until the learner's answer passes) passes
that exercise's own check, visible and hidden: a lesson that falls back on it stays correct."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import olm_edu.checks
from olm_edu.grading import Check

CHECKS = [
    pytest.param(function, id=f"{module.name}.{name}")
    for module in pkgutil.iter_modules(olm_edu.checks.__path__)
    for name, function in vars(importlib.import_module(f"olm_edu.checks.{module.name}")).items()
    if callable(function) and getattr(function, "reference", None) is not None
]


def test_lessons_00_to_09_give_every_exercise_a_reference():
    names = {param.id.split(".")[0] for param in CHECKS}
    assert {"tokens", "embeddings", "attention", "block", "gpt2", "training", "generation", "weights", "rmsnorm"} <= names


@pytest.mark.parametrize("check", CHECKS)
def test_the_reference_passes_its_own_check(check, monkeypatch):
    # The reference is the library's own code, which a check forbids while the learner's code runs.
    monkeypatch.setattr(Check, "forbid", lambda self, *names, reason="": None)
    reference = check.reference
    learner_objects = (*check.helpers, *(reference if isinstance(reference, tuple) else (reference,)))
    check(*learner_objects, seed=0)
    check(*learner_objects, hidden=True, seed=1)
    assert check.passed is True
