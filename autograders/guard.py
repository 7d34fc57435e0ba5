"""What keeps a submission from fooling its own tests, and what flags one that tries.

A submission's code and the tests that grade it share one Python process, so code that ran
earlier can reach the tests' helpers, the interpreter and the kernel. Two defences:

- `GuardedExecute` (nbgrader's `Execute`, used by every grading run through `settings.configure`):
  before each test cell, the test helpers in ``course.checks`` are dropped from the import cache,
  so the cell's own ``from course.checks import ...`` reads them fresh from the read-only course
  folder, whatever the submission did to the loaded copy; and a cell's output is capped, so a
  print loop can neither fill the grader's memory nor bloat the feedback page. (nbgrader already
  fails a test whose traceback display was switched off: it reads the kernel's reply, not the screen.)
  Before each test cell it also undoes the kernel hooks that could rewrite or excuse a test (see
  `KERNEL_SIDE`): input and AST transformers, custom exception handlers, event callbacks, methods
  patched on the shell or the kernel, sys hooks, trace functions, builtins. A reset sent as cell
  code would pass through the very input transformers it must remove, so it travels as an
  execute request's ``user_expressions``, which ipykernel evaluates with ``eval`` after the (empty)
  cell, past every transformer. What it undid is printed into the test cell's output
  (`UNDID_PREFIX`), and the grader turns that into a review flag; when the reset does not answer
  (the kernel's own machinery was patched), the test is not run and scores 0.
- `review_flags`: a static read of the cells a student wrote, naming code that reaches into the
  grading machinery (changing imported modules, the import system, builtins, the kernel; exec,
  eval, ctypes). No honest answer in this course needs any of it (tests/test_guard.py checks
  every reference answer), so a flag sends the submission to the instructor for a look.

Neither is proof against every trick: a determined student who controls the kernel's process can
still fool in-process tests. The flag makes that visible instead of silently successful.
"""

from __future__ import annotations

import ast
import re
import secrets

from nbclient.util import ensure_async, run_sync
from nbformat import NotebookNode
from nbgrader.preprocessors import Execute
from traitlets import Dict, Float

MAX_CELL_OUTPUT_CHARS = 100_000
FRESH_HELPERS = 'import sys; sys.modules.pop("course.checks", None)  # grader: test helpers fresh from disk\n'
GUARD_MODULE = "_course_grading_guard"
UNDID_PREFIX = "[grader] before this test, undid: "
NO_RESET = "GraderResetError"

