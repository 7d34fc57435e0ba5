"""Every exercise's recorded answers against its real test cells (tests/answers/): the mistakes learners
really make lose points, with at least one per exercise caught by the tests a learner sees, and other
correct answers keep every point. One kernel per module; see tests/answers/__init__.py."""

import pytest

from autograders import settings
from tests import answers


@pytest.mark.slow
@pytest.mark.parametrize("module", settings.modules())
def test_recorded_answers_are_graded_as_recorded(module):
    outcomes, gaps = answers.run(module)
    problems = [f"{answers.line(o)}  <- {o.problem}" for o in outcomes if o.problem]
    assert not gaps and not problems, "\n".join(gaps + problems)


@pytest.mark.parametrize("module", settings.modules())
def test_records_name_real_exercises_and_apply(module):
    """Cheap checks without a kernel: every record names an exercise and its replacements apply."""
    import nbformat

    from tests.notebooks import solution_path

    nb = nbformat.read(solution_path(module), as_version=4)
    sources = {c.id: c.source for c in nb.cells}
    known = answers.exercises(nb)
    for answer in answers.records(module):
        assert answer.cell in known, f"{answer.cell} is not an exercise of {module}: {sorted(known)}"
        assert answer.code(sources[answer.cell]) != sources[answer.cell], f"{answer.why!r} changes nothing"
    assert not answers.coverage_gaps(module, answers.records(module), known)
