"""The one place that configures nbgrader for this course.

Both the repository's own ``nbgrader_config.py`` (release, instructors' CLI and formgrader)
and every grading folder that ``grade.py`` creates call `configure`, so a release and
a grading run can never disagree about stubs, timeouts or what counts as a failure.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS = REPO / "solutions"
MODULES = REPO / "modules"
COURSE_ID = "sysml"

DEFAULT_CELL_TIMEOUT_S = 120
KERNEL_STARTUP_TIMEOUT_S = 120  # importing torch on a cold, shared CPU can take a while

# A grade is earned by tests passing: a failed test leaves an *error* output, which still
# scores zero. Text on stderr is never a failed test; it is torch or sklearn warnings, tqdm
# bars, or a learner's own debugging. nbgrader zeroes any grade cell with stderr output, so
# strip every stderr stream before scoring.
IGNORE_STDERR_PATTERN = r"[\s\S]"


def tools_on_path(env: dict[str, str] | None = None) -> dict[str, str]:
    """Put this interpreter's bin folder first on PATH (of `env`, else of this process).

    nbgrader runs `alembic` to create gradebooks and `jupyter` to run kernels; from an
    environment that was not activated they are otherwise not found.
    """
    target = os.environ if env is None else env
    bin_dir = os.path.dirname(sys.executable)
    if target.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        target["PATH"] = bin_dir + os.pathsep + target.get("PATH", "")
    return target


def modules() -> list[str]:
    """The module ids in teaching order, one per notebook and named as it (``00_orientation``).

    Each id is released, graded and tested on its own. A module folder that outgrew the 3-minute
    budget holds two notebooks, both named with the folder's number: ``solutions/04_distributed/``
    holds ``04_distributed.ipynb`` and ``04b_model_parallel.ipynb``, ids ``04_distributed`` and
    ``04b_model_parallel``.
    """
    return sorted(p.stem for p in SOLUTIONS.glob("*/*.ipynb") if p.stem[:2] == p.parent.name[:2])


def folders() -> list[str]:
    """The module folders of ``solutions/`` (and ``modules/``), in teaching order."""
    return sorted({folder(module) for module in modules()})


def folder(module: str) -> str:
    """The folder that holds `module`'s notebook: ``04_distributed`` for ``04b_model_parallel``.

    Raises ValueError for an unknown module id.
    """
    found = [p.parent.name for p in SOLUTIONS.glob(f"*/{module}.ipynb") if p.stem[:2] == p.parent.name[:2]]
    if len(found) != 1:
        raise ValueError(f"unknown module {module!r}; known: {', '.join(modules())}")
    return found[0]


def notebooks_in(folder_name: str) -> list[str]:
    """The module ids whose notebooks live in `folder_name`."""
    return [m for m in modules() if folder(m) == folder_name]


def solution_notebook(module: str) -> Path:
    """The instructor notebook of `module`: ``solutions/<folder>/<module>.ipynb``."""
    return SOLUTIONS / folder(module) / f"{module}.ipynb"


def release_notebook(module: str) -> Path:
    """The student notebook of `module`: ``modules/<folder>/<module>.ipynb``."""
    return MODULES / folder(module) / f"{module}.ipynb"


@functools.cache
def module_grade_ids(module: str) -> frozenset[str]:
    """The grade ids of a module's tests and graded answers, from its source notebook."""
    nb = json.loads(solution_notebook(module).read_text())
    return frozenset(c["metadata"]["nbgrader"]["grade_id"] for c in nb["cells"]
                     if c.get("metadata", {}).get("nbgrader", {}).get("grade"))


def configure(c, root: Path | str, release_directory: Path | str = "release",
              cell_timeout_s: int = DEFAULT_CELL_TIMEOUT_S,
              source_directory: Path | str | None = None) -> None:
    """Fill an nbgrader traitlets config `c` for a course folder at `root`.

    nbgrader's assignments are the folders of `source_directory` (default ``solutions/``, whose folders
    are the module folders: a release generates every notebook of a folder). A grading folder passes
    a source folder of its own that holds one module's notebook under the module's id, so that each
    notebook is graded as an assignment of its own (`grade.prepare_course`).
    """
    root = Path(root).resolve()
    course = c.CourseDirectory
    course.root = str(root)
    course.course_id = COURSE_ID
    # absolute: every course folder reads the one source
    course.source_directory = str(Path(source_directory).resolve() if source_directory else SOLUTIONS)
    course.release_directory = str(release_directory)
    course.db_url = f"sqlite:///{root / 'gradebook.db'}"
    course.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", ".DS_Store"]

    c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
    c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

    c.Execute.timeout = cell_timeout_s
    c.Execute.startup_timeout = KERNEL_STARTUP_TIMEOUT_S
    c.Execute.kernel_name = "python3"  # whatever kernel the learner's copy names
    c.Execute.execute_retries = 0
    # autograders/guard.py: test helpers fresh before each test cell, and capped outputs
    from nbconvert.preprocessors import ClearMetadataPreprocessor
    from nbgrader import preprocessors as nbg

    from autograders.guard import GuardedExecute
    c.Autograde.autograde_preprocessors = [GuardedExecute, nbg.IgnorePattern, ClearMetadataPreprocessor,
                                           nbg.LimitOutput, nbg.SaveAutoGrades, nbg.AssignLatePenalties,
                                           nbg.CheckCellMetadata]

    # Feedback pages show each test cell's source: without this, nbgrader prints the hidden tests in them
    # (jupyter/nbgrader#917), and an instructor who returns them gives the hidden tests away.
    from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
    c.GenerateFeedback.preprocessors = [nbg.GetGrades, CSSHTMLHeaderPreprocessor, nbg.ClearHiddenTests]

    c.IgnorePattern.enabled = True
    c.IgnorePattern.pattern = IGNORE_STDERR_PATTERN
    c.OverwriteCells.add_missing_cells = True  # a deleted test cell comes back and runs
    c.LimitOutput.max_lines = 1000
    c.Exchange.root = str(root / "exchange")
