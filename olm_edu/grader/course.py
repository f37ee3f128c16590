"""The course gradebook: every lesson of every student at once, in one CSV an instructor can import.

    olm-edu grade submissions/ --out grades/          (no --lesson: every lesson found)

Layouts understood (mixed freely), where NN_name is a lesson's file name (`01_tokens.ipynb`):
- nbgrader's exchange layout: `submitted/<student>/<assignment>/NN_name.ipynb` (the assignment
  folder's name does not matter; the notebook's name says the lesson);
- a folder per student: `<student>/NN_name.ipynb`;
- a folder per lesson: `NN_name/<student>.ipynb` (or `NN/<student>.ipynb`).

Each lesson is graded by `grade` into `DIR/NN_name/` (its own gradebook, journal and feedback),
then `DIR/gradebook.csv` gets one row per student: `student_id`, for each lesson its points and a
`NN_name note` column (blank points, with the reason in the note, where the lesson was not
submitted or could not be graded; never a 0 that was not earned), the total and the maximum.
`DIR/feedback/<student>.html` links the student's pages of every lesson. Two files of one
student for one lesson: the first is graded, the other reported (a `duplicate` note).
"""

from __future__ import annotations

import csv
import html
import re
from pathlib import Path

from olm_edu.grader import SubmissionResult, grade

__all__ = ["find_course_submissions", "grade_course"]


def _lesson_stems(course: Path) -> dict[str, str]:
    """Every way a lesson may be named -> its stem: "01_tokens", "01" and "1" -> "01_tokens"."""
    names = {}
    for path in sorted(Path(course, "solutions").glob("[0-9][0-9]_*.ipynb")):
        names[path.stem] = path.stem
        names[path.stem[:2]] = path.stem
    return names


def _clean(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "student"


def find_course_submissions(root: Path, course: Path) -> dict[str, dict[Path, str]]:
    """{lesson stem: {notebook: student}} for every submitted notebook under `root`."""
    lessons = _lesson_stems(course)
    found: dict[str, dict[Path, str]] = {}
    for path in sorted(Path(root).rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts:
            continue
        parts = path.relative_to(root).parts
        if path.stem in lessons:  # <student>/NN_name.ipynb or submitted/<student>/<assignment>/NN_name.ipynb
            lesson = lessons[path.stem]
            in_exchange = len(parts) >= 3 and parts[-2] not in lessons and (
                parts[-4] == "submitted" if len(parts) >= 4 else Path(root).resolve().name == "submitted")
            student = parts[-3] if in_exchange else (parts[-2] if len(parts) >= 2 else "")
        elif len(parts) >= 2 and parts[-2] in lessons:  # NN_name/<student>.ipynb
            lesson, student = lessons[parts[-2]], path.stem
        else:
            continue  # not a lesson notebook
        if student:
            found.setdefault(lesson, {})[path] = _clean(student)
    return found


def grade_course(root: Path, out: Path, *, course: Path, **options) -> dict[str, list[SubmissionResult]]:
    """Grade every lesson submitted under `root`; write `out/gradebook.csv` and `out/feedback/`.

    `options` go to `grade` for each lesson (limits, jobs, sandbox, cluster, ...).
    """
    found = find_course_submissions(Path(root), Path(course))
    if not found:
        raise ValueError(f"no lesson notebooks (named like solutions/NN_name.ipynb) found under {root}")
    out = Path(out)
    by_lesson = {}
    for lesson, names in sorted(found.items()):
        by_lesson[lesson] = grade(sorted(names), lesson[:2], out / lesson, course=Path(course), names=names, **options)
    _write_course_gradebook(by_lesson, out)
    return by_lesson


def _note(result: SubmissionResult) -> str:
    if result.status in ("system error", "duplicate"):
        return f"not graded: {result.status}: {result.detail}"[:300]
    return "" if result.status == "graded" else f"{result.status}: {result.detail}"[:300]


def _write_course_gradebook(by_lesson: dict[str, list[SubmissionResult]], out: Path) -> None:
    lessons = sorted(by_lesson)
    table: dict[str, dict[str, SubmissionResult]] = {}
    maxima = {}
    for lesson, results in by_lesson.items():
        maxima[lesson] = max((r.max_total for r in results), default=0.0)
        for result in results:
            table.setdefault(result.student, {})[lesson] = result
    out.mkdir(parents=True, exist_ok=True)
    with (out / "gradebook.csv").open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["student_id", *[c for lesson in lessons for c in (lesson, f"{lesson} note")], "total",
                         "max_total"])
        for student in sorted(table):
            row, total = [student], 0.0
            for lesson in lessons:
                result = table[student].get(lesson)
                if result is None:
                    row += ["", "not submitted"]
                elif result.status in ("system error", "duplicate"):
                    row += ["", _note(result)]
                else:
                    row += [f"{result.total:g}", _note(result)]
                    total += result.total
            writer.writerow([*row, f"{total:g}", f"{sum(maxima.values()):g}"])
    (out / "feedback").mkdir(parents=True, exist_ok=True)
    for student, results in table.items():
        items = "".join(
            f"<li><a href='../{html.escape(lesson)}/feedback/{html.escape(student)}.html'>{html.escape(lesson)}</a>: "
            f"{results[lesson].total:g} / {results[lesson].max_total:g}"
            f"{' (' + html.escape(results[lesson].status) + ')' if results[lesson].status != 'graded' else ''}</li>"
            for lesson in lessons if lesson in results)
        missing = "".join(f"<li>{html.escape(lesson)}: not submitted</li>" for lesson in lessons if lesson not in results)
        (out / "feedback" / f"{student}.html").write_text(
            f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(student)}</title></head>"
            f"<body><h1>Feedback for {html.escape(student)}</h1><ul>{items}{missing}</ul></body></html>\n",
            encoding="utf-8")
