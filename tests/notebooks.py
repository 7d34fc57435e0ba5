"""Reading course notebooks and building fake submissions for the tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from autograders import settings


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def solution_path(module: str) -> Path:
    return settings.solution_notebook(module)


def release_path(module: str) -> Path:
    return settings.release_notebook(module)


def nbgrader_meta(cell: dict) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def grade_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if nbgrader_meta(c).get("grade")]


def solution_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if nbgrader_meta(c).get("solution") and c["cell_type"] == "code"]


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def submission(module: str, answers: dict[str, str | None] | None = None,
               drop: tuple[str, ...] = ()) -> dict:
    """The student release with some cells replaced, as a learner would hand it in.

    `answers` maps a cell id to new source; None means "the reference solution".
    Cells whose id is in `drop` are deleted.
    """
    nb = copy.deepcopy(load(release_path(module)))
    reference = {c["id"]: source(c) for c in load(solution_path(module))["cells"]}
    for cell in nb["cells"]:
        if answers and cell["id"] in answers:
            new = answers[cell["id"]]
            cell["source"] = reference[cell["id"]] if new is None else new
    nb["cells"] = [c for c in nb["cells"] if c["id"] not in drop]
    return nb


def reference_answers(module: str) -> dict[str, None]:
    """Every solution cell answered with the instructor's solution."""
    return {c["id"]: None for c in solution_cells(load(solution_path(module)))}
