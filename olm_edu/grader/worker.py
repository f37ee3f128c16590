"""Run one assembled notebook and record each check's outcome (a process of its own).

    python -m olm_edu.grader.worker JOB.json

JOB.json names the notebook to run, the working folder, the pass token, the per-cell time limit
and where to write results. Results are written as JSON lines as they happen, one per check cell,
so that a submission killed for time or memory still keeps the exercises it finished. The last
line says how the run ended. The kernel runs in the job's working folder with HOME pointing there.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

MESSAGE_LIMIT = 2000  # characters of a check's message kept for feedback


def _write(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")


def _cell_outcome(cell, token: str) -> tuple[bool, str]:
    """(passed, message): passed only if the check printed the token and raised nothing."""
    printed = "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")
    errors = [o for o in cell.outputs if o.get("output_type") == "error"]
    passed = not errors and token in printed.splitlines()
    lines = [line for line in printed.splitlines() if token not in line and line.startswith(("✅", "❌", "⏳"))]
    if errors and not any(line.startswith(("❌", "⏳")) for line in lines):
        lines.append(f"{errors[0].get('ename', 'Error')}: {errors[0].get('evalue', '')}")
    return passed, "\n".join(lines)[:MESSAGE_LIMIT]


def run(job: dict) -> None:
    results = Path(job["results"])
    nb = nbformat.read(job["notebook"], as_version=4)
    workdir = job["workdir"]
    os.environ.update({"HOME": workdir, "OLM_EDU_CHECK_SEED": str(job["seed"]), "OLM_EDU_CHECKS_RAISE": "1", "MPLBACKEND": "Agg"})
    client = NotebookClient(
        nb, timeout=job["cell_timeout"], kernel_name="python3", allow_errors=True, interrupt_on_timeout=True,
        record_timing=False, resources={"metadata": {"path": workdir}},
    )
    index = -1  # the cell being run; -1 while the kernel starts
    try:
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                try:
                    client.execute_cell(cell, index)
                except CellTimeoutError:
                    cell.outputs.append({"output_type": "error", "ename": "KeyboardInterrupt", "evalue": ""})
                for output in cell.outputs:  # a cell stopped at its time limit reads as an interrupt
                    if output.get("output_type") == "error" and output.get("ename") == "KeyboardInterrupt":
                        output["ename"] = "TimeoutError"
                        output["evalue"] = f"the cell ran longer than {job['cell_timeout']:g} s (an endless loop?)"
                meta = cell.metadata.get("nbgrader", {})
                if meta.get("grade"):
                    passed, message = _cell_outcome(cell, job["token"])
                    _write(results, {"check": meta["grade_id"], "passed": passed, "message": message, "cell": index})
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
