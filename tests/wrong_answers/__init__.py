"""Plausible wrong answers to each exercise, and what its check must say about them.

Each module `lesson_*.py` here defines
    WRONG_ANSWERS = {lesson file: {grade_id of the solution cell: [(wrong source, message fragment)]}}
tests/test_lessons.py puts each wrong answer into the solution cell, runs the check cell, and
requires a failure whose message contains the fragment. Every exercise must appear.
"""

import importlib
import pkgutil

WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {}
for _module in pkgutil.iter_modules(__path__):
    if _module.name.startswith("lesson_"):
        WRONG_ANSWERS.update(importlib.import_module(f"{__name__}.{_module.name}").WRONG_ANSWERS)
