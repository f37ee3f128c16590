"""`olm-edu grade` against a hostile class: harmless payloads for every attack in issue 15.

One batch of lesson-00 submissions is graded once, sandbox on (module fixture). Each attacking
submission answers with the *wrong* softmax (the naive one, which fails the check on large
logits), so any attack that worked would show as points gained. For each payload the tests
assert: no points, nothing changed outside the sandbox (the course copy, the installed `olm_edu`
package, a folder outside, the grader's output: hashed before and after), no process left behind,
and the honest submissions in the same batch graded correctly.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import nbformat
import psutil
import pytest

import olm_edu
from olm_edu.grader import Limits, grade
from olm_edu.grader.sandbox import sandbox_problem

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_grader import CORRECT, NAIVE, submission  # noqa: E402

pytestmark = pytest.mark.skipif(sandbox_problem() is not None, reason=f"no sandbox here: {sandbox_problem()}")

LIMITS = Limits(notebook_seconds=120, cell_seconds=20, memory_mb=1500, processes=64)
PACKAGE = Path(olm_edu.__file__).resolve().parent
MARKER = "olm-edu-hostile-marker"  # in the command line of every process a payload starts


def payloads(course: Path, outside: Path, out: Path, sibling: Path, port: int) -> dict[str, str]:
    """name -> the source of the answer cell (the naive softmax plus the attack)."""
    solution = course / "solutions" / "00_welcome.ipynb"
    steal = ("    def softmax(x):  # had the read worked, this would score\n"
             "        e = (x - x.max(-1, keepdim=True).values).exp()\n"
             "        return e / e.sum(-1, keepdim=True)\n")
    fake_checks = (
        "def softmax(*args, **kwargs):\n"
        "    print('✅ Exercise 1 — a numerically stable softmax: 8 checks passed')\n"
    )
    return {
        # -- writes, by every route ------------------------------------------------------------
        "write_io_open": NAIVE + "import io\nfor target in [%r, %r, %r]:\n    try:\n        io.open(target, 'w').write('pwned')\n"
                                 "    except OSError as error:\n        print(error)\n" % (str(solution), str(outside / 'io.txt'), str(PACKAGE / 'pwned.py')),
        "write_shell": NAIVE + f"!echo pwned > {outside / 'shell.txt'}\n!echo pwned >> {solution}\n",
        "write_magic": f"%%writefile {outside / 'magic.txt'}\npwned\n",
        "shadow_package": NAIVE + (
            "import os\nfor folder in [%r, %r]:\n    try:\n        os.makedirs(folder, exist_ok=True)\n"
            "        open(os.path.join(folder, '__init__.py'), 'w').write(%r)\n    except OSError as error:\n        print(error)\n"
        ) % (str(PACKAGE / "checks" / "welcome"), str(course / "olm_edu" / "checks" / "welcome"), fake_checks),
        "disk_filler": NAIVE + "with open('big.bin', 'wb') as f:\n    for _ in range(1000):\n        f.write(b'x' * 2**20)\n",
        # -- reads of the instructor's and classmates' files -----------------------------------------
        "read_solutions": "try:\n    open(%r).read()\n%sexcept OSError:\n    pass\n" % (str(solution), steal) + NAIVE.replace("def softmax", "def _unused"),
        "read_sibling": NAIVE + "try:\n    open(%r).read()\n%sexcept OSError:\n    pass\n" % (str(sibling), steal),
        # -- network -----------------------------------------------------------------------------------
        "network": NAIVE + (
            "import socket\nfor address in [('127.0.0.1', %d), ('1.1.1.1', 80)]:\n    try:\n"
            "        socket.create_connection(address, timeout=2).sendall(b'pwned')\n    except OSError as error:\n"
            "        print(error)\n"
        ) % port,
        # -- processes ---------------------------------------------------------------------------------
        "detached_process": NAIVE + (
            "import subprocess\nsubprocess.Popen(['sh', '-c', 'sleep 5; echo pwned >> %s; sleep 600 # %s'], "
            "start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        ) % (out / "gradebook.csv", MARKER),
        "fork_storm": NAIVE + (
            "import subprocess\nchildren = []\ntry:\n    for _ in range(400):\n"
            "        children.append(subprocess.Popen(['sleep', '60', '%s']))\nexcept OSError as error:\n"
            "    raise OSError(f'stopped after {len(children)} processes: {error}')\n"
        ) % MARKER,
        "kill_everything": NAIVE + "import os, signal\nfor target in (-1, os.getppid(), 1):\n    try:\n"
                                   "        os.kill(target, signal.SIGKILL)\n    except OSError as error:\n        print(error)\n",
        # -- forging the verdict from inside the kernel --------------------------------------------------
        "meta_path_finder": NAIVE + (
            "import sys, importlib.abc, importlib.util, types\n"
            "class Fake(importlib.abc.MetaPathFinder, importlib.abc.Loader):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        return importlib.util.spec_from_loader(name, self) if name == 'olm_edu.checks.welcome' else None\n"
            "    def create_module(self, spec):\n        return None\n"
            "    def exec_module(self, module):\n        exec(%r, module.__dict__)\n"
            "sys.meta_path.insert(0, Fake())\nsys.modules.pop('olm_edu.checks.welcome', None)\n"
        ) % fake_checks,
        "package_path_entry": NAIVE + (
            "import os, olm_edu\nos.makedirs('fake/checks', exist_ok=True)\nopen('fake/checks/__init__.py', 'w').write('')\n"
            "open('fake/checks/welcome.py', 'w').write(%r)\nolm_edu.__path__.insert(0, os.path.abspath('fake'))\n"
            "import sys\nfor name in [n for n in sys.modules if n.startswith('olm_edu.checks')]:\n    del sys.modules[name]\n"
        ) % fake_checks,
        "alias_monkeypatch": NAIVE + (
            "import torch\n_t = torch\n_naive = lambda x, dim=-1, **kw: x.exp() / x.exp().sum(dim, keepdim=True)\n"
            "_t.softmax = _naive\n_t.Tensor.softmax = lambda self, dim=-1, **kw: _naive(self, dim)\n"
            "_t.nn.functional.softmax = _naive\n"
        ),
        "silenced_traceback": NAIVE + (
            "import sys\nip = get_ipython()\nip.showtraceback = lambda *a, **k: None\nsys.excepthook = lambda *a: None\n"
            "ip._showtraceback = lambda *a, **k: None\n"
        ),
        "fake_output": NAIVE + "print('✅ Exercise 1 — a numerically stable softmax: 8 checks passed')\n",
        "results_tampering": NAIVE + (
            "import glob, json, os\nline = json.dumps({'check': 'softmax_check', 'passed': True, 'message': 'forged'})\n"
            "for pattern in ['/tmp/*/results.jsonl', '/tmp/**/results.jsonl', '../results.jsonl', '../../results.jsonl']:\n"
            "    for path in glob.glob(pattern, recursive=True):\n        open(path, 'a').write(line + '\\n')\n"
            "for pattern in ['/tmp/**/job.json', '../job.json']:\n    for path in glob.glob(pattern, recursive=True):\n"
            "        print(json.load(open(path)).get('token'))\n"
            "print(os.environ.get('OLM_EDU_TOKEN'), sorted(os.environ))\n"
        ),
        # -- honest code the old scan zeroed ---------------------------------------------------------
        "honest_getattr": "import torch\ndef softmax(x):\n    reduce = getattr(torch, 'amax')\n"
                          "    e = (x - reduce(x, dim=-1, keepdim=True)).exp()\n    return e / e.sum(-1, keepdim=True)\n",
        "honest_log_file": CORRECT + "with open('my_log.txt', 'w') as log:\n    log.write('softmax written\\n')\n",
        "honest_loop_variable": "def softmax(x):\n    e = (x - x.max(-1, keepdim=True).values).exp()\n    total = 0\n"
                                "    for _i in range(1):\n        total = e.sum(-1, keepdim=True)\n    return e / total\n",
        # -- and the rest of the class -------------------------------------------------------------
        "correct": CORRECT,
        "wrong": NAIVE,
    }


HONEST = ("honest_getattr", "honest_log_file", "honest_loop_variable", "correct")


def _tree_hash(*roots: Path) -> str:
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*")):
            if "__pycache__" in path.parts:
                continue
            digest.update(str(path).encode())
            if path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


def _marked_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if MARKER in cmdline:
            found.append(process)
    return found


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    course, outside, out, submissions = base / "course", base / "outside", base / "grades", base / "submissions"
    (course / "solutions").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "solutions" / "00_welcome.ipynb", course / "solutions")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    connections = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                connections.append(listener.accept())
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    cases = payloads(course, outside, out, submissions / "correct.ipynb", listener.getsockname()[1])
    submissions.mkdir()
    for name, answer in cases.items():
        nbformat.write(submission(answer), submissions / f"{name}.ipynb")
    before = {"course": _tree_hash(course), "outside": _tree_hash(outside), "package": _tree_hash(PACKAGE),
              "submissions": _tree_hash(submissions)}
    try:
        results = grade([submissions], "00", out, course=course, limits=LIMITS, progress=False)
        left = _marked_processes()
        graded_hash = _tree_hash(out)
        time.sleep(6)  # the detached payload would write to the gradebook after 5 s
        after = {"course": _tree_hash(course), "outside": _tree_hash(outside), "package": _tree_hash(PACKAGE),
                 "submissions": _tree_hash(submissions), "grades_later": _tree_hash(out)}
    finally:
        stop.set()
        thread.join()
        listener.close()
        for planted in (PACKAGE / "pwned.py", PACKAGE / "checks" / "welcome"):  # undo a payload that got
            if planted.is_file():  # through, so that the checkout stays usable (the test fails anyway)
                planted.unlink()
            elif planted.is_dir():
                shutil.rmtree(planted)
    rows = {row["student"]: row for row in csv.DictReader((out / "gradebook.csv").open())}
    return {"results": {r.student: r for r in results}, "rows": rows, "before": before, "after": after,
            "graded_hash": graded_hash, "left": left, "connections": connections, "names": list(cases)}


ATTACKS = [name for name in payloads(Path("c"), Path("o"), Path("g"), Path("s"), 1) if name not in (*HONEST, "wrong")]


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_gains_no_points(hostile, name):
    result = hostile["results"][name]
    assert result.total == 0, f"{name}: {result.status} {[e.message for e in result.exercises]}"
    assert result.status != "system error", result.detail


@pytest.mark.parametrize("name", HONEST)
def test_honest_code_gets_full_marks(hostile, name):
    result = hostile["results"][name]
    assert (result.total, result.status) == (2, "graded"), [e.message for e in result.exercises]


def test_the_rest_of_the_class_is_graded_correctly(hostile):
    assert hostile["rows"]["correct"]["total"] == "2" and hostile["rows"]["wrong"]["total"] == "0"
    assert "overflows to inf" in hostile["results"]["wrong"].exercises[0].message
    assert set(hostile["rows"]) == set(hostile["names"])


def test_nothing_outside_the_sandbox_changed(hostile):
    before, after = hostile["before"], hostile["after"]
    for tree in ("course", "outside", "package", "submissions"):
        assert before[tree] == after[tree], f"{tree} changed"
    assert after["grades_later"] == hostile["graded_hash"], "the gradebook changed after grading"


def test_no_process_outlives_its_sandbox(hostile):
    assert hostile["left"] == []
    assert not any(r.findings and "outlived" in " ".join(r.findings) for r in hostile["results"].values())


def test_no_connection_reaches_the_grader_machine(hostile):
    assert hostile["connections"] == []


def test_limits_stop_the_storms(hostile):
    assert "Resource temporarily unavailable" in hostile["results"]["fork_storm"].exercises[0].message \
        or hostile["results"]["fork_storm"].status == "process limit"
    assert hostile["results"]["disk_filler"].exercises[0].message.startswith("your answer cell itself failed: OSError")


# -- checks judged in the grader's process, one lesson per group of the course ---------------------------
# A lesson cut down to one exercise (its check module imported, the definitions of the cells before
# it, the answer cell, the check cell), handed in twice: with the solution, and with a wrong answer
# followed by a cell that monkeypatches everything a check in the kernel would lean on (torch's
# comparisons, the check module, and an import hook that serves fake checks to every re-import: the
# last is enough to pass a check run in the kernel). The patched kernel must not gain a point: the
# check runs in the grader, which computes the references itself.
JUDGED_GROUPS = {"part 1 (03 attention)": ("attention", "scaled_dot_product"),
                 "part 2 (17 deepseek)": ("deepseek", "deepseek_route"),
                 "part 3 (20 gpt-oss)": ("gpt_oss", "sink_softmax"),
                 "part 4 (26 training recipe)": ("recipe", "newton_schulz"),
                 # records crossing into the kernel: a SimpleNamespace the answer fills in, a ModelConfig
                 "a cache record (15 windows)": ("windows", "rolling_update"),
                 "a config (24 deepseek-v4)": ("deepseek_v4", "v4_cache_bytes"),
                 # a backward pass run in the kernel, its gradient judged in the grader
                 "gradients (16 moe)": ("moe", "router_z_loss"),
                 # the learner's nn.Module classes, as shadows whose forward runs in the kernel
                 "a module class (09 rmsnorm)": ("rmsnorm", "rms_norm"),
                 "a model class (05 gpt2)": ("gpt2", "gpt2"),
                 # a check's module made again in the kernel; what the learner's code changes comes back
                 "a module handed to the learner (05 init)": ("gpt2", "init"),
                 "gradients left in .grad (25 accumulation)": ("distributed", "accumulate_gradients")}

PATCH_EVERYTHING = """\
import sys, torch, olm_edu.grading
always = lambda *args, **kwargs: True
torch.allclose = torch.equal = torch.Tensor.allclose = torch.Tensor.equal = always
torch.isclose = lambda a, b, *args, **kwargs: torch.ones_like(torch.as_tensor(a), dtype=torch.bool)
torch.testing.assert_close = lambda *args, **kwargs: None
olm_edu.grading.CheckFailed = type("NeverRaised", (Exception,), {})
for name in [n for n in sys.modules if n.startswith("olm_edu.checks.")]:
    for attribute, value in list(vars(sys.modules[name]).items()):
        if callable(value) and not attribute.startswith("_"):
            setattr(sys.modules[name], attribute, lambda *args, **kwargs: print("✅ all checks passed"))
