"""Plausible wrong answers to each exercise, and what its check must say about them.

Each module `lesson_*.py` here defines
    WRONG_ANSWERS = {lesson file: {grade_id of the solution cell: [(wrong source, message fragment)]}}
and may define
    CORRECT_ANSWERS = {lesson file: {grade_id of the solution cell: [correct source written differently]}}
tests/test_lessons.py puts each answer into the solution cell and runs the check cell twice: as the
learner's notebook has it (visible checks only) and as graders run it (hidden checks too). A wrong
answer must fail both times with a message containing the fragment; a correct alternative must pass
both times. Every exercise must appear in WRONG_ANSWERS.
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
