"""The source notebooks follow the course's anatomy and nbgrader's rules."""

import re

import nbformat
import pytest
from nbgrader.nbgraderformat import MetadataValidator

from autograders import settings
from tests.notebooks import grade_cells, load, nbgrader_meta, solution_path, source

MODULES = settings.modules()


@pytest.mark.parametrize("module", MODULES)
def test_saved_clean_with_the_python3_kernel(module):
    nb = load(solution_path(module))
    nbformat.validate(nbformat.reads(solution_path(module).read_text(), as_version=4))
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, (
                f"{cell['id']}: commit solutions without outputs")


@pytest.mark.parametrize("module", MODULES)
def test_nbgrader_metadata_is_complete_and_consistent(module):
    path = solution_path(module)
    MetadataValidator().validate_nb(nbformat.read(path, as_version=nbformat.NO_CONVERT))
    nb = load(path)
    ids = [nbgrader_meta(c)["grade_id"] for c in nb["cells"] if nbgrader_meta(c)]
    assert len(ids) == len(set(ids)), "grade_id values must be unique"
    for cell in nb["cells"]:
        meta = nbgrader_meta(cell)
        if not meta:
            continue
        assert meta["schema_version"] == 3 and cell["id"] == meta["grade_id"]
        assert {"grade", "solution", "locked"} <= set(meta)
        body = source(cell)
        if meta["solution"] and cell["cell_type"] == "code":
            assert "### BEGIN SOLUTION" in body and "TODO" in body and "HINT" in body, cell["id"]
        if "BEGIN HIDDEN TESTS" in body:
            assert meta["grade"] and not meta["solution"], f"{cell['id']}: hidden tests only in test cells"
    for cell in grade_cells(nb):
        meta = nbgrader_meta(cell)
        if cell["cell_type"] == "markdown":  # a manually graded answer, with a mark scheme
            assert meta["solution"] and meta["points"] > 0 and "BEGIN MARK SCHEME" in source(cell)
            continue
        assert meta["locked"] and meta["points"] > 0
        assert "### BEGIN HIDDEN TESTS" in source(cell), f"{cell['id']} has no hidden tests"
        assert "passed(" in source(cell), f"{cell['id']} prints no pass line"


@pytest.mark.parametrize("module", MODULES)
def test_anatomy_header_setup_and_closing(module):
    cells = load(solution_path(module))["cells"]
    header = source(cells[0])
    assert header.startswith("# ") and "Budget" in header and "Last verified" in header
    assert re.search(r"\d+ (s|min).*\d(\.\d)? GB", header, re.S), "state the measured time and memory"
    first_code = next(source(c) for c in cells if c["cell_type"] == "code" and not c["id"].startswith("install"))
    assert f'setup("{module}")' in first_code
    closing = " ".join(source(c) for c in cells[-2:] if c["cell_type"] == "markdown")
    assert "Reflect" in closing or "Where next" in closing


FIGURE = re.compile(r"plt\.(subplots|figure|plot|show)\b|show_digits\(|plot_samples\(|tradeoff_figure\("
                    r"|\.imshow\(")


@pytest.mark.parametrize("module", MODULES)
def test_every_figure_is_described_in_text(module):
    """A demonstration cell that draws is followed by a markdown description, for screen readers."""
    cells = load(solution_path(module))["cells"]
    for cell, after in zip(cells, cells[1:] + [None], strict=True):
        if cell["cell_type"] != "code" or cell["id"] == "setup" or nbgrader_meta(cell):
            continue
        if FIGURE.search(source(cell)):
            described = after is not None and after["cell_type"] == "markdown" and \
                source(after).lstrip().startswith("*Figure")
            assert described, f"{cell['id']} draws a figure: add a markdown cell '*Figure: ...*' after it"


@pytest.mark.parametrize("module", MODULES)
def test_every_exercise_has_a_stuck_hint_in_three_steps(module):
    cells = load(solution_path(module))["cells"]
    for cell, after in zip(cells, cells[1:] + [None], strict=True):
        if cell["cell_type"] == "code" and nbgrader_meta(cell).get("solution"):
            hint = source(after) if after and after["cell_type"] == "markdown" else ""
            assert "<b>Stuck?</b>" in hint and hint.count("<details>") == 3 == hint.count("</details>"), (
                f"{cell['id']}: follow the exercise with a 'Stuck?' hint that reveals more in three steps")


@pytest.mark.parametrize("module", MODULES)
def test_every_figure_has_a_title_and_axis_labels(module):
    for cell in load(solution_path(module))["cells"]:
        body = source(cell)
        if cell["cell_type"] != "code" or cell["id"] == "setup" or not FIGURE.search(body):
            continue
        titled = re.search(r"set_title|plt\.title|suptitle|title=|tradeoff_figure\(", body)
        assert titled, f"{cell['id']}: give the figure a title"
        labelled = re.search(r"xlabel|plot_samples\(|show_digits\(|tradeoff_figure\(", body)  # helpers label
        assert labelled, f"{cell['id']}: label the axes"
