"""Test-session settings shared by tests/ and the nbval run over solutions/.

`make test` runs pytest on two workers (pytest-xdist, `-n 2 --dist loadgroup`). Each file is one
group that stays on one worker: the cells of a solution notebook run in order in one kernel, and
a test module's shared fixtures (the book build, the graded class) are built once. The files in
SPREAD hold independent, slow tests (each runs a lesson in its own kernel) and are handed out one
test at a time. Each worker and the kernels it starts use one torch
thread: two workers with two threads each on a 2-core machine would fight over the cores, and
busy OpenMP threads that wait for each other slow small models down many times over.
"""

import os

import pytest

SPREAD = {"test_lessons.py"}

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the notebook kernels this worker starts
    os.environ["MKL_NUM_THREADS"] = "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        if item.path.name not in SPREAD:
            item.add_marker(pytest.mark.xdist_group(item.path.name))
