"""Grading on a Dask distributed cluster, when one machine is not enough (`olm-edu[cluster]`).

    olm-edu grade submissions/ --lesson 01 --out grades/ --cluster tcp://scheduler:8786

The instructor's machine reads the submissions and the solution, sends each submission to the
cluster as plain bytes (workers need no shared file system), and writes the journal, the
gradebook and the feedback itself as results come back. Each Dask worker grades a submission
exactly as `olm-edu grade` does on one machine (`grade_one`): in its own temporary folder, the
student's kernel in its own bubblewrap sandbox, the checks in the worker's own process. So every
worker machine needs what a grading machine needs: this package (same version) with its
dependencies, and bubblewrap.

Dask itself is trusted infrastructure here (it moves the grader's functions between the
instructor's machine and the workers with pickle); student code never runs in a Dask worker's
process, only in the sandboxes the workers start.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

__all__ = ["grade_on_worker", "map_on_cluster"]


def grade_on_worker(notebook: bytes, file_name: str, solution_json: str, student: str, limits: dict,
                    sandbox: bool) -> dict:
    """Grade one submission on a Dask worker: the submission's bytes in, the result as a dict out."""
    import nbformat

    from olm_edu.grader import Limits, grade_one

    solution = nbformat.reads(solution_json, as_version=4)
    with tempfile.TemporaryDirectory(prefix="olm-edu-cluster-") as scratch:
        path = Path(scratch, Path(file_name).name)
        path.write_bytes(notebook)
        result = grade_one(path, solution, student, Limits(**limits), {}, sandbox)
    return asdict(result)


def map_on_cluster(address: str, pending: list[tuple[Path, str]], solution_json: str, limits: dict,
                   sandbox: bool) -> Iterator[dict]:
    """Grade `pending` [(file, student)] on the cluster at `address`; yield results as they finish."""
    try:
        from distributed import Client, as_completed
    except ImportError as error:
        raise ImportError("--cluster needs Dask distributed: pip install 'olm-edu[cluster]'") from error
    with Client(address) as client:
        futures = [client.submit(grade_on_worker, path.read_bytes(), path.name, solution_json, student, limits,
                                 sandbox, key=f"olm-edu-grade-{student}-{index}", pure=False)
                   for index, (path, student) in enumerate(pending)]
        for future in as_completed(futures):
            record = future.result()
            record["path"] = str(next(path for path, student in pending if student == record["student"]))
            yield record
