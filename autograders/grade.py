"""Autograde a module's submissions with nbgrader, one student at a time, and report.

    python -m autograders.grade 00_orientation SUBMISSIONS [--out grading/00_orientation]

SUBMISSIONS is a folder or a .zip file (as a learning-management system exports it) that
holds, for each student, one of: ``<student>.ipynb``, a folder ``<student>/`` with the
notebook inside, or ``<student>.zip`` with the notebook inside. When the student id is only
part of the file name, pass ``--id-regex`` with a ``(?P<student>...)`` group.

Each student is graded by its own ``nbgrader autograde`` process, with a time limit per cell
and one for the whole notebook, so a broken or hostile submission (syntax error, endless
loop, deleted or edited tests, a dead kernel, noise on stderr) gets a clear result for that
student and never stops or changes the grading of the others.

The output folder is an nbgrader course of its own (gradebook.db, submitted/, autograded/,
feedback/ and an nbgrader_config.py, so formgrader works there too), plus ``grades.csv``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from autograders import sandbox, settings

MAX_NOTEBOOK_BYTES = 20 * 2**20      # a course notebook without outputs is well under 1 MB
MAX_ARCHIVE_MEMBERS = 1000
MAX_ARCHIVE_BYTES = 200 * 2**20      # uncompressed: refuses zip bombs
DEFAULT_STUDENT_TIMEOUT_S = 900
CONFIG_TEMPLATE = """\
# Written by autograders/grade.py: this folder is an nbgrader course of its own.
import sys
sys.path.insert(0, {repo!r})
from autograders.settings import configure
configure(get_config(), root={root!r}, cell_timeout_s={timeout})
c = get_config()
c.Execute.kernel_name = {kernel!r}     # autograders/sandbox.py: no network, memory and file caps
c.KernelManager.transport = "ipc"      # the kernel's network namespace cannot reach the grader's TCP
c.KernelManager.ip = {ipc!r}
"""


@dataclass
class Submission:
    student: str
    origin: str                  # where it came from, for the report
    notebook: Path | None = None
    problem: str | None = None   # why it cannot be graded, when it cannot


@dataclass
class Result:
    student: str
    status: str                  # graded | timed out | not gradable | grading failed
    detail: str = ""
    score: float = 0.0
    max_score: float = 0.0
    cells: dict[str, float] = field(default_factory=dict)
    manual_pending: float = 0.0  # points of answers that wait for the instructor
    feedback: Path | None = None
    seconds: float = 0.0


# ---------------------------------------------------------------- collecting submissions

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


def notebook_problem(path: Path) -> str | None:
    """Why `path` cannot be graded as a notebook, or None when it can."""
    import nbformat

    if path.stat().st_size > MAX_NOTEBOOK_BYTES:
        size_mb, limit_mb = path.stat().st_size // 2**20, MAX_NOTEBOOK_BYTES // 2**20
        return f"notebook is {size_mb} MB, over the {limit_mb} MB limit"
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as err:  # noqa: BLE001 - any parse failure means "not a notebook"
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"not a readable notebook: {first_line[:200]}"
    if not any(c.get("cell_type") == "code" for c in nb.cells):
        return "the notebook has no code cells"
    return None


# ---------------------------------------------------------------- running nbgrader

def _kill_tree(process: subprocess.Popen) -> None:
    """Kill nbgrader and everything it started; kernels run in sessions of their own."""
    try:
        parent = psutil.Process(process.pid)
        victims = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        return
    for proc in victims:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=10)


def _nbgrader(args: list[str], root: Path, log: Path, timeout_s: float | None) -> int | None:
    """Run one nbgrader command in `root`, appending to `log`; exit code, None on timeout."""
    env = settings.tools_on_path(dict(os.environ))
    env["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(root / "jupyter"), env.get("JUPYTER_PATH")]))
    # One thread per grading kernel: a busy grading machine cannot oversubscribe its cores
    # (OpenMP spin-waiting then slows cells tenfold into their time limit), and results do
    # not depend on how many cores the grader has. course.setup honours OMP_NUM_THREADS.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    with open(log, "ab") as out:
        out.write(f"$ nbgrader {' '.join(args)}\n".encode())
        out.flush()
        process = subprocess.Popen([sys.executable, "-m", "nbgrader", *args], cwd=root, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_tree(process)
            code = None
    return code


def _ipc_folder(root: Path) -> Path:
    """Where grading kernels' Unix sockets go: a short path (sockets allow about 100 bytes)."""
    digest = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"grade-ipc-{digest}"


