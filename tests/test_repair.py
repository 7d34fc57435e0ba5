"""What editors do to a submission, mended before grading (autograders/repair.py), issue 18 cases 1, 4, 6.

Fast tests read `repair.prepare` on the real release notebooks of every module; one grading run
of 00_orientation (split, copied, stripped, VS Code 4.4, deleted and duplicated cells) pins the
honest scores through the real grader, and `make check` (check.run) must agree with them.
"""

import copy
import html
import json
import warnings

import nbformat
import pytest

from autograders import check, grade, guard, repair, settings
from tests.notebooks import load, reference_answers, release_path, solution_path, submission

MODULE = "00_orientation"
FULL = 6.0
HELPER = "def _unique(model):\n    return {id(t): t for t in [*model.parameters(), *model.buffers()]}\n"
USES_HELPER = ("def model_size_bytes(model):\n"
               "    return sum(t.numel() * t.element_size() for t in _unique(model).values())\n")
FIRST_ATTEMPT = "def median_time(fn, repeats=20, warmup=3, clock=time.perf_counter):\n    return 0.0\n"
EXERCISE_2 = ("model_size", "md-stuck-model_size", "model_size_params_tests", "model_size_buffers_tests")


def reference(module=MODULE):
    """The reference answers, written answers too, as a learner hands them in."""
    nb = submission(module, reference_answers(module))
    for cell in nb["cells"]:
        meta = cell["metadata"].get("nbgrader", {})
        if meta.get("solution") and cell["cell_type"] == "markdown":
            cell["source"] = f"My answer to {meta['grade_id']}: it depends on the batch size.\n"
    return nb


def at(nb, cell_id):
    return next(i for i, c in enumerate(nb["cells"]) if c.get("id") == cell_id)


def strip_metadata(nb):
    for cell in nb["cells"]:
        cell["metadata"].pop("nbgrader", None)
    return nb


def strip_ids(nb, minor=4):
    nb["nbformat_minor"] = minor
    for cell in nb["cells"]:
        cell.pop("id", None)
    return nb


def split(nb, cell_id, first, second, new_id="5e3c1a9f"):
    """JupyterLab's Split Cell: both halves keep the metadata, the second gets a new id."""
    i = at(nb, cell_id)
    halves = [copy.deepcopy(nb["cells"][i]), copy.deepcopy(nb["cells"][i])]
    halves[0]["source"], halves[1]["source"], halves[1]["id"] = first, second, new_id
    nb["cells"][i:i + 1] = halves
    return nb


def copied_above(nb, cell_id, source, new_id="first-attempt"):
    i = at(nb, cell_id)
    attempt = copy.deepcopy(nb["cells"][i])
    attempt["source"], attempt["id"] = source, new_id
    nb["cells"].insert(i, attempt)
    return nb


def prepared(nb, module=MODULE):
    with warnings.catch_warnings():  # nbformat warns about missing ids; mending them is the point
        warnings.simplefilter("ignore")
        node = nbformat.reads(json.dumps(nb), as_version=4)
    return repair.mend(node, repair.release_notebook(module))


def graded_cells(nb):
    """(id, nbgrader metadata) of every cell, as the release has them."""
    return [(c.get("id"), c.get("metadata", {}).get("nbgrader")) for c in nb["cells"]]


# ---------------------------------------------------------------- prepare, on every module

@pytest.mark.parametrize("module", settings.modules())
def test_course_notebooks_need_no_mending(module):
    for path in (release_path(module), solution_path(module)):
        nb, notes = repair.prepare(path, module)
        assert notes == []
        assert [(c.id, c.source) for c in nb.cells] == [(c["id"], "".join(c["source"]))
                                                        for c in load(path)["cells"]]
    assert repair.module_of(release_path(module)) == module


@pytest.mark.parametrize("module", settings.modules())
@pytest.mark.parametrize("minor, blank", [(0, False), (4, False), (4, True)])
def test_every_cell_is_rematched_when_metadata_and_ids_are_stripped(module, minor, blank):
    """Colab or a converter: no nbgrader metadata, no ids; answers found where their stubs sat."""
    answered = submission(module) if blank else reference(module)
    nb, notes = prepared(strip_ids(strip_metadata(copy.deepcopy(answered)), minor), module)
    assert graded_cells(nb) == graded_cells(load(release_path(module)))
    assert [c.source for c in nb.cells] == ["".join(c["source"]) for c in answered["cells"]]
    assert any("nbgrader metadata was missing" in n for n in notes)
    assert any(f"nbformat 4.{minor}" in n for n in notes)
    nbformat.validate(nb)


