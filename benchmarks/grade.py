"""Grading throughput: submissions per minute with 1 job and with N jobs, same results required.

    python benchmarks/grade.py [--submissions 12] [--jobs N] [--lessons 00_welcome 01_tokens]

Each lesson gets a generated class mixing correct answers (the solution notebook) and untouched
stubs (one in three), graded with `olm-edu grade`'s defaults (sandbox on), first one submission
at a time, then N at once (default: the number of cores). The two gradebooks must be identical
(exit status 1 if not). Prints a table and the speed-up.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import torch

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=12, help="submissions per lesson (default 12)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel jobs (default: cores)")
    parser.add_argument("--lessons", nargs="+", default=["00_welcome"], help="lessons (default 00_welcome)")
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}, "
          f"submissions per lesson: {args.submissions}\n")
    rows, same = [], True
    with tempfile.TemporaryDirectory() as scratch:
        for lesson in args.lessons:
            folder = Path(scratch, lesson)
            make_class(lesson, folder, args.submissions)
            books = {}
            for jobs in (1, args.jobs):
                out = Path(scratch, f"{lesson}-{jobs}")
                start = time.perf_counter()
                results = grade([folder], lesson[:2], out, course=ROOT, progress=False, jobs=jobs, resume=False)
                seconds = time.perf_counter() - start
                books[jobs] = (out / "gradebook.csv").read_text()
                statuses = ", ".join(sorted({r.status for r in results}))
                rows.append((lesson, jobs, len(results), seconds, 60 * len(results) / seconds, statuses))
            same &= books[1] == books[args.jobs]
    print(f"| {'lesson':<11} | jobs | submissions | total (s) | submissions/min | statuses |")
    print(f"|{'-' * 13}|------|-------------|-----------|-----------------|----------|")
    for lesson, jobs, count, seconds, rate, statuses in rows:
        print(f"| {lesson:<11} | {jobs:>4} | {count:>11} | {seconds:>9.1f} | {rate:>15.1f} | {statuses} |")
    for lesson in args.lessons:
        one, many = (r[4] for r in rows if r[0] == lesson)
        print(f"\n{lesson}: {args.jobs} jobs grade {many / one:.2f}x as many submissions per minute as 1 job")
    print(f"same gradebooks with 1 and {args.jobs} jobs: {'yes' if same else 'NO'}")
    print(f"\nreproduce: python benchmarks/grade.py --submissions {args.submissions} --jobs {args.jobs} "
          f"--lessons {' '.join(args.lessons)}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
