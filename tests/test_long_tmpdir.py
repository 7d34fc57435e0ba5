"""The course's process-starting helpers under a long temporary folder (TMPDIR), as on macOS.

macOS gives each user a TMPDIR like /var/folders/xx/<28 characters>/T/ (49 characters). A Unix socket's path
may have at most 107 bytes on Linux, 103 on macOS, so a program that puts sockets under TMPDIR can fail there.
Ray does (session_<date>_<pid>/sockets/plasma_store under its folder): before `course.federated.ray_temp_dir`,
05's simulations could not start under such a TMPDIR, on Linux as on macOS.

Each helper runs in a child Python with TMPDIR set to a long folder, bounded by a timeout (a hang is killed
with `course.processes.stop_tree` and fails the test), and afterwards no process that inherited that TMPDIR
may be left running. `LONG` (110 characters) is longer than any socket path may be, so any socket a helper
put under TMPDIR would fail; `MACOS_LIKE` (49) is macOS's length, which Ray's sockets already overflow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from course import processes

ROOT = str(Path(__file__).resolve().parent.parent)
LONG = 110
MACOS_LIKE = 49


def folder_of_length(base: Path, length: int) -> str:
    """A new folder under `base` whose path, with a final slash as macOS writes TMPDIR, has `length`
    characters."""
    pad = length - len(str(base)) - 2
    assert pad > 0, f"{base} is too long to make a folder of {length} characters under it"
    folder = base / ("t" * pad)
    folder.mkdir()
    path = f"{folder}/"
    assert len(path) == length
    return path


@pytest.fixture
def long_tmpdir(tmp_path_factory) -> str:
    return folder_of_length(tmp_path_factory.mktemp("long"), LONG)


@pytest.fixture
def macos_tmpdir(tmp_path_factory) -> str:
    return folder_of_length(tmp_path_factory.mktemp("mac"), MACOS_LIKE)


def inheritors(tmpdir: str, grace_s: float = 10.0) -> list[psutil.Process]:
    """Processes still running after `grace_s` seconds whose environment has TMPDIR=`tmpdir`: what the child
    started (Ray's raylet, torchrun's ranks, a server) inherits it, whatever session or parent it has now."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get("TMPDIR") == tmpdir:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return psutil.wait_procs(found, timeout=grace_s)[1]