# Run once in the grading kernel, before the notebook's first cell: the kernel's hooks as they
# start, and `reset`, which puts them back. Evaluated through user_expressions, never as a cell.
KERNEL_SIDE = r'''
import builtins, sys, sysconfig, types

TRUSTED = ("IPython", "ipykernel", "matplotlib", "matplotlib_inline", "ipywidgets", "traitlets", "comm",
           "jupyter_client")
SHELL_HOOKS = ("input_transformer_manager", "input_transformers_post", "ast_transformers", "events",
               "displayhook", "display_formatter", "display_pub", "display_trap", "builtin_trap", "compile",
               "InteractiveTB", "SyntaxTB", "kernel")
SYS_HOOKS = ("excepthook", "displayhook", "breakpointhook", "unraisablehook")
FUNCTIONS = (types.FunctionType, types.BuiltinFunctionType, staticmethod, classmethod, property,
             types.MethodType, types.MethodDescriptorType, types.WrapperDescriptorType)

INSTALLED = tuple({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})


def _trusted(value):
    """Hooks of Jupyter itself, or of a library installed in the environment (Ray's log deduplicator
    adds a post_execute callback when 05 starts a simulation): code whose file lies in site-packages,
    where a submission cannot write. Not the standard library, whose functions a submission could
    register as hooks; a notebook's own functions live in ipykernel's cell files."""
    owner = getattr(value, "__func__", value)
    module = getattr(owner, "__module__", None) or ""
    if module.split(".")[0] in TRUSTED:
        return True
    owner = getattr(owner, "__self__", owner) if not hasattr(owner, "__code__") else owner
    code = getattr(owner, "__code__", None) or getattr(getattr(type(owner), "__call__", None), "__code__", None)
    if code is None and not isinstance(owner, type):  # an object (an import finder): where its class lives
        source = getattr(sys.modules.get(getattr(type(owner), "__module__", "")), "__file__", None)
        return bool(source) and source.startswith(INSTALLED)
    return bool(code) and code.co_filename.startswith(INSTALLED)


def _describe(value):
    return getattr(value, "__qualname__", None) or type(value).__name__


def _install():
    from IPython.core.getipython import get_ipython

    shell = get_ipython()
    manager = shell.input_transformer_manager
    objects = {"the IPython shell": shell, "the kernel": getattr(shell, "kernel", None),
               "the input transformer manager": manager, "the event manager": shell.events}
    objects = {label: obj for label, obj in objects.items() if obj is not None}
    classes = {}
    for obj in objects.values():
        for cls in type(obj).__mro__:
            if cls is not object and cls not in classes:
                classes[cls] = {k: v for k, v in vars(cls).items() if isinstance(v, FUNCTIONS)}
    instance = {label: set(vars(obj)) for label, obj in objects.items()}
    shell_hooks = {name: getattr(shell, name) for name in SHELL_HOOKS if hasattr(shell, name)}
    lists = {"an input transformer (cleanup)": lambda: manager.cleanup_transforms,
             "an input transformer (line)": lambda: manager.line_transforms,
             "a token transformer": lambda: manager.token_transformers,
             "an input transformer (post)": lambda: shell.input_transformers_post,
             "an AST transformer": lambda: shell.ast_transformers}
    list_saved = {label: (get(), list(get())) for label, get in lists.items()}
    events = shell.events.callbacks
    callbacks = {event: (cbs, list(cbs)) for event, cbs in events.items()}
    sys_saved = {name: getattr(sys, name) for name in SYS_HOOKS if hasattr(sys, name)}
    # the import system: a finder or path hook added here could hand the tests doctored helpers
    import_lists = {"meta_path": (sys.meta_path, list(sys.meta_path)),
                    "path_hooks": (sys.path_hooks, list(sys.path_hooks))}
    trace, profile = sys.gettrace(), sys.getprofile()
    builtins_saved = dict(vars(builtins))
    custom = shell.custom_exceptions

    def reset(nonce):
        undone = []
        for cls, saved in classes.items():  # methods patched on a class
            for name, value in list(vars(cls).items()):
                if isinstance(value, FUNCTIONS) and saved.get(name) is not value and not _trusted(value):
                    try:
                        if name in saved:
                            setattr(cls, name, saved[name])
                        else:
                            delattr(cls, name)
                        undone.append(f"{cls.__name__}.{name} replaced")
                    except (AttributeError, TypeError):
                        undone.append(f"{cls.__name__}.{name} replaced (could not undo)")
        if shell.custom_exceptions != custom:  # set_custom_exc: a handler that can swallow a failure
            shell.custom_exceptions = custom
            undone.append("a custom exception handler set (set_custom_exc)")
        if "CustomTB" in vars(shell) and "CustomTB" not in instance["the IPython shell"]:
            del shell.CustomTB
        for name, value in shell_hooks.items():  # the shell's hook objects swapped
            if getattr(shell, name, None) is not value:
                setattr(shell, name, value)
                undone.append(f"the shell's {name} replaced")
        for label, obj in objects.items():  # methods patched on one object
            for name in set(vars(obj)) - instance[label]:
                value = vars(obj)[name]
                if callable(value) and hasattr(type(obj), name) and not _trusted(value):
                    delattr(obj, name)
                    undone.append(f"{label}'s {name} replaced")
        for label, (saved_list, items) in list_saved.items():
            now = lists[label]()
            for added in [x for x in now if x not in items]:
                if not _trusted(added):
                    undone.append(f"{label} added ({_describe(added)})")
            saved_list[:] = items + [x for x in now if x not in items and _trusted(x)]
        if shell.events.callbacks is not events:
            shell.events.callbacks = events
            undone.append("the event manager's callbacks replaced")
        for event, cbs in list(events.items()):
            saved_list, items = callbacks.get(event, ([], []))
            extra = [cb for cb in cbs if cb not in items]
            undone += [f"an event callback added ({event}: {_describe(cb)})"
                       for cb in extra if not _trusted(cb)]
            if event in callbacks:
                saved_list[:] = items + [cb for cb in extra if _trusted(cb)]
                events[event] = saved_list
            else:
                events[event] = [cb for cb in extra if _trusted(cb)]
        for name, (saved_list, items) in import_lists.items():
            now = getattr(sys, name)
            if now is not saved_list:
                undone.append(f"sys.{name} replaced")
            added = [x for x in now if x not in items]
            undone += [f"an import hook added (sys.{name}: {_describe(x)})" for x in added if not _trusted(x)]
            if now is not saved_list or len(added) != len(now) - len(items) or any(not _trusted(x) for x in added):
                saved_list[:] = items + [x for x in added if _trusted(x)]
                setattr(sys, name, saved_list)
                sys.path_importer_cache.clear()
        for name, value in sys_saved.items():
            if getattr(sys, name) is not value:
                setattr(sys, name, value)
                undone.append(f"sys.{name} replaced")
        if sys.gettrace() is not trace:
            sys.settrace(trace)
            undone.append("a trace function set (sys.settrace)")
        if sys.getprofile() is not profile:
            sys.setprofile(profile)
            undone.append("a profile function set (sys.setprofile)")
        for name, value in builtins_saved.items():
            public = name == "__import__" or not name.startswith("_")
            if public and vars(builtins).get(name, None) is not value:
                setattr(builtins, name, value)
                undone.append(f"builtins.{name} replaced")
        sys.modules.pop("course.checks", None)  # the test helpers, fresh from disk
        return "\n".join([nonce, *dict.fromkeys(undone)])

    guard = types.ModuleType(GUARD_MODULE)
    guard.reset = reset
    sys.modules[GUARD_MODULE] = guard


_install()
'''

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
    ("sys", "meta_path"): "changes the import system (sys.meta_path)",
    ("sys", "path_hooks"): "changes the import system (sys.path_hooks)",
    ("sys", "path_importer_cache"): "changes the import system (sys.path_importer_cache)",
}
SAFE_MODULES = ("IPython.display",)  # showing results is what notebooks are for
MAGIC_CALLS = {"run_line_magic", "run_cell_magic", "system", "getoutput"}  # what %magics become


