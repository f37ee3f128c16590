"""The install story: pyproject.toml, environment.yml and the Makefile agree."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def normalised(requirements: list[str]) -> dict[str, str]:
    """name -> specifier, with names and specifier order normalised."""
    parsed = [Requirement(line) for line in requirements]
    return {re.sub(r"[-_.]+", "-", r.name).lower(): str(r.specifier) for r in parsed}


def environment_pip_requirements() -> list[str]:
    """The `- pip:` list of environment.yml, read without a YAML library (the file is simple)."""
    lines, in_pip = [], False
    for raw in (ROOT / "environment.yml").read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if line.strip() == "- pip:":
            in_pip = True
        elif in_pip and line.strip().startswith("- "):
            lines.append(line.strip()[2:].strip())
        elif in_pip and line.strip():
            in_pip = False
    return lines


def test_environment_yml_installs_the_same_packages_as_pyproject():
    project = pyproject()["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    pip_lines = environment_pip_requirements()
    assert "-e ." in pip_lines, "environment.yml must install the olm_edu package itself"
    conda_side = normalised([line for line in pip_lines if line != "-e ."])
    assert conda_side == normalised(declared)


def test_pyproject_declares_the_package_python_and_a_torch_range_that_admits_2_13():
    project = pyproject()["project"]
    assert project["requires-python"] == ">=3.11"
    torch = next(Requirement(r) for r in project["dependencies"] if Requirement(r).name == "torch")
    assert Version("2.13.0") in torch.specifier
    assert set(project["optional-dependencies"]) >= {"test", "book"}
    assert project["scripts"]["olm-edu"] == "olm_edu.cli:main"


def test_readme_opens_with_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = readme.split("```")[1]
    assert "make lab" in first_block and "make test" in first_block


def test_ci_installs_torch_before_the_project_then_runs_make_test():
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert script.index("torch==2.13.0") < script.index("make test")
    assert "python3 -m venv" in script and "rm -rf .venv" in script


def test_olm_edu_command_reports_lessons_in_sync():
    result = subprocess.run(
        [sys.executable, "-m", "olm_edu.cli", "lessons", "--check", "--root", str(ROOT)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout


def test_importing_the_library_does_not_import_transformers():
    code = "import sys, olm_edu, olm_edu.grading, olm_edu.data, olm_edu.tokenizer; print('transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr
