"""Recorded answers: the mistakes learners really make must lose points, other correct answers keep them.

    python -m tests.answers 01_edge [--cell affine]     (one module; prints a table)

Each module has ``tests/answers/<module>.py`` with a list ``ANSWERS`` of `Wrong` and `Right` records for
its exercises (an exercise is a solution code cell; its tests are the graded cells that follow it).
`run` executes the module's solution notebook once, top to bottom, in one kernel under the grader's
environment (``NBGRADER_EXECUTION=autograde``: fast mode), then for each record: defines the answer,
re-runs the exercise's test cells as grading does (with hidden tests; a flag set at the start of each hidden
region and cleared at its end tells whether a failure came from the visible tests a learner sees), and restores the reference. `violations` says what broke a rule:

- a `Wrong` answer must fail at least one of its exercise's test cells, hidden tests included;
  `visible=True` says the visible tests alone catch it (a learner learns from those);
- a `Right` answer must pass every test cell of its exercise;
- every exercise records at least three `Wrong` (one caught by the visible tests) and one `Right`.

tests/test_answers.py runs every module's records; tests/test_grading_modules.py sends a few through the
real grader (``autograders.grade``) end to end.
"""

from __future__ import annotations

import importlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from autograders.guard import FRESH_HELPERS
from tests.notebooks import nbgrader_meta, solution_path

MIN_WRONG = 3
# Where did a test cell fail: a flag set at the start of its hidden region tells visible from hidden.
MARK_VISIBLE = "_answers_in_hidden_tests = False\n"
MARK_HIDDEN = "_answers_in_hidden_tests = True\n"
CHECK_VISIBLE = "assert _answers_in_hidden_tests, 'the failure came from the visible tests'\n"
HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS\n.*?### END HIDDEN TESTS\n?", re.S)


@dataclass(frozen=True)
class Answer:
    kind: str                 # "wrong" | "right"
    cell: str                 # the solution cell's id (its nbgrader grade_id)
    why: str                  # the mistake, or what differs in a correct answer
    replace: tuple[tuple[str, str], ...] = ()
    source: str | None = None
    visible: bool = False     # a wrong answer the visible tests alone must catch

    def code(self, reference: str) -> str:
        """The answer's cell source, built from the reference solution cell's source."""
        if self.source is not None:
            return self.source
        code = reference
        for old, new in self.replace:
            count = code.count(old)
            if count != 1:
                raise ValueError(f"{self.cell} / {self.why!r}: {old!r} occurs {count} times in the reference "
                                 "cell; a replacement must match exactly once")
            code = code.replace(old, new)
        return code


def _answer(kind: str, cell: str, why: str, replace, source, visible: bool) -> Answer:
    if (replace is None) == (source is None):
        raise ValueError(f"{cell} / {why!r}: give exactly one of replace=[(old, new), ...] or source='...'")
    return Answer(kind, cell, why, tuple(tuple(pair) for pair in replace or ()), source, visible)


def Wrong(cell: str, why: str, *, replace=None, source=None, visible: bool = False) -> Answer:  # noqa: N802
    """A plausible mistake in exercise `cell`: it must lose points (and, with `visible`, fail a visible test)."""
    return _answer("wrong", cell, why, replace, source, visible)


def Right(cell: str, why: str, *, replace=None, source=None) -> Answer:  # noqa: N802
    """A correct answer that differs from the reference: it must keep every point of exercise `cell`."""
    return _answer("right", cell, why, replace, source, False)


def records(module: str) -> list[Answer]:
    """The recorded answers of `module` (``tests/answers/<module>.py``)."""
    path = Path(__file__).with_name(f"{module}.py")
    if not path.is_file():
        raise FileNotFoundError(f"no recorded answers for {module}: write {path.relative_to(Path.cwd())}")
    return list(importlib.import_module(f"tests.answers.{module}").ANSWERS)


