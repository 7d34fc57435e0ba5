"""Grade a module's submissions as Ray tasks spread over a cluster, into one gradebook on the head.

    python -m autograders.grade 00_orientation SUBMISSIONS --ray HEAD:6379     (or --ray auto: $RAY_ADDRESS)
    make grade MODULE=00_orientation SUBMISSIONS=... RAY=HEAD:6379

Course infrastructure (autograders/INSTRUCTORS.md, "Grading on a cluster"). Imported only when ``--ray`` is
given: the single-machine path of `autograders.grade` never imports Ray.

Each submission the head cannot settle by itself (a kept grade, an unreadable file) becomes one Ray task,
`grade_student`, asking for the CPUs the module's tests keep busy (`grade.processes`: 1 for most modules, 3
for 04 and 06, 5 for 04b), so Ray places no more students on a node than its CPUs hold. On the node it lands
on, the task grades that one student exactly as a single machine does (`grade.Run.grade_one`: repair, guard
flags, a long-lived `autograders.worker`, nbgrader's Autograde and GenerateFeedback, the walled-in kernel of
`autograders.sandbox`) in a scratch course of its own on that node, and returns bytes: the result, the
scratch gradebook, the autograded notebook, the feedback page, the submitted copy and nbgrader's log. The
head alone writes: it copies the student's grades into the course's gradebook with `grade._merge` (one
writer, as on one machine), keeps the result for the next run (`Run.remember`: unchanged notebooks are not
run again, whether the last run used a cluster or not) and writes grades.csv and exercises.csv as always.

**A node lost mid-run.** A task whose node (or worker process) dies is a system failure: Ray runs it again
on a live node (`MAX_RETRIES`, Ray's ``max_retries``), so a lost node costs the students it was grading one
more grading each, nothing else. An exception raised by the task's own code is not retried (Ray's default
``retry_exceptions=False``): the grader turns a student's broken notebook into a result, never an
exception, so an exception is a fault of the grader and is reported for that student. **A student whose
node dies twice** (the first try and its one retry) gets the status ``grading failed`` with the reason
"the Ray node grading this notebook was lost twice", no grade and no kept result, so running the same
command again grades that student (and only the students without a kept grade).

**Every node must hold the course at the same path and its environment** (the same checkout of this
repository, the same Python packages). The head checks it before grading: a tiny task on each node imports
`autograders` from the head's path and reports the module's source hash (`grade.Run.version`: the module's
solutions notebook with its hidden tests, course/*.py, autograders/*.py, the cell limit); a node that
cannot, or whose hash differs (an older checkout would grade with other hidden tests), makes the run refuse
with a message naming the node. Tasks find the course through ``PYTHONPATH`` set to the head's checkout in
the job's ``runtime_env`` (Ray's ``env_vars``), not by shipping code: the check above is what makes that
honest.

Sources: Ray's task fault tolerance (https://docs.ray.io/en/latest/ray-core/fault_tolerance/tasks.html:
application errors come back as RayTaskError and are not retried unless ``retry_exceptions``; a dead worker
or node is retried up to ``max_retries``), its manual cluster set-up (``ray start --head --port``, ``ray
start --address``: https://docs.ray.io/en/latest/cluster/vms/user-guides/launching-clusters/on-premises.html);
both checked against Ray 2.55.1 here (tests/test_grade_cluster.py kills a node mid-run).

Cell limits: on each node the kernel's cell limit stretches as on one machine (`grade.cell_limit`) with
the students Ray may place there at once (the node's Ray CPUs // `grade.processes`) over its real cores;
the head prints each node's limit. Other load on a node is not counted (as on one machine).
"""

from __future__ import annotations

import atexit
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

from autograders import grade, settings
from autograders.collect import Submission, notebook_problem
from autograders.report import Result

MAX_RETRIES = 1  # Ray reruns a task once when its node or worker process dies (a system failure)
WAIT_NOTE_S = 30          # how often a student's wait for Ray checks that some node could still take it
NO_NODE_EVERY_S = 300     # how often "no live node" is said while it lasts
NOT_YOUR_FAULT = ("Nothing was found wrong with your notebook: the machine grading it failed. Your "
                  "instructor grades it again; you need not submit it again.")
