"""modules/ is exactly what nbgrader makes of solutions/, and gives nothing away."""

import re

import pytest

from autograders import release, settings
from tests.notebooks import (
    grade_cells,
    load,
    nbgrader_meta,
    release_path,
    solution_cells,
    solution_path,
    source,
)

MODULES = settings.modules()
FOLDERS = settings.folders()


def test_every_solution_has_a_release_and_nothing_else():
    assert MODULES, "no module found in solutions/"
    released = sorted(p.name for p in settings.MODULES.iterdir() if p.is_dir())
    assert released == FOLDERS, "run `make release` and commit modules/"
    for module in MODULES:
        assert settings.release_notebook(module).is_file(), f"{module} is not released: run `make release`"


def test_a_folder_of_two_notebooks_gives_two_modules_with_their_own_paths():
    two = [f for f in FOLDERS if len(settings.notebooks_in(f)) > 1]
    for folder in two:
        for module in settings.notebooks_in(folder):
            assert settings.folder(module) == folder
            assert settings.solution_notebook(module) == settings.SOLUTIONS / folder / f"{module}.ipynb"
    with pytest.raises(ValueError, match="unknown module"):
        settings.folder("99_nowhere")


@pytest.mark.parametrize("folder", FOLDERS)
def test_committed_release_equals_a_fresh_one(folder, tmp_path):
    fresh = release.generate(folder, release_dir=tmp_path)
    module = folder
    committed = settings.MODULES / folder
    fresh_files = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    committed_files = sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file())
    assert fresh_files == committed_files, "modules/ is stale: run `make release`"
    for rel in fresh_files:
        assert (fresh / rel).read_bytes() == (committed / rel).read_bytes(), (
            f"modules/{module}/{rel} differs from a fresh release: run `make release`, never edit modules/")


@pytest.mark.parametrize("module", MODULES)
def test_release_holds_no_solution_and_no_hidden_test(module):
    text = "".join(p.read_text(errors="replace") for p in release_path(module).parent.rglob("*")
                   if p.is_file())
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS",
                   "BEGIN MARK SCHEME"):
        assert marker not in text
    student = {c["id"]: {ln.strip() for ln in source(c).splitlines()}
               for c in load(release_path(module))["cells"]}
    for cell in load(solution_path(module))["cells"]:
        body = source(cell)
        regions = re.findall(r"### BEGIN (SOLUTION|HIDDEN TESTS)\n(.*?)### END \1", body, re.S)
        visible = {ln.strip() for ln in re.sub(r"### BEGIN (SOLUTION|HIDDEN TESTS)\n.*?### END \1", "", body,
                                               flags=re.S).splitlines()}
        assert regions or not nbgrader_meta(cell).get("solution") or cell["cell_type"] != "code"
        for _, region in regions:
            lines = [ln.strip() for ln in region.splitlines()
                     if ln.strip() and not ln.strip().startswith("#") and len(ln.strip()) > 12]
            leaked = [ln for ln in lines if ln in student[cell["id"]] and ln not in visible]
            assert not leaked, f"{cell['id']}: solution or hidden test lines leaked: {leaked[:3]}"


@pytest.mark.parametrize("module", MODULES)
def test_every_exercise_has_tests_after_it(module):
    cells = load(solution_path(module))["cells"]
    def kind(cell):
        meta = nbgrader_meta(cell)
        if cell["cell_type"] != "code":
            return "-"  # markdown answers are graded by hand
        return "S" if meta.get("solution") else "T" if meta.get("grade") else "-"

    kinds = [kind(c) for c in cells]
    assert solution_cells(load(solution_path(module)))
    for index, kind in enumerate(kinds):
        if kind == "S":
            following = "".join(kinds[index + 1:]).lstrip("-")
            assert following.startswith("T"), f"solution cell {cells[index]['id']} has no test after it"


def _learner_text(markdown: str) -> str:
    """What a learner must read of a markdown cell: all of it but a mark scheme, whitespace folded."""
    markdown = re.sub(r"=== BEGIN MARK SCHEME ===.*?=== END MARK SCHEME ===", "", markdown, flags=re.S)
    markdown = re.sub(r"### BEGIN SOLUTION.*?### END SOLUTION", "", markdown, flags=re.S)
    return " ".join(markdown.split())


@pytest.mark.parametrize("module", MODULES)
def test_student_copy_shows_every_text_a_learner_needs(module):
    """nbgrader replaces a whole answer cell with a stub, so a question written inside one vanishes
    from the student copy. Every markdown text of the source (less mark schemes and solution
    regions) must reach the release, and every hand-graded answer cell has a visible question above."""
    student_text = "\n".join(_learner_text(source(c)) for c in load(release_path(module))["cells"]
                             if c["cell_type"] == "markdown")
    for cell in load(solution_path(module))["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        needed = _learner_text(source(cell))
        if nbgrader_meta(cell).get("solution"):
            assert not needed, (f"{cell['id']}: text inside a hand-graded answer cell never reaches learners; "
                                "put the question in a markdown cell above it")
        elif needed:
            assert needed in student_text, f"{cell['id']}: this text is missing from the student copy"
    cells = load(release_path(module))["cells"]
    for index, cell in enumerate(cells):
        if cell["cell_type"] == "markdown" and nbgrader_meta(cell).get("solution"):
            before = cells[index - 1]
            assert before["cell_type"] == "markdown" and not nbgrader_meta(before) and len(_learner_text(source(before))) > 40, (
                f"{cell['id']}: a hand-graded answer cell needs its question in the markdown cell right above")


@pytest.mark.parametrize("module", MODULES)
def test_run_all_goes_past_an_unanswered_exercise(module):
    """JupyterLab's Run All goes on after a cell tagged raises-exception, so a learner who runs a
    fresh copy top to bottom sees every demo, as the instructors' guide promises; grading and
    Validate still fail the cell."""
    for cell in grade_cells(load(release_path(module))):
        if cell["cell_type"] == "code":
            assert "raises-exception" in cell["metadata"].get("tags", []), cell["id"]
