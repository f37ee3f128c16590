"""Plausible wrong answers to each exercise, and what its check must say about them.

Each module `lesson_*.py` here defines
    WRONG_ANSWERS = {lesson file: {grade_id of the solution cell: [(wrong source, message fragment)]}}
tests/test_lessons.py puts each wrong answer into the solution cell, runs the check cell, and
requires a failure whose message contains the fragment. Every exercise must appear.

A module may also define
    CORRECT_ANSWERS = {lesson file: {grade_id of the solution cell: [correct source written differently]}}
and the same test requires each of them to pass the check (fp32 checks must accept any
mathematically equivalent formulation).
"""

import importlib
import pkgutil

WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {}
CORRECT_ANSWERS: dict[str, dict[str, list[str]]] = {}
for _module in pkgutil.iter_modules(__path__):
    if _module.name.startswith("lesson_"):
        _lesson = importlib.import_module(f"{__name__}.{_module.name}")
        WRONG_ANSWERS.update(_lesson.WRONG_ANSWERS)
        CORRECT_ANSWERS.update(getattr(_lesson, "CORRECT_ANSWERS", {}))
