"""The `olm-edu` command.

    olm-edu lessons            regenerate lessons/ from solutions/
    olm-edu lessons --check    exit 1 (and show a diff) when lessons/ is out of date
    olm-edu run SOLUTION...    execute solution notebooks in place, storing their outputs
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
    written = authoring.generate_all(solutions, lessons)
    for path in written:
        print(f"wrote {path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    for path in args.notebooks:
        seconds = authoring.execute_solution(Path(path), timeout=args.timeout)
        print(f"executed {path} in {seconds:.1f} s")
    return 0


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
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
