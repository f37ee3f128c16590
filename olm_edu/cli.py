"""The `olm-edu` command.

    olm-edu lessons            regenerate lessons/ from solutions/
    olm-edu lessons --check    exit 1 (and show a diff) when lessons/ is out of date
    olm-edu run SOLUTION...    execute solution notebooks in place, storing their outputs
    olm-edu grade SUBMISSIONS... --lesson NN --out DIR [--jobs N] [--cluster ADDRESS]
                               grade a class, each submission in a sandbox:
                               DIR/gradebook.csv and DIR/feedback/<student>.html
    olm-edu grade CLASS/ --out DIR
                               every lesson found (nbgrader's submitted/ layout too):
                               one course gradebook, a column per lesson
    olm-edu train [FLAGS]      train a model (olm-edu train --help; under torchrun: -m olm_edu.train)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from olm_edu import authoring


def _lessons(args: argparse.Namespace) -> int:
    root = Path(args.root)
    solutions, lessons = root / "solutions", root / "lessons"
    if args.check:
        stale = authoring.stale_lessons(solutions, lessons)
        for name, detail in stale.items():
            print(f"{name}: {detail}")
        if stale:
            print(f"{len(stale)} lesson(s) out of date: run `make lessons`", file=sys.stderr)
            return 1
        print("lessons/ is up to date")
        return 0
    if (root / "book" / "_config.yml").exists():  # the Colab setup cell follows the book's repository and version
        from olm_edu.book import sync_colab_setup

        for path in sync_colab_setup(root):
            print(f"updated the Colab setup cell of {path}")
    written = authoring.generate_all(solutions, lessons)
    for path in written:
        print(f"wrote {path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    for path in args.notebooks:
        seconds = authoring.execute_solution(Path(path), timeout=args.timeout)
        print(f"executed {path} in {seconds:.1f} s")
    return 0


def _grade(args: argparse.Namespace) -> int:
    from olm_edu.grader import STUDENT_FAULTS, Limits, grade

    from olm_edu.grader.sandbox import SandboxUnavailable

    limits = Limits(notebook_seconds=args.time_limit, cell_seconds=args.cell_time_limit, memory_mb=args.memory_limit)
    if args.no_sandbox:
        print("WARNING: grading WITHOUT a sandbox (--no-sandbox): student code runs as you, can read solutions/ "
              "and other submissions, use the network and change files and grades", file=sys.stderr)
    options = {"limits": limits, "sandbox": not args.no_sandbox, "jobs": args.jobs, "resume": not args.fresh,
               "cluster": args.cluster}
    try:
        if args.lesson is None:  # every lesson found: the course gradebook
            from olm_edu.grader.course import grade_course

            if len(args.submissions) != 1:
                print("olm-edu grade: without --lesson, give one folder holding the whole class", file=sys.stderr)
                return 2
            by_lesson = grade_course(args.submissions[0], Path(args.out), course=Path(args.course), **options)
            results = [result for lesson_results in by_lesson.values() for result in lesson_results]
        else:
            results = grade(args.submissions, args.lesson, Path(args.out), course=Path(args.course), **options)
    except SandboxUnavailable as error:
        print(f"olm-edu grade: {error}", file=sys.stderr)
        return 2
    system = [r for r in results if r.system_error]
    failed = [r for r in results if r.status in STUDENT_FAULTS]
    graded = len(results) - len(system) - len(failed)
    flagged = [r for r in results if r.findings]
    print(
        f"graded {graded} of {len(results)} submissions; {len(failed)} did not run to the end (see the status "
        f"column); {len(system)} system errors; {len(flagged)} with code to review (the review column); "
        f"gradebook: {Path(args.out) / 'gradebook.csv'}"
    )
    for result in system:
        print(f"system error for {result.student}: {result.detail}", file=sys.stderr)
    return 2 if system else (1 if failed else 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="olm-edu", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    lessons = commands.add_parser("lessons", help="generate lessons/ from solutions/")
    lessons.add_argument("--root", default=".", help="the course folder (holds solutions/ and lessons/)")
    lessons.add_argument("--check", action="store_true", help="only check that lessons/ is up to date")
    lessons.set_defaults(run=_lessons)
    run = commands.add_parser("run", help="execute solution notebooks in place (refresh stored outputs)")
    run.add_argument("notebooks", nargs="+", help="paths of solution notebooks")
    run.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell")
    run.set_defaults(run=_run)
    grade = commands.add_parser("grade", help="grade submitted notebooks of one lesson")
    grade.add_argument("submissions", nargs="+", type=Path, help="notebooks, or folders searched for notebooks")
    grade.add_argument("--lesson", default=None,
                       help="the lesson: 01, or 01_tokens (default: every lesson found, into one course gradebook)")
    grade.add_argument("--out", required=True, help="folder for gradebook.csv and feedback/")
    grade.add_argument("--course", default=".", help="the course folder holding solutions/ (default: here)")
    grade.add_argument("--time-limit", type=float, default=300.0, help="seconds per notebook (default 300)")
    grade.add_argument("--cell-time-limit", type=float, default=60.0, help="seconds per cell (default 60)")
    grade.add_argument("--memory-limit", type=int, default=4096, help="MB per notebook (default 4096)")
    grade.add_argument("--jobs", type=int, default=None, help="submissions graded at once (default: CPU cores)")
    grade.add_argument("--cluster", default=None, metavar="ADDRESS",
                       help="grade on a Dask distributed cluster (tcp://scheduler:8786); needs olm-edu[cluster]")
    grade.add_argument("--fresh", action="store_true",
                       help="grade everything again instead of resuming from DIR/journal.jsonl")
    grade.add_argument("--no-sandbox", action="store_true",
                       help="run student code without the bubblewrap sandbox (unsafe; for machines without bwrap)")
    grade.set_defaults(run=_grade)
    commands.add_parser("train", help="train a model: olm-edu train --help", add_help=False)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:  # its flags are olm_edu.training_run's own
        from olm_edu.training_run import main as train_main

        return train_main(argv[1:])
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
