"""Grading on a Ray cluster (`autograders.cluster`, ``--ray``): the same grades as on one machine, one
gradebook, and a node lost mid-run costs only a retry.

A local cluster of a head and a worker node (1 Ray CPU each), started with Ray's own ``ray start``
(tests/ray_cluster.py), grades a small class of 00_orientation while the worker node is killed (its
``ray start``, raylet, Ray workers, grading worker and kernel: SIGKILL) as soon as it runs a student's
kernel; the grades must equal those of the same class graded on this machine with ``--jobs 1``.
"""

import csv
import glob
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from autograders import cluster, grade
from tests import answers
from tests.notebooks import reference_answers, source, submission, load, solution_path
from tests.ray_cluster import LocalCluster
from tests.ray_cluster import free_port as cluster_free_port

MODULE = "00_orientation"
CELL_TIMEOUT_S = 60
IN_CI = os.environ.get("CI") == "true"


def wrong(cell):
    """The first recorded wrong answer to exercise `cell` (tests/answers/00_orientation.py)."""
    reference = next(source(c) for c in load(solution_path(MODULE))["cells"] if c["id"] == cell)
    return next(a for a in answers.records(MODULE) if a.kind == "wrong" and a.cell == cell).code(reference)


def build_class(folder):
    """Five students: full marks, two recorded mistakes, one exercise done, a blank copy, a broken file."""
    folder.mkdir()
    ok = reference_answers(MODULE)
    notebooks = {
        "ace": submission(MODULE, ok),
        "mistaken": submission(MODULE, {**ok, "median_time": wrong("median_time"),
                                        "model_size": wrong("model_size")}),
        "partial": submission(MODULE, {"median_time": None}),
        "blank": submission(MODULE),
    }
    for student, nb in notebooks.items():
        (folder / f"{student}.ipynb").write_text(json.dumps(nb))
    (folder / "broken.ipynb").write_text('{"cells": [ not json')


def rows(path):
    """grades.csv: student -> its row, every column."""
    with open(path, newline="", encoding="utf-8") as f:
        return {row["student"]: row for row in csv.DictReader(f)}


class NodeKiller(threading.Thread):
    """Kills node `index` of `cluster` as soon as one of its processes is a grading kernel; notes which
    student that kernel was grading."""

    def __init__(self, local, index=1):
        super().__init__(daemon=True)
        self.local, self.index, self.student, self.killed = local, index, None, []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            for proc in self.local.processes(self.index):
                try:
                    if "autograders/kernel.py" in " ".join(proc.cmdline()):
                        # nbgrader runs it in autograded/<student>/<module> of the node's scratch course
                        found = re.search(r"/(?:autograded|submitted)/([^/]+)/", proc.cwd() + "/")
                        self.student = found[1] if found else proc.cwd()
                        time.sleep(1)  # its cells are running
                        self.killed = self.local.kill(self.index)
                        return
                except psutil.Error:
                    continue
            time.sleep(0.2)


def test_ray_auto_without_a_cluster_is_refused_in_one_line(tmp_path):
    pytest.importorskip("ray")
    if any(p.info["name"] == "gcs_server" for p in psutil.process_iter(["name"])):
        pytest.skip("a Ray cluster runs on this machine (another test's?): auto finds it by its processes")
    alone = tmp_path / "tmp"  # Ray looks for a cluster started on this machine in its temporary folder
    alone.mkdir()
    env = {"TMPDIR": str(alone), "RAY_TMPDIR": str(alone), "RAY_ADDRESS": ""}
    status, stderr, out = grade_with_ray(tmp_path, "auto", env=env)
    refused_in_one_line(status, stderr, out)
    assert "no running Ray cluster found" in stderr


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    """A head and a worker node; meanwhile (it is mostly waiting) the class is graded on this machine."""
    try:
        import ray  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("Ray is not installed (it comes with flwr[simulation]); grading on a cluster cannot "
                        "be tested")
        pytest.skip("Ray is not installed")
    base = tmp_path_factory.mktemp("cluster")
    build_class(base / "class")
    with ThreadPoolExecutor(1) as pool:
        single = pool.submit(grade.grade, MODULE, base / "class", base / "single",
                             cell_timeout_s=CELL_TIMEOUT_S, jobs=1)
        with LocalCluster(nodes=2, cpus=1) as local:
            local.base, local.single = base, single
            yield local


@pytest.fixture(scope="module")
def graded(local_cluster):
    """The class graded on this machine (--jobs 1) and on the cluster, whose worker node is killed mid-run."""
    base, single = local_cluster.base, local_cluster.single.result()
    killer = NodeKiller(local_cluster)
    killer.start()
    try:
        on_cluster = grade.grade(MODULE, base / "class", base / "cluster", cell_timeout_s=CELL_TIMEOUT_S,
                                 ray=local_cluster.address)
    finally:
        killer.done.set()
        killer.join()
    return base, single, on_cluster, killer


