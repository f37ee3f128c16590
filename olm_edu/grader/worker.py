"""Run one assembled notebook: the student's cells in a sandboxed kernel, the checks here.

    python -m olm_edu.grader.worker JOB.json

This process is the grader's: it never runs student code. It starts the kernel inside the
sandbox (`sandbox`; or, with --no-sandbox, as a plain process) and talks to it over Unix sockets
in the channel folder. Cells are run in order:

- the student's cells and the course's cells run in the kernel, one by one, each with a time
  limit (a cell stopped at its limit reads as a TimeoutError);
- a check cell whose lesson is judged out of process (`judging`) is not sent to the kernel: it
  runs *here*, with the trusted check module, and the learner's objects it names are proxies
  (`remote`) whose calls run in the kernel. Passed means the check cell raised nothing;
- any other check cell (the learner's nn.Module classes) runs in the kernel, hardened by
  `assemble` (fresh check modules, a pass token printed at the end).

Results go, as JSON lines as they happen, to a file the kernel cannot see (so a submission killed
for time or memory keeps the exercises it finished). The last line says how the run ended.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import io
import json
import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # nbformat's validator imports jsonschema, which imports rfc3987_syntax where it is installed;
    # that builds a grammar at import time, ~2 s of CPU in every worker. Its IRI formats never
    # occur in a notebook's schema, so this process (one per submission, ours) goes without.
    sys.modules.setdefault("rfc3987_syntax", None)

import nbformat
from jupyter_core.utils import run_sync
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from olm_edu.grader.remote import Kernel, RemoteError
from olm_edu.grader.sandbox import HOME, SandboxLimits, sandbox_command, sandbox_uid, thread_env

MESSAGE_LIMIT = 2000  # characters of a check's message kept for feedback
_VERDICT_MARKS = ("✅", "❌", "⏳")


class SandboxedKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel command is wrapped in the sandbox (when `wrap` is set)."""

    wrap = None  # callable: the kernel command -> the command that runs it in the sandbox
    owner = None  # the sandbox's user id, which must be able to read the connection file

    def write_connection_file(self, **kwargs):
        super().write_connection_file(**kwargs)
        if self.owner is not None:
            os.chown(self.connection_file, self.owner, self.owner)

    def format_kernel_cmd(self, extra_arguments=None):
        command = super().format_kernel_cmd(extra_arguments)
        return self.wrap(command) if self.wrap is not None else command


def _write(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")


def _cell_outcome(cell, token: str) -> tuple[bool, str]:
    """(passed, message) of a check cell run in the kernel: passed only if it printed the token
    and raised nothing."""
    printed = "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")
    errors = [o for o in cell.outputs if o.get("output_type") == "error"]
    passed = not errors and token in printed.splitlines()
    lines = [line for line in printed.splitlines() if token not in line and line.startswith(_VERDICT_MARKS)]
    if errors and not any(line.startswith(("❌", "⏳")) for line in lines):
        lines.append(f"{errors[0].get('ename', 'Error')}: {errors[0].get('evalue', '')}")
    return passed, "\n".join(lines)[:MESSAGE_LIMIT]


def _free_names(tree: ast.AST) -> list[str]:
    """Names a cell reads but neither assigns nor imports nor gets from builtins, in order."""
    bound, read = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                read.append(node.id)
            else:
                bound.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
    return list(dict.fromkeys(n for n in read if n not in bound and not hasattr(builtins, n)))


def judge_here(kernel: Kernel, source: str) -> tuple[bool, str]:
    """Run the instructor's check cell in this process; the notebook's names come from the kernel."""
    tree = ast.parse(source)
    namespace: dict = {"__name__": "__olm_edu_check__"}
    for name in _free_names(tree):
        try:
            namespace[name] = kernel.fetch_global(name)
        except RemoteError:
            pass  # undefined in the notebook: the cell raises NameError, as it would in Jupyter
    printed = io.StringIO()
    error = None
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(tree, "<check cell>", "exec"), namespace)
    except DeadKernelError:
        raise
    except Exception as failure:  # a failed check (CheckFailed), a stub, or a broken answer
        error = failure
    lines = [line for line in printed.getvalue().splitlines() if line.startswith(_VERDICT_MARKS)]
    if error is not None and not any(line.startswith(("❌", "⏳")) for line in lines):
        lines.append(f"{type(error).__name__}: {error}")
    return error is None, "\n".join(lines)[:MESSAGE_LIMIT]


def _execute(client: NotebookClient, cell, index: int, timeout: float, store_history: bool = True) -> None:
    try:
        client.execute_cell(cell, index, store_history=store_history)
    except CellTimeoutError:
        cell.outputs.append({"output_type": "error", "ename": "KeyboardInterrupt", "evalue": ""})
    for output in cell.outputs:  # a cell stopped at its time limit reads as an interrupt
        if output.get("output_type") == "error" and output.get("ename") == "KeyboardInterrupt":
            output["ename"] = "TimeoutError"
            output["evalue"] = f"the cell ran longer than {timeout:g} s (an endless loop?)"


