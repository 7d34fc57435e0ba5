"""The grading kernel's cage: no network, a walled-in file system, memory and file caps (Linux).

A submission's code runs in an ipykernel started through `kernel_argv`:

    unshare --user --map-root-user --mount --net \
        sh -c 'ip link set lo up && exec python autograders/kernel.py ...'

- a new network namespace with only loopback: torchrun and gloo still work on 127.0.0.1, nothing
  else is reachable; the kernel talks to nbgrader over Unix sockets (``transport = "ipc"``), since
  TCP to the grader's loopback is outside the namespace;
- a new mount namespace in which `autograders/kernel.py` makes the whole file system read-only,
  gives the kernel private /tmp, /dev/shm and home folders, hides the grading folder (gradebook,
  other submissions), ``solutions/`` and ``.git``, and leaves writable only the folder the notebook
  runs in;
- caps on each process's allocations (RLIMIT_DATA; unlike RLIMIT_AS it does not count the address
  space torch reserves but never touches) and on the size of any file, and no core dumps.

Where user namespaces are not allowed, only the caps apply; `isolation()` says so, loudly.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

KERNEL_NAME = "course-grading"
MEMORY_BYTES = 2 * 2**30      # per process: a module's whole run peaks under 1.5 GB
FILE_BYTES = 256 * 2**20      # no course exercise writes a file near this
KERNEL_SCRIPT = Path(__file__).with_name("kernel.py")
NAMESPACES = ["unshare", "--user", "--map-root-user", "--mount", "--net"]

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


@functools.cache
def namespaces_available() -> bool:
    """Whether this machine lets the grader build the kernel's walls (user, mount, net namespaces)."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    probe = PROBE.format(folder=str(KERNEL_SCRIPT.parent))
    command = [*NAMESPACES, "sh", "-c", 'ip link set lo up && exec "$@"', "probe",
               sys.executable, "-c", probe]
    try:
        with tempfile.TemporaryDirectory() as work:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=work)
        return done.returncode == 0 and done.stdout.strip() == "walled"
    except (OSError, subprocess.TimeoutExpired):
        return False


def isolation() -> str:
    """One line for the report: what the grading kernel is and is not kept from."""
    limits = f"memory {MEMORY_BYTES // 2**30} GB per process, files {FILE_BYTES // 2**20} MB"
    if namespaces_available():
        return (f"grading kernels: no network (loopback only), read-only file system with private /tmp "
                f"and home, gradebook and other submissions hidden; {limits}")
    return (f"grading kernels: {limits}; NETWORK AND FILES NOT ISOLATED (user namespaces unavailable "
            "here: grade only submissions you trust, or inside a container)")


def kernel_argv(memory_bytes: int = MEMORY_BYTES, file_bytes: int = FILE_BYTES,
                hide: list[str] | tuple = ()) -> list[str]:
    limited = [sys.executable, str(KERNEL_SCRIPT), str(memory_bytes), str(file_bytes)]
    if not namespaces_available():
        return [*limited, "-f", "{connection_file}"]
    walls = ["--confine", *(arg for path in hide for arg in ("--hide", str(path)))]
    return [*NAMESPACES, "sh", "-c", 'ip link set lo up && exec "$@"', "sandbox", *limited, *walls,
            "-f", "{connection_file}"]


def write_kernelspec(jupyter_dir: Path, **options) -> str:
    """Install the grading kernel under `jupyter_dir`/kernels (put `jupyter_dir` on JUPYTER_PATH)."""
    folder = Path(jupyter_dir) / "kernels" / KERNEL_NAME
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"argv": kernel_argv(**options), "display_name": "Python 3 (grading sandbox)",
            "language": "python", "metadata": {"debugger": False}}
    (folder / "kernel.json").write_text(json.dumps(spec, indent=1))
    return KERNEL_NAME
