"""Every module through the real grader: the reference answers earn every automatic point,
the blank release earns none, and written answers wait for the instructor."""

import json

import pytest

from autograders import grade, settings
from tests.notebooks import grade_cells, load, nbgrader_meta, reference_answers, solution_path, submission


def written_answers(module):
    return {c["id"]: "A written answer." for c in load(solution_path(module))["cells"]
            if c["cell_type"] == "markdown" and nbgrader_meta(c).get("solution")}


@pytest.mark.parametrize("module", [m for m in settings.modules() if m != "00_orientation"])
def test_reference_scores_every_automatic_point(module, tmp_path):
    # 00_orientation has its own, fuller end-to-end test (test_autograder.py).
    folder = tmp_path / "in"
    folder.mkdir()
    answers = {**reference_answers(module), **written_answers(module)}
    (folder / "reference.ipynb").write_text(json.dumps(submission(module, answers)))
    (folder / "blank.ipynb").write_text(json.dumps(submission(module)))
    results = {r.student: r for r in grade.grade(module, folder, tmp_path / "out")}

    cells = grade_cells(load(solution_path(module)))
    manual = sum(nbgrader_meta(c)["points"] for c in cells if c["cell_type"] == "markdown")
    total = sum(nbgrader_meta(c)["points"] for c in cells)
    reference, blank = results["reference"], results["blank"]
    assert reference.status == "graded" and reference.max_score == total
    assert reference.score == total - manual, reference.cells
    assert reference.manual_pending == manual
    assert (not manual) or "to grade by hand" in reference.detail
    assert blank.score == 0 and blank.manual_pending == 0
