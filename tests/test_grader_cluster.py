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


def test_a_dask_cluster_grades_the_class_and_this_machine_writes_the_gradebook(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    nbformat.write(submission(CORRECT), folder / "alice.ipynb")
    nbformat.write(submission(NAIVE), folder / "bob.ipynb")
    limits = Limits(notebook_seconds=120, cell_seconds=30, memory_mb=1500)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        results = grade([folder], "00", tmp_path / "out", course=ROOT, limits=limits, progress=False, protect=[],
                        cluster=cluster.scheduler_address)
        workers = {w.get("host") for w in cluster.scheduler_info()["workers"].values()}
    assert workers  # the cluster did have a worker
    rows = {r["student"]: r for r in csv.DictReader((tmp_path / "out" / "gradebook.csv").open())}
    assert (rows["alice"]["total"], rows["bob"]["total"]) == ("2", "0")
    assert "overflows to inf" in next(r for r in results if r.student == "bob").exercises[0].message
    assert (tmp_path / "out" / "feedback" / "alice.html").exists()
