"""Generate `lessons/` (what learners get) from `solutions/` (the only source).

A solution notebook holds the full narrative, the solutions between `### BEGIN SOLUTION` /
`### END SOLUTION`, and check cells whose hidden part sits between `### BEGIN HIDDEN TESTS` /
`### END HIDDEN TESTS`. The lesson is the same notebook passed through nbgrader's own
preprocessors, in the order `nbgrader generate_assignment` uses them: lock cells, replace
solutions with stubs, clear outputs, validate the cell metadata, remove hidden tests, compute
checksums. Nothing here re-implements what nbgrader does; it only wires the pieces.
"""

from __future__ import annotations

import difflib
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert.preprocessors import Preprocessor
from nbgrader.preprocessors import (
    CheckCellMetadata,
    ClearHiddenTests,
    ClearMarkScheme,
    ClearOutput,
    ClearSolutions,
    ComputeChecksums,
    LockCells,
)

__all__ = [
    "execute_solution",
    "generate_all",
    "generate_lesson",
    "render_lesson",
    "solution_notebooks",
    "stale_lessons",
]


class _DropRunMetadata(Preprocessor):
    """Remove metadata that only records the author's last run (widget state, cell timings, the
    Python version of the kernel that ran it), so re-running a solution elsewhere does not make
    its lesson stale."""

    def preprocess(self, nb, resources):
        nb.metadata.pop("widgets", None)
        nb.metadata.get("language_info", {}).pop("version", None)
        for cell in nb.cells:
            cell.metadata.pop("execution", None)
        return nb, resources


def _pipeline() -> list[Preprocessor]:
    return [
        LockCells(),
        ClearSolutions(),
        ClearOutput(),
        CheckCellMetadata(),
        ClearHiddenTests(),
        ClearMarkScheme(),
        ComputeChecksums(),
        CheckCellMetadata(),
        _DropRunMetadata(),
    ]


def solution_notebooks(solutions_dir: Path) -> list[Path]:
    """The solution notebooks, `NN_name.ipynb`, in lesson order."""
    return sorted(p for p in Path(solutions_dir).glob("[0-9][0-9]_*.ipynb"))


def render_lesson(solution_path: Path) -> str:
    """The lesson notebook for one solution notebook, as the exact text written to disk."""
    nb = nbformat.read(solution_path, as_version=4)
    resources: dict = {}
    for preprocessor in _pipeline():
        nb, resources = preprocessor.preprocess(nb, resources)
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def generate_lesson(solution_path: Path, lesson_path: Path) -> None:
    """Write the lesson generated from `solution_path` to `lesson_path`."""
    lesson_path.parent.mkdir(parents=True, exist_ok=True)
    lesson_path.write_text(render_lesson(solution_path), encoding="utf-8")


def generate_all(solutions_dir: Path, lessons_dir: Path) -> list[Path]:
    """Regenerate every lesson; remove lessons whose solution is gone. Returns the written paths."""
    solutions = solution_notebooks(solutions_dir)
    if not solutions:
        raise FileNotFoundError(f"no solution notebooks (NN_name.ipynb) in {solutions_dir}")
    written = []
    for solution in solutions:
        lesson = Path(lessons_dir) / solution.name
        generate_lesson(solution, lesson)
        written.append(lesson)
    wanted = {path.name for path in written}
    for orphan in Path(lessons_dir).glob("[0-9][0-9]_*.ipynb"):
        if orphan.name not in wanted:
            orphan.unlink()
    return written


def stale_lessons(solutions_dir: Path, lessons_dir: Path) -> dict[str, str]:
    """Lessons that differ from what their solutions generate: name -> a short diff or reason."""
    problems: dict[str, str] = {}
    solutions = solution_notebooks(solutions_dir)
    for solution in solutions:
        lesson = Path(lessons_dir) / solution.name
        expected = render_lesson(solution)
        if not lesson.exists():
            problems[solution.name] = "missing from lessons/"
            continue
        actual = lesson.read_text(encoding="utf-8")
        if actual != expected:
            diff = difflib.unified_diff(
                actual.splitlines(), expected.splitlines(), "lessons/" + lesson.name, "generated", lineterm=""
            )
            problems[solution.name] = "\n".join(list(diff)[:40])
    names = {s.name for s in solutions}
    for lesson in Path(lessons_dir).glob("[0-9][0-9]_*.ipynb"):
        if lesson.name not in names:
            problems[lesson.name] = "has no solution notebook in solutions/"
    return problems


def execute_solution(solution_path: Path, *, timeout: int = 600) -> float:
    """Run a solution notebook top to bottom in a fresh kernel and store its outputs in place.

    The notebook's folder is the working directory, as under nbval. Returns the seconds taken.
    """
    nb = nbformat.read(solution_path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(Path(solution_path).parent)}},
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    for cell in nb.cells:  # timings from an earlier run would churn the diff
        cell.metadata.pop("execution", None)
    nbformat.write(nb, solution_path)
    return seconds