def test_a_node_with_another_checkout_is_refused_by_name(local_cluster):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cluster.connect(local_cluster.address)
    try:
        here = cluster.node_facts(MODULE, CELL_TIMEOUT_S)
        nodes = cluster.check_nodes(MODULE, CELL_TIMEOUT_S)  # the same checkout everywhere: accepted
        assert len(nodes) == 2 and {f["version"] for f in nodes.values()} == {here["version"]}
        # a node that joins after that check: the grading task itself compares, and grades nothing
        worker = next(node for node in nodes if node != ray.get_runtime_context().get_node_id())
        task = ray.remote(cluster.grade_student).options(num_cpus=1, max_retries=0, scheduling_strategy=(
            NodeAffinitySchedulingStrategy(worker, soft=False)))
        answer = ray.get(task.remote(MODULE, "ann", b"{}", CELL_TIMEOUT_S, 600.0, {}, "0" * 64, b""),
                         timeout=300)
        with pytest.raises(SystemExit) as refused:  # (check_nodes ends the connection when it refuses)
            cluster.check_nodes(MODULE, CELL_TIMEOUT_S, head={**here, "version": "0" * 64})
    finally:
        ray.shutdown()
    message = str(refused.value)
    assert "refusing to grade" in message and message.count("its module source differs") == 2
    assert all(node[:12] in message for node in nodes)
    assert set(answer) == {"refused"} and worker[:12] in answer["refused"]
    assert f"source hash {here['version'][:12]}, head 000000000000" in answer["refused"]


def test_cluster_grades_equal_single_machine_grades_though_a_node_died(graded):
    base, single, on_cluster, killer = graded
    assert killer.killed and killer.student in {"ace", "mistaken", "partial", "blank"}, \
        "the worker node never ran a kernel: the loss of a node mid-run was not tested"
    expected, got = rows(base / "single" / "grades.csv"), rows(base / "cluster" / "grades.csv")
    assert sorted(got) == sorted(expected) == ["ace", "blank", "broken", "mistaken", "partial"]
    for student, row in expected.items():
        assert got[student] == row, student
    assert [r.student for r in on_cluster] == [r.student for r in single]  # each once, in the same order
    scores = {student: float(row["score"]) for student, row in got.items()}
    assert scores["ace"] == 6 and scores["blank"] == scores["broken"] == 0 and 0 < scores["mistaken"] < 6
    assert (base / "cluster" / "exercises.csv").read_text() == (base / "single" / "exercises.csv").read_text()


def test_one_gradebook_holds_every_grade_with_its_pages(graded):
    base, _, on_cluster, _ = graded
    out = base / "cluster"
    for r in on_cluster:
        feedback = out / "feedback" / r.student / MODULE / f"{MODULE}.html"
        assert feedback.exists() and r.feedback == feedback
        if r.status != "graded":
            continue
        score, max_score, cells, _ = grade._scores(out, MODULE, r.student)  # merged into the head's gradebook
        assert (score, max_score, cells) == (r.score, r.max_score, r.cells)
        assert (out / "autograded" / r.student / MODULE / f"{MODULE}.ipynb").exists()
        assert (out / "logs" / f"{r.student}.log").read_text()
        assert str(out) in r.feedback.as_posix()


def test_the_lost_node_left_no_process(graded, local_cluster):
    assert local_cluster.processes(1) == [] or all(
        p.status() == psutil.STATUS_ZOMBIE for p in local_cluster.processes(1))


def test_grading_again_on_the_cluster_keeps_every_grade(graded, local_cluster):
    base, _, on_cluster, _ = graded
    again = grade.grade(MODULE, base / "class", base / "cluster", cell_timeout_s=CELL_TIMEOUT_S,
                        ray=local_cluster.address)
    assert all(r.reused for r in again)
    assert [(r.student, r.score) for r in again] == [(r.student, r.score) for r in on_cluster]


def test_no_scratch_course_is_left_on_a_node(graded, local_cluster):
    """Each Ray worker's scratch course (`grade-ray-*` in the node's temporary folder) goes when the run's
    Ray workers end (`cluster.REAPER`), not only at a normal exit, which Ray's workers do not make."""
    head_tmp = local_cluster.folders[0] + "/t"  # the head node's TMPDIR (tests/ray_cluster.py); 1 was killed
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and glob.glob(head_tmp + "/grade-ray-*"):
        time.sleep(1)
    assert glob.glob(head_tmp + "/grade-ray-*") == []
    assert glob.glob(head_tmp + "/grade-ipc-*") == []


