"""Test-session settings shared by tests/ and the nbval run over solutions/.

`make test` runs pytest on two workers (pytest-xdist, `-n 2 --dist loadscope`) with the scheduler
below: each file is one unit of work that stays on one worker, because the cells of a solution
notebook run in order in one kernel and a test module's shared fixtures (the book build, the
graded class) are built once. The files in SPREAD hold independent, slow tests (each runs a
lesson in a kernel of its own) and are handed out one test at a time. (xdist's `loadgroup` would
say the same with markers, but with pytest 9 its worker-side renaming of node ids has no effect.)

Each worker, and the kernels it starts, uses one torch thread: two workers with two threads each
on a 2-core machine fight over the cores, and OpenMP threads that spin while waiting for each
other slow small models down many times over.
"""

import os
from pathlib import PurePosixPath

SPREAD = {"test_lessons.py", "test_grader_lessons.py"}

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the notebook kernels this worker starts
    os.environ["MKL_NUM_THREADS"] = "1"


def pytest_xdist_make_scheduler(config, log):
    """One unit of work per file, except one per test in the SPREAD files (with --dist loadscope)."""
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return nodeid if PurePosixPath(path).name in SPREAD else path

    return FileScheduling(config, log)