def _kernel_env(job: dict) -> dict[str, str]:
    package_parent = str(Path(__file__).resolve().parents[2])
    return {"HOME": HOME if job["sandbox"] else job["workdir"], "PATH": "/usr/local/bin:/usr/bin:/bin",
            "OLM_EDU_CHECK_SEED": str(job["seed"]), "OLM_EDU_CHECKS_RAISE": "1", "MPLBACKEND": "Agg",
            "PYTHONPATH": package_parent,
            "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8", **thread_env(job.get("threads"))}


def _kernel_manager(job: dict, channel: Path) -> tuple[SandboxedKernelManager, str]:
    """The kernel manager (Unix sockets in the channel) and the folder the kernel starts in."""
    manager = SandboxedKernelManager(kernel_name="python3")
    # Interrupt (a cell past its time limit) by a message, not SIGINT to the process group: the
    # group holds bwrap, which SIGINT would end, and the whole sandbox with it.
    manager.kernel_spec.interrupt_mode = "message"
    manager.transport = "ipc"
    manager.ip = str(channel / "kernel")
    manager.connection_file = str(channel / "kernel.json")
    env = _kernel_env(job)
    if not job["sandbox"]:
        os.environ.update(env)  # the kernel inherits this process's environment
        return manager, job["workdir"]
    uid = sandbox_uid()
    if os.geteuid() == 0:
        os.chown(channel, uid, uid)
        manager.owner = uid
    limits = SandboxLimits(**job["sandbox_limits"])
    manager.wrap = lambda command: sandbox_command(command, channel=channel, uid=uid, limits=limits, env=env)
    return manager, str(channel)


def run(job: dict) -> None:
    results = Path(job["results"])
    channel = Path(job["channel"])
    nb = nbformat.read(job["notebook"], as_version=4)
    os.environ["OLM_EDU_CHECK_SEED"] = str(job["seed"])  # the checks judged here use the same seed
    os.environ["OLM_EDU_CHECKS_RAISE"] = "1"  # and raise on failure, as in the kernel when grading
    manager, start_folder = _kernel_manager(job, channel)
    client = NotebookClient(nb, km=manager, timeout=job["cell_timeout"], allow_errors=True, interrupt_on_timeout=True,
                            record_timing=False, resources={"metadata": {"path": start_folder}})
    judged_here = set(job["judged_here"])
    index = -1  # the cell being run; -1 while the kernel starts

    def run_in_kernel(code: str) -> None:
        cell = nbformat.v4.new_code_cell(code)
        _execute(client, cell, index, job["cell_timeout"], store_history=False)
        errors = [o for o in cell.outputs if o.get("output_type") == "error"]
        if errors:
            raise type(errors[0]["ename"], (RemoteError,), {})(errors[0].get("evalue", "")[:MESSAGE_LIMIT])

    try:
        with client.setup_kernel():
            kernel = Kernel(channel, run_in_kernel)
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                meta = cell.metadata.get("nbgrader", {})
                if meta.get("grade") and meta["grade_id"] in judged_here:
                    passed, message = judge_here(kernel, job["check_sources"][meta["grade_id"]])
                    if not run_sync(manager.is_alive)():
                        raise DeadKernelError("the kernel died while the check called the learner's code")
                    _write(results, {"check": meta["grade_id"], "passed": passed, "message": message, "cell": index,
                                     "judged": "grader"})
                    continue
                _execute(client, cell, index, job["cell_timeout"])
                if meta.get("grade"):
                    passed, message = _cell_outcome(cell, job["token"])
                    _write(results, {"check": meta["grade_id"], "passed": passed, "message": message, "cell": index,
                                     "judged": "kernel"})
                elif meta.get("solution"):
                    errors = [o for o in cell.outputs if o.get("output_type") == "error"]
                    if errors and errors[0].get("ename") != "NotImplementedError":
                        error = f"{errors[0].get('ename')}: {errors[0].get('evalue')}"[:MESSAGE_LIMIT]
                        _write(results, {"answer": meta["grade_id"], "error": error})
    except DeadKernelError as error:
        end = "kernel_died" if index >= 0 else "system_error"  # dying at start-up is not the student's doing
        _write(results, {"end": end, "detail": f"DeadKernelError: {error}"[:MESSAGE_LIMIT], "cell": index})
        return
    except Exception as error:  # the grader's own failure, reported as a system error
        _write(results, {"end": "system_error", "detail": f"{type(error).__name__}: {error}"[:MESSAGE_LIMIT]})
        return
    _write(results, {"end": "finished"})


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))
