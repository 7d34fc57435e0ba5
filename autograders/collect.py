"""Find one notebook per student in what an instructor downloads, and say why one cannot be graded.

SUBMISSIONS is a folder or a .zip file (as a learning-management system exports it) that
holds, for each student, one of: ``<student>.ipynb``, a folder ``<student>/`` with the
notebook inside, or ``<student>.zip`` with the notebook inside. When the student id is only
part of the file name, pass an `id_regex` with a ``(?P<student>...)`` group.

Archives are unpacked defensively (no path traversal, no zip bombs), and nothing here runs
a submission: it only reads files.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

MAX_NOTEBOOK_BYTES = 20 * 2**20      # a course notebook without outputs is well under 1 MB
MAX_ARCHIVE_MEMBERS = 1000
MAX_ARCHIVE_BYTES = 200 * 2**20      # uncompressed: refuses zip bombs


@dataclass
class Submission:
    student: str
    origin: str                  # where it came from, for the report
    notebook: Path | None = None
    problem: str | None = None   # why it cannot be graded, when it cannot



def _student_id(name: str, id_regex: str | None) -> str:
    stem = name
    for suffix in (".ipynb", ".zip"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    if id_regex:
        match = re.search(id_regex, name)
        if match and match.groupdict().get("student"):
            stem = match.group("student")
    # nbgrader puts the id in paths and on command lines: keep it to safe characters
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem).strip("._") or "unnamed"


def _safe_extract_notebooks(archive: Path, target: Path) -> str | None:
    """Extract the notebooks (and nested zips) of `archive` under `target`; problem or None."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if len(members) > MAX_ARCHIVE_MEMBERS:
                return f"archive has {len(members)} entries, more than {MAX_ARCHIVE_MEMBERS}"
            if sum(m.file_size for m in members) > MAX_ARCHIVE_BYTES:
                return f"archive unpacks to more than {MAX_ARCHIVE_BYTES // 2**20} MB"
            for member in members:
                parts = Path(member.filename.replace("\\", "/")).parts
                if member.is_dir() or not member.filename.lower().endswith((".ipynb", ".zip")):
                    continue
                if member.filename.startswith(("/", "\\")) or ".." in parts or "__MACOSX" in parts:
                    continue  # path traversal or macOS metadata: never written
                out = target.joinpath(*parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except (zipfile.BadZipFile, OSError, RuntimeError) as err:
        return f"not a readable zip archive ({err})"
    return None


def _pick_notebook(folder: Path, module: str) -> tuple[Path | None, str | None]:
    notebooks = sorted(p for p in folder.rglob("*.ipynb")
                       if ".ipynb_checkpoints" not in p.parts and "__MACOSX" not in p.parts)
    named = [p for p in notebooks if p.name == f"{module}.ipynb"]
    if len(named) == 1:
        return named[0], None
    if len(notebooks) == 1:
        return notebooks[0], None
    if not notebooks:
        return None, "no notebook (.ipynb) found"
    return None, f"{len(notebooks)} notebooks and none named {module}.ipynb: cannot tell which to grade"


def collect_submissions(source: Path, module: str, scratch: Path,
                        id_regex: str | None = None) -> list[Submission]:
    """Find one notebook per student in a folder or a zip file."""
    source = Path(source)
    if not source.exists():
        raise SystemExit(f"submissions not found: {source}")
    if source.is_file():
        if not zipfile.is_zipfile(source):
            raise SystemExit(f"{source} is neither a folder nor a zip archive")
        unpacked = scratch / "unpacked"
        problem = _safe_extract_notebooks(source, unpacked)
        if problem:
            raise SystemExit(f"{source}: {problem}")
        top = [p for p in unpacked.iterdir() if p.name != "__MACOSX"] if unpacked.exists() else []
        # a zip holding a single folder of submissions: look inside that folder
        source = top[0] if len(top) == 1 and top[0].is_dir() else unpacked
        if not source.exists():
            raise SystemExit("the archive holds no notebooks")

    submissions: list[Submission] = []
    for entry in sorted(source.iterdir()):
        if entry.name.startswith(".") or entry.name == "__MACOSX":
            continue
        student = _student_id(entry.name, id_regex)
        sub = Submission(student=student, origin=entry.name)
        if entry.is_dir():
            sub.notebook, sub.problem = _pick_notebook(entry, module)
        elif entry.suffix.lower() == ".ipynb":
            sub.notebook = entry
        elif entry.suffix.lower() == ".zip":
            target = scratch / "zips" / student
            shutil.rmtree(target, ignore_errors=True)
            sub.problem = _safe_extract_notebooks(entry, target)
            if sub.problem is None:
                sub.notebook, sub.problem = _pick_notebook(target, module)
        else:
            continue  # stray files (PDFs, READMEs) are not submissions
        submissions.append(sub)

    seen: dict[str, str] = {}
    for sub in submissions:
        if sub.student in seen:
            sub.problem = f"same student id as {seen[sub.student]}: rename one (or fix --id-regex)"
        else:
            seen[sub.student] = sub.origin
    return submissions


def grade_ids(nb) -> set[str]:
    """The nbgrader ids of a notebook's graded cells (tests and answers)."""
    return {c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in nb.cells
            if c.get("metadata", {}).get("nbgrader", {}).get("grade")} - {None}


def notebook_problem(path: Path, module: str | None = None) -> str | None:
    """Why `path` cannot be graded (for `module`, when given) as a notebook, or None when it can."""
    import nbformat

    from autograders import settings

    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes): save the notebook in Jupyter and submit it again"
    if size > MAX_NOTEBOOK_BYTES:
        return f"notebook is {size // 2**20} MB, over the {MAX_NOTEBOOK_BYTES // 2**20} MB limit"
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as err:  # noqa: BLE001 - any parse failure means "not a notebook"
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"not a readable notebook: {first_line[:200]}"
    if not any(c.get("cell_type") == "code" for c in nb.cells):
        return "the notebook has no code cells"
    if module is not None:
        ours = settings.module_grade_ids(module)
        theirs = grade_ids(nb)
        if theirs and not theirs & ours:
            others = [m for m in settings.modules() if m != module and theirs & settings.module_grade_ids(m)]
            which = f"module {others[0]}'s" if others else "another"
            return f"this is {which} notebook, not {module}'s: submit {module}.ipynb"
    return None
