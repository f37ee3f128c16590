"""The book: notebooks prepared for it, `make book`'s build, and a lesson page in a real browser.

The browser test serves the built HTML on 127.0.0.1, opens a lesson in headless Chromium through
the DevTools protocol (over a pipe: no extra package), waits for MathJax to typeset, checks what a
reader sees and saves a screenshot to test-artifacts/book-lesson.png.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urljoin, urlparse

import nbformat
import pytest

import olm_edu
from olm_edu import book
from olm_edu.authoring import solution_notebooks

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SOLUTIONS = solution_notebooks(ROOT / "solutions")


# --- the notebooks the book shows -------------------------------------------------------------


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.stem)
def test_book_notebook_hides_solutions_and_drops_hidden_checks(solution):
    original = nbformat.read(solution, as_version=4)
    shown = book.book_notebook(solution)
    assert len(shown.cells) == len(original.cells)
    for before, after in zip(original.cells, shown.cells):
        assert "HIDDEN TESTS" not in after.source and "hidden=True" not in after.source
        assert "BEGIN SOLUTION" not in after.source and "END SOLUTION" not in after.source
        is_solution = before.metadata.get("nbgrader", {}).get("solution")
        if is_solution and after.cell_type == "code":
            assert "hide-input" in after.metadata["tags"]
            assert after.metadata["mystnb"]["code_prompt_show"] == "Show solution"
        for output in after.get("outputs", []):
            assert "hidden checks passed" not in output.get("text", "")
            assert book.WIDGET_VIEW not in output.get("data", {}), "widgets must become stills"
    assert "widgets" not in shown.metadata, "widget state would make the book load widget JavaScript from a CDN"


def test_a_widget_becomes_a_note_and_the_pictures_it_showed():
    state = {
        "box": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_slider", "IPY_MODEL_out"]}},
        "slider": {"model_name": "FloatSliderModel", "state": {"description": "temperature", "value": 1.0}},
        "out": {"model_name": "OutputModel", "state": {"outputs": [
            {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}},
        ]}},
    }
    nb = nbformat.v4.new_notebook(metadata={"widgets": {book.WIDGET_STATE: {"state": state}}})
    view = {book.WIDGET_VIEW: {"model_id": "box", "version_major": 2, "version_minor": 0}, "text/plain": "interactive(...)"}
    nb.cells = [nbformat.v4.new_code_cell("interact(...)", outputs=[nbformat.v4.new_output("display_data", data=view)])]
    book._static_widgets(nb)
    note, picture = nb.cells[0].outputs
    assert "`temperature = 1.0`" in note.data["text/markdown"]
    assert picture.data["image/png"] == "iVBORw0KGgo="
    assert "widgets" not in nb.metadata


def test_a_progress_bar_becomes_its_final_text_not_a_note_about_controls():
    state = {
        "box": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_left", "IPY_MODEL_bar", "IPY_MODEL_right"]}},
        "left": {"model_name": "HTMLModel", "state": {"value": "training:\u2007100%"}},
        "bar": {"model_name": "FloatProgressModel", "state": {"value": 1000.0, "max": 1000.0}},
        "right": {"model_name": "HTMLModel", "state": {"value": "\u20071000/1000\u2007[01:26&lt;00:00]"}},
    }
    nb = nbformat.v4.new_notebook(metadata={"widgets": {book.WIDGET_STATE: {"state": state}}})
    view = {book.WIDGET_VIEW: {"model_id": "box", "version_major": 2, "version_minor": 0}, "text/plain": "HBox(...)"}
    nb.cells = [nbformat.v4.new_code_cell("train(...)", outputs=[nbformat.v4.new_output("display_data", data=view)])]
    book._static_widgets(nb)
    [shown] = nb.cells[0].outputs
    assert shown.output_type == "stream" and shown.text == "training: 100%|██████████| 1000/1000 [01:26<00:00]\n"


@pytest.mark.parametrize("folder", ["solutions", "lessons"])
def test_each_lessons_first_code_cell_installs_the_course_on_colab_from_the_books_repository(folder):
    expected = book.colab_setup_source(ROOT)
    url = book.book_config(ROOT)["repository"]["url"].rstrip("/")
    assert f'"olm-edu @ git+{url}@v{olm_edu.__version__}"' in expected  # the book's repository, this version
    for path in sorted((ROOT / folder).glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        first = next(cell for cell in nb.cells if cell.cell_type == "code")
        assert first.source == expected, f"{path.name}: run `olm-edu lessons` to refresh the Colab setup cell"


def test_the_colab_setup_cell_installs_only_on_colab(monkeypatch):
    import subprocess as subprocess_module
    import sys
    import types

    calls = []
    monkeypatch.setattr(subprocess_module, "run", lambda command, check: calls.append((command, check)))
    exec(book.colab_setup_source(ROOT), {})  # here: not Colab
    assert calls == []
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(book.colab_setup_source(ROOT), {})
    [(command, check)] = calls
    assert command[:5] == [sys.executable, "-m", "pip", "install", "--quiet"] and check is True
    assert command[5] == book.course_package_spec(ROOT)


def test_the_table_of_contents_puts_each_lesson_in_its_part_and_skips_empty_parts():
    lessons = [Path(f"{name}.ipynb") for name in ("00_welcome", "01_tokens", "08_gpt2_weights", "12_gqa")]
    toc = book.table_of_contents(lessons)
    assert toc.index("Part 0") < toc.index("lessons/00_welcome") < toc.index("Part I ")
    assert toc.index("Part I ") < toc.index("lessons/08_gpt2_weights") < toc.index("Part II")
    assert toc.index("Part II") < toc.index("lessons/12_gqa") < toc.index("Reference")
    assert "Part II" not in book.table_of_contents(lessons[:2])


def test_network_references_flag_what_a_page_fetches_from_other_hosts_but_not_links(tmp_path):
    (tmp_path / "page.html").write_text(
        '<a href="https://mybinder.org/v2/gh/o/r">Binder</a><link rel="canonical" href="https://o.github.io/r/">'
        '<img src="../_images/figure.png"><script src="https://cdn.example/mathjax.js"></script>'
        '<link rel="stylesheet" href="//fonts.example/font.css">'
    )
    assert book.network_references(tmp_path) == {"page.html": ["cdn.example", "fonts.example"]}


# --- the build --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> Path:
    """Build the book once per test session, as `make book` does (warnings are errors)."""
    started = time.perf_counter()
    html = book.build(ROOT, tmp_path_factory.mktemp("book"))
    print(f"book built in {time.perf_counter() - started:.0f} s")
    return html


def test_every_lesson_the_reference_pages_and_the_launch_links_are_built(built_book):
    for solution in SOLUTIONS:
        page = built_book / "lessons" / f"{solution.stem}.html"
        assert page.exists(), f"{solution.name} has no page in the book"
        text = page.read_text(encoding="utf-8")
        assert f"lab/tree/lessons/{solution.name}" in text, "the Binder link must open the learner's lesson"
        assert f"/blob/main/lessons/{solution.name}" in text, "the Colab link must open the learner's lesson"
        assert f"_sources/lessons/{solution.name}" in text, "the download button offers the notebook"
    api = (built_book / "api.html").read_text(encoding="utf-8")
    for name in ["olm_edu.nn.RMSNorm", "olm_edu.models.build", "olm_edu.analysis.count_params",
                 "olm_edu.tokenizer.BPETokenizer", "olm_edu.generate.generate", "olm_edu.grading.exercise"]:
        assert f'id="{name}"' in api, f"the API page does not document {name}"
    glossary = (built_book / "glossary.html").read_text(encoding="utf-8")
    for term in ["BPE", "Causal mask", "KV cache", "RoPE", "GQA", "SwiGLU", "Perplexity"]:
        assert f'id="term-{term.replace(" ", "-")}"' in glossary, f"the glossary has no entry for {term}"
    assert book.network_references(built_book) == {}


# --- a lesson page in a real browser ----------------------------------------------------------


class Chromium:
    """Headless Chromium driven through the DevTools protocol on a pipe (fds 3 and 4)."""

    def __init__(self, executable: str, profile: Path, log: Path):
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def use_pipes_as_fds_3_and_4() -> None:
            os.dup2(to_browser_read, 3)
            os.dup2(from_browser_write, 4)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--remote-debugging-pipe", f"--user-data-dir={profile}", "--no-first-run",
                 "--no-default-browser-check", "--hide-scrollbars", "--mute-audio", "about:blank"]
        self._log = open(log, "w")
        self.process = subprocess.Popen([executable, *flags], stdout=self._log, stderr=subprocess.STDOUT,
                                        pass_fds=(3, 4), preexec_fn=use_pipes_as_fds_3_and_4)
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._messages: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_browser, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._messages.put(json.loads(message))

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._messages.get(timeout=max(0.1, deadline - time.monotonic()))
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._to_browser)
        self._log.close()


class Page:
    """One tab: navigate, evaluate JavaScript, take screenshots."""

    def __init__(self, browser: Chromium, width: int = 1280, height: int = 900):
        self.browser = browser
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Network.enable")
        self.send("Runtime.enable")  # uncaught exceptions and console.error calls
        self.send("Log.enable")  # the browser's own errors: failed loads, blocked scripts
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def send(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        return self.browser.send(method, params, self.session, timeout)

    def evaluate(self, expression: str, timeout: float = 30):
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, timeout)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def _evaluate_while_navigating(self, expression: str):
        """evaluate, or None when the page navigated away under it (a redirect, or the load itself):
        Chromium then drops the evaluation's context, and the caller asks again."""
        try:
            return self.evaluate(expression)
        except RuntimeError as error:
            if "navigated or closed" in str(error) or "Cannot find context" in str(error):
                return None
            raise

    def open(self, url: str, timeout: float = 60, lands_on: str | None = None) -> None:
        """Go to `url` and wait until the page (`lands_on` for a page that redirects) has loaded."""
        self.send("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout
        loaded = f"location.href === {json.dumps(lands_on or url)} && document.readyState === 'complete'"
        while not self._evaluate_while_navigating(loaded):
            assert time.monotonic() < deadline, f"{url} did not finish loading in {timeout} s"
            time.sleep(0.2)
        # MathJax typesets after load; its startup promise settles when the first pass is done.
        self.evaluate("""(async () => {
            if (window.MathJax && MathJax.startup) { await MathJax.startup.promise; }
            await Promise.all([...document.images].map(img => img.complete ? null :
                new Promise(done => { img.onload = img.onerror = done; })));
        })()""", timeout)

    def errors(self) -> list[str]:
        """Page errors (uncaught exceptions, SyntaxErrors included) and console errors so far."""
        found = []
        for event in self.browser.events:
            if event.get("sessionId") != self.session:
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(details.get("exception", {}).get("description") or details.get("text", ""))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(" ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(f"{params['entry'].get('text')} ({params['entry'].get('url', '')})")
        return found

    def requested_urls(self) -> list[str]:
        return [event["params"]["request"]["url"] for event in self.browser.events
                if event.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path, bottom: float) -> None:
        width = self.evaluate("document.documentElement.scrollWidth")
        clip = {"x": 0, "y": 0, "width": width, "height": bottom, "scale": 1}
        shot = self.send("Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(shot["data"]))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # keep pytest's output readable
        pass


@pytest.fixture()
def served_book(built_book):
    """The built HTML on http://127.0.0.1:<free port>/, stopped after the test."""
    handler = functools.partial(_QuietHandler, directory=str(built_book))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture()
def chromium(tmp_path):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
    browser = Chromium(CHROMIUM, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        yield browser
    finally:
        browser.close()


def lesson_title(solution: Path) -> str:
    first = nbformat.read(solution, as_version=4).cells[0].source.splitlines()[0]
    return first.lstrip("#").strip()


def showcase_lesson(html: Path) -> Path:
    """The first lesson whose page has maths, a figure and a solution: the page the browser checks."""
    for solution in SOLUTIONS:
        text = (html / "lessons" / f"{solution.stem}.html").read_text(encoding="utf-8")
        if 'class="math' in text and "<img" in text and "Show solution" in text:
            return solution
    pytest.fail("no lesson page has an equation, a figure and a solution together")


FACTS = """(() => {
    const main = document.querySelector('main');
    const maths = [...main.querySelectorAll('.math')];
    return {
        title: document.title,
        heading: main.querySelector('h1').innerText,
        maths: maths.length,
        rawTex: maths.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 80)),
        rendered: main.querySelectorAll('mjx-container').length,
        figures: [...main.querySelectorAll('.cell_output img')].map(img => ({src: img.src, width: img.naturalWidth})),
        toggles: [...main.querySelectorAll('details.hide.above-input')].map(d => ({
            label: d.querySelector('summary').innerText.trim(), open: d.open})),
        // the screenshot ends below the first solution toggle and the check cell after it
        shotBottom: (() => { const d = main.querySelector('details.hide.above-input');
                             if (!d) { return 2000; }
                             const cell = d.closest('.cell'), next = cell.nextElementSibling || cell;
                             return next.getBoundingClientRect().bottom + window.scrollY + 24; })(),
    };
})()"""


# chromium comes before served_book: the browser is started before the server's thread exists.
def test_a_lesson_page_renders_in_headless_chromium(built_book, chromium, served_book):
    solution = showcase_lesson(built_book)
    title = lesson_title(solution)
    page = Page(chromium)
    page.open(f"{served_book}/lessons/{solution.stem}.html")
    facts = page.evaluate(FACTS)

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "book-lesson.png"
    page.screenshot(screenshot, bottom=facts["shotBottom"])  # from the title to the first exercise's check
    assert screenshot.stat().st_size > 10_000

    assert title in facts["title"] and title in facts["heading"], facts["heading"]
    assert facts["maths"] > 0 and facts["rendered"] > 0, "no equation on the page"
    assert facts["rawTex"] == [], f"maths left as raw TeX (MathJax did not typeset it): {facts['rawTex']}"
    assert facts["figures"] and all(f["width"] > 0 for f in facts["figures"]), f"a figure did not load: {facts['figures']}"
    assert facts["toggles"] and all(t == {"label": "Show solution", "open": False} for t in facts["toggles"]), facts["toggles"]

    # The toggle works: one click shows the solution's code.
    shown = page.evaluate("""(() => { const d = document.querySelector('main details.hide.above-input');
        d.querySelector('summary').click();
        return d.open && d.querySelector('pre').getBoundingClientRect().height > 0; })()""")
    assert shown, "clicking 'Show solution' did not reveal the code"

    # Everything came from the book itself: no CDN, no network.
    foreign = [url for url in page.requested_urls()
               if urlparse(url).scheme in ("http", "https") and urlparse(url).hostname != "127.0.0.1"]
    assert foreign == [], f"the page fetched from other hosts: {foreign}"
    assert any(re.search(r"/_static/mathjax/.*\.js", url) for url in page.requested_urls())


REDIRECT = re.compile(r'<meta http-equiv="Refresh" content="0; url=([^"]+)"', re.IGNORECASE)


def test_every_page_of_the_book_loads_with_no_page_error_and_no_console_error(built_book, chromium, served_book):
    page = Page(chromium)
    pages = sorted(path.relative_to(built_book).as_posix() for path in built_book.rglob("*.html")
                   if "_static" not in path.parts and "_sources" not in path.parts)
    assert len(pages) > len(SOLUTIONS)
    errors = {}
    for name in pages:
        before = len(page.errors())
        # index.html only redirects (a meta refresh) to the first page: wait for the page it lands on.
        refresh = REDIRECT.search((built_book / name).read_text(encoding="utf-8"))
        url = f"{served_book}/{name}"
        page.open(url, lands_on=urljoin(url, refresh.group(1)) if refresh else None)
        if page.errors()[before:]:
            errors[name] = page.errors()[before:]
    assert errors == {}, errors
