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
# Generous: a shared 2-core CI machine can be many times slower than a laptop, and honest code must
# never meet a limit. Only the endless loop meets one, in a test of its own (`test_endless_loop...`).
LIMITS = Limits(notebook_seconds=600, cell_seconds=120, memory_mb=1500)


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
    return {
        "correct": submission(),
        "wrong": submission(NAIVE),
        "stub": submission(None),
        "kernel_exit": submission("import os\nos._exit(1)\n"),
        "memory_hog": submission("import torch\nhoard = [torch.ones(2**27) for _ in range(200)]\n" + CORRECT),
        "loud": submission(CORRECT, extra_cells=("for _ in range(300):\n    print('x' * 20_000)\n",)),
        "deleted_exercise": submission(drop=("softmax", "softmax_check")),
        "renamed_exercise": submission(rename={"softmax": "my_softmax"}),
        "forbidden_helper": submission("import torch\ndef softmax(x):\n    return torch.softmax(x, dim=-1)\n"),
        "invalid_json": "{ this is not a notebook",
        "scanned": submission("def softmax(x):\n    e = (x - eval('x.max(-1, keepdim=True).values')).exp()\n"
                              "    return e / e.sum(-1, keepdim=True)\n"),
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
    assert list(next(iter(graded["rows"].values()))) == ["student", "softmax", "total", "max_total", "status", "detail",
                                                         "review"]


def test_correct_answer_earns_the_points(graded):
    assert row(graded, "correct")["total"] == "2" and row(graded, "correct")["status"] == "graded"


def test_wrong_answer_earns_nothing_and_gets_the_checks_message(graded):
    assert row(graded, "wrong")["total"] == "0" and row(graded, "wrong")["status"] == "graded"
    assert "overflows to inf" in message(graded, "wrong")
    assert "not implemented yet" in message(graded, "stub")


def test_endless_loop_is_interrupted_and_reported(tmp_path):
    """A cell past its time limit is interrupted, and the rest of the notebook still runs: the
    check after it reports the exercise as not done. (A short cell limit, so that the loop costs
    little; course cells that a loaded machine makes slower than it fail too, which does not
    change what is asserted.)"""
    folder = tmp_path / "in"
    folder.mkdir()
    nbformat.write(submission("while True:\n    pass\n"), folder / "looper.ipynb")
    limits = Limits(notebook_seconds=600, cell_seconds=10, memory_mb=1500)
    (result,) = grade([folder], "00", tmp_path / "out", course=ROOT, limits=limits, progress=False, protect=[])
    assert (result.status, result.total) == ("graded", 0)
    assert "your answer cell itself failed: TimeoutError: the cell ran longer than 10 s" in result.exercises[0].message
    assert result.exercises[0].message.endswith(("NameError: name 'softmax' is not defined",))


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


def test_patching_the_checks_in_the_kernel_changes_nothing(tmp_path, monkeypatch):
    """Even with the scan switched off, a check patched in the kernel is not the check that runs
    (lesson 00's checks run in the grader's process)."""
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


def test_forbidden_helper_is_detected_by_the_check(graded):
    assert row(graded, "forbidden_helper")["total"] == "0"
    assert "your code calls torch.softmax, which is not allowed here" in message(graded, "forbidden_helper")


def test_invalid_notebook_is_reported_as_such(graded):
    assert row(graded, "invalid_json")["status"] == "invalid notebook"
    assert "NotJSONError" in row(graded, "invalid_json")["detail"]


def test_feedback_page_says_what_failed_and_where(graded):
    page = (graded["out"] / "feedback" / "wrong.html").read_text()
    cells = submission(NAIVE).cells
    answer = next(i for i, c in enumerate(cells) if c.metadata.get("nbgrader", {}).get("grade_id") == "softmax")
    assert "❌ not passed" in page and "overflows to inf" in page and f"cell {answer + 1} of your notebook" in page
    assert "0 / 2" in page
    assert "✅ passed" in (graded["out"] / "feedback" / "correct.html").read_text()


def test_grading_again_gives_the_same_reports(graded, tmp_path):
    """Two of the class graded again, into another folder (no journal to reuse): the same rows and
    the same feedback pages as in the first run (the checks' seeds are pinned per student)."""
    folder = graded["submissions"]
    picked = tmp_path / "subs"
    for name in ("correct", "wrong"):
        shutil.copytree(folder / name, picked / name)
    again = tmp_path / "again"
    grade([picked], "00", again, course=graded["course"], limits=LIMITS, progress=False, protect=[])
    rows = {r["student"]: r for r in csv.DictReader((again / "gradebook.csv").open())}
    for name in ("correct", "wrong"):
        assert rows[name] == row(graded, name)
        assert (again / "feedback" / f"{name}.html").read_text() == (graded["out"] / "feedback" / f"{name}.html").read_text()


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
    assert "graded 1 of 2 submissions; 1 did not run to the end" in result.stdout
    rows = {r["student"]: r for r in csv.DictReader((tmp_path / "out" / "gradebook.csv").open())}
    assert rows["alice"]["total"] == "2" and rows["bob"]["status"] == "invalid notebook"


def test_scan_findings_are_advice_shown_to_the_instructor(graded):
    """Code the scan dislikes is graded like any other; the finding is listed for review."""
    result = graded["results"]["scanned"]
    assert (result.status, result.total) == ("graded", 2) and any("calls eval()" in f for f in result.findings)
    assert "calls eval()" in row(graded, "scanned")["review"]
    assert "Code flagged for review" in (graded["out"] / "feedback" / "scanned.html").read_text()


def test_grading_refuses_to_run_without_a_sandbox_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(grader, "sandbox_problem", lambda: "bwrap not found: install bubblewrap (`apt-get install bubblewrap`)")
    folder = tmp_path / "in"
    folder.mkdir()
    nbformat.write(submission(), folder / "alice.ipynb")
    with pytest.raises(grader.SandboxUnavailable, match="apt-get install bubblewrap"):
        grade([folder], "00", tmp_path / "out", course=ROOT, limits=LIMITS, progress=False, protect=[])
    with pytest.warns(UserWarning, match="WITHOUT a sandbox"):
        (result,) = grade([folder], "00", tmp_path / "out", course=ROOT, limits=LIMITS, progress=False, protect=[],
                          sandbox=False)
    assert (result.status, result.total) == ("graded", 2)


def test_an_interrupted_run_resumes_from_its_journal(graded, monkeypatch):
    """Every result is in DIR/journal.jsonl as soon as it is known: grading the same class into the
    same folder again grades nothing twice and writes the same gradebook."""
    out = graded["out"]
    before = (out / "gradebook.csv").read_text()
    monkeypatch.setattr(grader, "grade_one", lambda *args, **kwargs: pytest.fail("graded a submission again"))
    grade([graded["submissions"]], "00", out, course=graded["course"], limits=LIMITS, progress=False, protect=[])
    assert (out / "gradebook.csv").read_text() == before


def test_a_changed_submission_is_graded_again_and_duplicates_are_reported(tmp_path, monkeypatch):
    calls = []

    def fake_grade_one(path, solution, student, limits, snapshot, sandbox):
        calls.append(student)
        return grader.SubmissionResult(student, str(path))

    monkeypatch.setattr(grader, "grade_one", fake_grade_one)
    folder = tmp_path / "in"
    (folder / "alice").mkdir(parents=True)
    nbformat.write(submission(), folder / "alice.ipynb")
    nbformat.write(submission(NAIVE), folder / "alice" / f"{LESSON}.ipynb")  # the same student again
    nbformat.write(submission(), folder / "bob.ipynb")
    results = grade([folder], "00", tmp_path / "out", course=ROOT, limits=LIMITS, progress=False, protect=[], jobs=2)
    assert sorted(calls) == ["alice", "bob"]
    duplicate = next(r for r in results if r.status == "duplicate")
    assert duplicate.student == "alice#2" and "only" in duplicate.detail
    rows = {r["student"]: r for r in csv.DictReader((tmp_path / "out" / "gradebook.csv").open())}
    assert rows["alice#2"]["total"] == "" and rows["alice#2"]["status"] == "duplicate"
    nbformat.write(submission(NAIVE), folder / "bob.ipynb")
    calls.clear()
    grade([folder], "00", tmp_path / "out", course=ROOT, limits=LIMITS, progress=False, protect=[])
    assert calls == ["bob"]


def test_course_submissions_are_found_in_every_layout(tmp_path):
    from olm_edu.grader.course import find_course_submissions

    layout = ["submitted/carol/lesson00/00_welcome.ipynb", "dave/00_welcome.ipynb", "00_welcome/erin.ipynb",
              "01/frank.ipynb", "notes/readme.ipynb"]
    for name in layout:
        (tmp_path / "class" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "class" / name).write_text("{}")
    found = find_course_submissions(tmp_path / "class", ROOT)
    assert sorted(found["00_welcome"].values()) == ["carol", "dave", "erin"]
    assert list(found["01_tokens"].values()) == ["frank"]
    assert set(found) == {"00_welcome", "01_tokens"}


def test_course_gradebook_leaves_ungraded_lessons_blank_with_the_reason(tmp_path, monkeypatch):
    from olm_edu.grader import course as course_module

    def fake_grade(files, lesson, out, *, names, **options):
        results = []
        for path in files:
            result = grader.SubmissionResult(names[path], str(path))
            if names[path] == "bob" and lesson == "01":
                result.status, result.detail = "system error", "the worker crashed"
            result.exercises = [grader.ExerciseResult("x", "Exercise 1", 2.0, 2.0, True, "", "")]
            results.append(result)
        return results

    monkeypatch.setattr(course_module, "grade", fake_grade)
    for name in ("alice/00_welcome.ipynb", "alice/01_tokens.ipynb", "bob/01_tokens.ipynb"):
        (tmp_path / "class" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "class" / name).write_text("{}")
    course_module.grade_course(tmp_path / "class", tmp_path / "out", course=ROOT)
    rows = {r["student_id"]: r for r in csv.DictReader((tmp_path / "out" / "gradebook.csv").open())}
    assert (rows["alice"]["00_welcome"], rows["alice"]["01_tokens"], rows["alice"]["total"]) == ("2", "2", "4")
    assert (rows["bob"]["00_welcome"], rows["bob"]["00_welcome note"]) == ("", "not submitted")
    assert rows["bob"]["01_tokens"] == "" and "worker crashed" in rows["bob"]["01_tokens note"]
    assert "01_tokens/feedback/alice.html" in (tmp_path / "out" / "feedback" / "alice.html").read_text()


def test_submissions_graded_at_once_share_the_cores(tmp_path, monkeypatch):
    """N jobs on C cores: each submission's kernel and worker get C // N torch threads (a pool as
    large as the machine per submission would oversubscribe it); an instructor's value is kept."""
    from olm_edu.grader import worker
    from olm_edu.grader.sandbox import thread_env

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("ada", "bob"):
        nbformat.write(submission(), folder / f"{name}.ipynb")
    seen = []

    def fake_grade_one(path, solution, student, limits, snapshot, sandbox):
        seen.append(limits.threads)
        return grader.SubmissionResult(student, str(path), status="system error", detail="not graded here")

    monkeypatch.setattr(grader, "grade_one", fake_grade_one)
    monkeypatch.setattr(grader.os, "cpu_count", lambda: 4)
    grade([folder], LESSON[:2], tmp_path / "out", course=ROOT, jobs=2, progress=False, resume=False)
    grade([folder], LESSON[:2], tmp_path / "out1", course=ROOT, jobs=3, progress=False, resume=False,
          limits=Limits(threads=3))
    assert seen == [2, 2, 3, 3]
    assert thread_env(2) == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"} and thread_env(None) == {}
    env = worker._kernel_env({"sandbox": True, "workdir": str(tmp_path), "seed": 1, "threads": 2})
    assert env["OMP_NUM_THREADS"] == "2"