LOST_TWICE = ("the Ray node grading this notebook was lost twice ({error}); no grade was kept, so running "
              "the same command again grades it")
# What a task sends back, relative to its scratch course (`pack`); the head unpacks only these.
PARTS = ("gradebook.db", "autograded", "feedback", "submitted", "logs")


# ---------------------------------------------------------------- the head

class Refused(SystemExit):
    """A ``--ray`` run that cannot start (no Ray head at the address, a node with another checkout, ...):
    its message is for the instructor, one line per reason, no traceback; `grade.main` prints it and exits
    with status 2, before anything is written in the grading folder."""
    status = 2


PROBE_TIMEOUT_S = 10  # a TCP connection to the head's port: an unreachable or closed port fails within it
JOIN_TIMEOUT_S = 120  # ray.init against a port that accepts but is not a Ray head waits forever otherwise


def connect(address: str, join_timeout_s: float | None = None) -> None:
    """Join the Ray cluster at `address` ("HOST:PORT", or "auto": $RAY_ADDRESS, else a cluster started on
    this machine) as its driver. Tasks import the course from this checkout's path on every node
    (``runtime_env`` ``env_vars`` PYTHONPATH), which `check_nodes` then verifies.

    Raises `Refused` with one line when no Ray head answers: for HOST:PORT a TCP connection is tried first
    (`PROBE_TIMEOUT_S`: a typo in the address, a head not started, a firewall), then ``ray.init`` must
    return within `JOIN_TIMEOUT_S` (Ray's own client retries for minutes when something else listens there);
    "auto" without a running cluster is refused the same way (Ray's ConnectionError)."""
    if address != "auto":  # before Ray's import: a wrong address is told in a second
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise Refused(f"--ray {address!r}: expected the Ray head's HOST:PORT (e.g. 10.0.0.1:6379, the "
                          "--port of `ray start --head`) or auto")
        try:
            socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
        except OSError as error:
            raise Refused(f"no Ray head answers at {address} ({error.strerror or error}): start it there "
                          f"with `ray start --head --port={port}`, or fix the address (RAY= or --ray)"
                          ) from None
    import logging

    import ray

    pythonpath = os.pathsep.join(filter(None, [str(settings.REPO), os.environ.get("PYTHONPATH")]))
    outcome: dict = {}

    def join() -> None:
        try:
            ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
                     logging_level=logging.ERROR, log_to_driver=False)
            outcome["joined"] = True
        except Exception as error:  # noqa: BLE001  (ConnectionError, a version mismatch: said below)
            outcome["error"] = error

    timeout_s = JOIN_TIMEOUT_S if join_timeout_s is None else join_timeout_s
    thread = threading.Thread(target=join, name="ray-init", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():  # the daemon thread is left behind: the process exits with the refusal
        raise Refused(f"something listens at {address} but no Ray head answered within {timeout_s:g} s: "
                      "is it the --port of `ray start --head` (Ray's GCS port), and does the head run Ray "
                      f"{ray.__version__} as here?")
    if "error" in outcome:
        where = ("no running Ray cluster found ($RAY_ADDRESS unset and none started on this machine): give "
                 "the head's HOST:PORT" if address == "auto" else f"cannot join the Ray cluster at {address}")
        raise Refused(f"{where} ({_summary(outcome['error'], last=True)})")


def node_facts(module: str, cell_timeout_s: int) -> dict:
    """What a node reports before grading (run there as a tiny Ray task): where its course is, its source
    hash for `module` (`grade.Run.version`), its host name and real cores."""
    run = grade.Run(Path("."), module, cell_timeout_s, 0)
    return {"repo": str(settings.REPO), "version": run.version, "host": socket.gethostname(),
            "cores": grade.cores()}


def refusals(head: dict, nodes: dict[str, dict]) -> list[str]:
    """One line per node that may not grade for this head (`head`: `node_facts` here; `nodes`: node
    address -> its `node_facts`, or {"error": text} when the task failed there); empty when all agree."""
    lines = []
    for name, facts in nodes.items():
        if "error" in facts:
            lines.append(f"node {name}: cannot import the course from {head['repo']}: {facts['error']}")
        elif facts["repo"] != head["repo"]:
            lines.append(f"node {name} ({facts['host']}): its course is at {facts['repo']}, the head's at "
                         f"{head['repo']}")
        elif facts["version"] != head["version"]:
            lines.append(f"node {name} ({facts['host']}): its module source differs from the head's "
                         f"(source hash {facts['version'][:12]}, head {head['version'][:12]}): another "
                         "checkout, whose hidden tests or grader may differ")
    return lines


def check_nodes(module: str, cell_timeout_s: int, head: dict | None = None) -> dict[str, dict]:
    """Run `node_facts` on every live node of the cluster (pinned to it); node id -> facts, with "address"
    and "cpus" (its Ray CPUs) added. Raises SystemExit naming each node whose course differs from `head`
    (default: this machine's `node_facts`)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head = head or node_facts(module, cell_timeout_s)
    nodes = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
    probe = ray.remote(node_facts)
    refs = {node: probe.options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
        node, soft=False)).remote(module, cell_timeout_s) for node in nodes}
    facts, named = {}, {}
    for node, ref in refs.items():
        name = f"{nodes[node]['NodeManagerAddress']} (node id {node[:12]})"
        try:
            facts[node] = ray.get(ref, timeout=300)
        except Exception as error:  # noqa: BLE001  (an import error there, a node gone: named below)
            facts[node] = {"error": str(error).strip().splitlines()[-1][:300]}
        facts[node].update(address=nodes[node]["NodeManagerAddress"],
                           cpus=int(nodes[node]["Resources"].get("CPU", 0)))
        named[name] = facts[node]
    lines = refusals(head, named)
    if lines:
        ray.shutdown()
        raise Refused("refusing to grade on this Ray cluster: every node must hold the same checkout of "
                      "the course at the same path, with its environment (autograders/INSTRUCTORS.md, "
                      "'Grading on a cluster'):\n  " + "\n  ".join(lines))
    if slots(module, facts) == 0:  # Ray would wait forever for a node that can take a student
        ray.shutdown()
        raise Refused(f"no node of this Ray cluster has the {grade.processes(module)} CPUs one student of "
                      f"{module} keeps busy (nodes: " + ", ".join(f"{f['address']} {f['cpus']} CPUs"
                                                         for f in facts.values())
                      + "); start a node with more CPUs (ray start --num-cpus)")
    return facts


def node_limits(module: str, cell_timeout_s: int, nodes: dict[str, dict]) -> dict[str, tuple[int, dict]]:
    """Node id -> (cell limit, heavy cells' limits) for its kernels: stretched as on one machine by the
    students Ray may place there at once (its CPUs // `grade.processes`) over its real cores."""
    limits = {}
    for node, facts in nodes.items():
        jobs = max(1, facts["cpus"] // grade.processes(module))
        limits[node] = (grade.cell_limit(cell_timeout_s, module, jobs, facts["cores"]),
                        grade.cell_limits(module, jobs, facts["cores"]))
    return limits


def slots(module: str, nodes: dict[str, dict]) -> int:
    """Students the cluster grades at once: per node, its Ray CPUs // `grade.processes`."""
    return sum(facts["cpus"] // grade.processes(module) for facts in nodes.values())


def planner(run: grade.Run, limits: dict[str, tuple[int, dict]], hide: list[str] | tuple = ()):
    """`grade_one` for this run, once the head's course is prepared: its gradebook (the module's tests and
    checksums, as generate_assignment recorded them) goes to the nodes once, through Ray's object store,
    so no node runs generate_assignment again. `hide`: the submissions' path, hidden from every node's
    grading kernels too (`grade.hideable`; a node without that path has nothing there to hide)."""
    import functools

    import ray

    course = ray.put((run.root / "gradebook.db").read_bytes())
    return functools.partial(grade_one, run, {"limits": limits, "gradebook": course, "hide": list(hide)})


def grade_one(run: grade.Run, plan: dict, sub: Submission) -> Result:
    """Head side of one student: a kept grade or an unreadable file is settled here, as on one machine;
    anything else is graded by a `grade_student` task on some node and merged into `run.root`."""
    import ray

    kept = run.kept(sub)
    if kept is not None:
        return kept
    if sub.problem or notebook_problem(sub.notebook, run.module):
        return run.grade_one(sub)  # writes the problem's feedback page; no kernel runs
    start = time.monotonic()
    task = ray.remote(grade_student).options(
        num_cpus=grade.processes(run.module), max_retries=MAX_RETRIES, retry_exceptions=False)
    ref = task.remote(run.module, sub.student, sub.notebook.read_bytes(), run.cell_timeout_s,
                      run.student_timeout_s, plan["limits"], run.version, plan["gradebook"],
                      plan.get("hide", ()))
    while not ray.wait([ref], timeout=WAIT_NOTE_S)[0]:
        _note_if_no_node(run, plan)
    try:
        answer = ray.get(ref)
    except (ray.exceptions.RayTaskError, ValueError) as error:  # the grader's own fault there: not retried
        result = Result(student=sub.student, status="grading failed", max_score=grade._max_score(
            run.root, run.module), detail=f"the grader failed on its Ray node: {_summary(error, last=True)}")
        return _settle(run, sub, result, start)
    except ray.exceptions.RayError as error:  # the node or worker died on the first try and the retry
        result = Result(student=sub.student, status="grading failed", max_score=grade._max_score(
            run.root, run.module), detail=LOST_TWICE.format(error=_summary(error)))
        return _settle(run, sub, result, start, remember=False)
    if "refused" in answer:  # a node that joined after `check_nodes`, with another checkout: no grade
        with run.lock:
            if answer["refused"] not in plan.setdefault("refused", set()):
                plan["refused"].add(answer["refused"])
                print(f"  refusing a node that joined after the start-up check: {answer['refused']}; stop it "
                      "or give it the head's checkout", flush=True)
        result = Result(student=sub.student, status="grading failed", max_score=grade._max_score(
            run.root, run.module), detail=f"not graded: it went to a refused Ray node: {answer['refused']}; "
                                          "running the same command again grades it (the start-up check then "
                                          "refuses that node by name)")
        return _settle(run, sub, result, start, remember=False)
    result = merge_answer(run, answer)
    result.seconds = time.monotonic() - start
    run.remember(sub, result)
    return result


def _settle(run: grade.Run, sub: Submission, result: Result, start: float, remember: bool = True) -> Result:
    """A student the cluster could not grade: no grade in the gradebook, a page saying why (the grading
    machinery's fault, not the notebook's: nothing for the student to do)."""
    root, module = run.root, run.module
    with run.lock:
        grade._forget(root, module, sub.student)
    shutil.rmtree(root / "feedback" / sub.student / module, ignore_errors=True)
    result.feedback = root / "feedback" / sub.student / module / f"{module}.html"
    grade._write_problem_feedback(result.feedback, module, result, advice=NOT_YOUR_FAULT)
    result.seconds = time.monotonic() - start
    if remember:
        run.remember(sub, result)
    return result


def _summary(error: BaseException, last: bool = False) -> str:
    """One line of a Ray error for grades.csv and the page: its first line (Ray's errors put what happened
    first and advice after), or the last (a task's traceback ends with the exception), cut at a word."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    line = ((lines[-1] if last else lines[0]) if lines else type(error).__name__).rstrip(".")
    return line if len(line) <= 200 else line[:200].rsplit(" ", 1)[0] + " ..."


def _note_if_no_node(run: grade.Run, plan: dict) -> None:
    """Say, at most every `NO_NODE_EVERY_S`, when no live node has the CPUs a student needs: Ray then waits
    for one without a word (its own warnings do not reach the grader's terminal)."""
    import ray

    need = grade.processes(run.module)
    alive = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= need]
    with run.lock:
        if alive or time.monotonic() - plan.get("said_no_node", -NO_NODE_EVERY_S) < NO_NODE_EVERY_S:
            return
        plan["said_no_node"] = time.monotonic()
    print(f"  no live node of the Ray cluster can take a student now (each needs {need} CPUs; were nodes "
          "lost?): the run waits for one. Start a node (ray start --address HEAD:PORT) or stop with Ctrl-C: "
          "grades so far are kept and a re-run grades only the others", flush=True)


def merge_answer(run: grade.Run, answer: dict) -> Result:
    """Write one task's answer into the course at `run.root` as a single machine would: the grades into
    the gradebook (`grade._merge`, under `run.lock`), or the student's earlier grades dropped when it
    could not be graded; the autograded notebook, feedback page, submitted copy and log beside them."""
    root, module = run.root, run.module
    result = Result.from_json(answer["result"])
    student = result.student
    scratch = root / "work" / f"ray-{student}"
    shutil.rmtree(scratch, ignore_errors=True)
    unpack(answer["files"], scratch)
    node_root = answer["root"]
    result.detail = result.detail.replace(node_root, str(root))
    result.notes = [note.replace(node_root, str(root)) for note in result.notes]
    try:
        with run.lock:
            if result.cells and (scratch / "autograded" / student / module).is_dir():
                grade._merge(scratch, root, module, student)
            else:
                grade._forget(root, module, student)
            for folder in ("feedback", "submitted"):
                into = root / folder / student / module
                shutil.rmtree(into, ignore_errors=True)
                if (scratch / folder / student / module).is_dir():
                    shutil.copytree(scratch / folder / student / module, into)
            (root / "logs").mkdir(exist_ok=True)
            log = scratch / "logs" / f"{student}.log"
            if log.exists():
                shutil.copyfile(log, root / "logs" / f"{student}.log")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result.feedback = root / "feedback" / student / module / f"{module}.html"
    return result


def pack(root: Path, student: str, module: str) -> bytes:
    """The parts of a scratch course `root` that concern `student` (`PARTS`), as a tar archive."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for part in ("gradebook.db", f"autograded/{student}/{module}", f"feedback/{student}/{module}",
                     f"submitted/{student}/{module}", f"logs/{student}.log"):
            if (root / part).exists():
                tar.add(root / part, arcname=part)
    return buffer.getvalue()


def unpack(data: bytes, into: Path) -> None:
    """Unpack a `pack` archive into `into`: only regular files and folders under `PARTS`, none outside."""
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if (not parts or parts[0] not in PARTS or ".." in parts or Path(member.name).is_absolute()
                    or not (member.isfile() or member.isdir())):
                raise ValueError(f"unexpected member in a grading task's answer: {member.name!r}")
        tar.extractall(into, filter="data")


# ---------------------------------------------------------------- a node

_NODE: dict[tuple, grade.Run] = {}  # in a Ray worker process: its scratch course per module and limits
_NODE_LOCK = threading.Lock()
_VERSIONS: dict[tuple, str] = {}  # this node's source hash per (module, cell limit)
_REAPERS: list[subprocess.Popen] = []  # one per scratch course: removes it when this process has ended
# A Ray worker process ends when its job does, or is killed, without running atexit handlers; its scratch
# course (a gradebook, logs, the grading worker's folders) would stay in the node's temporary folder. This
# process, started with the course, holds the read end of a pipe only the Ray worker can write to: when
# that process has ended, however it ended, the pipe closes and the course and its socket folder go, and
# what still runs in the course (a grading kernel whose grading worker Ray killed) is killed.
REAPER = """
import hashlib, os, shutil, signal, sys, time
sys.stdin.buffer.read()  # returns when the Ray worker process has ended
root, bases = sys.argv[1], sys.argv[2:]
real = os.path.realpath(root)
for pid in [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]:
    try:  # a grading kernel (its unshare) orphaned when Ray killed the grading worker: it runs in the course
        cwd = os.readlink("/proc/" + pid + "/cwd")
        if cwd == real or cwd.startswith(real + os.sep):
            os.kill(int(pid), signal.SIGKILL)  # unshare --kill-child: the kernel and its namespace go too
    except OSError:
        pass
for _ in range(3):  # the grading worker may still be writing its log as it ends
    work = os.path.join(root, "work")
    names = os.listdir(work) if os.path.isdir(work) else []
    courses = [root] + [os.path.join(work, name) for name in names]
    for course in courses:  # the kernels' socket folders, named as grade._ipc_folder names them
        digest = hashlib.sha256(os.path.realpath(course).encode()).hexdigest()[:12]
        for base in bases:
            shutil.rmtree(os.path.join(base, "grade-ipc-" + digest), ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    time.sleep(2)
"""
SPAWN = ("import subprocess, sys\n"
         "subprocess.Popen([sys.executable, '-c', *sys.argv[1:]], start_new_session=True)\n")


def grade_student(module: str, student: str, notebook: bytes, cell_timeout_s: int, student_timeout_s: float,
                  limits: dict[str, tuple[int, dict]], version: str, gradebook: bytes,
                  hide: list[str] | tuple = ()) -> dict:
    """Ray task: grade one student on this node, as `grade.Run.grade_one` does on one machine, in this
    worker process's scratch course (made once from the head's `gradebook`, kept for its next students and
    removed when the process ends: `REAPER`); return the result and the files the head needs (`pack`).

    A node whose course differs from the head's `version` (one that joined the cluster after the head's
    start-up check, `check_nodes`) grades nothing: the answer is {"refused": a line naming the node}, which
    the head turns into "grading failed" for that student, not kept, never a grade."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    ours = _VERSIONS.get((module, cell_timeout_s))
    if ours is None:
        ours = _VERSIONS[(module, cell_timeout_s)] = grade.Run(Path("."), module, cell_timeout_s, 0).version
    if ours != version:
        address = ray.util.get_node_ip_address()
        return {"refused": f"node {address} (node id {node[:12]}, {socket.gethostname()}): its module source"
                           f" differs from the head's (source hash {ours[:12]}, head "
                           f"{version[:12]}): another checkout, whose hidden tests or grader may differ"}
    limit, cells = limits.get(node) or (cell_timeout_s, {})
    key = (module, cell_timeout_s, student_timeout_s, limit, json.dumps(cells, sort_keys=True))
    with _NODE_LOCK:
        run = _NODE.get(key)
        if run is None:
            root = Path(tempfile.mkdtemp(prefix=f"grade-ray-{module}-"))
            # started through a process that exits at once: Ray kills a worker's children when it ends
            # (kill_child_processes_on_worker_exit), and this one must outlive it
            starter = subprocess.Popen(
                [sys.executable, "-c", SPAWN, REAPER, str(root), tempfile.gettempdir(),
                 *map(str, grade.SOCKET_FALLBACK_DIRS)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            starter.wait()
            _REAPERS.append(starter)  # its stdin, the pipe's write end, stays open in this process
            run = grade.Run(root, module, cell_timeout_s, student_timeout_s, regrade=True,
                            kernel_cell_timeout_s=limit, kernel_cell_timeouts=cells)
            run.start_workers(1)
            grade.prepare_course(root, module, cell_timeout_s, gradebook=gradebook, hide=hide)
            _NODE[key] = run
            atexit.register(_clean, run)
    root = run.root
    folder = root / "incoming" / student
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / f"{module}.ipynb").write_bytes(notebook)
    sub = Submission(student=student, origin=f"{student}.ipynb", notebook=folder / f"{module}.ipynb")
    try:
        result = run.grade_one(sub)
        answer = {"result": result.to_json(), "files": pack(root, student, module), "root": str(root),
                  "node": node, "host": socket.gethostname()}
    finally:
        with run.lock:
            grade._forget(root, module, student)
        for part in ("submitted", "feedback", "incoming", "results"):
            shutil.rmtree(root / part / student, ignore_errors=True)
        for leftover in (root / "logs" / f"{student}.log", root / "results" / f"{student}.json"):
            leftover.unlink(missing_ok=True)
    return answer


def _clean(run: grade.Run) -> None:
    """When the Ray worker process exits normally: stop its grading worker and remove its scratch course.
    (Ray usually ends its workers without atexit handlers: then the course's `REAPER` removes it. A node
    killed outright, reaper included, leaves the folder in its temporary folder; its grading worker ends
    when its stdin closes.)"""
    run.stop_workers()
    shutil.rmtree(grade._ipc_folder(run.root), ignore_errors=True)
    shutil.rmtree(run.root, ignore_errors=True)