def run_under(tmpdir: str, code: str, timeout: float) -> str:
    """Run `code` in a child Python with TMPDIR=`tmpdir` (and no RAY_TMPDIR); its output. Fails the test when
    it exits non-zero, runs past `timeout` seconds (then it and all it started are killed), or leaves a
    process running."""
    pythonpath = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TMPDIR": tmpdir, "PYTHONPATH": pythonpath, "FLWR_TELEMETRY_ENABLED": "0",
           "OMP_NUM_THREADS": "1"}
    env.pop("RAY_TMPDIR", None)
    with tempfile.TemporaryFile("w+") as out:  # a file, not a pipe: an orphan holding a pipe open is no hang
        child = processes.start([sys.executable, "-c", code], env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
        start = time.monotonic()
        try:
            child.wait(timeout=timeout)
            hung = False
        except subprocess.TimeoutExpired:
            processes.stop_tree(child, grace_s=0)
            hung = True
        finally:
            strays = inheritors(tmpdir)
            processes.stop_tree(*strays, grace_s=0)
        out.seek(0)
        output = out.read()
    where = f"TMPDIR of {len(tmpdir)} characters"
    assert not hung, f"no result within {timeout} s under a {where} (killed):\n{output[-3000:]}"
    assert child.returncode == 0, f"exit code {child.returncode} under a {where}:\n{output[-3000:]}"
    assert not strays, f"left running under a {where}: {[p.pid for p in strays]}"
    print(f"{len(tmpdir)}-character TMPDIR: {time.monotonic() - start:.1f} s")
    return output


# ----------------------------------------------------------------- the folder for Ray (no Ray needed)

@pytest.fixture
def tmpdir_env(monkeypatch):
    """Set TMPDIR for this process (tempfile re-reads it) with no RAY_TMPDIR; restored afterwards."""
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", None)

    def use(path: str) -> None:
        monkeypatch.setenv("TMPDIR", path)
        tempfile.tempdir = None
    return use


def test_under_a_macos_length_tmpdir_ray_gets_a_folder_in_tmp_that_its_sockets_fit(tmpdir_env, macos_tmpdir):
    tmpdir_env(macos_tmpdir)
    assert tempfile.gettempdir() == macos_tmpdir.rstrip("/")
    folder = processes.short_temp_dir("ray-", processes.RAY_SOCKET_TAIL)
    try:
        assert folder.startswith("/tmp/ray-")
        assert len(folder) + processes.RAY_SOCKET_TAIL <= processes.SOCKET_PATH_MAX
        # the old way (mkdtemp in TMPDIR) would not have fitted
        assert len(os.path.join(macos_tmpdir, "ray-12345678")) + processes.RAY_SOCKET_TAIL > 107
    finally:
        os.rmdir(folder)


def test_a_short_tmpdir_and_ray_tmpdir_are_used(tmpdir_env, monkeypatch):
    short = tempfile.mkdtemp(dir="/tmp")
    try:
        tmpdir_env(short)
        folder = processes.short_temp_dir("ray-", processes.RAY_SOCKET_TAIL)
        assert Path(folder).parent == Path(short)
        chosen = os.path.join(short, "r")  # RAY_TMPDIR need not exist yet: it is made, as Ray would
        monkeypatch.setenv("RAY_TMPDIR", chosen)
        folder = processes.short_temp_dir("ray-", processes.RAY_SOCKET_TAIL)
        assert Path(folder).parent == Path(chosen)
    finally:
        shutil.rmtree(short)


def test_with_no_short_folder_it_fails_at_once_saying_what_to_do(tmpdir_env, long_tmpdir, monkeypatch):
    tmpdir_env(long_tmpdir)
    monkeypatch.setattr(processes, "FALLBACK_DIRS", (long_tmpdir, "/proc/no-such-folder"))
    clock = time.perf_counter()
    with pytest.raises(processes.SocketFolderError) as caught:
        processes.short_temp_dir("ray-", processes.RAY_SOCKET_TAIL)
    assert time.perf_counter() - clock < 1
    message = str(caught.value)
    assert "Ray cannot start" in message and "RAY_TMPDIR=/tmp/r" in message
    assert f"at most {processes.SOCKET_PATH_MAX} bytes" in message
    assert f"{long_tmpdir.rstrip('/')} ({LONG - 1} characters)" in message
    assert "/proc/no-such-folder: cannot make a folder there" in message
    # a RAY_TMPDIR that does not fit is refused, not silently replaced by /tmp
    monkeypatch.setattr(processes, "FALLBACK_DIRS", ("/tmp",))
    monkeypatch.setenv("RAY_TMPDIR", long_tmpdir)
    with pytest.raises(processes.SocketFolderError, match="RAY_TMPDIR is set"):
        processes.short_temp_dir("ray-", processes.RAY_SOCKET_TAIL)


def test_ray_refusing_a_long_socket_path_is_not_retried(monkeypatch):
    """`_start_ray` retries a slow raylet, but a socket path too long fails the same way each time: it stops
    at the first attempt and says what to do. (Ray's own check, faked here: no Ray starts.)"""
    import ray

    from course import federated as fl

    calls = []

    def refuse(**kwargs):
        calls.append(kwargs)
        raise OSError("validate_socket_filename failed: AF_UNIX path length cannot exceed 107 bytes: /x")

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(processes.SocketFolderError, match=r"(?s)AF_UNIX path length.*RAY_TMPDIR=/tmp/r"):
        fl._start_ray({"_temp_dir": "/x"}, exclude=set())
    assert len(calls) == 1


# ----------------------------------------------------------------- Ray (05's simulations)

RAY_START = """
import logging, os, shutil, ray
from course import federated as fl
folder = fl.ray_temp_dir()
fl._start_ray({"num_cpus": 1, "num_gpus": 0, "include_dashboard": False, "_temp_dir": folder,
               "logging_level": logging.ERROR, "log_to_driver": False}, exclude=set())
sockets = ray._private.worker.global_worker.node.get_sockets_dir_path()
print("UP", ray.is_initialized(), folder, sockets, sorted(os.listdir(sockets)))
ray.shutdown()
fl._reap_children(exclude=set())
shutil.rmtree(folder)
"""


def test_ray_starts_under_a_macos_length_tmpdir(macos_tmpdir):
    """Ray as 05's simulations start it (`ray_temp_dir`, `_start_ray`), under macOS's TMPDIR length: its
    sockets go to /tmp/ray-*, and nothing is left running or on disk."""
    output = run_under(macos_tmpdir, RAY_START, timeout=120)
    line = next(line for line in output.splitlines() if line.startswith("UP"))
    _, up, folder, sockets, names = line.split(" ", 4)
    assert up == "True" and folder.startswith("/tmp/ray-") and sockets.startswith(folder)
    assert "plasma_store" in names
    assert not os.path.exists(folder)


@pytest.mark.slow
def test_the_simulation_runs_under_a_macos_length_tmpdir(macos_tmpdir):
    """05's `simulate`, one round of two cars, under macOS's TMPDIR length. Before `ray_temp_dir` it failed
    here in ~3 s: "AF_UNIX path length cannot exceed 107 bytes" (05b's `simulate_secagg` the same way)."""
    output = run_under(macos_tmpdir, """
from course import federated as fl
runs = fl.simulate({"iid": fl.Experiment(rounds=1)}, n_clients=2, progress=False)
print("ROUNDS", len(runs["iid"].accuracy))
""", timeout=180)
    assert "ROUNDS 1" in output


@pytest.mark.parametrize("which", ["simulate", "simulate_secagg"])
def test_both_simulations_ask_for_the_short_folder_before_starting_anything(monkeypatch, which):
    """Where no folder fits, 05's and 05b's simulations fail at once with `ray_temp_dir`'s message: no Ray
    process starts (the folder is asked for first)."""
    import psutil

    from course import federated as fl
    from course import fl_secagg as sa

    def nowhere():
        raise processes.SocketFolderError("Ray cannot start: (no folder fits)")

    monkeypatch.setattr(fl, "ray_temp_dir", nowhere)
    before = psutil.Process().children(recursive=True)
    run = {"simulate": lambda: fl.simulate({"iid": fl.Experiment(rounds=1)}, n_clients=2, progress=False),
           "simulate_secagg": lambda: sa.simulate_secagg(4, rounds=1)}[which]
    clock = time.perf_counter()
    with pytest.raises(processes.SocketFolderError, match="no folder fits"):
        run()
    assert time.perf_counter() - clock < 5
    assert psutil.Process().children(recursive=True) == before


# ----------------------------------------------------------------- the other process-starting helpers

RANKS = """
from course import launch as L
def rank():
    import torch.distributed as dist
    return dist.get_rank(), dist.get_world_size()
L.set_start_method({method!r})
print("RANKS", L.launch(rank, 2, quiet=True, timeout=90).results)
L.stop_fork_server()
"""


@pytest.mark.parametrize("method", ["torchrun", "fork-server"])
def test_launch_runs_its_ranks_under_a_long_tmpdir(long_tmpdir, method):
    """04's `launch`: torchrun (its c10d TCP store, its log folder in TMPDIR) and the fork server."""
    assert "RANKS [(0, 2), (1, 2)]" in run_under(long_tmpdir, RANKS.format(method=method), timeout=150)


def test_reliability_training_process_restarts_under_a_long_tmpdir(long_tmpdir):
    """06's training process: killed at step 12, restarted from its step-10 checkpoint (scratch in TMPDIR)."""
    output = run_under(long_tmpdir, """
import os
from course import reliability as rel
folder = rel.scratch_folder()  # in TMPDIR, removed at exit
log = os.path.join(folder, "log.txt")
def start(attempt):
    proc = rel.start_training(os.path.join(folder, "ckpt"), 20, 10, log, step_delay=0.02)
    if attempt == 0:
        rel.kill_at_step(proc, log, 12)
    return proc
print("CODES", rel.supervise(start))
""", timeout=120)
    assert "CODES [-9, 0]" in output


def test_contention_workers_start_under_a_long_tmpdir(long_tmpdir):
    output = run_under(long_tmpdir, """
from course import contention as C
with C.background_models(C.WORKLOADS[:1], seconds=20) as workers:
    print("WORKERS", len(workers))
""", timeout=120)
    assert "WORKERS 1" in output


def test_model_server_answers_under_a_long_tmpdir(long_tmpdir):
    """07b's model server (its log file goes to TMPDIR)."""
    output = run_under(long_tmpdir, """
import httpx
from course.model_server import ModelServer
with ModelServer() as server:
    print("HEALTH", httpx.get(server.url + "/health", timeout=30).status_code, server.log_path)
""", timeout=120)
    assert "HEALTH 200" in output


def test_a_jupyter_kernel_runs_under_a_long_tmpdir(long_tmpdir):
    """The notebooks' kernel (its connection file is in Jupyter's runtime folder, its sockets are TCP)."""
    output = run_under(long_tmpdir, """
import nbformat
from nbclient import NotebookClient
nb = nbformat.v4.new_notebook()
nb.cells = [nbformat.v4.new_code_cell("import tempfile; print(len(tempfile.gettempdir()))")]
NotebookClient(nb, timeout=60, kernel_name="python3").execute()
print("KERNEL", nb.cells[0].outputs[0]["text"].strip())
""", timeout=120)
    assert f"KERNEL {LONG - 1}" in output


def test_a_grading_kernel_starts_on_unix_sockets_under_a_long_tmpdir(long_tmpdir, tmp_path):
    """The grader's kernels talk over Unix sockets (transport "ipc") in `grade._ipc_folder`; under TMPDIR
    their paths were too long and the kernel's start failed (ZMQError "File name too long")."""
    output = run_under(long_tmpdir, f"""
from pathlib import Path
from jupyter_client import KernelManager
from autograders import grade
folder = grade._ipc_folder(Path({str(tmp_path)!r}))
folder.mkdir()
manager = KernelManager(transport="ipc", ip=str(folder / "k"))
manager.start_kernel()
client = manager.client()
client.start_channels()
try:
    client.wait_for_ready(timeout=60)
    print("READY", folder)
finally:
    client.stop_channels()
    manager.shutdown_kernel(now=True)
    __import__("shutil").rmtree(folder)
""", timeout=120)
    assert "READY /tmp/grade-ipc-" in output


@pytest.mark.slow
def test_flower_deployment_runs_under_a_long_tmpdir(long_tmpdir):
    """05's deployment engine: a SuperLink, two SuperNodes and `flwr run` (gRPC over TCP)."""
    output = run_under(long_tmpdir, """
from course.flower_deploy import deploy
print("DEPLOYED", "test accuracy per round" in deploy(rounds=1))
""", timeout=240)
    assert "DEPLOYED True" in output


# ----------------------------------------------------------------- what macOS lacks

def _rank_and_world():
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


def test_without_linux_a_fork_server_launch_uses_torchrun(monkeypatch):
    """04's notebooks ask for the fork server; it needs Linux (/proc, fork after loading torch), so on macOS
    the same launch runs on torchrun instead of failing."""
    from course import launch as L

    monkeypatch.setattr(sys, "platform", "darwin")
    assert not L.fork_server_supported()
    L.set_start_method("fork-server")
    try:
        run = L.launch(_rank_and_world, 2, quiet=True, timeout=90)
    finally:
        L.set_start_method("torchrun")
        L.stop_fork_server()
    assert run.command.startswith("torchrun") and run.results == [(0, 2), (1, 2)]


def test_the_grading_kernel_counts_this_users_tasks_without_proc(monkeypatch):
    """Outside the namespaces (macOS has none) the grading kernel caps tasks at RLIMIT_NPROC set above what
    this user runs; it counted them in /proc, which macOS lacks, so the kernel crashed at start."""
    from autograders import kernel

    with_proc = kernel._tasks_of_this_user()
    listdir = os.listdir

    def no_proc(path="."):
        if str(path).startswith("/proc"):
            raise FileNotFoundError(2, "No such file or directory", path)
        return listdir(path)

    monkeypatch.setattr(os, "listdir", no_proc)
    without = kernel._tasks_of_this_user()
    assert without >= psutil.Process().num_threads() and with_proc >= psutil.Process().num_threads()
