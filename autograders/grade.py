"""Autograde a module's submissions with nbgrader, several students at a time, and report.

    python -m autograders.grade 00_orientation SUBMISSIONS [--out grading/00_orientation] [--jobs N]

SUBMISSIONS is a folder or a .zip export (see `autograders.collect`). Students are graded in
parallel by long-lived worker processes (`autograders.worker`, one per job), each running nbgrader's
own Autograde and GenerateFeedback classes in a scratch course of its own (its own gradebook copy),
one student after another; the grader alone then copies each student's grades into the course's
gradebook, so parallel runs never write to one database at once. The kernel that runs a submission
is a fresh process per student, walled in (`autograders.sandbox`): it cannot see the gradebook,
other submissions or the solutions, write anywhere but its own folder, or reach the network.

How many students at once (`default_jobs`) counts the processes a module's tests start (torchrun's
ranks, `PROCESSES`), and the cell limits stretch with the load the grader itself puts on the cores
(`cell_limit`), so an honest notebook does not lose points because its neighbours were busy.

A cell time limit and a whole-notebook limit, and the guards of `autograders.guard`, mean a
broken or hostile submission (endless loop, memory bomb, dead kernel, edited tests, patched
test helpers, floods of output) gets a clear result for that student and never changes the
grading of another. Running again is idempotent: a notebook unchanged since the last run (same
bytes, same module source) keeps its grades without being run again; ``--regrade`` runs all.

The output folder is an nbgrader course of its own (gradebook.db, submitted/, autograded/,
feedback/ and an nbgrader_config.py, so formgrader works there too), plus ``grades.csv`` (per
student and exercise), ``exercises.csv`` (per exercise) and ``logs/``.
"""

from __future__ import annotations

import argparse
import functools
import math
import queue
import selectors
import hashlib
import html
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from autograders import guard, repair, report, sandbox, settings
from autograders.collect import Submission, collect_submissions, notebook_problem
from autograders.report import Result
from course.processes import FALLBACK_DIRS as SOCKET_FALLBACK_DIRS
from course.processes import SOCKET_PATH_MAX, stop_tree

DEFAULT_STUDENT_TIMEOUT_S = 900
# nbgrader's own gradebook code trips SQLAlchemy 2's autoflush warnings when it adds a submission
warnings.filterwarnings("ignore", message=r"Object of type <Submitted\w+> not in session")
MEMORY_PER_JOB = 2.5 * 2**30  # one grading kernel and its helpers, with room for the grader
CONFIG_TEMPLATE = """\
# Written by autograders/grade.py: this folder is an nbgrader course of its own.
import os
import sys
sys.path.insert(0, {repo!r})
from autograders.settings import configure
configure(get_config(), root={root!r}, cell_timeout_s={timeout}, source_directory={source!r})
c = get_config()
c.GuardedExecute.cell_timeouts = {cells!r}  # heavy test cells' own limits (grade.py's CELL_TIMEOUTS_S)
c.Execute.kernel_name = {kernel!r}     # autograders/sandbox.py: walled in, no network, memory and file caps
c.KernelManager.transport = "ipc"      # the kernel's network namespace cannot reach the grader's TCP
c.KernelManager.ip = {ipc!r}
os.makedirs(os.path.dirname(c.KernelManager.ip), exist_ok=True)
"""


# Modules whose tests start busy processes of their own besides the kernel (torchrun's ranks: 04 launches
# worlds of up to 3, 04b of up to 4, 06 restarts a world of 2 under its agent; the agent mostly waits).
# A student's grading then needs that many cores to run at the speed the cell limits assume.
PROCESSES = {"04_distributed": 3, "04b_model_parallel": 5, "06_reliability": 3}
# Test cells that need more than the cell limit on an idle machine (seconds, before `load_factor`):
# 06's elastic test runs a torchrun world through a crash and a restart.
CELL_TIMEOUTS_S = {"06_reliability": {"elastic_tests": 120}}
MAX_STRETCH = 4.0  # cell limits grow with the load up to this factor; the student limit bounds them all
WORKER_SCRIPT = Path(__file__).with_name("worker.py")  # run by path: its course folder is its cwd
WORKER_START_TIMEOUT_S = 300  # a Python start and nbgrader's imports, on a busy machine
SNAPSHOT_EVERY_S = 2  # how often a waiting grader notes the worker's processes (`Worker._answer`)


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def processes(module: str) -> int:
    """How many busy processes one student's grading runs at once: the kernel, or its torchrun ranks."""
    return PROCESSES.get(module, 1)