def test_a_student_lost_twice_keeps_no_grade_and_the_next_run_grades_them(graded, tmp_path, monkeypatch):
    """Ray gives up on a task whose node died on the first try and on the retry (``max_retries=1``): it
    raises a RayError that is no RayTaskError at ``ray.get``. The student then has no grade, no graded copy
    and a page saying so, and the next run does not keep their earlier grade but grades them again. (Ray's
    own retry is not re-enacted here: its error is raised where Ray raises it.)"""
    import shutil

    import ray

    from autograders.collect import Submission

    base, _, _, _ = graded
    course = tmp_path / "course"
    shutil.copytree(base / "cluster", course)
    run = grade.Run(course, MODULE, CELL_TIMEOUT_S, 300)
    sub = Submission("ace", "ace.ipynb", notebook=base / "class" / "ace.ipynb")
    earlier = grade.Result.from_json(json.loads((course / "results" / "ace.json").read_text())["result"])
    run.remember(sub, earlier)                      # graded before, this very notebook: kept ...
    assert earlier.status == "graded" and run.kept(sub) is not None

    class Task:
        def options(self, **_):
            return self

        def remote(self, *_):
            return "a task's reference"

    def lost(_ref):
        raise ray.exceptions.NodeDiedError("the node died twice")

    monkeypatch.setattr(ray, "remote", lambda _function: Task())
    monkeypatch.setattr(ray, "wait", lambda refs, timeout=None: (refs, []))   # done: ray.get says how
    monkeypatch.setattr(ray, "get", lost)
    run.regrade = True                              # ... so this run grades it again: its node is lost twice
    result = cluster.grade_one(run, {"limits": None, "gradebook": None}, sub)
    run.regrade = False
    assert result.status == "grading failed" and "lost twice" in result.detail
    assert grade._scores(course, MODULE, "ace") is None                    # no grade left in the gradebook
    assert not (course / "autograded" / "ace" / MODULE).exists()
    page = result.feedback.read_text()
    assert "lost twice" in page and "Nothing was found wrong with your notebook" in page   # not: submit again
    assert "Submit the notebook" not in page and "`ray" not in result.detail
    assert run.kept(sub) is None                    # the next run grades ace again


# ---------------------------------------------------------------- unit tests, no cluster

def test_a_ray_error_is_said_in_its_first_line_cut_at_a_word():
    """Ray's node errors put what happened first and advice after; the 300-character cut of the last line
    ended the page mid-word ("use `ray", review 24d #5)."""
    error = RuntimeError("The node with node id abc and address 10.0.0.2 has been marked dead because the "
                         "detector has missed too many heartbeats from it. " + "x " * 100 +
                         "\nTo see node death information, use `ray list nodes --filter ...`")
    said = cluster._summary(error)
    assert said.startswith("The node with node id abc") and len(said) <= 205 and said.endswith(" ...")
    assert "`ray" not in said
    assert cluster._summary(RuntimeError("Traceback\n  File x\nValueError: bad"), last=True) == "ValueError: bad"


def test_no_live_node_is_said_once_in_a_while(monkeypatch, capsys):
    """Every node lost: Ray waits for one without a word (review 24d #3); the run says so, not every 30 s."""
    import ray

    run = grade.Run(Path("."), MODULE, CELL_TIMEOUT_S, 300)
    nodes = [{"Alive": False, "Resources": {"CPU": 1.0}}, {"Alive": True, "Resources": {"CPU": 0.0}}]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    plan = {}
    cluster._note_if_no_node(run, plan)
    cluster._note_if_no_node(run, plan)
    assert capsys.readouterr().out.count("no live node of the Ray cluster can take a student") == 1
    nodes.append({"Alive": True, "Resources": {"CPU": 2.0}})
    plan.clear()
    cluster._note_if_no_node(run, plan)
    assert capsys.readouterr().out == ""


def test_the_reaper_kills_what_still_runs_in_a_scratch_course(tmp_path):
    """A grading kernel whose grading worker Ray killed outlived the Ray worker (PPID 1, 53-420 MB, 19
    minutes, review 24d #2): the reaper kills what runs in the course (a process started there, in a session
    of its own, as unshare runs a kernel) before removing it; a process elsewhere is left alone."""
    root = tmp_path / "grade-ray-x"
    inside = root / "autograded" / "ann" / MODULE
    inside.mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    kernel = subprocess.Popen(["sleep", "987655"], cwd=inside, start_new_session=True)
    bystander = subprocess.Popen(["sleep", "987656"], cwd=outside, start_new_session=True)
    try:
        reaper = subprocess.Popen([sys.executable, "-c", cluster.REAPER, str(root), str(tmp_path / "sockets")],
                                  stdin=subprocess.PIPE)
        reaper.stdin.close()                           # the Ray worker process has ended
        reaper.wait(timeout=30)
        assert kernel.wait(timeout=10) == -9
        assert bystander.poll() is None and not root.exists()
    finally:
        for proc in (kernel, bystander):
            proc.kill()
            proc.wait()


