"""Sphinx extension for the olm-edu book: Markdown docstrings and launch links.

Docstrings. The library writes its docstrings the way its lessons are written: Markdown-style,
with `code` in single backticks, **bold**, "- " lists and indented examples. Sphinx's autodoc
reads docstrings as reStructuredText, where that style warns (and the book treats warnings as
errors). So every docstring autodoc collects is parsed as MyST Markdown instead, through the
`olm-markdown` directive below.

Launch links. Two optional environment variables:

    OLM_EDU_BOOK_REPOSITORY=owner/name        the GitHub repository the launch links open
    OLM_EDU_BOOK_JUPYTERHUB=https://hub...    a classroom JupyterHub: adds a JupyterHub launch link

Without them the links use `repository.url` of _config.yml and show Binder and Colab only. The
publishing workflow sets the repository to the one it runs in, so forks get working links.
"""

from __future__ import annotations

import os

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


def _launch_settings_from_environment(app: Sphinx, config: Config) -> None:
    options = config.html_theme_options
    repository = os.environ.get("OLM_EDU_BOOK_REPOSITORY", "").strip().strip("/")
    if repository:
        options["repository_url"] = f"https://github.com/{repository}"
    hub = os.environ.get("OLM_EDU_BOOK_JUPYTERHUB", "").strip()
    if hub:
        options.setdefault("launch_buttons", {})["jupyterhub_url"] = hub


def setup(app: Sphinx) -> dict:
    app.add_directive("olm-markdown", MarkdownBlock)
    app.connect("autodoc-process-docstring", _docstring_as_markdown)
    app.connect("config-inited", _launch_settings_from_environment)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
