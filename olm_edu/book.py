"""Prepare the Jupyter Book edition of the course from `solutions/`.

The book shows each solution notebook as a reader should see it: the narrative, the stored
outputs (the book build executes nothing; nbval already validates the outputs), the solutions
collapsed behind a "Show solution" toggle, and the check cells without their hidden part.

    python -m olm_edu.book prepare    # writes book/lessons/NN_name.ipynb and book/_toc.yml
    python -m olm_edu.book build      # prepare, then build book/_build/html (what `make book` runs)

What it does to each notebook, in order:

1. nbgrader's own `ClearHiddenTests` removes the hidden checks from every check cell; the lines
   the hidden checks printed ("... hidden checks passed") go too.
2. Solution cells get the `hide-input` tag (Jupyter Book collapses them behind a toggle labelled
   "Show solution"), and the `### BEGIN/END SOLUTION` marker lines are dropped.
3. Each interactive widget is replaced by a static snapshot: the pictures and text its output
   areas held when the notebook was last run, under a note that names the controls and says how
   to run the notebook to use them. The book then loads no widget JavaScript from a CDN.

The table of contents is generated too, because lessons are added over time: each lesson goes
into its part by number (`PARTS`), and an empty part is left out. The generated files are
ignored by git; `make book` regenerates them before every build.
"""

from __future__ import annotations

import argparse
import copy
import html
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
from nbformat import NotebookNode
from nbgrader.preprocessors import ClearHiddenTests

from olm_edu.authoring import solution_notebooks

__all__ = [
    "PARTS", "FRONT_MATTER", "BACK_MATTER", "book_notebook", "build", "network_references", "prepare",
    "table_of_contents",
]

# (caption, first lesson number, last lesson number), as in the course design.
PARTS: list[tuple[str, int, int]] = [
    ("Part 0 — Start here", 0, 0),
    ("Part I — GPT-2 from scratch", 1, 8),
    ("Part II — Knob by knob to modern LLMs", 9, 19),
    ("Part III — The 2025 releases", 20, 24),
    ("Part IV — Beyond one device", 25, 99),
]
FRONT_MATTER = "intro"  # book/intro.md, the landing page
BACK_MATTER: list[str] = ["glossary", "api"]  # book/glossary.md, book/api.md, under "Reference"

LESSONS_FOLDER = "lessons"  # under book/; also the repository's folder, so launch links open the lesson
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
SOLUTION_MARKER = re.compile(r"^\s*#+\s*(BEGIN|END) SOLUTION\s*$")
HIDDEN_CHECK_LINE = re.compile(r"^✅ .*: \d+ hidden checks? passed$")


COLAB_SETUP = "colab-setup"  # metadata["olm_edu"] of the first code cell of every lesson


def book_config(root: Path) -> dict:
    """book/_config.yml of the course at `root`."""
    import yaml  # a dependency of transformers, so always installed

    return yaml.safe_load((Path(root) / "book" / "_config.yml").read_text(encoding="utf-8"))


def course_package_spec(root: Path) -> str:
    """What Colab installs: the course package from the book's repository (`repository.url` of
    book/_config.yml, the one place it is set), at the tag of this version, e.g.
    "olm-edu @ git+https://github.com/owner/name@v0.1.0"."""
    from olm_edu import __version__

    url = book_config(root)["repository"]["url"].rstrip("/")
    return f"olm-edu @ git+{url}@v{__version__}"


def colab_setup_source(root: Path) -> str:
    """The first code cell of every lesson: on Colab (a bare machine) install the course package,
    pinned to the book's version, before anything imports it; anywhere else do nothing."""
    return (
        "# On Colab, install the course's package first (pinned to this book's version); elsewhere this does nothing.\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        "    import subprocess\n"
        "\n"
        f'    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "{course_package_spec(root)}"], check=True)'
    )


def sync_colab_setup(root: Path) -> list[Path]:
    """Make the first code cell of every solution notebook the Colab setup cell (insert or update
    it); returns the notebooks changed. `olm-edu lessons` runs this before generating lessons/."""
    source = colab_setup_source(root)
    changed = []
    for path in solution_notebooks(Path(root) / "solutions"):
        nb = nbformat.read(path, as_version=4)
        first_code = next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "code")
        cell = nb.cells[first_code]
        if cell.metadata.get("olm_edu") == COLAB_SETUP:
            if cell.source == source:
                continue
            cell.source = source
        else:
            setup = nbformat.v4.new_code_cell(source, metadata={"olm_edu": COLAB_SETUP})
            nb.cells.insert(first_code, setup)
        nbformat.write(nb, path)
        changed.append(path)
    return changed


def _is_solution(cell: NotebookNode) -> bool:
    return bool(cell.metadata.get("nbgrader", {}).get("solution"))


