"""`olm-edu grade --cluster`: the same class graded by the workers of a Dask LocalCluster."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import nbformat
import pytest

from olm_edu.grader import Limits, grade
from olm_edu.grader.sandbox import sandbox_problem

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_grader import CORRECT, NAIVE, submission  # noqa: E402

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.skipif(sandbox_problem() is not None, reason=f"no sandbox here: {sandbox_problem()}")
ROOT = Path(__file__).resolve().parents[1]


def test_a_dask_cluster_grades_the_class_and_this_machine_writes_the_gradebook(tmp_path, monkeypatch):
    from olm_edu import grader

    def not_here(*args, **kwargs):
        raise AssertionError("a submission was graded in the instructor's process, not on the cluster")

    monkeypatch.setattr(grader, "grade_one", not_here)  # the workers are other processes: unpatched there
    folder = tmp_path / "in"
    folder.mkdir()
    nbformat.write(submission(CORRECT), folder / "alice.ipynb")
    nbformat.write(submission(NAIVE), folder / "bob.ipynb")
    limits = Limits(notebook_seconds=300, cell_seconds=60, memory_mb=1500)  # generous: CI machines are shared
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0") as cluster:
        results = grade([folder], "00", tmp_path / "out", course=ROOT, limits=limits, progress=False, protect=[],
                        cluster=cluster.scheduler_address)
    rows = {r["student"]: r for r in csv.DictReader((tmp_path / "out" / "gradebook.csv").open())}
    assert (rows["alice"]["total"], rows["bob"]["total"]) == ("2", "0")
    assert "overflows to inf" in next(r for r in results if r.student == "bob").exercises[0].message
    assert (tmp_path / "out" / "feedback" / "alice.html").exists()