def test_split_answer_keeps_both_halves_in_place_and_the_last_carries_the_grade_id():
    nb, notes = prepared(split(reference(), "model_size", HELPER, USES_HELPER))
    i = [c.source for c in nb.cells].index(HELPER)
    first, second = nb.cells[i], nb.cells[i + 1]
    assert "nbgrader" not in first.metadata and first.id != "model_size"
    assert second.source == USES_HELPER and second.metadata.nbgrader["grade_id"] == "model_size"
    assert notes == ["answer `model_size` was in 2 cells (a split or copied cell): graded as the notebook "
                     "runs top to bottom, the later code winning"]
    nbformat.validate(nb)


def test_copied_cell_with_the_same_id_gets_an_id_of_its_own():
    nb = copied_above(reference(), "median_time", FIRST_ATTEMPT, new_id="median_time")
    out, _ = prepared(nb)
    ids = [c.id for c in out.cells]
    assert len(ids) == len(set(ids))
    carrier = out.cells[ids.index("median_time")]
    assert carrier.metadata.nbgrader["grade_id"] == "median_time" and carrier.source != FIRST_ATTEMPT
    nbformat.validate(out)


@pytest.mark.parametrize("strip", [False, True])
def test_split_written_answer_is_joined_for_the_instructor(strip):
    module = "01_edge"
    nb = reference(module)
    answer = next(c for c in nb["cells"] if c["cell_type"] == "markdown"
                  and c["metadata"].get("nbgrader", {}).get("solution"))
    name = answer["id"]
    split(nb, name, "The first half of my answer.", "And the second half.")
    if strip:
        strip_ids(strip_metadata(nb))
    out, notes = prepared(nb, module)
    cells = [c for c in out.cells if c.metadata.get("nbgrader", {}).get("grade_id") == name]
    assert len(cells) == 1 and cells[0].source == "The first half of my answer.\n\nAnd the second half."
    assert not any(c.source in ("The first half of my answer.", "And the second half.") for c in out.cells)
    assert f"written answer `{name}` was in 2 cells: joined into one for the instructor" in notes


def test_deleted_exercise_comes_back_as_its_stub_and_tests():
    nb = reference()
    nb["cells"] = [c for c in nb["cells"] if c["id"] not in EXERCISE_2]
    out, notes = prepared(nb)
    release = load(release_path(MODULE))
    expected = [c["id"] for c in release["cells"] if c["id"] != "md-stuck-model_size"]
    assert [c.id for c in out.cells] == expected
    stub = out.cells[[c.id for c in out.cells].index("model_size")]
    assert "raise NotImplementedError()" in stub.source
    assert notes == ["answer cell `model_size` was deleted: graded as unanswered",
                     "test cells `model_size_params_tests`, `model_size_buffers_tests` were deleted: "
                     "restored from the course notebook"]


def test_duplicated_test_cell_is_graded_once():
    nb = reference()
    copied = copy.deepcopy(nb["cells"][at(nb, "median_time_tests")])
    copied["id"] = "tests-again"
    nb["cells"].insert(at(nb, "median_time_tests") + 1, copied)
    out, notes = prepared(nb)
    assert [c.id for c in out.cells] == [c["id"] for c in load(release_path(MODULE))["cells"]]
    assert notes == ["test cell `median_time_tests` appears 2 times: graded once"]


def test_review_does_not_flag_unchanged_course_cells_without_ids():
    """Case 6: 03's compile-threads demo cell, saved by VS Code as nbformat 4.4 without ids."""
    module = "03_profiling"
    nb = strip_ids(reference(module))
    released = {c.id: c.source for c in repair.release_notebook(module).cells}
    raw = nbformat.reads(json.dumps(nb), as_version=4)
    assert any("_inductor" in line for line in guard.review_flags(raw, {}))  # the cell that was accused
    assert guard.review_flags(raw, released) == []
    assert guard.review_flags(prepared(nb, module)[0], released) == []
    edited = copy.deepcopy(raw)
    demo = next(c for c in edited.cells if "_inductor" in c.source)
    demo.source += "\nexec('1')"
    assert any("exec" in line for line in guard.review_flags(edited, released))  # changed: read


def test_malformed_cells_are_graded_as_handed_in_with_a_note(tmp_path):
    nb = reference()
    nb["cells"].append({"cell_type": "code", "metadata": {}, "id": "no-source", "outputs": []})
    path = tmp_path / "odd.ipynb"
    path.write_text(json.dumps(nb))
    out, notes = repair.prepare(path, MODULE)
    assert len(out.cells) == len(nb["cells"])
    assert len(notes) == 1 and "graded as handed in" in notes[0]


def test_module_of_a_renamed_copy_is_found_by_content(tmp_path):
    copy_path = tmp_path / "Copy of notebook (1).ipynb"
    copy_path.write_text(json.dumps(strip_ids(reference())))
    assert repair.module_of(copy_path) == MODULE
    (tmp_path / "other.ipynb").write_text(json.dumps(nbformat.v4.new_notebook()))
    assert repair.module_of(tmp_path / "other.ipynb") is None


