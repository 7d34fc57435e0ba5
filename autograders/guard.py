"""What keeps a submission from fooling its own tests, and what flags one that tries.

A submission's code and the tests that grade it share one Python process, so code that ran
earlier can reach the tests' helpers, the interpreter and the kernel. Two defences:

- `GuardedExecute` (nbgrader's `Execute`, used by every grading run through `settings.configure`):
  before each test cell, the test helpers in ``course.checks`` are dropped from the import cache,
  so the cell's own ``from course.checks import ...`` reads them fresh from the read-only course
  folder, whatever the submission did to the loaded copy; and a cell's output is capped, so a
  print loop can neither fill the grader's memory nor bloat the feedback page. (nbgrader already
  fails a test whose traceback display was switched off: it reads the kernel's reply, not the screen.)
- `review_flags`: a static read of the cells a student wrote, naming code that reaches into the
  grading machinery (changing imported modules, the import system, builtins, the kernel; exec,
  eval, ctypes). No honest answer in this course needs any of it (tests/test_guard.py checks
  every reference answer), so a flag sends the submission to the instructor for a look.

Neither is proof against every trick: a determined student who controls the kernel's process can
still fool in-process tests. The flag makes that visible instead of silently successful.
"""

from __future__ import annotations

import ast

from nbformat import NotebookNode
from nbgrader.preprocessors import Execute

MAX_CELL_OUTPUT_CHARS = 100_000
FRESH_HELPERS = 'import sys; sys.modules.pop("course.checks", None)  # grader: test helpers fresh from disk\n'

RISKY_NAMES = {
    "exec": "runs code built at run time (exec)",
    "eval": "runs code built at run time (eval)",
    "compile": "compiles code at run time",
    "__import__": "imports by name at run time (__import__)",
    "__builtins__": "changes or reads the builtins",
    "globals": "reaches into the notebook's global namespace (globals())",
}
RISKY_MODULES = {
    "builtins": "changes or reads the builtins",
    "importlib": "manipulates the import system (importlib)",
    "ctypes": "calls C code directly (ctypes)",
    "IPython": "reaches into the IPython kernel",
    "ipykernel": "reaches into the IPython kernel",
    "gc": "walks the interpreter's objects (gc)",
    "inspect": "inspects running frames (inspect)",
}
RISKY_ATTRIBUTES = {
    ("sys", "modules"): "changes the import cache (sys.modules)",
    ("sys", "settrace"): "traces the interpreter (sys.settrace)",
    ("sys", "setprofile"): "traces the interpreter (sys.setprofile)",
    ("sys", "_getframe"): "reaches into running frames (sys._getframe)",
}
SAFE_MODULES = ("IPython.display",)  # showing results is what notebooks are for
MAGIC_CALLS = {"run_line_magic", "run_cell_magic", "system", "getoutput"}  # what %magics become


class GuardedExecute(Execute):
    """nbgrader's Execute, with test helpers reloaded before each test cell and outputs capped."""

    def preprocess_cell(self, cell, resources, index):
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and meta.get("grade") and not meta.get("solution"):
            cell.source = FRESH_HELPERS + cell.source
        return super().preprocess_cell(cell, resources, index)

    def preprocess(self, nb, resources=None, km=None):
        self._output_chars: dict[int, int] = {}  # per notebook: one process may grade several
        return super().preprocess(nb, resources, km)

    def output(self, outs, msg, display_id, cell_index):
        used = self._output_chars.get(cell_index, 0)
        self._output_chars[cell_index] = used + _content_chars(msg.get("content", {}))
        if msg.get("msg_type") != "error" and self._output_chars[cell_index] > MAX_CELL_OUTPUT_CHARS:
            if used <= MAX_CELL_OUTPUT_CHARS:  # say so once, then drop the rest
                outs.append(NotebookNode(output_type="stream", name="stdout", text=(
                    f"\n[the grader cut this cell's output at {MAX_CELL_OUTPUT_CHARS:,} characters]\n")))
            return None
        return super().output(outs, msg, display_id, cell_index)


def _content_chars(content: dict) -> int:
    if "text" in content:
        return len(content["text"])
    return sum(len(str(value)) for value in content.get("data", {}).values())


# ---------------------------------------------------------------- static review

def _python_of(source: str) -> str:
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


def _root_name(node: ast.AST) -> tuple[str | None, list[str]]:
    """`a.b.c` -> ("a", ["b", "c"]); anything not rooted in a plain name -> (None, [])."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Subscript):
        return _root_name(node.value)
    return (node.id, parts[::-1]) if isinstance(node, ast.Name) else (None, [])


def _cell_flags(tree: ast.AST, magics: set[int]) -> list[str]:
    """Every reason to look at this cell; `magics`: ids of the get_ipython() calls %magics became."""
    imported: dict[str, str] = {}  # local name -> what it names, for every import in the cell
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:  # `import a.b` binds `a`; `import a.b as c` binds `c` to a.b
                local = alias.asname or alias.name.split(".")[0]
                imported[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    flags = []
    for node in ast.walk(tree):
        modules = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
        flags += [RISKY_MODULES[m.split(".")[0]] for m in modules
                  if m.split(".")[0] in RISKY_MODULES and not m.startswith(SAFE_MODULES)]

        if isinstance(node, ast.Name) and node.id in RISKY_NAMES:
            flags.append(RISKY_NAMES[node.id])
        if isinstance(node, ast.Attribute):
            root, parts = _root_name(node)
            if root == "sys" and parts and ("sys", parts[0]) in RISKY_ATTRIBUTES:
                flags.append(RISKY_ATTRIBUTES["sys", parts[0]])
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "get_ipython"
                and id(node) not in magics):
            flags.append("reaches into the IPython kernel (get_ipython)")

        targets = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("setattr", "delattr") and node.args):
            targets = [ast.Attribute(value=node.args[0], attr="<an attribute>")]
        for target in targets:
            root, parts = _root_name(target)
            if isinstance(target, ast.Attribute) and root in imported:
                flags.append(f"changes {'.'.join([imported[root], *parts])}, which it imported")
    return flags


def _magic_calls(tree: ast.AST) -> set[int]:
    """ids of the get_ipython() calls that %magics turned into: those are not reaching in."""
    allowed = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr in MAGIC_CALLS and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name) and node.value.func.id == "get_ipython"):
            allowed.add(id(node.value))
    return allowed


def _same(source: str) -> str:
    """A cell's source as compared with the course's: line endings and trailing blanks ignored."""
    lines = source.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip()


def review_flags(nb, released: dict[str, str] | None = None) -> list[str]:
    """Reasons for an instructor to look at the code of this submission; empty when none.

    Reads the code cells the student wrote or changed: every one except the tests (grading
    restores those) and the course's own cells, unchanged: a cell whose source is as `released`
    (cell id -> source) has it, by its id or, where an editor dropped or renewed the ids (VS Code,
    nbformat 4.0-4.4 from Colab), by its source alone (line endings and trailing blanks aside).
    """
    released = released or {}
    course_sources = {_same(source) for source in released.values()}
    found: list[str] = []
    for index, cell in enumerate(nb.cells):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.get("cell_type") != "code" or (meta.get("grade") and not meta.get("solution")):
            continue
        if released.get(cell.get("id")) == cell.source or _same(cell.source) in course_sources:
            continue
        try:
            tree = ast.parse(_python_of(cell.source))
        except SyntaxError:
            continue  # it fails on its own when it runs
        flags = _cell_flags(tree, _magic_calls(tree))
        where = meta.get("grade_id") or f"cell {index + 1}"
        found += [f"{where}: {flag}" for flag in dict.fromkeys(flags)]
    return found
