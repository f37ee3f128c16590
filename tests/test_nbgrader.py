"""The solution notebooks work in an nbgrader course unchanged: generate, submit, autograde; and
`olm-edu grade` reads nbgrader's submitted/ layout and agrees with nbgrader's scores."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import csv

import nbformat
from nbgrader.api import Gradebook

from olm_edu.grader import Limits
from olm_edu.grader.course import grade_course
from olm_edu.grader.sandbox import sandbox_problem

ROOT = Path(__file__).resolve().parents[1]
CORRECT = "def softmax(x):\n    e = (x - x.max(-1, keepdim=True).values).exp()\n    return e / e.sum(-1, keepdim=True)\n"
WRONG = "def softmax(x):\n    return x.exp() / x.exp().sum(-1, keepdim=True)\n"


def nbgrader(course: Path, *args: str) -> None:
    # nbgrader runs `alembic` from PATH, so the virtualenv's scripts must be on it
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [sys.executable, "-m", "nbgrader", *args]
    result = subprocess.run(command, cwd=course, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_nbgrader_generates_and_autogrades_a_lesson(tmp_path):
    course = tmp_path / "course"
    (course / "source" / "lesson00").mkdir(parents=True)
    shutil.copy(ROOT / "solutions" / "00_welcome.ipynb", course / "source" / "lesson00")
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        f"c.CourseDirectory.root = {str(course)!r}\n"
        "c.CourseDirectory.course_id = 'olm-edu'\n"
        f"c.CourseDirectory.db_url = 'sqlite:///{course / 'gradebook.db'}'\n"
    )
    nbgrader(course, "db", "assignment", "add", "lesson00")
    nbgrader(course, "generate_assignment", "lesson00", "--force")
    released = nbformat.read(course / "release" / "lesson00" / "00_welcome.ipynb", as_version=4)
    assert "BEGIN HIDDEN TESTS" not in nbformat.writes(released)
    stub = next(c.source for c in released.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "softmax")
    students = (("alice", CORRECT), ("bob", WRONG), ("carol", stub))
    (course / "students.csv").write_text("id\n" + "".join(f"{student}\n" for student, _ in students))
    nbgrader(course, "db", "student", "import", "students.csv")  # one nbgrader start-up, not one per student
    for student, answer in students:
        for cell in released.cells:
            if cell.metadata.get("nbgrader", {}).get("grade_id") == "softmax":
                cell.source = answer
        folder = course / "submitted" / student / "lesson00"
        folder.mkdir(parents=True)
        nbformat.write(released, folder / "00_welcome.ipynb")
    nbgrader(course, "autograde", "lesson00", "--force")
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        alice = gradebook.find_submission("lesson00", "alice")
        bob = gradebook.find_submission("lesson00", "bob")
        assert (alice.score, alice.max_score) == (2.0, 2.0)
        assert (bob.score, bob.max_score) == (0.0, 2.0)
        carol = gradebook.find_submission("lesson00", "carol")
        assert (carol.score, carol.max_score) == (0.0, 2.0)
        nbgrader_scores = {name: gradebook.find_submission("lesson00", name).score for name in ("alice", "bob", "carol")}
    # The failed check did not raise (Run All goes on in JupyterLab): nbgrader scored it 0 from the
    # error output the check published, which holds the one-line diagnosis and no traceback.
    autograded = nbformat.read(course / "autograded" / "bob" / "lesson00" / "00_welcome.ipynb", as_version=4)
    check = next(c for c in autograded.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "softmax_check")
    [error] = [o for o in check.outputs if o.output_type == "error"]
    assert error.ename == "CheckFailed" and len(error.traceback) == 1 and error.traceback[0].startswith("❌")
    # olm-edu grade on the same submitted/ folder: the course gradebook agrees with nbgrader
    out = tmp_path / "grades"
    grade_course(course / "submitted", out, course=ROOT, limits=Limits(cell_seconds=60), progress=False,
                 sandbox=sandbox_problem() is None)
    rows = {r["student_id"]: r for r in csv.DictReader((out / "gradebook.csv").open())}
    assert {name: float(rows[name]["00_welcome"]) for name in ("alice", "bob", "carol")} == nbgrader_scores
