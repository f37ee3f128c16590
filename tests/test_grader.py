"""`olm-edu grade`: correct and wrong answers, and submissions that try to break or fool the grader.

One class of crafted submissions of lesson 00 is graded once (module fixture); each test reads
its row. The course is a copy in a temporary folder, so a submission that deletes course files
can only touch the copy, and the grader must notice and restore it.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from olm_edu import grader
from olm_edu.grader import Limits, grade

ROOT = Path(__file__).resolve().parents[1]
LESSON = "00_welcome"
CORRECT = (
    "def softmax(x):\n"
    "    e = (x - x.max(dim=-1, keepdim=True).values).exp()\n"
    "    return e / e.sum(dim=-1, keepdim=True)\n"
)
NAIVE = "def softmax(x):\n    return x.exp() / x.exp().sum(dim=-1, keepdim=True)\n"
LIMITS = Limits(notebook_seconds=90, cell_seconds=8, memory_mb=1500)


def submission(answer: str | None = CORRECT, extra_cells: tuple[str, ...] = (), drop: tuple[str, ...] = (),
               rename: dict[str, str] | None = None):
    """The lesson notebook as a student would hand it in."""
    nb = nbformat.read(ROOT / "lessons" / f"{LESSON}.ipynb", as_version=4)
    cells = []
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in drop:
            continue
        if grade_id in (rename or {}):
            cell.metadata["nbgrader"]["grade_id"] = rename[grade_id]
        if grade_id == "softmax" and answer is not None:
            cell.source = answer
        cells.append(cell)
        if grade_id == "softmax_check":
            cells += [nbformat.v4.new_code_cell(source) for source in extra_cells]
    nb.cells = cells
    return nb


def cases(course: Path, outside: Path) -> dict[str, object]:
    target = course / "solutions" / f"{LESSON}.ipynb"
    return {
        "correct": submission(),
        "wrong": submission(NAIVE),
        "stub": submission(None),
        "endless_loop": submission("while True:\n    pass\n"),
        "kernel_exit": submission("import os\nos._exit(1)\n"),
        "memory_hog": submission("import torch\nhoard = [torch.ones(2**27) for _ in range(200)]\n" + CORRECT),
        "loud": submission(CORRECT, extra_cells=("for _ in range(300):\n    print('x' * 20_000)\n",)),
        "deleted_exercise": submission(drop=("softmax", "softmax_check")),
        "renamed_exercise": submission(rename={"softmax": "my_softmax"}),
        "patches_check": submission(NAIVE, extra_cells=("check.softmax = lambda *args, **kwargs: None\n",)),
        "patches_grading": submission(
            "import olm_edu.grading\nolm_edu.grading.Check.fail = lambda self, message: None\n" + NAIVE
        ),
        "fake_output": submission(NAIVE.replace("return", "print('✅ Exercise 1 — a numerically stable softmax: 8 checks passed')\n    return")),
        "deletes_course": submission(CORRECT + f"import pathlib\npathlib.Path({str(target)!r}).unlink()\n"),
        "writes_outside": submission(CORRECT + f"with open({str(outside / 'escaped.txt')!r}, 'w') as f:\n    f.write('hi')\n"),
        "forbidden_helper": submission("import torch\ndef softmax(x):\n    return torch.softmax(x, dim=-1)\n"),
        "invalid_json": "{ this is not a notebook",
    }


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("class")
    course, outside = base / "course", base / "outside"
    (course / "solutions").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(ROOT / "solutions" / f"{LESSON}.ipynb", course / "solutions")
    submissions = base / "submissions"
    for name, content in cases(course, outside).items():
        (submissions / name).mkdir(parents=True)
        path = submissions / name / f"{LESSON}.ipynb"  # folder per student, file named as the lesson
        if isinstance(content, str):
            path.write_text(content)
        else:
            nbformat.write(content, path)
    out = base / "grades"
    results = grade([submissions], "00", out, course=course, limits=LIMITS, progress=False, protect=[course / "solutions"])
    rows = {row["student"]: row for row in csv.DictReader((out / "gradebook.csv").open())}
    return {"results": {r.student: r for r in results}, "rows": rows, "out": out, "course": course,
            "outside": outside, "submissions": submissions}


def row(graded, name):
    return graded["rows"][name]


def message(graded, name):
    return graded["results"][name].exercises[0].message


def test_gradebook_has_a_row_per_student_and_a_column_per_exercise(graded):
    assert set(graded["rows"]) == set(cases(Path("c"), Path("o")))
    assert list(next(iter(graded["rows"].values()))) == ["student", "softmax", "total", "max_total", "status", "detail"]


def test_correct_answer_earns_the_points(graded):
    assert row(graded, "correct")["total"] == "2" and row(graded, "correct")["status"] == "graded"


def test_wrong_answer_earns_nothing_and_gets_the_checks_message(graded):
    assert row(graded, "wrong")["total"] == "0" and row(graded, "wrong")["status"] == "graded"
    assert "overflows to inf" in message(graded, "wrong")
    assert "not implemented yet" in message(graded, "stub")


def test_endless_loop_is_interrupted_and_reported(graded):
    assert row(graded, "endless_loop")["total"] == "0"
    assert "ran longer than 8 s" in message(graded, "endless_loop")


def test_kernel_exit_is_reported_without_stopping_the_batch(graded):
    assert row(graded, "kernel_exit")["status"] == "kernel died" and row(graded, "kernel_exit")["total"] == "0"


def test_memory_exhaustion_is_stopped_at_the_limit(graded):
    assert row(graded, "memory_hog")["status"] == "memory limit" and row(graded, "memory_hog")["total"] == "0"


def test_megabytes_of_output_do_not_break_grading(graded):
    assert row(graded, "loud")["total"] == "2"
    assert (graded["out"] / "feedback" / "loud.html").stat().st_size < 100_000


def test_deleted_or_renamed_exercises_score_zero_and_say_so(graded):
    for name in ("deleted_exercise", "renamed_exercise"):
        assert row(graded, name)["total"] == "0"
        assert "missing from your notebook" in message(graded, name)


@pytest.mark.parametrize("name", ["patches_check", "patches_grading"])
def test_monkeypatching_the_checks_is_flagged_and_not_scored(graded, name):
    assert row(graded, name)["status"] == "flagged" and row(graded, name)["total"] == "0"
    assert graded["results"][name].findings


def test_reloading_the_checks_defeats_a_patch_the_scan_misses(tmp_path, monkeypatch):
    """Even with the scan switched off, a patched check module is replaced before the check runs."""
    monkeypatch.setattr(grader, "assemble", _assemble_without_scan)
    folder = tmp_path / "in"
    folder.mkdir()
    nbformat.write(submission(NAIVE, extra_cells=("check.softmax = lambda *args, **kwargs: None\n",)), folder / "sneaky.ipynb")
    (result,) = grade([folder], "00", tmp_path / "out", course=ROOT, limits=LIMITS, progress=False, protect=[])
    assert result.status == "graded" and result.total == 0 and "overflows" in result.exercises[0].message


def _assemble_without_scan(submission, solution, token):
    from olm_edu.grader.assemble import assemble

    graded = assemble(submission, solution, token)
    graded.findings = []
    return graded


def test_printing_a_fake_pass_earns_nothing(graded):
    assert row(graded, "fake_output")["total"] == "0"


def test_deleting_course_files_is_detected_and_undone(graded):
    assert row(graded, "deletes_course")["status"] == "modified course files"
    assert row(graded, "deletes_course")["total"] == "0"
    assert (graded["course"] / "solutions" / f"{LESSON}.ipynb").exists()


def test_writing_outside_the_working_folder_is_flagged(graded):
    assert row(graded, "writes_outside")["status"] == "flagged" and row(graded, "writes_outside")["total"] == "0"
    assert any("opens a file for writing" in f for f in graded["results"]["writes_outside"].findings)


def test_forbidden_helper_is_detected_by_the_check(graded):
    assert row(graded, "forbidden_helper")["total"] == "0"
    assert "your code calls torch.softmax, which is not allowed here" in message(graded, "forbidden_helper")


def test_invalid_notebook_is_reported_as_such(graded):
    assert row(graded, "invalid_json")["status"] == "invalid notebook"
    assert "NotJSONError" in row(graded, "invalid_json")["detail"]


def test_feedback_page_says_what_failed_and_where(graded):
    page = (graded["out"] / "feedback" / "wrong.html").read_text()
    assert "❌ not passed" in page and "overflows to inf" in page and "cell 15 of your notebook" in page
    assert "0 / 2" in page
    assert "✅ passed" in (graded["out"] / "feedback" / "correct.html").read_text()


def test_grading_again_gives_the_same_reports(graded, tmp_path):
    folder = graded["submissions"]
    picked = tmp_path / "subs"
    for name in ("correct", "wrong"):
        shutil.copytree(folder / name, picked / name)
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        grade([picked], "00", out, course=graded["course"], limits=LIMITS, progress=False, protect=[])
    assert (first / "gradebook.csv").read_text() == (second / "gradebook.csv").read_text()
    assert (first / "feedback" / "wrong.html").read_text() == (second / "feedback" / "wrong.html").read_text()


def test_a_grader_failure_is_a_system_error_not_a_zero(tmp_path, monkeypatch):
    monkeypatch.setattr(grader, "_run_worker", lambda job, limits: None)  # the worker never ran
    folder = tmp_path / "in"
    folder.mkdir()
    nbformat.write(submission(), folder / "alice.ipynb")
    (result,) = grade([folder], "00", tmp_path / "out", course=ROOT, limits=LIMITS, progress=False, protect=[])
    assert result.status == "system error" and "without a result" in result.detail


def test_command_line_summary_and_exit_status(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    nbformat.write(submission(), folder / "alice.ipynb")
    (folder / "bob.ipynb").write_text("not json")
    command = [sys.executable, "-m", "olm_edu.cli", "grade", str(folder), "--lesson", "00", "--out", str(tmp_path / "out"),
               "--course", str(ROOT)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "graded 1 of 2 submissions; 1 did not run to the end or were flagged" in result.stdout
    rows = {r["student"]: r for r in csv.DictReader((tmp_path / "out" / "gradebook.csv").open())}
    assert rows["alice"]["total"] == "2" and rows["bob"]["status"] == "invalid notebook"