def _is_check(cell: NotebookNode) -> bool:
    return bool(cell.metadata.get("nbgrader", {}).get("grade")) and cell.cell_type == "code"


def _hide_solution(cell: NotebookNode) -> None:
    """Collapse a solution behind a toggle; drop nbgrader's marker lines, which mean nothing here."""
    lines = [line for line in cell.source.splitlines() if not SOLUTION_MARKER.match(line)]
    if cell.cell_type == "code":
        cell.source = "\n".join(lines).rstrip()
        tags = cell.metadata.setdefault("tags", [])
        if "hide-input" not in tags:
            tags.append("hide-input")
        cell.metadata["mystnb"] = {"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"}
    else:  # a written answer: a MyST dropdown does for markdown what hide-input does for code
        cell.source = "````{dropdown} Show solution\n" + "\n".join(lines).strip() + "\n````"


def _drop_hidden_check_lines(cell: NotebookNode) -> None:
    """Remove what the (removed) hidden checks printed, so the output matches the visible source."""
    kept = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            lines = output.text.splitlines(keepends=True)
            output.text = "".join(line for line in lines if not HIDDEN_CHECK_LINE.match(line.strip()))
            if not output.text:
                continue
        kept.append(output)
    cell.outputs = kept


def _widget_snapshot(model_id: str, state: dict) -> tuple[list[str], list[NotebookNode]]:
    """The controls (as "name = value") and the stored outputs of a widget and its children."""
    controls: list[str] = []
    outputs: list[NotebookNode] = []

    def visit(identifier: str) -> None:
        model = state.get(identifier)
        if model is None:
            return
        fields = model.get("state", {})
        if model.get("model_name") == "OutputModel":
            outputs.extend(nbformat.from_dict(copy.deepcopy(output)) for output in fields.get("outputs", []))
        elif "value" in fields and fields.get("description"):
            value = fields["value"]
            if "_options_labels" in fields and isinstance(value, int):
                value = fields["_options_labels"][value]  # a dropdown stores the index
            controls.append(f"{fields['description']} = {value}")
        for child in fields.get("children", []):
            visit(child.removeprefix("IPY_MODEL_"))

    visit(model_id)
    return controls, outputs


def _progress_bar_text(model_id: str, state: dict) -> str | None:
    """A progress bar's final state as the text a terminal shows ("training: 100%|██████████| 1000/1000 ..."),
    or None when the widget is not a progress bar (a box holding a *ProgressModel)."""
    model = state.get(model_id, {})
    children = [state.get(child.removeprefix("IPY_MODEL_"), {}) for child in model.get("state", {}).get("children", [])]
    bars = [child for child in children if child.get("model_name", "").endswith("ProgressModel")]
    if len(bars) != 1:
        return None
    bar = bars[0]["state"]
    fraction = bar.get("value", 0) / bar["max"] if bar.get("max") else 0.0
    filled = round(10 * min(max(fraction, 0.0), 1.0))
    parts = []
    for child in children:
        if child is bars[0]:
            parts.append("|" + "█" * filled + " " * (10 - filled) + "|")
        elif child.get("model_name") == "HTMLModel":
            parts.append(html.unescape(child["state"].get("value", "")).replace("\u2007", " "))
    return "".join(parts).strip()


def _static_widgets(nb: NotebookNode) -> None:
    """Replace each widget view by a note and the widget's stored outputs; drop the widget state."""
    state = nb.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            if view is None:
                outputs.append(output)
                continue
            progress = _progress_bar_text(view["model_id"], state)
            if progress is not None:  # nothing to move: show where the bar ended, as text
                outputs.append(nbformat.v4.new_output("stream", name="stdout", text=progress + "\n"))
                continue
            controls, stored = _widget_snapshot(view["model_id"], state)
            shown = f" at {', '.join(f'`{c}`' for c in controls)}" if controls else ""
            note = (
                f"*Interactive widget, shown here as a still{shown}. Launch this page "
                "(rocket button above) or open the lesson in JupyterLab to move the controls.*"
            )
            outputs.append(nbformat.v4.new_output("display_data", data={"text/markdown": note}))
            outputs.extend(stored)
        cell.outputs = outputs


def book_notebook(solution_path: Path) -> NotebookNode:
    """The notebook the book shows for one solution notebook (see the module docstring)."""
    nb = nbformat.read(solution_path, as_version=4)
    nb, _ = ClearHiddenTests().preprocess(nb, {})
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if _is_solution(cell):
            _hide_solution(cell)
        if _is_check(cell):
            cell.source = cell.source.rstrip()
            _drop_hidden_check_lines(cell)
    _static_widgets(nb)
    nbformat.validate(nb)
    return nb


def _lesson_number(path: Path) -> int:
    return int(path.name[:2])