def test_one_machine_never_imports_ray():
    code = "import sys, autograders.grade; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_refusals_name_each_node_that_differs():
    head = {"repo": "/srv/course", "version": "a" * 64, "host": "head", "cores": 8}
    nodes = {"10.0.0.2 (node id n2)": dict(head, host="n2"),
             "10.0.0.3 (node id n3)": dict(head, host="n3", version="b" * 64),
             "10.0.0.4 (node id n4)": dict(head, host="n4", repo="/home/me/course"),
             "10.0.0.5 (node id n5)": {"error": "ModuleNotFoundError: No module named 'autograders'"}}
    lines = cluster.refusals(head, nodes)
    assert len(lines) == 3
    assert lines[0].startswith("node 10.0.0.3") and "bbbbbbbbbbbb" in lines[0]
    assert lines[1].startswith("node 10.0.0.4") and "/home/me/course" in lines[1]
    assert lines[2].startswith("node 10.0.0.5") and "No module named" in lines[2]
    assert cluster.refusals(head, {"10.0.0.2": dict(head)}) == []


def test_a_tasks_answer_unpacks_only_its_own_parts(tmp_path):
    course = tmp_path / "node"
    (course / "autograded" / "ann" / MODULE).mkdir(parents=True)
    (course / "autograded" / "ann" / MODULE / f"{MODULE}.ipynb").write_text("{}")
    (course / "autograded" / "bob" / MODULE).mkdir(parents=True)  # another student: not sent
    (course / "logs").mkdir()
    (course / "logs" / "ann.log").write_text("log")
    (course / "gradebook.db").write_bytes(b"db")
    cluster.unpack(cluster.pack(course, "ann", MODULE), tmp_path / "head")
    sent = sorted(p.relative_to(tmp_path / "head").as_posix() for p in (tmp_path / "head").rglob("*")
                  if p.is_file())
    assert sent == [f"autograded/ann/{MODULE}/{MODULE}.ipynb", "gradebook.db", "logs/ann.log"]

    import io
    import tarfile

    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        info = tarfile.TarInfo("feedback/../../escaped.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="unexpected member"):
        cluster.unpack(evil.getvalue(), tmp_path / "head2")
    assert not (tmp_path / "escaped.txt").exists()


def grade_with_ray(tmp_path, address, env=None, join_timeout_s=None):
    """`python -m autograders.grade` with ``--ray address`` on a class of one notebook, in a process of its
    own (a refused start exits it); (exit status, stderr, the grading folder)."""
    (tmp_path / "class").mkdir(exist_ok=True)
    (tmp_path / "class" / "ann.ipynb").write_text(json.dumps(submission(MODULE)))
    out = tmp_path / "out"
    code = ("import sys; from autograders import cluster, grade; "
            + (f"cluster.JOIN_TIMEOUT_S = {join_timeout_s}; " if join_timeout_s else "")
            + f"sys.exit(grade.main({[MODULE, str(tmp_path / 'class'), '--out', str(out), '--ray', address]}"
            + "))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    return done.returncode, done.stderr, out


def refused_in_one_line(status, stderr, out):
    assert status == 2, stderr
    assert "Traceback" not in stderr
    assert not (out / "incoming").exists()  # nothing of the class copied into the grading folder


def test_a_wrong_address_is_refused_at_once_in_one_line(tmp_path):
    port = cluster_free_port()  # nothing listens there
    start = time.monotonic()
    status, stderr, out = grade_with_ray(tmp_path, f"127.0.0.1:{port}")
    refused_in_one_line(status, stderr, out)
    assert f"no Ray head answers at 127.0.0.1:{port} (Connection refused)" in stderr
    assert f"ray start --head --port={port}" in stderr
    assert time.monotonic() - start < 60
    status, stderr, out = grade_with_ray(tmp_path, "no-such-host.invalid:6379")
    refused_in_one_line(status, stderr, out)
    assert "no Ray head answers at no-such-host.invalid:6379" in stderr


def test_a_port_that_is_not_a_ray_head_is_refused_within_the_join_timeout(tmp_path):
    import socket

    with socket.socket() as listener:  # accepts connections (the kernel's backlog), never answers as Ray
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        status, stderr, out = grade_with_ray(tmp_path, f"127.0.0.1:{port}", join_timeout_s=5)
    refused_in_one_line(status, stderr, out)
    assert f"something listens at 127.0.0.1:{port} but no Ray head answered within 5 s" in stderr
