"""The grading kernel's cage: no network, a memory cap, bounded files (Linux).

A submission's code runs in an ipykernel started through `kernel_argv`:

    unshare --user --map-root-user --net  sh -c 'ip link set lo up && exec python autograders/kernel.py ...'

- a new network namespace with only loopback: torchrun and gloo still work on 127.0.0.1, nothing
  else is reachable; the kernel talks to nbgrader over Unix sockets (``transport = "ipc"``), since
  TCP to the grader's loopback is outside the namespace;
- `autograders/kernel.py` caps each process's allocations (RLIMIT_DATA; unlike RLIMIT_AS it does
  not count the address space torch reserves but never touches) and the size of any file it
  writes, and turns off core dumps, then runs ipykernel.

Where user namespaces are not allowed, only the limits apply; `isolation()` says which.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

KERNEL_NAME = "course-grading"
MEMORY_BYTES = 2 * 2**30      # per process: a module's whole run peaks under 1.5 GB
FILE_BYTES = 256 * 2**20      # no course exercise writes a file near this


@functools.cache
def namespaces_available() -> bool:
    """Whether this machine lets an unprivileged process create user and network namespaces."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    try:
        probe = ["unshare", "--user", "--map-root-user", "--net", "ip", "link", "set", "lo", "up"]
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def isolation() -> str:
    """One line for the report: what the grading kernel is and is not kept from."""
    limits = f"memory {MEMORY_BYTES // 2**30} GB per process, files {FILE_BYTES // 2**20} MB"
    if namespaces_available():
        return f"grading kernels: no network (loopback only), {limits}"
    return f"grading kernels: {limits}; NETWORK NOT ISOLATED (user namespaces unavailable here)"


def kernel_argv(memory_bytes: int = MEMORY_BYTES, file_bytes: int = FILE_BYTES) -> list[str]:
    limited = [sys.executable, str(Path(__file__).with_name("kernel.py")), str(memory_bytes), str(file_bytes),
               "-f", "{connection_file}"]
    if not namespaces_available():
        return limited
    return ["unshare", "--user", "--map-root-user", "--net", "sh", "-c",
            'ip link set lo up && exec "$@"', "sandbox", *limited]


def write_kernelspec(jupyter_dir: Path, **limits) -> str:
    """Install the grading kernel under `jupyter_dir`/kernels (put `jupyter_dir` on JUPYTER_PATH)."""
    folder = Path(jupyter_dir) / "kernels" / KERNEL_NAME
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"argv": kernel_argv(**limits), "display_name": "Python 3 (grading sandbox)", "language": "python",
            "metadata": {"debugger": False}}
    (folder / "kernel.json").write_text(json.dumps(spec, indent=1))
    return KERNEL_NAME
