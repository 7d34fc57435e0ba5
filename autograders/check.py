"""Check yourself before you submit: run your notebook and see which tests pass.

    python -m autograders.check modules/00_orientation/00_orientation.ipynb
    make check NB=modules/00_orientation/00_orientation.ipynb

Runs a copy of the notebook top to bottom in a fresh kernel, as grading will (fast mode, the
course's time limit per cell, and the notebook mended as grading mends it: answers split over
several cells, metadata or cell ids an editor dropped, deleted exercises; see
`autograders.repair`), and lists every test cell: passed, failed with the check's own
message, or not answered yet. Your file is never changed. A student copy holds only the
visible tests; grading adds hidden ones that check the same behaviour on other inputs, so
passing here is necessary, not sufficient. Exit status: 0 when every test passes, 1 otherwise,
2 when the notebook cannot be run at all.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from autograders import settings

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class TestResult:
    name: str
    points: float
    outcome: str          # passed | failed | not answered | not run
    message: str = ""


def _outcome(cell) -> tuple[str, str]:
    errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    if cell.get("execution_count") is None and not cell.get("outputs"):
        return "not run", "an earlier cell stopped the run"
    if not errors:
        return "passed", ""
    error = errors[-1]
    if error.get("ename") == "NotImplementedError":
        return "not answered", "the exercise still raises NotImplementedError"
    if error.get("ename") == "CellTimeoutError":
        return "failed", "ran past the time limit"
    message = ANSI.sub("", f"{error.get('ename')}: {error.get('evalue', '')}").strip()
    return "failed", " | ".join(line.strip() for line in message.splitlines() if line.strip())[:400]


def run(path: Path, cell_timeout_s: int = settings.DEFAULT_CELL_TIMEOUT_S,
        module: str | None = None) -> list[TestResult]:
    """Execute a copy of the notebook at `path`; the outcome of each of its test cells.

    The copy is the one grading runs (`autograders.repair.prepare`: split answers, stripped
    metadata, missing ids and deleted cells mended as grading mends them), so a learner whose
    editor did any of that sees the grade they will get. `module` defaults to the one the file
    belongs to by name or content. Raises ValueError for a notebook with no test cells.
    """
    return run_with_notes(path, cell_timeout_s, module)[0]


def run_with_notes(path: Path, cell_timeout_s: int = settings.DEFAULT_CELL_TIMEOUT_S,
                   module: str | None = None) -> tuple[list[TestResult], list[str]]:
    """`run`, and the sentences saying what was mended before running (empty when nothing was)."""
    import nbformat
    from nbclient import NotebookClient

    from autograders import repair

    module = module or repair.module_of(path)
    if module is None:  # not a course notebook by name or content: run it as it is
        nb, notes = nbformat.read(path, as_version=4), []
    else:
        nb, notes = repair.prepare(path, module)
    tests = [c for c in nb.cells if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")
             and not c.metadata.get("nbgrader", {}).get("solution")]
    if not tests:
        raise ValueError(f"{path} has no test cells: is it a course notebook?")
    os.environ.setdefault("NBGRADER_EXECUTION", "validate")  # fast mode: tests, not demonstrations
    client = NotebookClient(nb, timeout=cell_timeout_s, kernel_name="python3", allow_errors=True,
                            interrupt_on_timeout=True, resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    return [TestResult(c.metadata.nbgrader["grade_id"], float(c.metadata.nbgrader.get("points", 0)),
                       *_outcome(c)) for c in tests], notes


def table(results: list[TestResult]) -> str:
    marks = {"passed": "✔", "failed": "✘", "not answered": "…", "not run": "-"}
    width = max(len(r.name) for r in results)
    lines = [f"  {marks[r.outcome]} {r.name:<{width}}  {r.points:g} pt  {r.outcome}"
             + (f": {r.message}" if r.message and r.outcome != "passed" else "") for r in results]
    passed = [r for r in results if r.outcome == "passed"]
    lines.append(f"{len(passed)} of {len(results)} test cells pass "
                 f"({sum(r.points for r in passed):g} of {sum(r.points for r in results):g} points).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run your notebook and see which of its tests pass.")
    parser.add_argument("notebook", type=Path,
                        help="your copy, e.g. modules/00_orientation/00_orientation.ipynb")
    parser.add_argument("--cell-timeout", type=int, default=settings.DEFAULT_CELL_TIMEOUT_S,
                        help=f"seconds per cell (default {settings.DEFAULT_CELL_TIMEOUT_S})")
    args = parser.parse_args(argv)
    path = args.notebook.resolve()
    if not path.is_file():
        print(f"no such notebook: {args.notebook}", file=sys.stderr)
        return 2
    print(f"Running {args.notebook} in a fresh kernel (your file is not changed) ...", flush=True)
    try:
        results, notes = run_with_notes(path, args.cell_timeout)
    except Exception as err:  # noqa: BLE001 - unreadable JSON, no kernel, a dead kernel: say it, plainly
        reason = f"{type(err).__name__}: {str(err).strip()[:300]}"
        print(f"cannot check {args.notebook}: {reason}", file=sys.stderr)
        return 2
    if notes:
        print("Mended as grading will mend it:\n" + "\n".join(f"  - {note}" for note in notes))
    print(table(results))
    hidden = "" if "solutions" in path.parts else " Grading adds hidden tests of the same behaviour."
    print("Written answers are graded by your instructor." + hidden)
    return 0 if all(r.outcome == "passed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