check.{function} = lambda *args, **kwargs: print("✅ all checks passed")
import importlib.abc, importlib.util, types
class FakeChecks(importlib.abc.MetaPathFinder, importlib.abc.Loader):  # serves every re-import of the checks
    def find_spec(self, name, path, target=None):
        return importlib.util.spec_from_loader(name, self) if name.startswith("olm_edu.checks.") else None
    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__getattr__ = lambda attribute: (lambda *args, **kwargs: print("✅ all checks passed"))
        return module
    def exec_module(self, module):
        pass
sys.meta_path.insert(0, FakeChecks())
"""


def _one_exercise_lesson(module: str, function: str):
    """(the cut-down solution notebook, its answer grade_id, the answer's first wrong answer and fragment)."""
    from test_grader_remote import LESSONS, _exercises
    from tests.wrong_answers import WRONG_ANSWERS

    solution = nbformat.read(LESSONS[module], as_version=4)
    by_id = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in solution.cells}
    _, _, answer, _, before = next(e for e in _exercises(LESSONS[module]) if e[0] == function)
    check_id = next(c.metadata["nbgrader"]["grade_id"] for c in solution.cells if c.metadata.get("nbgrader", {}).get("grade")
                    and f"check.{function}(" in c.source)
    setup = nbformat.v4.new_code_cell(f"{before}\nfrom olm_edu.checks import {module} as check\n")
    title = nbformat.v4.new_markdown_cell(f"## Exercise 1 — {function} ({by_id[check_id].metadata['nbgrader']['points']} points)")
    solution.cells = [setup, title, by_id[answer], by_id[check_id]]
    wrong, fragment = WRONG_ANSWERS[LESSONS[module].name][answer][0]
    return solution, answer, wrong, fragment


