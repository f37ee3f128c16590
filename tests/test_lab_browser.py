"""A learner's Run All in a real JupyterLab: headless Chromium opens fresh lesson notebooks in the
learner's JupyterLab (`make lab`'s configuration), runs all cells, and looks at what a learner sees.

The notebooks are copies in a temporary folder (JupyterLab saves what it runs); the server, the
kernels and the browser are started by the test and stopped by it."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_book import ARTIFACTS, CHROMIUM, Chromium, Page
from tests.test_lab import free_port, get_json, stop

ROOT = Path(__file__).resolve().parents[1]
# Lesson 00 has a widget before its first exercise, lesson 03 after its exercises: Run All must reach both.
LESSONS = ["00_welcome.ipynb", "03_attention.ipynb"]

# The notebook panel in view, through the application object JupyterLab exposes to the page
# (`--LabApp.expose_app_in_browser`; the learner's configuration is otherwise the one `make lab` uses).
READY = """(async () => {
    const panel = window.jupyterapp && jupyterapp.shell.currentWidget;
    if (!panel || !panel.sessionContext || !panel.context) { return null; }
    await panel.context.ready;
    await panel.sessionContext.ready;
    const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
    return kernel ? {path: panel.context.path, kernel: kernel.status} : null;
})()"""

PROGRESS = """(() => {
    const panel = jupyterapp.shell.currentWidget;
    const cells = panel.content.widgets.filter(cell => cell.model.type === 'code');
    return {
        total: cells.length,
        ran: cells.filter(cell => cell.model.executionCount !== null).length,
        lastRan: cells[cells.length - 1].model.executionCount !== null,
        kernel: panel.sessionContext.session.kernel.status,
        pending: cells.filter(cell => cell.promptNode && cell.promptNode.textContent.includes('*')).length,
    };
})()"""

# What the learner sees of the outputs: the widgets as controls (their DOM, drawn by the widget
# manager, not the "Loading widget..." placeholder or a text repr), whether each control's label shows
# its whole text, and the check cells' messages.
OUTPUTS = """(async () => {
    const panel = jupyterapp.shell.currentWidget;
    const cells = panel.content.widgets.filter(cell => cell.model.type === 'code');
    const found = {controls: [], cutLabels: [], checks: [], widgetOutputs: 0};
    for (const [index, cell] of cells.entries()) {
        const outputs = cell.model.outputs.toJSON();
        if (!outputs.some(o => o.data && o.data['application/vnd.jupyter.widget-view+json'])) {
            const metadata = cell.model.getMetadata('nbgrader') || {};
            if (metadata.grade) { found.checks.push(cell.outputArea.node.textContent.trim()); }
            continue;
        }
        found.widgetOutputs += 1;
        cell.node.scrollIntoView();
        const deadline = Date.now() + 20000;
        while (!cell.outputArea.node.querySelector('.widget-slider, .widget-dropdown, .widget-toggle-buttons, .widget-checkbox, .widget-inline-hbox input')
               && Date.now() < deadline) {
            await new Promise(done => setTimeout(done, 200));
        }
        await new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)));
        const controls = [...cell.outputArea.node.querySelectorAll('.jupyter-widgets.widget-inline-hbox, .jupyter-widgets.widget-hbox.widget-inline-hbox')];
        for (const control of controls) {
            const label = control.querySelector('.widget-label');
            const text = label ? label.textContent.trim() : '';
            found.controls.push({cell: index, label: text, height: control.getBoundingClientRect().height});
            if (label && text && label.scrollWidth > label.clientWidth + 1) { found.cutLabels.push(text); }
        }
    }
    return found;
})()"""


@pytest.fixture()
def learner_lab(tmp_path):
    """The learner's JupyterLab (as `make lab` configures it) on copies of the lessons; stopped after."""
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
    lessons = tmp_path / "lessons"
    lessons.mkdir()
    for name in LESSONS:
        shutil.copy(ROOT / "lessons" / name, lessons / name)
    port, token = free_port(), secrets.token_hex(16)
    env = {key: value for key, value in os.environ.items() if key != "JUPYTER_CONFIG_PATH"}
    env.update(JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               JUPYTER_CONFIG_PATH=str(ROOT / "jupyter-config" / "learner"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={lessons}", "--allow-root",
               "--LabApp.expose_app_in_browser=True"]
    with open(tmp_path / "lab.log", "w") as log:
        server = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "lab.log").read_text()
            try:
                get_json(f"{base}/api/status", token)
                break
            except OSError:
                time.sleep(0.5)
        yield base, token
    finally:
        stop(server)


def wait_for(page: Page, expression: str, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expression, timeout=60)
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout:.0f} s (last: {value!r})"
        time.sleep(0.5)


def test_run_all_in_jupyterlab_reaches_the_last_cell_and_draws_the_widgets_as_controls(learner_lab, tmp_path):
    base, token = learner_lab
    browser = Chromium(CHROMIUM, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        for name in LESSONS:
            # A tab and a workspace of its own per lesson: JupyterLab does not restore the last one.
            page = Page(browser, width=1400, height=1000)
            page.send("Page.navigate", {"url": f"{base}/lab/workspaces/{Path(name).stem}/tree/{name}?token={token}"})
            opened = wait_for(page, READY, 120, f"JupyterLab opening {name} with a kernel")
            assert opened["path"] == name, opened
            wait_for(page, "jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'",
                     60, "the kernel becoming idle")
            # As the Run menu's "Run All Cells" does (not awaited: it settles when the last cell has run).
            page.evaluate("jupyterapp.commands.execute('notebook:run-all-cells') && true", timeout=30)
            progress = wait_for(page, f"(() => {{ const p = {PROGRESS}; return p.lastRan && p.kernel === 'idle' && p.pending === 0 ? p : null; }})()",
                                300, f"Run All reaching the last cell of {name}")
            assert progress["ran"] == progress["total"], f"{name}: Run All ran {progress['ran']} of {progress['total']} code cells"

            outputs = page.evaluate(OUTPUTS, timeout=120)
            ARTIFACTS.mkdir(exist_ok=True)
            shot = page.send("Page.captureScreenshot", {"format": "png"})
            (ARTIFACTS / f"lab-run-all-{Path(name).stem}.png").write_bytes(base64.b64decode(shot["data"]))
            assert outputs["widgetOutputs"] >= 1, f"{name}: no cell displayed a widget"
            assert outputs["controls"] and all(control["height"] > 0 for control in outputs["controls"]), \
                f"{name}: the widgets were not drawn as controls: {json.dumps(outputs)}"
            assert outputs["cutLabels"] == [], f"{name}: widget labels cut: {outputs['cutLabels']}"
            assert outputs["checks"] and all("⏳" in message for message in outputs["checks"]), \
                f"{name}: each unfinished exercise's check shows ⏳: {outputs['checks']}"
    finally:
        browser.close()