def exercises(nb) -> dict[str, list[int]]:
    """{solution cell id: indices of its test cells}: the graded code cells after it, up to the next code
    cell that is not a test (a demo or the next exercise); markdown in between is skipped."""
    out: dict[str, list[int]] = {}
    current = None
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        meta = nbgrader_meta(cell)
        if meta.get("solution"):
            current = cell.id
            out[current] = []
        elif meta.get("grade") and current is not None:
            out[current].append(index)
        else:
            current = None
    return out


def visible_part(test_source: str) -> str:
    """A test cell as the student copy shows it: nbgrader deletes the hidden-test region."""
    return HIDDEN.sub("", test_source)


@dataclass
class Outcome:
    answer: Answer
    failed: bool = False                    # some test cell failed with the hidden tests in
    visible_failed: bool | None = None      # some test cell failed with the visible tests only
    messages: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def problem(self) -> str | None:
        a = self.answer
        if self.messages and self.messages[0].startswith("the answer cell itself fails"):
            return "the answer cannot even be defined: record a plausible answer, not a broken cell"
        if a.kind == "wrong" and not self.failed:
            return "a wrong answer keeps full marks"
        if a.kind == "wrong" and a.visible and not self.visible_failed:
            return "recorded as caught by the visible tests, but they pass it"
        if a.kind == "right" and self.failed:
            return "a correct answer loses points"
        return None


def _error(cell) -> str | None:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            text = f"{out.get('ename')}: {out.get('evalue', '')}".strip()
            return re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines()[0][:200]
    return None


class Session:
    """One kernel holding a module's solution notebook, run top to bottom, for trying answers in."""

    def __init__(self, module: str, cell_timeout_s: int = 300, all_visible: bool = False):
        import nbformat
        from nbclient import NotebookClient

        self.module = module
        path = solution_path(module)
        self.nb = nbformat.read(path, as_version=4)
        self.client = NotebookClient(self.nb, timeout=cell_timeout_s, kernel_name="python3", allow_errors=True,
                                     interrupt_on_timeout=True, resources={"metadata": {"path": str(path.parent)}})
        self.exercises = exercises(self.nb)
        self.all_visible = all_visible  # confirm "caught by the visible tests" by rerunning them alone
        self._context = None

    def __enter__(self):
        env = dict(os.environ, NBGRADER_EXECUTION="autograde")
        self._context = self.client.setup_kernel(env=env)
        self._context.__enter__()
        broken = []
        for index, cell in enumerate(self.nb.cells):
            if cell.cell_type == "code":
                self.client.execute_cell(cell, index)
                if _error(cell):
                    broken.append(f"{cell.id}: {_error(cell)}")
        if broken:
            raise RuntimeError(f"{self.module}'s solution notebook fails with the reference answers: {broken}")
        return self

    def __exit__(self, *exc):
        self._context.__exit__(*exc)

    def _run(self, source: str, index: int) -> str | None:
        import nbformat

        cell = nbformat.v4.new_code_cell(source)
        original = self.nb.cells[index]
        try:
            self.client.execute_cell(cell, index)  # nbclient stores the executed cell at `index`
        finally:
            self.nb.cells[index] = original
        return _error(cell)

    def tests(self, exercise: str) -> list:
        return [self.nb.cells[i] for i in self.exercises[exercise]]

    def try_answer(self, answer: Answer) -> Outcome:
        if answer.cell not in self.exercises:
            raise KeyError(f"{self.module} has no exercise {answer.cell!r}; exercises: {sorted(self.exercises)}")
        start = time.perf_counter()
        index = next(i for i, c in enumerate(self.nb.cells) if c.id == answer.cell)
        reference = self.nb.cells[index].source
        outcome = Outcome(answer)
        try:
            problem = self._run(answer.code(reference), index)
            if problem:  # it cannot even be defined: no test could pass it, but it is no plausible answer
                outcome.failed = outcome.visible_failed = True
                outcome.messages.append(f"the answer cell itself fails: {problem}")
                return outcome
            for test in self.tests(answer.cell):
                error = self._run(FRESH_HELPERS + MARK_VISIBLE + test.source.replace(
                    "### BEGIN HIDDEN TESTS\n", "### BEGIN HIDDEN TESTS\n" + MARK_HIDDEN).replace(
                    "### END HIDDEN TESTS\n", "### END HIDDEN TESTS\n" + MARK_VISIBLE), index)
                outcome.failed |= error is not None
                if error:
                    outcome.messages.append(f"{test.id}: {error}")
                if answer.kind == "wrong" and error:
                    # The visible tests run first and stop at the first failure: an error raised before the
                    # hidden region is one the learner's copy shows too. Only `all_visible` reruns to confirm.
                    in_visible = self._run(CHECK_VISIBLE, index) is not None  # the flag was still False
                    if self.all_visible:
                        in_visible = self._run(FRESH_HELPERS + visible_part(test.source), index) is not None
                    outcome.visible_failed = bool(outcome.visible_failed) or in_visible
        finally:
            restored = self._run(reference, index)
            if restored:
                raise RuntimeError(f"restoring the reference {answer.cell} failed: {restored}")
            outcome.seconds = time.perf_counter() - start
        return outcome


