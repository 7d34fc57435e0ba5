"""The grading kernel's cage: no network, a walled-in file system, memory and file caps (Linux).

A submission's code runs in an ipykernel started through `kernel_argv`:

    unshare --user --map-root-user --mount --net --pid --fork --kill-child --mount-proc \
        sh -c 'ip link set lo up && exec python autograders/kernel.py ...'

- a new network namespace with only loopback: torchrun and gloo still work on 127.0.0.1, nothing
  else is reachable; the kernel talks to nbgrader over Unix sockets (``transport = "ipc"``), since
  TCP to the grader's loopback is outside the namespace;
- a new mount namespace in which `autograders/kernel.py` makes the whole file system read-only,
  gives the kernel private /tmp, /dev/shm and home folders, hides the grading folder (gradebook,
  other submissions), ``solutions/`` and ``.git``, and leaves writable only the folder the notebook
  runs in;
- a new PID namespace, the kernel its PID 1 (``--kill-child``: killing ``unshare`` kills it): when
  the kernel exits or is killed, everything left in the namespace is killed too, so nothing a
  submission starts (``Popen(..., start_new_session=True)``, daemons) outlives its grading;
- a cap of `MAX_TASKS` processes and threads at once (`kernel.cap_tasks`: a pids control group
  where the machine allows one, else RLIMIT_NPROC), so a fork bomb stops at the cap;
- caps on each process's allocations (RLIMIT_DATA; unlike RLIMIT_AS it does not count the address
  space torch reserves but never touches) and on the size of any file, and no core dumps.

Where user namespaces are not allowed, only the caps apply; `isolation()` says so, loudly. Either
way the grader sets `MARK` in the environment of each nbgrader run, which every process the
kernel starts inherits, and `kill_marked` kills what is left after the run (a process that
clears its own environment escapes this fallback; the PID namespace has no such gap).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

KERNEL_NAME = "course-grading"
MEMORY_BYTES = 2 * 2**30      # per process: a module's whole run peaks under 1.5 GB
FILE_BYTES = 256 * 2**20      # no course exercise writes a file near this
KERNEL_SCRIPT = Path(__file__).with_name("kernel.py")
MAX_TASKS = 512              # processes and threads at once: 06's torchrun ranks use under 150
NAMESPACES = ["unshare", "--user", "--map-root-user", "--mount", "--net"]
PID_NAMESPACE = ["--pid", "--fork", "--kill-child", "--mount-proc"]
MARK = "COURSE_GRADING_RUN"   # environment variable: which grading run started a process

# Run inside the namespaces: wall in, then check that the walls hold.
PROBE = """
import os, sys
sys.path.insert(0, {folder!r})
from kernel import confine
confine(writable=[os.getcwd()], keep=[sys.prefix], hide=[])
try:
    open("/etc/grading-probe", "w")
except OSError:
    print("walled")
"""


def _walls_hold(namespaces: list[str]) -> bool:
    probe = PROBE.format(folder=str(KERNEL_SCRIPT.parent))
    command = [*namespaces, "sh", "-c", 'ip link set lo up && exec "$@"', "probe",
               sys.executable, "-c", probe]
    try:
        with tempfile.TemporaryDirectory() as work:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=work)
        return done.returncode == 0 and done.stdout.strip() == "walled"
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.cache
def unshare_argv() -> tuple[str, ...] | None:
    """The `unshare` command that walls a kernel in here: with a PID namespace where the machine
    allows one, else without; None where user namespaces are not allowed at all."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return None
    for namespaces in ([*NAMESPACES, *PID_NAMESPACE], NAMESPACES):
        if _walls_hold(namespaces):
            return tuple(namespaces)
    return None


def namespaces_available() -> bool:
    """Whether this machine lets the grader build the kernel's walls (user, mount, net namespaces)."""
    return unshare_argv() is not None


def pid_namespace_available() -> bool:
    """Whether grading kernels run in a PID namespace of their own (see the module docstring)."""
    return unshare_argv() is not None and "--pid" in unshare_argv()


def kill_marked(mark: str) -> int:
    """Kill every process whose environment carries ``MARK=mark``; how many there were.

    The fallback for machines without PID namespaces: what a grading kernel started (in a new
    session or not) inherited the mark from the nbgrader run that started the kernel.
    """
    import psutil

    from course.processes import stop_tree

    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(MARK) == mark:
                found.append(proc)
        except (psutil.Error, OSError):
            continue  # gone, a zombie, or not ours to read
    stop_tree(*found, grace_s=0)  # and anything they started that no longer carries the mark
    return len(found)


def after_run(mark: str) -> int:
    """What the grader does when an nbgrader run ends: kill what its kernels left (`kill_marked`)
    and remove the empty pids control groups of ended kernels. How many processes were killed."""
    from autograders import kernel

    killed = kill_marked(mark)
    parent = kernel._own_pids_cgroup()
    if parent is not None:
        kernel.remove_cgroups(parent, mark)
    return killed


def isolation() -> str:
    """One line for the report: what the grading kernel is and is not kept from."""
    memory = ("memory NOT capped (macOS does not enforce RLIMIT_DATA)" if sys.platform == "darwin"
              else f"memory {MEMORY_BYTES // 2**30} GB per process")
    limits = f"{memory}, files {FILE_BYTES // 2**20} MB, {MAX_TASKS} processes and threads"
    if namespaces_available():
        ends = ("everything a kernel starts ends with it (PID namespace)" if pid_namespace_available() else
                "what a kernel starts is found by its environment and killed after grading "
                "(no PID namespace)")
        return (f"grading kernels: no network (loopback only), read-only file system with private /tmp "
                f"and home, gradebook and other submissions hidden; {ends}; {limits}")
    return (f"grading kernels: {limits}; NETWORK AND FILES NOT ISOLATED (user namespaces unavailable "
            "here: grade only submissions you trust, or inside a container)")


def kernel_argv(memory_bytes: int = MEMORY_BYTES, file_bytes: int = FILE_BYTES,
                hide: list[str] | tuple = (), max_tasks: int = MAX_TASKS) -> list[str]:
    """The grading kernel's command line (a kernel spec's argv), walled in where the machine allows."""
    limited = [sys.executable, str(KERNEL_SCRIPT), str(memory_bytes), str(file_bytes),
               "--tasks", str(max_tasks)]
    if not namespaces_available():
        return [*limited, "-f", "{connection_file}"]
    walls = ["--confine", *(arg for path in hide for arg in ("--hide", str(path)))]
    return [*unshare_argv(), "sh", "-c", 'ip link set lo up && exec "$@"', "sandbox", *limited, *walls,
            "-f", "{connection_file}"]


def write_kernelspec(jupyter_dir: Path, **options) -> str:
    """Install the grading kernel under `jupyter_dir`/kernels (put `jupyter_dir` on JUPYTER_PATH)."""
    folder = Path(jupyter_dir) / "kernels" / KERNEL_NAME
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"argv": kernel_argv(**options), "display_name": "Python 3 (grading sandbox)",
            "language": "python", "metadata": {"debugger": False}}
    (folder / "kernel.json").write_text(json.dumps(spec, indent=1))
    return KERNEL_NAME