class GuardedExecute(Execute):
    """nbgrader's Execute, with the kernel's hooks undone and test helpers reloaded before each test
    cell, and outputs capped (see the module docstring)."""

    cell_timeouts = Dict(value_trait=Float(), help=(
        "Seconds for the test cells named here (grade id -> limit), where a cell needs more than "
        "`timeout`; never less than `timeout`. Set by the grader from its own table, not read from "
        "the submission, whose metadata the student controls.")).tag(config=True)

    def _get_timeout(self, cell):
        """The cell's limit: `timeout`, or the larger limit `cell_timeouts` names for this test cell."""
        timeout = super()._get_timeout(cell)
        grade_id = (cell or {}).get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if timeout is not None and grade_id in self.cell_timeouts:
            timeout = max(timeout, self.cell_timeouts[grade_id])
        return timeout

    def preprocess(self, nb, resources=None, km=None):
        self._output_chars: dict[int, int] = {}  # per notebook: one process may grade several
        self._baseline = False
        return super().preprocess(nb, resources, km)

    def preprocess_cell(self, cell, resources, index):
        if not self._baseline:  # before the notebook's first cell: the kernel's hooks as it started
            self._baseline = True
            self._ask_kernel(f"exec({KERNEL_SIDE!r}, {{'GUARD_MODULE': {GUARD_MODULE!r}}})", setup=True)
        meta = cell.metadata.get("nbgrader", {})
        if not (cell.cell_type == "code" and meta.get("grade") and not meta.get("solution")):
            return super().preprocess_cell(cell, resources, index)
        undid = self._ask_kernel(f"__import__('sys').modules[{GUARD_MODULE!r}].reset")
        cell.source = FRESH_HELPERS + cell.source
        if undid is None:  # the reset did not answer: this test cannot be trusted to run
            cell.outputs = [NotebookNode(output_type="error", ename=NO_RESET, evalue=(
                "the grader could not restore the kernel before this test (its machinery was changed), "
                "so the test was not run"), traceback=[f"{NO_RESET}: the test was not run"])]
            return cell, self.resources
        cell, resources = super().preprocess_cell(cell, resources, index)
        if undid:
            cell.outputs.insert(0, NotebookNode(output_type="stream", name="stdout",
                                                text=UNDID_PREFIX + "; ".join(undid) + "\n"))
        return cell, resources

    async def _async_ask_kernel(self, function: str, setup: bool = False) -> list[str] | None:
        """Evaluate `function`(nonce) in the kernel (`setup`: `function` or nonce), past the input
        transformers: what it reports (lines after the nonce), or None when no answer with the
        nonce came back."""
        nonce = secrets.token_hex(8)
        expression = f"{function} or {nonce!r}" if setup else f"{function}({nonce!r})"
        try:
            msg_id = await ensure_async(self.kc.execute(
                "", silent=True, store_history=False, user_expressions={"grader": expression},
                allow_stdin=False, stop_on_error=False))
            reply = await self.async_wait_for_reply(msg_id)
            value = reply["content"]["user_expressions"]["grader"]
            text = ast.literal_eval(value["data"]["text/plain"])
        except Exception:  # no reply, an error in it, or a shape no honest kernel sends
            return None
        lines = text.split("\n") if isinstance(text, str) else []
        return lines[1:] if lines and lines[0] == nonce else None

    _ask_kernel = run_sync(_async_ask_kernel)

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