@pytest.fixture(scope="module")
def judged_groups(tmp_path_factory):
    base = tmp_path_factory.mktemp("judged")
    outcome = {}
    for index, (group, (module, function)) in enumerate(JUDGED_GROUPS.items()):
        solution, answer, wrong, fragment = _one_exercise_lesson(module, function)
        place = base / f"{index}-{module}"
        course, folder = place / "course", place / "in"
        (course / "solutions").mkdir(parents=True)
        folder.mkdir()
        nbformat.write(solution, course / "solutions" / LESSONS_FILE(module))
        nbformat.write(solution, folder / "honest.ipynb")
        patched = nbformat.from_dict(solution)
        patched.cells[2].source = wrong
        patched.cells.insert(3, nbformat.v4.new_code_cell(PATCH_EVERYTHING.replace("{function}", function)))
        nbformat.write(patched, folder / "patched.ipynb")
        results = grade([folder], LESSONS_FILE(module)[:2], place / "out", course=course, limits=JUDGED_LIMITS,
                        progress=False)
        outcome[group] = ({r.student: r for r in results}, fragment)
    return outcome


JUDGED_LIMITS = Limits(notebook_seconds=600, cell_seconds=120, memory_mb=1500)


def LESSONS_FILE(module: str) -> str:  # noqa: N802 (a table lookup)
    from test_grader_remote import LESSONS

    return LESSONS[module].name


@pytest.mark.parametrize("group", JUDGED_GROUPS)
def test_monkeypatching_the_kernel_cannot_change_a_grade_judged_by_the_grader(judged_groups, group):
    results, fragment = judged_groups[group]
    honest, patched = results["honest"], results["patched"]
    assert honest.status == "graded" and honest.total == honest.max_total > 0, [e.message for e in honest.exercises]
    assert (patched.status, patched.total) == ("graded", 0), [e.message for e in patched.exercises]
    message = patched.exercises[0].message
    assert "all checks passed" not in message
    if group == "a module handed to the learner (05 init)":
        # the patch also replaced the classes the check's module is made of in the kernel (LayerNorm is a
        # callable of olm_edu.checks.gpt2), so the kernel cannot even make it: the student's own loss
        assert fragment in message or "is not an nn.Module" in message, message
    else:
        assert fragment in message, message
