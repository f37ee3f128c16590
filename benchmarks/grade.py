"""Grade a generated class of submissions of lessons 00 and 01 and print the time per submission.

    python benchmarks/grade.py [--per-lesson 15]

Each lesson gets a class mixing correct answers (from the solution notebook), untouched stubs
and a wrong answer, graded with the defaults of `olm-edu grade` (one submission at a time).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from olm_edu.grader import grade  # noqa: E402


def make_class(lesson: str, folder: Path, count: int) -> None:
    """count notebooks: two thirds correct, then stubs, alternating."""
    solution = nbformat.read(ROOT / "solutions" / f"{lesson}.ipynb", as_version=4)
    stub = nbformat.read(ROOT / "lessons" / f"{lesson}.ipynb", as_version=4)
    for index in range(count):
        notebook = stub if index % 3 == 2 else solution
        student = folder / f"student{index:02d}"
        student.mkdir(parents=True)
        nbformat.write(notebook, student / f"{lesson}.ipynb")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-lesson", type=int, default=15, help="submissions per lesson (default 15: 30 in all)")
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}, submissions per lesson: {args.per_lesson}\n")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for lesson in ("00_welcome", "01_tokens"):
            folder = Path(scratch, lesson)
            make_class(lesson, folder, args.per_lesson)
            start = time.perf_counter()
            results = grade([folder], lesson[:2], Path(scratch, f"{lesson}-out"), course=ROOT, progress=False)
            seconds = time.perf_counter() - start
            statuses = {r.status for r in results}
            rows.append((lesson, len(results), seconds, seconds / len(results), ", ".join(sorted(statuses))))
    print(f"| {'lesson':<11} | {'submissions':>11} | {'total (s)':>9} | {'per submission (s)':>18} | statuses |")
    print(f"|{'-' * 13}|{'-' * 13}|{'-' * 11}|{'-' * 20}|----------|")
    for lesson, count, seconds, each, statuses in rows:
        print(f"| {lesson:<11} | {count:>11} | {seconds:>9.1f} | {each:>18.2f} | {statuses} |")
    total = sum(r[2] for r in rows)
    count = sum(r[1] for r in rows)
    print(f"\nall: {count} submissions in {total:.1f} s, {total / count:.2f} s per submission")


if __name__ == "__main__":
    main()