_INSTALL_PARTS = (
    (re.compile(r'(os\.environ\.get\("COURSE_SOURCE", )"[^"\n]*"'), r'\1"SOURCE"'),  # where from
    (re.compile(r"(sysml-course\[)[a-z0-9-]+(\])"), r"\1EXTRA\2"),                   # the extra
    (re.compile(r"(for name in )\([^()\n]*\)"), r"\1NEEDS"),                          # what it checks
)


def _install_form(source: str) -> str:
    """An install cell (course.colab's, id ``install`` or ``install-04b``) with the parts that may differ
    without changing what it does (the source it installs from, the extra, the import names it checks) made
    generic: a learner who points COURSE_SOURCE at a fork, or holds another notebook's copy of the cell, is
    not held for review."""
    text = _same(source)
    for pattern, generic in _INSTALL_PARTS:
        text = pattern.sub(generic, text)
    return text


def review_flags(nb, released: dict[str, str] | None = None) -> list[str]:
    """Reasons for an instructor to look at the code of this submission; empty when none.

    Reads the code cells the student wrote or changed: every one except the tests (grading
    restores those) and the course's own cells, unchanged: a cell whose source is as `released`
    (cell id -> source) has it, by its id or, where an editor dropped or renewed the ids (VS Code,
    nbformat 4.0-4.4 from Colab), by its source alone (line endings and trailing blanks aside).
    """
    released = released or {}
    course_sources = {_same(source) for source in released.values()}
    install = next((_install_form(source) for key, source in released.items()
                    if key == "install" or key.startswith("install-")), None)  # course.colab.cell_id
    found: list[str] = []
    for index, cell in enumerate(nb.cells):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.get("cell_type") != "code" or (meta.get("grade") and not meta.get("solution")):
            continue
        if released.get(cell.get("id")) == cell.source or _same(cell.source) in course_sources:
            continue
        if install is not None and _install_form(cell.source) == install:
            continue
        try:
            tree = ast.parse(_python_of(cell.source))
        except SyntaxError:
            continue  # it fails on its own when it runs
        flags = _cell_flags(tree, _magic_calls(tree))
        named = f" ({cell.get('id')})" if cell.get("id") else ""
        where = meta.get("grade_id") or f"cell {index + 1}{named}"
        found += [f"{where}: {flag}" for flag in dict.fromkeys(flags)]
    return found


def runtime_flags(nb) -> list[str]:
    """Review flags from a graded notebook: what `GuardedExecute` had to undo before a test cell,
    and tests it could not run because the kernel's machinery was changed; empty when none."""
    found: list[str] = []
    for index, cell in enumerate(nb.get("cells", [])):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.get("cell_type") != "code" or not meta.get("grade") or meta.get("solution"):
            continue
        where = meta.get("grade_id") or f"cell {index + 1}"
        for output in cell.get("outputs", []):
            text = output.get("text", "")
            text = "".join(text) if isinstance(text, list) else text
            if output.get("output_type") == "stream" and text.startswith(UNDID_PREFIX):
                found += [f"before {where}, the grader undid {item.strip()}"
                          for item in text[len(UNDID_PREFIX):].split(";") if item.strip()]
            if output.get("output_type") == "error" and output.get("ename") == NO_RESET:
                found.append(f"{where}: not run, the grader could not restore the kernel before it")
    return list(dict.fromkeys(found))
