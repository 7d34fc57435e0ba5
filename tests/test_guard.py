"""autograders/guard.py's static review: every reference answer is clean, and each trick is named."""

import nbformat
import pytest

from autograders import guard, settings
from tests.notebooks import release_path, solution_path


def notebook(*sources):
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])


@pytest.mark.parametrize("module", settings.modules())
def test_no_reference_answer_is_flagged(module):
    nb = nbformat.read(solution_path(module), as_version=4)
    released = {c.id: c.source for c in nbformat.read(release_path(module), as_version=4).cells}
    assert guard.review_flags(nb, released) == []


@pytest.mark.parametrize("code, words", [
    ("import course.checks as c\nc.expect_close = lambda *a, **k: None",
     "changes course.checks.expect_close"),
    ("from course import checks\nsetattr(checks, 'passed', print)", "changes course.checks"),
    ("from course.checks import expect\nexpect.__code__ = (lambda *a: None).__code__",
     "changes course.checks.expect.__code__"),
    ("import torch\ntorch.allclose = lambda *a, **k: True", "changes torch.allclose"),
    ("get_ipython().showtraceback = lambda *a, **k: None", "IPython kernel"),
    ("import sys\nsys.modules['course.checks'] = None", "sys.modules"),
    ("import builtins\nbuiltins.isinstance = lambda *a: True", "builtins"),
    ("exec('x = 1')", "exec"),
    ("import ctypes\nctypes.string_at(0)", "ctypes"),
    ("import importlib\nimportlib.reload", "import system"),
])
def test_each_trick_is_named(code, words):
    flags = guard.review_flags(notebook(code))
    assert any(words in flag for flag in flags), flags


@pytest.mark.parametrize("code", [
    "%timeit sum(range(10))\nx = 3",                       # magics become get_ipython() calls
    "from IPython.display import display, HTML\ndisplay(HTML('<b>hi</b>'))",
    "import torch\nmodel = torch.nn.Linear(2, 2)\nmodel.weight.data[0] = 1.0\nmodel.bias = None",
    "import numpy as np\na = np.zeros(3)\na[0] = 1",
    "def f(:\n    pass",                                  # a syntax error fails on its own
])
def test_ordinary_code_is_not_flagged(code):
    assert guard.review_flags(notebook(code)) == []


def test_unchanged_released_cells_and_test_cells_are_not_read():
    cell = nbformat.v4.new_code_cell("exec('1')")
    test = nbformat.v4.new_code_cell("exec('1')", metadata={"nbgrader": {"grade": True, "solution": False}})
    nb = nbformat.v4.new_notebook(cells=[cell, test])
    assert guard.review_flags(nb, {cell.id: cell.source}) == []
    assert len(guard.review_flags(nb)) == 1  # the plain cell, once it differs from the release


def test_what_the_grader_undid_in_the_kernel_becomes_a_review_flag():
    test = {"grade": True, "solution": False, "grade_id": "t_tests"}
    outputs = [{"output_type": "stream", "name": "stdout",
                "text": guard.UNDID_PREFIX + "an AST transformer added (P); sys.excepthook replaced\n"},
               {"output_type": "error", "ename": guard.NO_RESET, "evalue": "", "traceback": []}]
    nb = {"cells": [{"cell_type": "code", "metadata": {"nbgrader": test}, "outputs": outputs, "source": ""},
                    {"cell_type": "code", "metadata": {}, "outputs": outputs[:1], "source": ""}]}  # not a test
    assert guard.runtime_flags(nb) == [
        "before t_tests, the grader undid an AST transformer added (P)",
        "before t_tests, the grader undid sys.excepthook replaced",
        "t_tests: not run, the grader could not restore the kernel before it"]


def test_an_install_cell_pointed_elsewhere_or_from_another_notebook_is_not_held():
    """The install cell uses importlib (a flagged module): a learner who points COURSE_SOURCE at a fork, or who
    holds another notebook's copy, keeps a final score; anything else added to it is read."""
    from course import colab

    released = {"install": colab.install_cell_source("00_orientation")}

    def flags(source):
        cell = nbformat.v4.new_code_cell(source)
        cell.id = "install"
        return guard.review_flags(nbformat.v4.new_notebook(cells=[cell]), released)

    assert flags(colab.install_cell_source("00_orientation", "git+https://github.com/me/fork.git@v2")) == []
    assert flags(colab.install_cell_source("05b_federated_privacy")) == []
    tampered = released["install"] + "\nimportlib.reload(importlib)"
    assert any("import system" in flag and "(install)" in flag for flag in flags(tampered))
