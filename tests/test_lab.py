"""`make lab` serves lessons/: start JupyterLab headless the same way and ask it."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

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