# ---------------------------------------------------------------- through the real grader

def odd_submissions():
    """name -> (notebook, honest score, words the reason must hold)."""
    wrong_later = reference()
    i = at(wrong_later, "median_time")
    wrong = copy.deepcopy(wrong_later["cells"][i])
    wrong["source"], wrong["id"] = FIRST_ATTEMPT, "later-attempt"
    wrong_later["cells"].insert(i + 1, wrong)
    deleted = reference()
    deleted["cells"] = [c for c in deleted["cells"] if c["id"] not in EXERCISE_2]
    vscode = strip_ids(reference())
    vscode["metadata"]["vscode"] = {"interpreter": {"hash": "0" * 64}}
    duplicated_test = reference()
    again = copy.deepcopy(duplicated_test["cells"][at(duplicated_test, "median_time_tests")])
    again["id"] = "tests-again"
    duplicated_test["cells"].insert(at(duplicated_test, "median_time_tests") + 1, again)
    return {
        "split": (split(reference(), "model_size", HELPER, USES_HELPER), FULL, "`model_size` was in 2 cells"),
        "first_attempt": (copied_above(reference(), "median_time", FIRST_ATTEMPT), FULL,
                          "`median_time` was in 2 cells"),
        "wrong_later": (wrong_later, FULL - 2, "`median_time` was in 2 cells"),
        "stripped": (strip_metadata(reference()), FULL, "nbgrader metadata was missing"),
        "vscode": (vscode, FULL, "cell ids were missing"),
        "deleted": (deleted, FULL - 2, "answer cell `model_size` was deleted"),
        "duplicated_test": (duplicated_test, FULL, "`median_time_tests` appears 2 times"),
    }


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("repair")
    folder = base / "export"
    folder.mkdir()
    for name, (nb, _, _) in odd_submissions().items():
        (folder / f"{name}.ipynb").write_text(json.dumps(nb))
    results = grade.grade(MODULE, folder, base / "course", cell_timeout_s=30, student_timeout_s=400, jobs=2)
    return folder, {r.student: r for r in results}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(odd_submissions()))
def test_odd_submission_gets_its_honest_grade(graded, name):
    _, expected, words = odd_submissions()[name]
    result = graded[1][name]
    assert (result.status, result.score, result.max_score) == ("graded", expected, FULL), result.detail
    assert words in result.detail
    assert result.review == []
    page = result.feedback.read_text(encoding="utf-8")  # the student reads what was mended, too
    assert words in html.unescape(page) and page.count("Notes from the grader") == 1


@pytest.mark.slow
def test_deleted_exercise_scores_zero_and_the_others_full(graded):
    cells = graded[1]["deleted"].cells
    assert cells == {"median_time_tests": 2.0, "model_size_params_tests": 0.0,
                     "model_size_buffers_tests": 0.0, "train_one_epoch_tests": 2.0}
    assert graded[1]["wrong_later"].cells["median_time_tests"] == 0.0  # the later definition wins


@pytest.mark.slow
@pytest.mark.parametrize("name", ["split", "wrong_later", "stripped", "deleted", "duplicated_test"])
def test_check_agrees_with_the_grade(graded, name):
    """`make check` runs what grading runs: the points it counts as passed are the grade."""
    folder, results = graded
    outcome, notes = check.run_with_notes(folder / f"{name}.ipynb")
    assert sum(r.points for r in outcome if r.outcome == "passed") == results[name].score
    assert notes and all(note in results[name].detail for note in notes)  # and says what was mended
    assert {r.name: r.points for r in outcome} == grade._points(MODULE)


def test_a_renamed_copy_in_a_folder_of_two_notebooks_is_found_by_content(tmp_path):
    """04_distributed/ holds two notebooks: its folder's name cannot say which one a renamed copy is."""
    folder = tmp_path / "04_distributed"
    folder.mkdir()
    for module in settings.notebooks_in("04_distributed"):
        copy_path = folder / f"{module}-Copy1.ipynb"
        copy_path.write_text(release_path(module).read_text())
        assert repair.module_of(copy_path) == module


def test_the_notebooks_of_one_folder_share_no_cell_id_or_grade_id():
    """A submission is matched to its notebook by grade ids and cell ids: two notebooks of one folder
    that shared one would each claim the other's copies."""
    for folder in settings.folders():
        seen: dict[str, str] = {}
        for module in settings.notebooks_in(folder):
            nb = load(solution_path(module))
            keys = {c["id"] for c in nb["cells"]} | settings.module_grade_ids(module)
            clash = {k: seen[k] for k in keys if k in seen}
            assert not clash, f"{module} shares ids with another notebook of {folder}: {clash}"
            seen.update(dict.fromkeys(keys, module))
