"""`olm-edu grade`: grade a class's notebooks for one lesson, safely, without a database.

    olm-edu grade submissions/ --lesson 01 --out grades/ [--jobs N] [--cluster ADDRESS]

For each submitted notebook:
1. read it (a file that is not a notebook fails to run, with the reason);
2. assemble the notebook to run (`assemble`): the student's answers, the course's own checks
   with their hidden tests, everything else as the course wrote it;
3. run it (`worker`): the student's code in a fresh kernel inside a bubblewrap sandbox
   (`sandbox`: no network, nothing of the grader or the course visible, its own user, limits on
   time, memory, processes and bytes written, every process gone when it ends); the checks in
   the grader's own process wherever the lesson allows (`remote`: the kernel only computes the
   learner's outputs; the references and the verdict never run where student code runs);
4. score each exercise: its points when its check passed; the code scan (`scan`) is advice for
   the instructor (the `review` column), never a zero.

Submissions are graded N at a time (`jobs`, default: the cores), or on a Dask cluster
(`cluster`); each result is appended to `DIR/journal.jsonl` as soon as it is known, so an
interrupted run resumes. Results go to `DIR/gradebook.csv` (a row per student, a column per
exercise, the total, the status and the scan's findings), `DIR/feedback/<student>.html` (what
passed, what failed, the check's message, where in the notebook), and `DIR/results.json`.
Re-running gives the same files: check seeds are pinned per student. A status other than
"graded" says why a submission was not fully graded, and whether that was the submission's doing
or the grader's ("system error", whose total is left blank, as is a "duplicate" second file of
one student). Without bwrap, grading refuses to start unless asked for `sandbox=False`
(`--no-sandbox`), which warns loudly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import psutil

import olm_edu
from olm_edu.grader.assemble import Exercise, assemble, exercises_of
from olm_edu.grader.report import write_reports
from olm_edu.grader.sandbox import SandboxLimits, SandboxUnavailable, sandbox_problem, sandbox_uid, thread_env

if TYPE_CHECKING:  # imported where used: the student's kernel imports this package (for `kernel_side`)
    import nbformat  # and must not pay for nbformat's schema validators (~2 s of CPU per submission)

__all__ = ["Limits", "ExerciseResult", "SubmissionResult", "grade", "find_solution", "student_name"]

STUDENT_FAULTS = ("invalid notebook", "time limit", "memory limit", "process limit", "kernel died", "modified course files")


@dataclass(frozen=True)
class Limits:
    """How long, how much memory, how many processes and how much disk one submission may use."""

    notebook_seconds: float = 300.0
    cell_seconds: float = 60.0
    memory_mb: int = 4096  # resident memory of the whole process tree
    processes: int = 256  # processes and threads in the sandbox
    disk_mb: int = 256  # the working folder (/home/student); /tmp and /dev/shm get half each
    threads: int | None = None  # torch threads of each submission's kernel and worker (None: cores // jobs)

    def sandbox_limits(self) -> SandboxLimits:
        return SandboxLimits(processes=self.processes, address_space_mb=max(16384, 4 * self.memory_mb),
                             file_mb=min(64, self.disk_mb), home_mb=self.disk_mb, tmp_mb=max(16, self.disk_mb // 2))


@dataclass
class ExerciseResult:
    grade_id: str
    title: str
    points: float
    max_points: float
    passed: bool
    message: str
    where: str


@dataclass
class SubmissionResult:
    student: str
    path: str
    status: str = "graded"
    detail: str = ""
    exercises: list[ExerciseResult] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> float:
        return sum(e.points for e in self.exercises)

    @property
    def max_total(self) -> float:
        return sum(e.max_points for e in self.exercises)

    @property
    def system_error(self) -> bool:
        return self.status == "system error"


def find_solution(course: Path, lesson: str) -> Path:
    """solutions/NN_name.ipynb for `lesson` given as "01", "1" or "01_tokens"."""
    candidates = sorted(Path(course, "solutions").glob("[0-9][0-9]_*.ipynb"))
    for path in candidates:
        if lesson in (path.stem, path.stem[:2]) or (lesson.isdigit() and int(lesson) == int(path.stem[:2])):
            return path
    names = ", ".join(p.stem for p in candidates) or "none"
    raise ValueError(f"lesson={lesson!r} matches no solution notebook in {course}/solutions (have: {names})")


def student_name(path: Path, lesson_stem: str) -> str:
    """alice.ipynb -> alice; alice/01_tokens.ipynb (named as the lesson) -> alice."""
    name = path.parent.name if path.stem == lesson_stem else path.stem
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "student"


def _submission_files(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"submission {path} does not exist")
    return files


def _snapshot(roots: list[Path]) -> dict[Path, bytes]:
    return {p: p.read_bytes() for root in roots for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def _restore_changes(snapshot: dict[Path, bytes]) -> list[str]:
    """Put back any course file a submission changed or deleted; return their names."""
    changed = []
    for path, content in snapshot.items():
        if not path.exists() or path.read_bytes() != content:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            changed.append(str(path))
    return changed


def _tree(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [process, *process.children(recursive=True)]
    except psutil.Error:
        return [process]


def _tree_rss(members: list[psutil.Process]) -> int:
    total = 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


def _kill_tree(process: psutil.Process) -> None:
    members = _tree(process)
    for member in members:
        try:
            member.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(members, timeout=10)


def _kill_user(uid: int) -> int:
    """Kill every process still running as the sandbox's user id; how many there were (should be 0:
    the PID namespace ends them all with the sandbox; the kernel takes a moment to reap them, so
    only a process still alive after 3 s counts)."""

    def alive() -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter(["uids", "status"]):
            if process.info["uids"] and process.info["uids"].real == uid and process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(process)
        return found

    deadline = time.monotonic() + 3.0
    left = alive()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = alive()
    for process in left:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=10)
    return len(left)


def _run_worker(job: dict, limits: Limits) -> str | None:
    """Run the worker; return "time limit" / "memory limit" / "process limit" if it had to be stopped.

    The watchdog here sums the resident memory and counts the processes of the worker's whole
    tree (the sandboxed kernel and everything it started: the PID namespace keeps them all
    children of the sandbox), every 50 ms; the sandbox's own limits (RLIMIT_NPROC, RLIMIT_AS, tmpfs
    sizes) stop what is too fast for a watchdog.
    """
    job_dir = Path(job["results"]).parent
    job_file = job_dir / "job.json"
    job_file.write_text(json.dumps(job), encoding="utf-8")
    log = open(job_dir / "worker.log", "w")
    env = {**os.environ, **thread_env(job.get("threads"))}
    worker = subprocess.Popen([sys.executable, "-m", "olm_edu.grader.worker", str(job_file)],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    process = psutil.Process(worker.pid)
    deadline = time.monotonic() + limits.notebook_seconds
    stopped = None
    try:
        while worker.poll() is None:
            members = _tree(process)
            if time.monotonic() > deadline:
                stopped = "time limit"
            elif _tree_rss(members) > limits.memory_mb * 2**20:
                stopped = "memory limit"
            elif len(members) > limits.processes + 8:  # the worker, bwrap, its init and the kernel
                stopped = "process limit"
            if stopped:
                _kill_tree(process)
                break
            time.sleep(0.05)
    finally:
        if worker.poll() is None:
            _kill_tree(process)
        log.close()
        if job["sandbox"] and os.geteuid() == 0:
            job["leftover_processes"] = _kill_user(sandbox_uid(worker.pid))
    return stopped


def _read_results(path: Path) -> tuple[dict[str, dict], dict[str, str], dict]:
    """(check outcomes by check id, answer-cell errors by grade_id, how the run ended)."""
    checks, answer_errors, end = {}, {}, {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if "check" in record:
                checks[record["check"]] = record
            elif "answer" in record:
                answer_errors[record["answer"]] = record["error"]
            else:
                end = record
    return checks, answer_errors, end


def _score(result: SubmissionResult, exercises: list[Exercise], checks: dict, missing: dict, cells: dict,
           scored: bool, answer_errors: dict | None = None) -> None:
    answer_errors = answer_errors or {}
    for exercise in exercises:
        outcome = checks.get(exercise.check_id)
        where = (f"your answer cell is cell {cells[exercise.grade_id] + 1} of your notebook"
                 if exercise.grade_id in cells else "no answer cell found")
        if exercise.grade_id in missing:
            passed, message = False, missing[exercise.grade_id]
        elif outcome is None:
            passed, message = False, "not run: the notebook stopped before this check (see the status above)"
        else:
            passed, message = outcome["passed"], outcome["message"]
        if exercise.grade_id in answer_errors:
            message = f"your answer cell itself failed: {answer_errors[exercise.grade_id]}\n{message}"
        points = exercise.points if (passed and scored) else 0.0
        result.exercises.append(ExerciseResult(exercise.grade_id, exercise.title, points, exercise.points, passed, message, where))


def grade_one(path: Path, solution: nbformat.NotebookNode, student: str, limits: Limits,
              snapshot: dict[Path, bytes], sandbox: bool = True) -> SubmissionResult:
    """Grade one submitted notebook (see the module docstring for the steps)."""
    import nbformat

    result = SubmissionResult(student, str(path))
    exercises = exercises_of(solution)
    start = time.perf_counter()
    try:
        submission = nbformat.read(path, as_version=4)
    except Exception as error:  # not JSON, not a notebook, unreadable
        result.status, result.detail = "invalid notebook", f"could not read {path.name}: {type(error).__name__}: {error}"[:500]
        _score(result, exercises, {}, {}, {}, scored=False)
        return result
    token = f"OLM-EDU-CHECK-PASSED-{secrets.token_hex(16)}"
    graded = assemble(submission, solution, token)
    result.findings = [str(finding) for finding in graded.findings]
    seed = int(hashlib.sha256(f"{student}/{path.stem}".encode()).hexdigest()[:8], 16)
    with tempfile.TemporaryDirectory(prefix="olm-edu-grade-") as scratch:
        workdir, channel = Path(scratch, "work"), Path(scratch, "channel")
        workdir.mkdir()
        channel.mkdir()
        notebook_file = Path(scratch, "graded.ipynb")
        nbformat.write(graded.notebook, notebook_file)
        job = {"notebook": str(notebook_file), "workdir": str(workdir), "channel": str(channel),
               "results": str(Path(scratch, "results.jsonl")), "token": token, "seed": seed,
               "cell_timeout": limits.cell_seconds, "sandbox": sandbox, "sandbox_limits": asdict(limits.sandbox_limits()),
               "judged_here": sorted(graded.check_sources), "check_sources": graded.check_sources,
               "threads": limits.threads}
        stopped = _run_worker(job, limits)
        checks, answer_errors, end = _read_results(Path(job["results"]))
        log_file = Path(scratch, "worker.log")
        log = log_file.read_text(encoding="utf-8", errors="replace")[-1500:] if log_file.exists() else "(no log)"
    changed = _restore_changes(snapshot)
    if stopped == "time limit":
        result.status, result.detail = stopped, f"the notebook ran longer than {limits.notebook_seconds:g} s and was stopped"
    elif stopped == "memory limit":
        result.status, result.detail = stopped, f"the notebook used more than {limits.memory_mb} MB of memory and was stopped"
    elif stopped == "process limit":
        result.status, result.detail = stopped, f"the notebook started more than {limits.processes} processes and was stopped"
    elif end.get("end") == "kernel_died":
        result.status = "kernel died"
        result.detail = f"the Python process ended while running cell {end.get('cell', -1) + 1} of the graded notebook (e.g. os._exit or a crash)"
    elif end.get("end") == "system_error" or not end:
        result.status = "system error"
        result.detail = end.get("detail") or f"the grading worker stopped without a result: {log}"
    if changed:
        result.status, result.detail = "modified course files", "restored: " + ", ".join(changed)
    if job.get("leftover_processes"):
        result.findings.append(f"{job['leftover_processes']} process(es) outlived the sandbox and were killed")
    scored = result.status not in ("modified course files", "system error")
    _score(result, exercises, checks, graded.missing, graded.student_cells, scored, answer_errors)
    result.seconds = time.perf_counter() - start
    return result


def _result_from_dict(record: dict) -> SubmissionResult:
    exercises = [ExerciseResult(**e) for e in record.get("exercises", [])]
    fields = {k: v for k, v in record.items() if k in SubmissionResult.__dataclass_fields__ and k != "exercises"}
    return SubmissionResult(**fields, exercises=exercises)


def _submission_key(solution: Path, student: str, path: Path) -> str:
    """What makes a stored result reusable: the student, the exact bytes of the submission and of
    the solution notebook (a changed lesson is graded again)."""
    content = path.read_bytes() if path.is_file() else b""
    return "/".join([student, hashlib.sha256(content).hexdigest(), hashlib.sha256(solution.read_bytes()).hexdigest()])


def _finished(journal: Path) -> dict[str, SubmissionResult]:
    """Results already in the journal of an interrupted run (system errors are graded again)."""
    done = {}
    if journal.exists():
        for line in journal.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                result = _result_from_dict(record["result"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by the interruption
            if not result.system_error:
                done[record["key"]] = result
    return done


def _name_students(files: list[Path], lesson_stem: str, names: dict[Path, str] | None = None
                   ) -> tuple[list[tuple[Path, str]], list[SubmissionResult]]:
    """(file, student) to grade, and a row for each extra file of a student seen twice: the first
    file (in sorted order) is graded, the others are reported, and the run goes on."""
    graded, duplicates, seen = [], [], {}
    for path in files:
        student = (names or {}).get(path) or student_name(path, lesson_stem)
        if student in seen:
            copy = 2
            while f"{student}#{copy}" in seen:
                copy += 1
            seen[f"{student}#{copy}"] = path
            duplicates.append(SubmissionResult(f"{student}#{copy}", str(path), status="duplicate",
                                               detail=f"another submission of {student}; only {seen[student]} was graded"))
        else:
            seen[student] = path
            graded.append((path, student))
    return graded, duplicates


def grade(submissions: list[Path], lesson: str, out: Path, *, course: Path | None = None,
          limits: Limits = Limits(), progress: bool = True, protect: list[Path] | None = None,
          sandbox: bool = True, jobs: int | None = None, resume: bool = True,
          cluster: str | None = None, names: dict[Path, str] | None = None) -> list[SubmissionResult]:
    """Grade every notebook under `submissions` for `lesson`; write the reports into `out`.

    `jobs`: submissions graded at once (default: the number of CPU cores), each in its own
    worker and sandbox; the results do not depend on it. Each result is appended to
    `out/journal.jsonl` as soon as it is known, so a run that is interrupted resumes where it
    stopped (`resume=False` grades everything again). `cluster`: the address of a Dask
    distributed scheduler; its workers grade the submissions, each in its own sandbox
    (`olm_edu.grader.cluster`), and this machine writes the journal and the reports.
    `names`: the student of each file, where the file's name or folder does not say it
    (`course.grade_course` uses it for nbgrader's submitted/<student>/<assignment>/ layout).
    `protect`: folders whose files a submission must not change, checked after each submission
    (any change is undone and reported); by default none with the sandbox (which mounts them
    read-only), the olm_edu package and the course's solutions/ without it.
    """
    if sandbox:
        problem = sandbox_problem()
        if problem:
            raise SandboxUnavailable(f"cannot grade safely: {problem}")
    else:
        warnings.warn("grading WITHOUT a sandbox: student code runs as you, can read solutions/ and other "
                      "submissions, open network connections and change any file you can", stacklevel=2)
    import nbformat

    course = Path(course) if course is not None else Path.cwd()
    solution_path = find_solution(course, lesson)
    solution = nbformat.read(solution_path, as_version=4)
    files = _submission_files([Path(p) for p in submissions])
    if not files:
        raise ValueError("no submitted notebooks (.ipynb) found in " + ", ".join(map(str, submissions)))
    if protect is None:  # the sandbox mounts them read-only; without it, changes are undone and reported
        protect = [] if sandbox else [Path(olm_edu.__file__).parent, course / "solutions"]
    snapshot = _snapshot([Path(p) for p in protect])
    to_grade, duplicates = _name_students(files, solution_path.stem, names)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    journal = out / "journal.jsonl"
    if not resume and journal.exists():
        journal.unlink()
    done = _finished(journal)
    keys = {student: _submission_key(solution_path, student, path) for path, student in to_grade}
    pending = [(path, student) for path, student in to_grade if keys[student] not in done]
    by_student = {student: done[keys[student]] for _, student in to_grade if keys[student] in done}
    jobs = max(1, jobs or os.cpu_count() or 1)
    if limits.threads is None and cluster is None:  # share the cores between the submissions graded at once
        limits = replace(limits, threads=max(1, (os.cpu_count() or 1) // jobs))

    def finished() -> Iterator[SubmissionResult]:
        if cluster is not None:
            from olm_edu.grader.cluster import map_on_cluster

            for record in map_on_cluster(cluster, pending, nbformat.writes(solution), asdict(limits), sandbox):
                yield _result_from_dict(record)
            return
        # Threads are enough: each submission runs in its own worker process; a thread only waits for it.
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(grade_one, path, solution, student, limits, snapshot, sandbox)
                       for path, student in pending]
            for future in as_completed(futures):
                yield future.result()

    from tqdm.auto import tqdm

    with tqdm(total=len(to_grade), initial=len(to_grade) - len(pending), desc=f"grading {solution_path.stem}",
              unit="notebook", disable=not progress) as bar, journal.open("a", encoding="utf-8") as log:
        for result in finished():
            by_student[result.student] = result
            log.write(json.dumps({"key": keys[result.student], "result": asdict(result)}) + "\n")
            log.flush()
            bar.update(1)
    results = [by_student[student] for _, student in to_grade] + duplicates
    if (out / "feedback").exists():
        shutil.rmtree(out / "feedback")  # re-running replaces the reports, never mixes old and new
    write_reports(results, exercises_of(solution), solution_path.stem, out)
    (out / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=1), encoding="utf-8")
    return results