def table_of_contents(lessons: list[Path]) -> str:
    """The `_toc.yml` text: the introduction, one part per non-empty range of PARTS, the reference."""
    lines = [
        "# Generated by `python -m olm_edu.book` (run by `make book`): edit olm_edu/book.py, not this file.",
        "format: jb-book",
        f"root: {FRONT_MATTER}",
        "parts:",
    ]
    for caption, first, last in PARTS:
        members = [p for p in lessons if first <= _lesson_number(p) <= last]
        if not members:
            continue
        lines += [f'  - caption: "{caption}"', "    chapters:"]
        lines += [f"      - file: {LESSONS_FOLDER}/{p.stem}" for p in members]
    lines += ['  - caption: "Reference"', "    chapters:"]
    lines += [f"      - file: {page}" for page in BACK_MATTER]
    return "\n".join(lines) + "\n"


def prepare(root: Path) -> list[Path]:
    """Write book/lessons/*.ipynb from root/solutions and book/_toc.yml; returns the written notebooks."""
    root = Path(root)
    book = root / "book"
    out = book / LESSONS_FOLDER
    out.mkdir(parents=True, exist_ok=True)
    solutions = solution_notebooks(root / "solutions")
    if not solutions:
        raise FileNotFoundError(f"no solution notebooks (NN_name.ipynb) in {root / 'solutions'}")
    outside = [p.name for p in solutions if not any(a <= _lesson_number(p) <= b for _, a, b in PARTS)]
    if outside:
        raise ValueError(f"lessons {outside} fall in no part of olm_edu.book.PARTS")
    written = []
    for solution in solutions:
        target = out / solution.name
        text = nbformat.writes(book_notebook(solution)) + "\n"
        if not target.exists() or target.read_text(encoding="utf-8") != text:  # keep mtimes: Sphinx rebuilds less
            target.write_text(text, encoding="utf-8")
        written.append(target)
    for orphan in set(out.glob("*.ipynb")) - set(written):
        orphan.unlink()
    toc = book / "_toc.yml"
    text = table_of_contents(written)
    if not toc.exists() or toc.read_text(encoding="utf-8") != text:
        toc.write_text(text, encoding="utf-8")
    return written


# Tags that make a browser fetch something as the page loads (a link <a href> does not; a <link>
# does only as a stylesheet, script, font or icon, not as rel="canonical").
_TAG = re.compile(r"<(script|link|img|iframe|source|video|audio)\b[^>]*>", re.I)
_REMOTE = re.compile(r"\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//([^\"'/\s>]+)", re.I)
_FETCHING_REL = re.compile(r"\brel\s*=\s*[\"']?[^\"'>]*\b(stylesheet|preload|modulepreload|icon)\b", re.I)


def network_references(html_dir: Path) -> dict[str, list[str]]:
    """Pages that would fetch something from another host as they load: page -> hosts.

    The book must render with no network, so this must come back empty (`build` checks it).
    """
    found: dict[str, list[str]] = {}
    for page in sorted(Path(html_dir).rglob("*.html")):
        hosts = set()
        for tag in _TAG.finditer(page.read_text(encoding="utf-8")):
            remote = _REMOTE.search(tag.group(0))
            if remote and (tag.group(1).lower() != "link" or _FETCHING_REL.search(tag.group(0))):
                hosts.add(remote.group(1))
        if hosts:
            found[str(page.relative_to(html_dir))] = sorted(hosts)
    return found


def build(root: Path, path_output: Path | None = None) -> Path:
    """Prepare and build the HTML book with Jupyter Book, warnings as errors; returns the html folder.

    Broken cross-references and links between pages are Sphinx warnings, so they fail the build.
    """
    root = Path(root)
    book = root / "book"
    prepare(root)
    command = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(book)]
    command += ["--warningiserror", "--keep-going"]
    if path_output is not None:
        command += ["--path-output", str(path_output)]
    result = subprocess.run(command)
    if result.returncode != 0:
        raise RuntimeError(f"jupyter-book build failed (exit {result.returncode}): see the warnings above")
    html = Path(path_output or book) / "_build" / "html"
    fetched = network_references(html)
    if fetched:
        raise RuntimeError(f"pages that fetch from other hosts as they load (the book must work offline): {fetched}")
    return html


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m olm_edu.book", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["prepare", "build"], help="prepare the notebooks and toc, or also build")
    parser.add_argument("--root", default=".", help="the course folder (holds solutions/ and book/)")
    parser.add_argument("--path-output", type=Path, help="build into PATH/_build/html instead of book/_build/html")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if args.command == "prepare":
        written = prepare(root)
        print(f"wrote {len(written)} lesson(s) to {root / 'book' / LESSONS_FOLDER} and book/_toc.yml")
        return 0
    start = time.perf_counter()
    try:
        html = build(root, args.path_output)
    except RuntimeError as error:
        print(f"book: {error}", file=sys.stderr)
        return 1
    print(f"built the book in {time.perf_counter() - start:.0f} s: open {html / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
