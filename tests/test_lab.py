"""`make lab` serves lessons/ to a learner, `make instructor` the course with nbgrader's tools:
start JupyterLab headless the same way and ask it."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, token: str) -> dict | list:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def test_jupyterlab_serves_the_lessons_folder(tmp_path):
    port, token = free_port(), secrets.token_hex(16)
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        f"--IdentityProvider.token={token}", "--ServerApp.root_dir=lessons", "--allow-root",
    ]
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    log = open(tmp_path / "lab.log", "w")
    server = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        status = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                status = get_json(f"{base}/api/status", token)
                break
            except OSError:
                time.sleep(0.5)
        assert status is not None, (tmp_path / "lab.log").read_text()
        assert "started" in status
        listing = get_json(f"{base}/api/contents", token)
        names = {item["name"] for item in listing["content"]}
        expected = {path.name for path in (ROOT / "lessons").glob("[0-9][0-9]_*.ipynb")}
        assert expected and expected <= names
        page = urllib.request.urlopen(f"{base}/lab?token={token}", timeout=10).read().decode()
        assert "JupyterLab" in page
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    assert server.returncode is not None


# --- `make lab` (the learner's) and `make instructor` -----------------------------------------

NBGRADER_LAB_EXTENSION = "@jupyter/nbgrader"
NBGRADER_SERVER_EXTENSIONS = ["formgrader", "validate_assignment", "assignment_list", "course_list"]


def make_command(target: str, port: int, token: str) -> str:
    """The command `make <target>` runs, as make prints it, for this interpreter's Jupyter."""
    lab_args = f"--no-browser --ip=127.0.0.1 --port={port} --IdentityProvider.token={token} --allow-root"
    printed = subprocess.run(
        ["make", "--no-print-directory", "-n", "-o", ".venv/.installed", target,
         f"BIN={Path(sys.executable).parent}", f"LAB_ARGS={lab_args}"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()
    assert len(printed) == 1 and " lab " in printed[0], printed
    return printed[0]


def page_config(base: str, token: str) -> dict:
    """The configuration JupyterLab's page hands its front end (disabled extensions included)."""
    page = urllib.request.urlopen(f"{base}/lab?token={token}", timeout=20).read().decode()
    found = re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', page, re.S)
    assert found, "the /lab page carries no jupyter-config-data"
    return json.loads(found.group(1))


def http_status(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def lab_as_make_starts_it(target: str, tmp_path: Path):
    """Start `make <target>`'s JupyterLab (the command make prints, run by bash), wait until it
    answers, and return (server, base url, token); the caller stops the server."""
    port, token = free_port(), secrets.token_hex(16)
    command = make_command(target, port, token)
    env = {key: value for key, value in os.environ.items() if key != "JUPYTER_CONFIG_PATH"}
    env.update(JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_CONFIG_DIR=str(tmp_path / "config"))
    log = open(tmp_path / f"{target}.log", "w")
    # `exec`: bash becomes JupyterLab, so the process this test started is the server it stops.
    server = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT, env=env)
    log.close()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and server.poll() is None:
        try:
            get_json(f"{base}/api/status", token)
            return server, base, token
        except OSError:
            time.sleep(0.5)
    stop(server)
    pytest.fail(f"`make {target}`'s JupyterLab did not start:\n" + (tmp_path / f"{target}.log").read_text())


def stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def test_make_lab_opens_jupyterlab_without_nbgrader_instructor_tools(tmp_path):
    server, base, token = lab_as_make_starts_it("lab", tmp_path)
    try:
        config = page_config(base, token)
        assert NBGRADER_LAB_EXTENSION in config["disabledExtensions"], config["disabledExtensions"]
        assert http_status(f"{base}/formgrader", token) == 404, "the formgrader is served to the learner"
        assert http_status(f"{base}/assignments", token) == 404
        names = {item["name"] for item in get_json(f"{base}/api/contents", token)["content"]}
        assert "solutions" not in names and "00_welcome.ipynb" in names, "make lab serves lessons/ only"
    finally:
        stop(server)
    log = (tmp_path / "lab.log").read_text()
    for extension in NBGRADER_SERVER_EXTENSIONS:
        assert f"nbgrader.server_extensions.{extension} | extension was successfully loaded" not in log


def test_make_instructor_opens_jupyterlab_with_nbgrader_tools(tmp_path):
    server, base, token = lab_as_make_starts_it("instructor", tmp_path)
    try:
        config = page_config(base, token)
        assert NBGRADER_LAB_EXTENSION not in config["disabledExtensions"], config["disabledExtensions"]
        assert http_status(f"{base}/formgrader", token) != 404, "the formgrader is missing for the instructor"
        names = {item["name"] for item in get_json(f"{base}/api/contents", token)["content"]}
        assert {"solutions", "lessons"} <= names
    finally:
        stop(server)
    log = (tmp_path / "instructor.log").read_text()
    for extension in NBGRADER_SERVER_EXTENSIONS:  # the same log line the learner's test looks for
        assert f"nbgrader.server_extensions.{extension} | extension was successfully loaded" in log