def prepare_course(root: Path, module: str, cell_timeout_s: int) -> None:
    """Make `root` an nbgrader course and record the module's tests and checksums in it."""
    root.mkdir(parents=True, exist_ok=True)
    kernel = sandbox.write_kernelspec(root / "jupyter")
    ipc = _ipc_folder(root)
    ipc.mkdir(exist_ok=True)
    (root / "nbgrader_config.py").write_text(CONFIG_TEMPLATE.format(
        repo=str(settings.REPO), root=str(root.resolve()), timeout=cell_timeout_s, kernel=kernel,
        ipc=str(ipc / "k")))
    log = root / "generate.log"
    log.write_text("")
    if _nbgrader(["generate_assignment", module, "--force"], root, log, timeout_s=600) != 0:
        raise SystemExit(f"nbgrader generate_assignment failed for {module}; see {log}")


def _timeout_cells(autograded: Path) -> list[str]:
    try:
        nb = json.loads(autograded.read_text())
    except (OSError, ValueError):
        return []
    names = []
    for index, cell in enumerate(nb.get("cells", [])):
        for output in cell.get("outputs", []):
            if output.get("ename") == "CellTimeoutError":
                names.append(cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
                             or f"cell {index + 1}")
    return names


def _scores(root: Path, module: str, student: str) -> tuple[float, float, dict[str, float], float] | None:
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        try:
            notebook = gb.find_submission_notebook(module, module, student)
        except MissingEntry:
            return None
        cells = {g.name: float(g.score or 0.0) for g in notebook.grades}
        pending = sum(float(g.max_score) for g in notebook.grades if g.needs_manual_grade)
        return float(notebook.score or 0.0), float(notebook.max_score), cells, pending


def diagnose(log_text: str, cell_timeout_s: int) -> str:
    """One sentence, for the student and the instructor, on why nbgrader gave up."""
    if "Kernel died" in log_text or "DeadKernelError" in log_text:
        return ("the kernel died while running the notebook (os._exit, a crash, or memory "
                "exhausted), so no test could run")
    if "Timeout waiting for execute reply" in log_text:
        return (f"a cell ran past the {cell_timeout_s} s limit and did not stop when interrupted, "
                "so the rest of the notebook could not run")
    errors = [line for line in log_text.splitlines()
              if "ERROR]" in line and "Please see" not in line and "Traceback" not in line]
    last = errors[-1].split("]", 1)[-1].strip() if errors else "see the log"
    return "nbgrader could not grade it: " + last


def _max_score(root: Path, module: str) -> float:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        return float(gb.find_assignment(module).max_score)


def _write_problem_feedback(path: Path, module: str, result: Result) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(module)}: feedback</title></head><body>"
        f"<h1>{html.escape(module)}: {html.escape(result.student)}</h1>"
        f"<p><strong>Score: {result.score:g} / {result.max_score:g}</strong></p>"
        f"<p>Your submission could not be graded: {html.escape(result.detail)}</p>"
        "<p>Submit the notebook file (.ipynb) of this module, saved from Jupyter, and ask your "
        "instructor to grade it again.</p></body></html>")


def grade_one(root: Path, module: str, sub: Submission, cell_timeout_s: int,
              student_timeout_s: float) -> Result:
    start = time.monotonic()
    result = Result(student=sub.student, status="not gradable", max_score=_max_score(root, module))
    feedback = root / "feedback" / sub.student / module / f"{module}.html"
    problem = sub.problem or notebook_problem(sub.notebook)
    folder = root / "submitted" / sub.student / module
    if problem is None:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        shutil.copyfile(sub.notebook, folder / f"{module}.ipynb")
        log = root / "logs" / f"{sub.student}.log"
        log.parent.mkdir(exist_ok=True)
        log.write_text("")
        code = _nbgrader(["autograde", module, f"--student={sub.student}", "--force"],
                         root, log, timeout_s=student_timeout_s)
        scores = _scores(root, module, sub.student)
        if code is None:
            problem = f"the whole notebook ran past {student_timeout_s:g} s and was stopped"
            result.status = "timed out"
        elif code != 0 or scores is None:
            problem = diagnose(log.read_text(errors="replace"), cell_timeout_s)
            result.status = "grading failed"
        else:
            result.score, result.max_score, result.cells, result.manual_pending = scores
            result.status = "graded"
            if result.manual_pending:
                result.detail = f"{result.manual_pending:g} points to grade by hand (formgrader)"
            slow = _timeout_cells(root / "autograded" / sub.student / module / f"{module}.ipynb")
            if slow:
                result.status = "timed out"
                result.detail = "; ".join(filter(None, [
                    f"over the {cell_timeout_s} s cell limit: " + ", ".join(slow), result.detail]))
    if problem is not None:
        result.detail = problem
        shutil.rmtree(root / "feedback" / sub.student / module, ignore_errors=True)
        _write_problem_feedback(feedback, module, result)
    result.feedback = feedback
    result.seconds = time.monotonic() - start
    return result


