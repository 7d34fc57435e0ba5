"""Every module through the real grader: the reference answers earn every automatic point, the blank
release earns none, written answers wait for the instructor, and recorded answers (tests/answers/) are
graded as recorded: one wrong answer per exercise loses that exercise's points, other correct answers
keep them all. One grading run per module grades all four submissions."""

import json
import os

import pytest

from autograders import grade, settings
from tests import answers
from tests.notebooks import grade_cells, load, nbgrader_meta, reference_answers, solution_path, source, submission


@pytest.fixture(autouse=True)
def two_cores():
    """Grade as a 2-core machine does (CI's, and the one of issue 18's case 10): the default number of
    students at once and the cell limits are what such a machine picks, and the reference must still
    earn every point there. On a machine with more cores the grading runs on two of them."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(before)[:2])
    yield
    os.sched_setaffinity(0, before)


def written_answers(module):
    return {c["id"]: "A written answer." for c in load(solution_path(module))["cells"]
            if c["cell_type"] == "markdown" and nbgrader_meta(c).get("solution")}


def recorded(module, kind):
    """{exercise: answer source}: the first recorded answer of `kind` for each exercise (a visible one
    first for wrong answers: the kind a learner could have seen and still handed in)."""
    nb = load(solution_path(module))
    sources = {c["id"]: source(c) for c in nb["cells"]}
    chosen = {}
    for answer in sorted(answers.records(module), key=lambda a: not a.visible):
        if answer.kind == kind and answer.cell not in chosen:
            chosen[answer.cell] = answer.code(sources[answer.cell])
    return chosen


def _blank_copy_fails_exactly_at_its_exercises(autograded):
    """The student copy as released, run by the grader (fast mode): every test cell fails at the stub, so
    no test passes by accident, and no other cell fails, so demos never need an answer. (This reads the
    grader's run of the blank copy rather than running every notebook once more.)"""
    nb = load(autograded)
    failing = {c["id"]: [o for o in c.get("outputs", []) if o.get("output_type") == "error"] for c in nb["cells"]
               if c["cell_type"] == "code" and any(o.get("output_type") == "error" for o in c.get("outputs", []))}
    tests = {c["id"] for c in grade_cells(nb) if c["cell_type"] == "code"}
    assert set(failing) == tests, f"cells failing on the blank copy: {sorted(failing)}; test cells: {sorted(tests)}"
    for cell_id, errors in failing.items():
        assert errors[0]["ename"] == "NotImplementedError", (
            f"{cell_id} fails with {errors[0]['ename']}: {errors[0].get('evalue')}, not at the stub")


@pytest.mark.slow
@pytest.mark.parametrize("module", settings.modules())
def test_reference_blank_wrong_and_right_answers_through_the_grader(module, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    reference = {**reference_answers(module), **written_answers(module)}
    wrong, right = recorded(module, "wrong"), recorded(module, "right")
    # 00_orientation's reference and blank copies are graded by its fuller test (test_autograder.py).
    if module != "00_orientation":
        (folder / "reference.ipynb").write_text(json.dumps(submission(module, reference)))
    (folder / "blank.ipynb").write_text(json.dumps(submission(module)))
    (folder / "wrong.ipynb").write_text(json.dumps(submission(module, {**reference, **wrong})))
    (folder / "right.ipynb").write_text(json.dumps(submission(module, {**reference, **right})))
    results = {r.student: r for r in grade.grade(module, folder, tmp_path / "out")}

    nb = load(solution_path(module))
    cells = grade_cells(nb)
    manual = sum(nbgrader_meta(c)["points"] for c in cells if c["cell_type"] == "markdown")
    total = sum(nbgrader_meta(c)["points"] for c in cells)
    if module != "00_orientation":
        ref = results["reference"]
        assert ref.status == "graded" and ref.max_score == total
        assert ref.score == total - manual, ref.cells
        assert ref.manual_pending == manual
        assert (not manual) or "to grade by hand" in ref.detail
    assert results["blank"].score == 0 and results["blank"].manual_pending == 0
    _blank_copy_fails_exactly_at_its_exercises(tmp_path / "out" / "autograded" / "blank" / module / f"{module}.ipynb")
    assert results["right"].status == "graded" and results["right"].score == total - manual, results["right"].cells
    page = (tmp_path / "out" / "feedback" / "right" / module / f"{module}.html").read_text()
    assert "HIDDEN TESTS" not in page, "the feedback page shows the hidden tests"

    import nbformat

    tests_of = answers.exercises(nbformat.reads(json.dumps(nb), as_version=4))
    ids = [c["id"] for c in nb["cells"]]
    for exercise in wrong:
        test_ids = [ids[i] for i in tests_of[exercise]]
        points = sum(nbgrader_meta(c)["points"] for c in cells if c["id"] in test_ids)
        earned = sum(results["wrong"].cells.get(t, 0.0) for t in test_ids)
        assert earned < points, f"{exercise}: a recorded wrong answer earned {earned} of {points} in the grader"
    if module == "05b_federated_privacy":
        _project_leaderboard_reads_this_grading_run(tmp_path / "out")


def _project_leaderboard_reads_this_grading_run(out):
    """05b's project leaderboard (course.fl_project) ranks what the graded test cell printed in this same
    grading run (sharing it saves a second one): the reference and the other correct submission are
    ranked by accuracy over the visible and the hidden seed; the blank copy and the wrong answers, which
    lost the project's points, are not."""
    from course import fl_project

    entries = fl_project.leaderboard(out)
    table = fl_project.format_leaderboard(entries)
    assert sorted(e.student for e in entries) == ["reference", "right"], table
    assert [e.accuracy_mean for e in entries] == sorted((e.accuracy_mean for e in entries), reverse=True), table
    assert all(e.seeds == [0, 1] for e in entries), table  # the hidden seed ran under grading
