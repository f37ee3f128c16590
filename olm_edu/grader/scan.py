"""Read a submission's code, without running it, for constructs an instructor may want to review.

This is advice, not a verdict. The grade is protected by the sandbox (`sandbox`: the student's
code cannot touch the grader, the course or other submissions) and, for the lessons the grader
judges in its own process (`remote`), by the check never running where the student's code runs.
So a finding never costs points: it is listed in the gradebook's `review` column and on the
student's feedback page, for the instructor to look at (a check judged in the kernel could still
be fooled by code like this; the finding says where to look).

What is flagged (each with the cell and line):
- assigning or deleting an attribute of a module (`torch.softmax = ...`, `check.x = ...`);
- `setattr`, `getattr`, `delattr`, `exec`, `eval`, `compile`, `__import__`, `globals`, `vars`,
  `get_ipython`, `breakpoint`;
- importing the grading machinery or introspection tools (`olm_edu.grading`, `olm_edu.checks`,
  `builtins`, `importlib`, `inspect`, `ctypes`, `gc`, `unittest.mock`, `sys` internals);
- touching the notebook's own history or I/O (`In`, `Out`, `_ih`, `sys.stdout`, `sys.modules`);
- rebinding the name `check`;
- deleting or writing files, running processes (`os.remove`, `shutil.rmtree`, `subprocess`,
  `os.system`, `open(..., "w")` on a path outside the working folder).

- shell commands and cell magics (`!...`, `%%writefile`, `%system`).

Honest code is flagged too (a getattr, a log file): hence advice, never a zero.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

__all__ = ["Finding", "scan_source"]

_FORBIDDEN_CALLS = {"setattr", "getattr", "delattr", "exec", "eval", "compile", "__import__", "globals", "vars",
                    "get_ipython", "breakpoint"}
_FORBIDDEN_MODULES = ("olm_edu.grading", "olm_edu.checks", "olm_edu.grader", "builtins", "importlib", "inspect",
                      "ctypes", "gc", "unittest", "subprocess", "shutil", "signal")
_FORBIDDEN_NAMES = {"In", "Out", "_ih", "_oh", "__builtins__"}  # not _i: a common loop variable
_FORBIDDEN_ATTRIBUTES = {("sys", "modules"), ("sys", "stdout"), ("sys", "stderr"), ("sys", "excepthook"),
                         ("os", "remove"), ("os", "unlink"), ("os", "rmdir"), ("os", "system"), ("os", "rename"),
                         ("os", "replace"), ("os", "removedirs"), ("os", "chdir"), ("os", "kill"), ("os", "_exit")}
_PATH_METHODS = {"unlink", "rmdir", "write_text", "write_bytes", "rename", "replace", "chmod", "touch"}


@dataclass(frozen=True)
class Finding:
    """One suspicious construct: which cell, which line, what."""

    cell: int
    line: int
    what: str

    def __str__(self) -> str:
        return f"cell {self.cell}, line {self.line}: {self.what}"


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


class _Scanner(ast.NodeVisitor):
    def __init__(self, cell: int, module_names: set[str]):
        self.cell, self.module_names, self.findings = cell, module_names, []

    def flag(self, node: ast.AST, what: str) -> None:
        self.findings.append(Finding(self.cell, getattr(node, "lineno", 0), what))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._check_module(node, alias.name)
            self.module_names.add((alias.asname or alias.name).split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        self._check_module(node, module)
        for alias in node.names:
            self._check_module(node, f"{module}.{alias.name}")
            if module in ("os", "sys") and alias.name in {a for _, a in _FORBIDDEN_ATTRIBUTES}:
                self.flag(node, f"imports {module}.{alias.name}")

    def _check_module(self, node: ast.AST, name: str) -> None:
        if any(name == bad or name.startswith(bad + ".") for bad in _FORBIDDEN_MODULES):
            self.flag(node, f"imports {name}")

    def _check_target(self, target: ast.AST, verb: str) -> None:
        if isinstance(target, ast.Attribute):
            root = _dotted(target)
            if root and root.split(".")[0] in self.module_names:
                self.flag(target, f"{verb} {root}, an attribute of a module (monkeypatching)")
        elif isinstance(target, ast.Name) and target.id == "check":
            self.flag(target, "rebinds the name `check`, which the check cells use")
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._check_target(element, verb)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._check_target(target, "assigns")
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._check_target(node.target, "changes")
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            self._check_target(target, "deletes")
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.name == "check":
            self.flag(node, "defines a function named `check`, which the check cells use")
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in _FORBIDDEN_NAMES:
            self.flag(node, f"uses {node.id}, the notebook's own input/output history")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        dotted = _dotted(node)
        if dotted and tuple(dotted.split(".")[:2]) in _FORBIDDEN_ATTRIBUTES:
            self.flag(node, f"uses {'.'.join(dotted.split('.')[:2])}")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id in _FORBIDDEN_CALLS:
            self.flag(node, f"calls {node.func.id}()")
        if isinstance(node.func, ast.Attribute) and node.func.attr in _PATH_METHODS:
            self.flag(node, f"calls .{node.func.attr}() (changes files)")
        if isinstance(node.func, ast.Name) and node.func.id == "open" and _writes(node):
            self.flag(node, "opens a file for writing")
        self.generic_visit(node)


def _writes(call: ast.Call) -> bool:
    mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
    return isinstance(mode, ast.Constant) and isinstance(mode.value, str) and any(c in mode.value for c in "wax+")


def scan_source(source: str, cell: int, module_names: set[str] | None = None) -> list[Finding]:
    """Findings in one cell's code. `module_names` carries import aliases across cells."""
    names = module_names if module_names is not None else set()
    names.update({"torch", "F", "nn", "np", "olm_edu", "os", "sys", "math", "regex", "re", "check"})
    shell = [Finding(cell, number, f"runs a shell command or a cell magic: {line.strip()[:80]}")
             for number, line in enumerate(source.splitlines(), start=1)
             if line.lstrip().startswith(("!", "%%", "%system", "%sx", "%run", "%load"))]
    if source.lstrip().startswith("%%"):
        return shell  # a cell magic: the rest of the cell is not Python
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]  # keep numbering
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return shell  # the cell will fail to run; that is the student's error, not cheating
    scanner = _Scanner(cell, names)
    scanner.visit(tree)
    return shell + scanner.findings