def generate_feedback(root: Path, module: str, results: list[Result]) -> None:
    """nbgrader's feedback pages for every graded student, in one process."""
    graded = [r for r in results if r.status in ("graded", "timed out") and r.cells]
    if not graded:
        return
    log = root / "logs" / "feedback.log"
    log.write_text("")
    start = time.monotonic()
    _nbgrader(["generate_feedback", module, "--force"], root, log, timeout_s=60 + 30 * len(graded))
    share = (time.monotonic() - start) / len(graded)
    for r in graded:
        r.seconds += share
        if not r.feedback.exists():
            r.detail = (r.detail + "; " if r.detail else "") + f"no feedback page (see {log})"


# ---------------------------------------------------------------- reporting

def write_csv(path: Path, results: list[Result]) -> None:
    cell_names = sorted({name for r in results for name in r.cells})
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "score", "max_score", "percent", "manual_pending", "status", "detail",
                         *cell_names])
        for r in results:
            percent = 100.0 * r.score / r.max_score if r.max_score else 0.0
            writer.writerow([r.student, f"{r.score:g}", f"{r.max_score:g}", f"{percent:.1f}",
                             f"{r.manual_pending:g}", r.status, r.detail,
                             *(f"{r.cells.get(n, 0.0):g}" for n in cell_names)])


def summary_table(results: list[Result]) -> str:
    width = max([len("student"), *(len(r.student) for r in results)])
    lines = [f"{'student':<{width}}  {'score':>11}  {'time':>6}  status",
             f"{'-' * width}  {'-' * 11}  {'-' * 6}  {'-' * 30}"]
    for r in results:
        status = r.status + (f": {r.detail}" if r.detail else "")
        lines.append(f"{r.student:<{width}}  {r.score:>5g} / {r.max_score:<3g}  {r.seconds:>5.1f}s  {status}")
    return "\n".join(lines)


def grade(module: str, submissions: Path, out: Path, cell_timeout_s: int = 60,
          student_timeout_s: float = DEFAULT_STUDENT_TIMEOUT_S,
          id_regex: str | None = None) -> list[Result]:
    if module not in settings.modules():
        raise SystemExit(f"unknown module {module!r}; known: {', '.join(settings.modules())}")
    out = Path(out).resolve()
    scratch = out / "incoming"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    found = collect_submissions(Path(submissions), module, scratch, id_regex)
    if not found:
        raise SystemExit(f"no submissions found in {submissions}")
    prepare_course(out, module, cell_timeout_s)
    print(sandbox.isolation(), flush=True)
    results = []
    try:
        for sub in found:
            print(f"grading {sub.student} ({sub.origin}) ...", flush=True)
            results.append(grade_one(out, module, sub, cell_timeout_s, student_timeout_s))
        generate_feedback(out, module, results)
    finally:
        shutil.rmtree(_ipc_folder(out), ignore_errors=True)
    write_csv(out / "grades.csv", results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Autograde submissions of one module with nbgrader.",
        epilog="Writes grades.csv, feedback/<student>/<module>/<module>.html and a gradebook.")
    parser.add_argument("module", help="module id, e.g. 00_orientation")
    parser.add_argument("submissions", type=Path, help="folder or .zip of submitted notebooks")
    parser.add_argument("--out", type=Path, help="grading folder (default: grading/<module>)")
    parser.add_argument("--cell-timeout", type=int, default=60, help="seconds per cell (default 60)")
    parser.add_argument("--student-timeout", type=float, default=DEFAULT_STUDENT_TIMEOUT_S,
                        help=f"seconds per notebook (default {DEFAULT_STUDENT_TIMEOUT_S})")
    parser.add_argument("--id-regex", help="regex with a (?P<student>...) group over file names")
    args = parser.parse_args(argv)
    out = args.out or settings.REPO / "grading" / args.module
    start = time.monotonic()
    results = grade(args.module, args.submissions, out, args.cell_timeout,
                    args.student_timeout, args.id_regex)
    elapsed = time.monotonic() - start
    print()
    print(summary_table(results))
    print(f"\n{len(results)} submissions in {elapsed:.0f} s; grades: {out / 'grades.csv'}; "
          f"feedback: {out / 'feedback'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
