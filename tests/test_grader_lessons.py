"""Every lesson through the sandboxed grader: the solution earns every point and the fresh learner
notebook none. The check cells of 92 of the 94 exercises are judged in the grader's process
(`JUDGED_BY_GRADER`), so this is the end-to-end test of that path on real notebooks: data, records,
gradients, learner modules as shadows and modules the checks build, in the sandbox, lesson by lesson.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from olm_edu.grader import Limits, grade

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted(path.stem for path in (ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("lesson", LESSONS)
def test_the_solution_earns_every_point_and_the_stub_none(lesson, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(ROOT / "solutions" / f"{lesson}.ipynb", folder / "solution.ipynb")
    shutil.copy(ROOT / "lessons" / f"{lesson}.ipynb", folder / "stub.ipynb")
    results = {r.student: r for r in grade([folder], lesson[:2], tmp_path / "out", course=ROOT, progress=False,
                                          jobs=1, resume=False, limits=Limits(notebook_seconds=600, cell_seconds=300))}
    solution, stub = results["solution"], results["stub"]
    assert solution.status == "graded" and solution.total == solution.max_total > 0, [
        e.message for e in solution.exercises if not e.passed]
    assert stub.status == "graded" and stub.total == 0 and stub.max_total == solution.max_total
    assert all("not implemented yet" in e.message for e in stub.exercises), [e.message for e in stub.exercises]
