"""Sphinx extension for the olm-edu book: Markdown docstrings and launch links.

Docstrings. The library writes its docstrings the way its lessons are written: Markdown-style,
with `code` in single backticks, **bold**, "- " lists and indented examples. Sphinx's autodoc
reads docstrings as reStructuredText, where that style warns (and the book treats warnings as
errors). So every docstring autodoc collects is parsed as MyST Markdown instead, through the
`olm-markdown` directive below.

Live code. Launch links come from _config.yml alone (`repository.url`, the one place the
repository is named, and `launch_buttons`). With live code off (`launch_buttons.thebe: false`)
the pages load none of sphinx-thebe's scripts: the theme emits its setup script twice, and the
second `const THEBE_JS_URL` is a SyntaxError on every page.
"""

from __future__ import annotations

from docutils import nodes
from myst_parser.parsers.sphinx_ import MystParser
from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.util.docutils import SphinxDirective, new_document


class MarkdownBlock(SphinxDirective):
    """`.. olm-markdown::` — its content is MyST Markdown, parsed in place."""

    has_content = True

    def run(self) -> list[nodes.Node]:
        document = new_document(self.env.docname, self.state.document.settings)
        MystParser().parse("\n".join(self.content), document)
        return list(document.children)


def _docstring_as_markdown(app: Sphinx, what: str, name: str, obj: object, options: dict, lines: list[str]) -> None:
    if not any(line.strip() for line in lines):
        return
    body = ["   " + line if line.strip() else "" for line in lines]
    lines[:] = [".. olm-markdown::", "", *body, ""]


def _is_live_code_script(script: object) -> bool:
    body = getattr(script, "attributes", {}).get("body", "")
    return "THEBE_JS_URL" in body or str(getattr(script, "filename", script) or "").endswith("sphinx-thebe.js")


def _drop_live_code_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: object) -> None:
    """With live code off (launch_buttons.thebe: false) a page needs none of sphinx-thebe's scripts.
    The theme registers its setup script twice, and the second `const THEBE_JS_URL` is a
    SyntaxError on every page, so both copies (and the loader that reads them) are left out."""
    if app.config.html_theme_options.get("launch_buttons", {}).get("thebe"):
        return
    if context.get("script_files") is not None:
        context["script_files"] = [script for script in context["script_files"] if not _is_live_code_script(script)]


def setup(app: Sphinx) -> dict:
    app.add_directive("olm-markdown", MarkdownBlock)
    app.connect("autodoc-process-docstring", _docstring_as_markdown)
    app.connect("html-page-context", _drop_live_code_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