def default_jobs(module: str | None = None, n_cores: int | None = None,
                 available_bytes: float | None = None) -> int:
    """Students graded at once: as many as the cores hold, counting the processes each student's tests
    start (`processes`), and memory for their kernels. At least one."""
    n_cores = n_cores or cores()
    if available_bytes is None:
        available_bytes = psutil.virtual_memory().available
    per_student = processes(module) if module else 1
    return max(1, min(n_cores // per_student, int(available_bytes // (MEMORY_PER_JOB * per_student))))


def load_factor(module: str, jobs: int, n_cores: int | None = None, machine_load: float = 0.0) -> float:
    """How much slower than alone a cell runs when `jobs` students of `module` share the cores: the busy
    processes the grader itself starts, plus `machine_load` (others' runnable processes, e.g. the load
    average when the run starts), per core; at least 1, at most `MAX_STRETCH`."""
    busy = jobs * processes(module) + max(0.0, machine_load)
    return min(MAX_STRETCH, max(1.0, busy / (n_cores or cores())))


def cell_limit(cell_timeout_s: int, module: str, jobs: int, n_cores: int | None = None,
               machine_load: float = 0.0) -> int:
    """The cell time limit the grading kernel gets: `cell_timeout_s` on an idle machine, stretched by
    the load on it (`load_factor`), so an honest cell never loses its points because the grader ran
    several students at once or the machine was busy."""
    return math.ceil(cell_timeout_s * load_factor(module, jobs, n_cores, machine_load))


def cell_limits(module: str, jobs: int, n_cores: int | None = None,
                machine_load: float = 0.0) -> dict[str, int]:
    """The heavy test cells' own limits (`CELL_TIMEOUTS_S`), stretched like `cell_limit`."""
    factor = load_factor(module, jobs, n_cores, machine_load)
    return {cell: math.ceil(seconds * factor) for cell, seconds in CELL_TIMEOUTS_S.get(module, {}).items()}


# ---------------------------------------------------------------- running nbgrader

def _environment(jupyter: Path) -> dict[str, str]:
    """The environment of nbgrader and the grading kernels it starts (`jupyter`: the kernel spec's folder)."""
    env = settings.tools_on_path(dict(os.environ))
    env["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(jupyter), env.get("JUPYTER_PATH")]))
    # One thread per grading kernel: a busy grading machine cannot oversubscribe its cores
    # (OpenMP spin-waiting then slows cells tenfold into their time limit), and results do
    # not depend on how many cores the grader has. course.setup honours OMP_NUM_THREADS.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return env


def _nbgrader(args: list[str], root: Path, log: Path, timeout_s: float | None,
              jupyter: Path | None = None) -> int | None:
    """Run one nbgrader command in `root`, appending to `log`; exit code, None on timeout.

    `jupyter` is the folder holding the grading kernel's spec (default: `root`/jupyter).
    """
    env = _environment(jupyter or root / "jupyter")
    mark = env[sandbox.MARK] = os.urandom(8).hex()  # inherited by all the kernel starts: killed after
    with open(log, "ab") as out:
        out.write(f"$ nbgrader {' '.join(args)}\n".encode())
        out.flush()
        process = subprocess.Popen([sys.executable, "-m", "nbgrader", *args], cwd=root, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:  # nbgrader and everything it started (kernels run in own sessions)
            stop_tree(process, grace_s=0)
            code = None
        finally:
            left = sandbox.after_run(mark)
    if left:
        with open(log, "a") as out:
            out.write(f"[grader] killed {left} processes the notebook had left running\n")
    return code


def _ipc_folder(root: Path) -> Path:
    """Where grading kernels' Unix sockets go (`<folder>/k-1` ...): in the temporary folder when their paths
    fit the socket limit (`course.processes.SOCKET_PATH_MAX`, 107 bytes on Linux), else in /tmp. A longer
    path fails the kernel's start with ZMQError "File name too long" (tests/test_long_tmpdir.py)."""
    digest = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]
    for base in (tempfile.gettempdir(), *SOCKET_FALLBACK_DIRS):
        folder = Path(base) / f"grade-ipc-{digest}"
        if len(str(folder / "k-99999").encode()) <= SOCKET_PATH_MAX:
            break
    return folder


def _write_config(root: Path, cell_timeout_s: int, cell_timeouts: dict[str, float] | None = None) -> None:
    (root / "nbgrader_config.py").write_text(CONFIG_TEMPLATE.format(
        repo=str(settings.REPO), root=str(root.resolve()), timeout=cell_timeout_s, cells=cell_timeouts or {},
        source=str(root.resolve() / "source"),
        kernel=sandbox.KERNEL_NAME, ipc=str(_ipc_folder(root) / "k")))


def hideable(submissions: Path | str | None) -> list[str]:
    """The submissions as the instructor gave them (a folder or a zip), to hide from grading kernels: a
    student's code could otherwise read the whole class there. Nothing when that folder holds the course or
    Python, which the kernel needs (hidden, it could not run): a warning says to move the submissions."""
    if not submissions:
        return []
    path = Path(submissions).resolve()
    needed = {settings.REPO.resolve(), Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    if any(n == path or path in n.parents for n in needed):
        print(f"WARNING: {path} holds the course or Python, so grading kernels can read every submission in "
              "it: keep submissions in a folder of their own", flush=True)
        return []
    return [str(path)]


def prepare_course(root: Path, module: str, cell_timeout_s: int, gradebook: bytes | None = None,
                   hide: list[str] | tuple = ()) -> None:
    """Make `root` an nbgrader course and record the module's tests and checksums in it (nbgrader's
    generate_assignment), or, given `gradebook` (the bytes of a course's gradebook.db that recorded them
    from this very source: `autograders.cluster` on a node), write that instead. `hide`: more paths the
    grading kernel must not see (`hideable`: the submissions as given)."""
    root.mkdir(parents=True, exist_ok=True)
    # what a grading kernel must not see: this course (gradebook, every submission, feedback),
    # the solutions with their hidden tests, the history that holds them, other grading folders,
    # and the submissions where the instructor keeps them
    hidden = [root, settings.SOLUTIONS, settings.REPO / ".git", settings.REPO / "grading", *hide]
    sandbox.write_kernelspec(root / "jupyter", hide=[str(p) for p in hidden])
    _write_config(root, cell_timeout_s)
    # nbgrader grades an assignment: a folder of the source. This course's source for the module is
    # a folder named as the module that holds its notebook alone (and the files beside it), so a
    # module folder that holds two notebooks is graded one notebook at a time.
    source = root / "source" / module
    shutil.rmtree(source, ignore_errors=True)
    def others(_, names):  # the folder's other notebooks and editors' checkpoints
        return [n for n in names if n.endswith(".ipynb") and n != f"{module}.ipynb" or n == ".ipynb_checkpoints"]

    shutil.copytree(settings.solution_notebook(module).parent, source, ignore=others)
    if gradebook is not None:
        (root / "gradebook.db").write_bytes(gradebook)
        return
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


def _gradebook(root: Path):
    from nbgrader.api import Gradebook

    return Gradebook(f"sqlite:///{root / 'gradebook.db'}")


def _scores(root: Path, module: str, student: str) -> tuple[float, float, dict[str, float], float] | None:
    from nbgrader.api import MissingEntry

    with _gradebook(root) as gb:
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
    with _gradebook(root) as gb:
        return float(gb.find_assignment(module).max_score)


def _points(module: str) -> dict[str, float]:
    """Every automatically graded cell of the module and its points, in notebook order."""
    nb = json.loads(settings.solution_notebook(module).read_text())
    meta = [c["metadata"].get("nbgrader", {}) for c in nb["cells"] if c["cell_type"] == "code"]
    return {m["grade_id"]: float(m["points"]) for m in meta if m.get("grade")}


def _write_problem_feedback(path: Path, module: str, result: Result, advice: str | None = None) -> None:
    """The page of a student whose notebook was not graded: why, and what to do (`advice`; by default:
    submit the notebook file again)."""
    advice = advice or ("Submit the notebook file (.ipynb) of this module, saved from Jupyter, and ask your "
                        "instructor to grade it again.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(module)}: feedback</title></head><body>"
        f"<h1>{html.escape(module)}: {html.escape(result.student)}</h1>"
        f"<p><strong>Score: {result.score:g} / {result.max_score:g}</strong></p>"
        f"<p>Your submission could not be graded: {html.escape(result.detail)}</p>"
        f"<p>{html.escape(advice)}</p></body></html>")


def _merge(scratch: Path, root: Path, module: str, student: str) -> None:
    """Copy one student's automatic grades from a scratch gradebook into the course's."""
    from nbgrader.api import MissingEntry

    with _gradebook(scratch) as source, _gradebook(root) as target:
        graded = source.find_submission(module, student)
        target.update_or_create_student(student)
        try:
            kept = target.find_submission(module, student)
        except MissingEntry:
            kept = target.add_submission(module, student)
        kept.timestamp = graded.timestamp
        for notebook in graded.notebooks:
            for grade in notebook.grades:
                into = target.find_grade(grade.name, notebook.name, module, student)
                into.auto_score, into.needs_manual_grade = grade.auto_score, grade.needs_manual_grade
            for comment in notebook.comments:
                target.find_comment(comment.name, notebook.name, module, student).auto_comment = \
                    comment.auto_comment
        target.db.commit()
    into = root / "autograded" / student / module
    shutil.rmtree(into, ignore_errors=True)
    shutil.copytree(scratch / "autograded" / student / module, into)


def _forget(root: Path, module: str, student: str) -> None:
    """Drop a student's earlier grades and graded copy: this run could not grade them."""
    from nbgrader.api import MissingEntry

    with _gradebook(root) as gb:
        try:
            gb.remove_submission(module, student)
        except MissingEntry:
            pass
    shutil.rmtree(root / "autograded" / student / module, ignore_errors=True)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Worker:
    """One long-lived `autograders.worker` process and its scratch course: grades students one at a time.

    The scratch course holds a copy of the course's gradebook, taken when the worker starts; each
    student's grades are copied into the course's gradebook (`_merge`) by the caller. A student who runs
    past the time limit, or whose grading kills the process, costs only that student: the process and
    everything it started are killed, and the next student gets a fresh worker in a fresh scratch course.
    """

    def __init__(self, run: "Run", index: int):
        self.run, self.index, self.starts = run, index, 0
        self.process: subprocess.Popen | None = None
        self.course: Path | None = None
        self.timed_out = False  # whether the last student ran past the time limit
        self.ready = False
        self.seen: dict[int, psutil.Process] = {}  # the worker's descendants, last noted (`_answer`)

    def _start(self) -> None:
        """Start the process in a fresh scratch course; it reads its gradebook only when it grades."""
        run = self.run
        self.starts += 1
        self.ready = False
        self.course = course = run.root / "work" / f"worker{self.index}-{self.starts}"
        shutil.rmtree(course, ignore_errors=True)
        course.mkdir(parents=True)
        _write_config(course, run.kernel_cell_timeout_s, run.kernel_cell_timeouts)
        env = _environment(run.root / "jupyter")
        env.pop(sandbox.MARK, None)  # each student's kernel gets its own (`grade`); never the worker
        with open(course / "worker.log", "ab") as noise:  # until the worker points its stderr there itself
            self.process = subprocess.Popen(
                [sys.executable, str(WORKER_SCRIPT), str(course)], cwd=course, env=env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=noise, text=True, bufsize=1)

    def _ready(self) -> None:
        """A started worker, its imports done, and the course's gradebook copied into its course."""
        if self.process is None or self.process.poll() is not None:
            self.stop()
            self._start()
        if not self.ready:
            if self._answer(WORKER_START_TIMEOUT_S) is None:
                log = self.course / "worker.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                self.stop()
                raise RuntimeError(f"the grading worker did not start: {tail}")
            self.ready = True
        if not (self.course / "gradebook.db").exists():
            with self.run.lock:
                shutil.copyfile(self.run.root / "gradebook.db", self.course / "gradebook.db")

    def _answer(self, timeout_s: float) -> dict | None:
        """The worker's next answer line; None when it ran past `timeout_s` (`timed_out` is then set)
        or ended. While it waits it notes the worker's descendants (`seen`) every few seconds: a kernel
        whose code killed the worker is orphaned, and `stop` must still find it."""
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while not selector.select(max(0.0, min(SNAPSHOT_EVERY_S, deadline - time.monotonic()))):
                if time.monotonic() >= deadline:
                    self.timed_out = True
                    return None
                self._note_descendants()
        line = self.process.stdout.readline()
        try:
            return json.loads(line) if line.strip() else None
        except ValueError:  # a line cut short: the worker died while answering
            return None

    def _note_descendants(self) -> None:
        try:
            self.seen.update({p.pid: p for p in psutil.Process(self.process.pid).children(recursive=True)})
        except psutil.Error:
            pass

    def grade(self, student: str, notebook: Path, log: Path, timeout_s: float) -> dict | None:
        """Autograde one student and write their feedback page in this worker's course.

        `notebook` is copied into the course's submitted/ folder. The worker's answer
        (``{"autograded": bool, "feedback": bool}``), or None when the student ran past `timeout_s`
        (`timed_out`) or the worker died; the worker is then stopped, and the next call starts a new one.
        """
        self._ready()
        module = self.run.module
        for folder in ("submitted", "autograded", "feedback"):
            shutil.rmtree(self.course / folder / student, ignore_errors=True)
        into = self.course / "submitted" / student / module
        into.mkdir(parents=True)
        shutil.copyfile(notebook, into / f"{module}.ipynb")
        self.timed_out = False
        self.seen = {}
        # the student's kernel and all it starts carry this mark (sandbox.MARK): what is left is killed
        mark = os.urandom(8).hex()
        request = {"module": module, "student": student, "log": str(log), "env": {sandbox.MARK: mark}}
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            answer = self._answer(timeout_s)
        except (OSError, ValueError):
            answer = None
        if answer is None:
            self.stop()
        left = sandbox.after_run(mark)
        if left:
            with open(log, "a") as out:
                out.write(f"[grader] killed {left} processes the notebook had left running\n")
        return answer

    def forget(self, student: str) -> None:
        """Drop a student's files from this worker's course (the grades are merged by then)."""
        for folder in ("submitted", "autograded", "feedback"):
            shutil.rmtree(self.course / folder / student, ignore_errors=True)

    def stop(self) -> None:
        """End the worker and everything it started (orphans included), and remove its course."""
        if self.process is not None:
            # the worker, what it started and what it noted (stop_tree checks each is still the process it was)
            stop_tree(self.process, *self.seen.values(), grace_s=0)
            self.seen = {}
            self.process = None
        if self.course is not None:
            shutil.rmtree(_ipc_folder(self.course), ignore_errors=True)
            shutil.rmtree(self.course, ignore_errors=True)


@dataclass
class Run:
    """One grading run: where, what, its limits, and the lock that serialises gradebook writes."""
    root: Path
    module: str
    cell_timeout_s: int
    student_timeout_s: float
    regrade: bool = False
    kernel_cell_timeout_s: int = 0  # the limit the kernel gets (`cell_limit`); 0: cell_timeout_s
    kernel_cell_timeouts: dict[str, int] = field(default_factory=dict)  # heavy cells' (`cell_limits`)
    lock: threading.Lock = field(default_factory=threading.Lock)
    workers: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)

    def __post_init__(self):
        self.kernel_cell_timeout_s = self.kernel_cell_timeout_s or self.cell_timeout_s

    def start_workers(self, jobs: int, early: int | None = None) -> None:
        """Make `jobs` workers; the first `early` (default all) start now, their imports overlapping
        `prepare_course`, the others when they first grade. Each reads the gradebook when it first grades."""
        for index in range(jobs):
            worker = Worker(self, index)
            if early is None or index < early:
                worker._start()
            self.workers.put(worker)

    def stop_workers(self) -> None:
        while not self.workers.empty():
            self.workers.get().stop()

    @functools.cached_property
    def version(self) -> str:
        """What a kept grade depends on besides the notebook: the module source, the course helpers
        the tests call, the grader's own code (how a notebook is mended, run and walled in), and
        the cell limit."""
        files = [settings.solution_notebook(self.module),
                 *sorted((settings.REPO / "course").glob("*.py")),
                 *sorted((settings.REPO / "autograders").glob("*.py"))]
        return _sha256(b"".join(f.read_bytes() for f in files) + f"{self.cell_timeout_s}".encode())

    def _cache(self, student: str) -> Path:
        return self.root / "results" / f"{student}.json"

    def kept(self, sub: Submission) -> Result | None:
        """The last run's result for this student, if the same notebook was graded then."""
        if self.regrade or sub.notebook is None or not self._cache(sub.student).exists():
            return None
        try:
            record = json.loads(self._cache(sub.student).read_text())
            result = Result.from_json(record["result"])
        except (ValueError, KeyError, TypeError):
            return None  # a damaged record: grade again
        same = (record.get("notebook") == _sha256(sub.notebook.read_bytes())
                and record.get("version") == self.version)
        on_disk = result.status != "graded" or (self.root / "autograded" / sub.student / self.module).exists()
        if same and on_disk and result.status in ("graded", "not gradable"):
            result.reused = True
            return result
        return None

    def remember(self, sub: Submission, result: Result) -> None:
        self._cache(sub.student).parent.mkdir(parents=True, exist_ok=True)
        record = {"notebook": _sha256(sub.notebook.read_bytes()) if sub.notebook else None,
                  "version": self.version, "result": result.to_json()}
        self._cache(sub.student).write_text(json.dumps(record, indent=1))

    def grade_one(self, sub: Submission) -> Result:
        kept = self.kept(sub)
        if kept is not None:
            return kept
        start = time.monotonic()
        root, module = self.root, self.module
        result = Result(student=sub.student, status="not gradable", max_score=_max_score(root, module))
        feedback = root / "feedback" / sub.student / module / f"{module}.html"
        problem = sub.problem or notebook_problem(sub.notebook, module)
        if problem is None:
            problem = self._autograde(sub, result)
        if problem is not None:
            result.detail = problem
            with self.lock:
                _forget(root, module, sub.student)
            shutil.rmtree(root / "feedback" / sub.student / module, ignore_errors=True)
            _write_problem_feedback(feedback, module, result)
        result.feedback = feedback
        result.seconds = time.monotonic() - start
        self.remember(sub, result)
        return result

    def _autograde(self, sub: Submission, result: Result) -> str | None:
        """Grade a readable notebook in a scratch course; fill `result`; a problem or None."""
        import nbformat

        root, module, student = self.root, self.module, sub.student
        # autograders/repair.py: split or copied answers, stripped metadata, missing ids, deleted cells
        notebook, notes = repair.prepare(sub.notebook, module)
        released = repair.release_notebook(module)
        result.review = guard.review_flags(notebook, {c.id: c.source for c in released.cells})

        folder = root / "submitted" / student / module
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        nbformat.write(notebook, folder / f"{module}.ipynb")  # the worker grades this copy
        if notes:  # what the learner handed in, byte for byte, next to what was graded
            shutil.copyfile(sub.notebook, folder / f"{module}.ipynb.submitted")
        log = root / "logs" / f"{student}.log"
        log.parent.mkdir(exist_ok=True)
        log.write_text("")
        worker = self.workers.get()
        try:
            try:
                answer = worker.grade(student, folder / f"{module}.ipynb", log, self.student_timeout_s)
            except RuntimeError as error:  # no worker could start: nothing about this student
                result.status = "grading failed"
                return str(error)
            scores = _scores(worker.course, module, student) if answer else None
            if answer is None and worker.timed_out:
                result.status = "timed out"
                return f"the whole notebook ran past {self.student_timeout_s:g} s and was stopped"
            if answer is None:
                result.status = "grading failed"
                return "; ".join([
                    "the grading process ended while it ran this notebook (its code may have killed it), "
                    f"so no test could run; see {log}", *notes])
            if not answer["autograded"] or scores is None:
                result.status = "grading failed"
                why = diagnose(log.read_text(errors="replace"), self.kernel_cell_timeout_s)
                return "; ".join([why, *notes])
            with self.lock:
                _merge(worker.course, root, module, student)
                into = root / "feedback" / student / module
                shutil.rmtree(into, ignore_errors=True)
                if answer["feedback"]:
                    shutil.copytree(worker.course / "feedback" / student / module, into)
            worker.forget(student)
        finally:
            self.workers.put(worker)
        result.score, result.max_score, result.cells, result.manual_pending = scores
        result.status = "graded"
        if result.manual_pending:
            result.detail = "; ".join(filter(None, [
                result.detail, f"{result.manual_pending:g} points to grade by hand (formgrader)"]))
        graded = root / "autograded" / student / module / f"{module}.ipynb"
        result.review += guard.runtime_flags(json.loads(graded.read_text()))  # hooks undone in the kernel
        slow = _timeout_cells(graded)
        if slow:
            result.status = "timed out"
            named = [f"{cell} ({self.kernel_cell_timeouts[cell]} s)" if cell in self.kernel_cell_timeouts
                     else cell for cell in slow]
            result.detail = "; ".join(filter(None, [
                f"over the {self.kernel_cell_timeout_s} s cell limit: " + ", ".join(named), result.detail]))
        result.detail = "; ".join(filter(None, [result.detail, *notes]))
        result.notes = list(notes)
        return None


def generate_feedback(root: Path, module: str, results: list[Result]) -> None:
    """nbgrader's feedback pages for the graded students among `results` whose page is missing (the
    workers write each page right after grading; this is the fallback), in one process."""
    graded = [r for r in results if r.status in ("graded", "timed out") and r.cells
              and not (r.feedback and r.feedback.exists())]
    if not graded:
        return
    log = root / "logs" / "feedback.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text("")
    start = time.monotonic()
    _nbgrader(["generate_feedback", module, "--force"], root, log, timeout_s=60 + 30 * len(graded))
    share = (time.monotonic() - start) / len(graded)
    for r in graded:
        r.seconds += 0 if r.reused else share
        if not r.feedback.exists():
            r.detail = (r.detail + "; " if r.detail else "") + f"no feedback page (see {log})"


def _describe(result: Result, sub: Submission) -> None:
    """Add what collecting decided (readable name, superseded attempts, the copy graded) to `result`.

    Done after grading, not stored with a kept grade: a later export may add attempts."""
    result.name = sub.name
    result.superseded = list(sub.superseded)
    if sub.notes:
        result.detail = "; ".join(filter(None, [result.detail, *sub.notes]))
        result.notes = list(dict.fromkeys([*result.notes, *sub.notes]))


def grade(module: str, submissions: Path, out: Path, cell_timeout_s: int = 60,
          student_timeout_s: float = DEFAULT_STUDENT_TIMEOUT_S, id_regex: str | None = None,
          jobs: int | None = None, regrade: bool = False, zip_encoding: str | None = None,
          accept: list[str] | tuple = (), ray: str | None = None) -> list[Result]:
    """Grade every submission of `module` found in `submissions` into the course folder `out`.

    `ray`: a Ray cluster's address ("HOST:PORT" or "auto"): each student is then graded as a Ray task on
    some node of it (`autograders.cluster`; `jobs` is ignored: Ray places as many as the nodes' CPUs hold).

    One result per student (`collect.collect_submissions`: ids, attempts, copies, cleared outputs);
    `zip_encoding` is the code page of zips whose file names carry no UTF-8 flag.
    A flagged submission's score is held for review (`report.hold_for_review`) unless its notebook
    was accepted; `accept` names students whose current notebooks the instructor accepts now.
    """
    if module not in settings.modules():
        raise SystemExit(f"unknown module {module!r}; known: {', '.join(settings.modules())}")
    out = Path(out).resolve()
    if ray:  # before anything is written in `out`: a refused cluster leaves the grading folder as it was
        from autograders import cluster  # Ray is imported only here

        cluster.connect(ray)
        nodes = cluster.check_nodes(module, cell_timeout_s)
    scratch = out / "incoming"
    try:
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        found = collect_submissions(Path(submissions), module, scratch, id_regex, zip_encoding)
        if not found:
            raise SystemExit(f"no submissions found in {submissions}")
        report.check_accept(accept, [sub.student for sub in found])
    except BaseException:
        if ray:
            import ray as ray_module

            ray_module.shutdown()
        raise
    if ray:
        if jobs:
            print(f"--jobs {jobs} is ignored with --ray: the cluster's CPUs say how many students at once",
                  flush=True)
        jobs = max(1, min(cluster.slots(module, nodes), len(found)))
    else:
        jobs = max(1, min(jobs or default_jobs(module), len(found)))
    # limits stretched for the grader's own load only: the same run on the same machine gets the same
    # limits, so a rerun reports what the first run did (others' load is not the grader's to know)
    limit = cell_limit(cell_timeout_s, module, jobs)
    run = Run(out, module, cell_timeout_s, student_timeout_s, regrade, kernel_cell_timeout_s=limit,
              kernel_cell_timeouts=cell_limits(module, jobs))
    grade_one = run.grade_one
    results: dict[str, Result] = {}
    try:
        if not ray:
            run.start_workers(jobs, early=sum(run.kept(sub) is None for sub in found))
        hidden = hideable(submissions)
        prepare_course(out, module, cell_timeout_s, hide=hidden)
        if ray:
            limits = cluster.node_limits(module, cell_timeout_s, nodes)
            grade_one = cluster.planner(run, limits, hide=hidden)
        print(sandbox.isolation(), flush=True)
        if ray:
            print(f"grading {len(found)} submissions on a Ray cluster of {len(nodes)} nodes, {jobs} at a "
                  "time; "
                  "cell limits: " + ", ".join(f"{facts['address']} {limits[node][0]} s ({facts['cpus']} CPUs)"
                                              for node, facts in nodes.items()), flush=True)
        else:
            print(f"grading {len(found)} submissions, {jobs} at a time; cell limit {limit} s"
                  + (f" ({cell_timeout_s} s stretched for {jobs} at a time, {processes(module)} busy "
                     "processes each, "
                     f"on {cores()} cores)" if limit != cell_timeout_s else ""),
                  flush=True)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(grade_one, sub): sub for sub in found}
            for future in as_completed(futures):
                sub = futures[future]
                r = results[sub.student] = future.result()
                _describe(r, sub)
                took = "unchanged, grades kept" if r.reused else f"{r.seconds:.0f} s"
                status = f"{r.status}, flagged: held for review" if r.review else r.status
                print(f"  {r.student}: {r.score:g} / {r.max_score:g}, {status} ({took})", flush=True)
        ordered = [results[sub.student] for sub in found]
        run.stop_workers()
        generate_feedback(out, module, ordered)
    finally:
        run.stop_workers()
        if ray:
            import ray as ray_module

            ray_module.shutdown()
        shutil.rmtree(_ipc_folder(out), ignore_errors=True)
        shutil.rmtree(out / "work", ignore_errors=True)
    notebooks = {sub.student: _sha256(sub.notebook.read_bytes()) for sub in found if sub.notebook}
    for note in report.hold_for_review(ordered, notebooks, out, accept):
        print(f"  {note}", flush=True)
    for r in ordered:
        report.annotate_feedback(r)
    report.write_csv(out / "grades.csv", ordered)
    report.write_exercises_csv(out / "exercises.csv", report.exercise_rows(ordered, _points(module)))
    return ordered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Autograde submissions of one module with nbgrader.",
        epilog="Writes grades.csv, exercises.csv, feedback/<student>/<module>/<module>.html and a gradebook.")
    parser.add_argument("module", help="module id, e.g. 00_orientation")
    parser.add_argument("submissions", type=Path, help="folder or .zip of submitted notebooks")
    parser.add_argument("--out", type=Path, help="grading folder (default: grading/<module>)")
    parser.add_argument("--cell-timeout", type=int, default=60, help="seconds per cell (default 60)")
    parser.add_argument("--student-timeout", type=float, default=DEFAULT_STUDENT_TIMEOUT_S,
                        help=f"seconds per notebook (default {DEFAULT_STUDENT_TIMEOUT_S})")
    parser.add_argument("--id-regex", help="regex with a (?P<student>...) group over file names")
    parser.add_argument("--zip-encoding", help="code page of zip file names without the UTF-8 flag "
                        "(old Windows tools), e.g. cp1251 (Cyrillic), cp936 (Chinese), cp1252")
    parser.add_argument("--jobs", type=int, help="students graded at once (default: cores, memory allowing)")
    parser.add_argument("--ray", metavar="ADDRESS",
                        help="grade on a Ray cluster: its head's HOST:PORT, or auto ($RAY_ADDRESS); every "
                             "node needs this checkout at this path (autograders/cluster.py)")
    parser.add_argument("--regrade", action="store_true", help="run every notebook, even unchanged ones")
    parser.add_argument("--accept", action="append", default=[], metavar="STUDENT",
                        help="after looking at a submission held for review, release its score "
                             "(this notebook only; repeat for several students)")
    args = parser.parse_args(argv)
    out = args.out or settings.REPO / "grading" / args.module
    start = time.monotonic()
    try:
        results = grade(args.module, args.submissions, out, args.cell_timeout, args.student_timeout,
                        args.id_regex, args.jobs, args.regrade, args.zip_encoding, args.accept, args.ray)
    except SystemExit as refused:  # `cluster.Refused`: a --ray run that could not start, status 2
        if getattr(refused, "status", None) is None:
            raise
        print(refused, file=sys.stderr)
        return refused.status
    elapsed = time.monotonic() - start
    print()
    print(report.summary_table(results))
    print()
    print(report.exercise_table(report.exercise_rows(results, _points(args.module))))
    print(f"\n{len(results)} submissions in {elapsed:.0f} s; grades: {out / 'grades.csv'}; "
          f"per exercise: {out / 'exercises.csv'}; feedback: {out / 'feedback'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