def coverage_gaps(module: str, answers: list[Answer], exercise_ids) -> list[str]:
    """What the records of `module` lack: per exercise, MIN_WRONG wrong (one visible) and one right."""
    gaps = []
    for exercise in exercise_ids:
        mine = [a for a in answers if a.cell == exercise]
        wrong = [a for a in mine if a.kind == "wrong"]
        if len(wrong) < MIN_WRONG:
            gaps.append(f"{exercise}: {len(wrong)} wrong answers recorded, at least {MIN_WRONG} needed")
        if not any(a.visible for a in wrong):
            gaps.append(f"{exercise}: no wrong answer is recorded as caught by the visible tests")
        if not any(a.kind == "right" for a in mine):
            gaps.append(f"{exercise}: no different-but-correct answer recorded")
    return gaps


def run(module: str, cell: str | None = None, log=None, all_visible: bool = False
        ) -> tuple[list[Outcome], list[str]]:
    """Try every recorded answer of `module` (or of one exercise): the outcomes and the coverage gaps.
    With `all_visible`, each failing test cell is rerun with its visible tests only, to confirm (slower)."""
    answers = [a for a in records(module) if cell is None or a.cell == cell]
    with Session(module, all_visible=all_visible) as session:
        gaps = coverage_gaps(module, answers, [cell] if cell else session.exercises)
        outcomes = []
        for answer in answers:
            outcomes.append(session.try_answer(answer))
            if log:
                log(line(outcomes[-1]))
    return outcomes, gaps


def line(o: Outcome) -> str:
    a = o.answer
    if a.kind == "right":
        verdict = "keeps its points" if not o.failed else "LOSES POINTS"
    else:
        verdict = "loses points" if o.failed else "KEEPS FULL MARKS"
        if a.visible:
            verdict += ", visible tests catch it" if o.visible_failed else ", VISIBLE TESTS PASS IT"
    mark = "✘" if o.problem else "✔"
    first = o.messages[0] if o.messages else ""
    return f"{mark} {a.cell:<22} {a.kind:<5} {a.why[:60]:<60} {verdict} ({o.seconds:.1f} s) {first[:90]}"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Try a module's recorded wrong and right answers.")
    parser.add_argument("module")
    parser.add_argument("--cell", help="only the records of this exercise")
    parser.add_argument("--all-visible", action="store_true",
                        help="confirm by rerunning each failing test cell with its visible tests only (slower)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    outcomes, gaps = run(args.module, args.cell, log=lambda s: print(s, flush=True), all_visible=args.all_visible)
    problems = [o for o in outcomes if o.problem]
    for gap in gaps:
        print(f"✘ coverage: {gap}")
    wrong = [o for o in outcomes if o.answer.kind == "wrong"]
    print(f"{len(wrong)} wrong answers ({sum(bool(o.visible_failed) for o in wrong)} caught by visible tests), "
          f"{len(outcomes) - len(wrong)} right; {len(problems)} problems, {len(gaps)} coverage gaps; "
          f"{time.perf_counter() - start:.0f} s")
    return 1 if problems or gaps else 0
