"""The grading kernel: cap this process, wall it in, then become an ordinary ipykernel.

    python autograders/kernel.py MEMORY_BYTES FILE_BYTES [--tasks N] [--confine [--hide PATH]...] \
        -f CONNECTION_FILE

Run by path (it imports nothing of the course), from the kernel spec `sandbox.write_kernelspec`
writes. Limits and walls are inherited by everything the kernel starts (torchrun, ranks, Ray).

With ``--confine`` it must already run as root of fresh user, mount and network namespaces
(`sandbox.kernel_argv` starts it under ``unshare``). It then changes only its own view of the
file system:

- every mount is read-only: the course, the Python installation, the rest of the machine;
- /tmp, /dev/shm, /var/tmp and the home folder are fresh, empty and private (in memory, capped);
- each ``--hide`` path (the grading folder with the gradebook and every other submission,
  ``solutions/``, ``.git``, the submissions as the instructor gave them) is covered by an empty read-only
  folder, or a file by an empty read-only file;
- writable again: only the folder the notebook runs in, and the folder of the kernel's sockets;
- the course and the Python installation are put back (read-only) where a private folder covered them;
- nbgrader's bookkeeping files beside the notebook (``GRADER_FILES``: the submission's time and secret,
  which generating and releasing feedback read) are bound read-only onto themselves, so notebook code
  can neither delete nor change them (one student could otherwise stop ``release_feedback`` for all).

Before anything, the kernel keeps of its environment only what Python, the course and its libraries read
(``KEEP_NAMES``, ``KEEP_PREFIXES``; no secret names, no credentials in URLs) and starts again with that
(exec, so ``/proc/self/environ`` holds nothing else either): on a lab hub the instructor's server passes
``JUPYTERHUB_API_TOKEN``, and an instructor's shell may hold anything, which a notebook could print into
its feedback.

Last, it enters a second user namespace, which locks all of that: code in the kernel is root
only there and can neither undo a read-only mount nor lift a cover (mount_namespaces(7), "locked").

``--tasks N`` caps the processes and threads the kernel and everything it starts may hold at once
(`cap_tasks`): a pids control group where the machine lets this process make one (the only cap
that also binds a grader running as root), and RLIMIT_NPROC besides.

Under ``unshare --pid --fork --kill-child`` the kernel is PID 1 of its own PID namespace: when it
exits, or is killed, the kernel kills everything left in that namespace (pid_namespaces(7)), so
nothing a submission starts outlives its grading. As PID 1 it gets only the signals it has a
handler for; ipykernel installs Python's SIGINT handler while a cell runs, so an interrupt still
stops a cell, and orphans it does not reap stay zombies only until the namespace ends.
"""

import ctypes
import json
import os
import re
import resource
import runpy
import signal
import sys
import time

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_BIND = 0x1, 0x2, 0x4, 0x1000
CLONE_NEWNS, CLONE_NEWUSER = 0x20000, 0x10000000
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 0x1
PRIVATE_SIZES = {"/tmp": "1g", "/dev/shm": "1g", "/var/tmp": "64m"}
CGROUP_ROOT = "/sys/fs/cgroup"
CGROUP_PREFIX = "grading-kernel-"
HOME_SIZE = "256m"
GRADER_FILES = ("timestamp.txt", "submission_secret.txt")   # nbgrader's, beside a submitted notebook
# The grading kernel's environment is an allow-list: what Python, the course, nbgrader, torch and its thread
# pools, Ray and Flower read, and the locale. Everything else of the grader's shell stays out (a database URL
# with its password, make's MAKEFLAGS carrying the command line's variables, JupyterHub's API token...), and
# so does any allowed name that holds a secret word, or a value that holds credentials in a URL.
KEEP_NAMES = {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TERM", "USER", "LOGNAME", "SHELL", "TMPDIR", "PWD",
              "COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "CI", "COLAB_RELEASE_TAG", "LD_LIBRARY_PATH",
              "VIRTUAL_ENV", "MPLBACKEND", "MPLCONFIGDIR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"}
KEEP_PREFIXES = ("COURSE_", "SYSML_", "NBGRADER_", "PYTHON", "OMP_", "MKL_", "OPENBLAS_", "NUMEXPR_", "KMP_",
                 "GOMP_", "TORCH", "PYTORCH_", "CUDA_", "NVIDIA_", "NCCL_", "GLOO_", "MASTER_", "LC_", "XDG_",
                 "JUPYTER_", "IPYTHON", "RAY_", "FLWR_", "TF_", "LITERT_", "CONDA_")
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "API_KEY", "ACCESS_KEY",
                "PRIVATE_KEY", "AUTH")
CREDENTIALS_IN_URL = re.compile(r"://[^/\s:@]+:[^/\s@]+@")    # scheme://user:password@host


_libc = ctypes.CDLL(None, use_errno=True)


def limit(memory_bytes: int, file_bytes: int) -> None:
    # RLIMIT_DATA counts what a process allocates (heap and private mappings) but not address
    # space reserved and never touched, which torch reserves generously: RLIMIT_AS would break it.
    # macOS does not enforce RLIMIT_DATA for mmap'd memory and may refuse to set it (EINVAL): there the
    # kernel starts without a memory cap (sandbox.isolation() says so) instead of dying at start.
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, memory_bytes))
    except (ValueError, OSError):
        if sys.platform != "darwin":
            raise
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write raises OSError, no kill


def _own_pids_cgroup() -> str | None:
    """The folder of this process's pids control group (v1 pids hierarchy, else v2), or None."""
    try:
        lines = open("/proc/self/cgroup").read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):
            folder = os.path.join(CGROUP_ROOT, "pids", path.lstrip("/"))
            return folder if os.path.isdir(folder) else None
    for line in lines:
        if line.startswith("0::"):
            folder = os.path.join(CGROUP_ROOT, line[3:].lstrip("/"))
            try:
                if "pids" in open(os.path.join(folder, "cgroup.subtree_control")).read().split():
                    return folder
            except OSError:
                return None
    return None


def remove_cgroups(parent: str, mark: str = "", older_than_s: float = 0) -> None:
    """Remove the empty groups of ended kernels under `parent` whose names start with `mark` (the
    grading run's environment mark) and that were made over `older_than_s` ago (a younger one may
    belong to a kernel still moving in). rmdir refuses a group that still holds a process."""
    prefix = CGROUP_PREFIX + mark
    for name in os.listdir(parent):
        path = os.path.join(parent, name)
        try:
            if name.startswith(prefix) and time.time() - os.stat(path).st_mtime > older_than_s:
                os.rmdir(path)
        except OSError:
            pass


def _join_pids_cgroup(max_tasks: int) -> bool:
    parent = _own_pids_cgroup()
    if parent is None:
        return False
    try:
        remove_cgroups(parent, older_than_s=600)  # left by kernels of runs that were killed
        mark = os.environ.get("COURSE_GRADING_RUN", "")  # sandbox.MARK: the grader removes it after the run
        group = os.path.join(parent, f"{CGROUP_PREFIX}{mark}-{os.urandom(4).hex()}")
        os.mkdir(group)
        with open(os.path.join(group, "pids.max"), "w") as handle:
            handle.write(str(max_tasks))
        with open(os.path.join(group, "cgroup.procs"), "w") as handle:
            handle.write("0")  # this process; everything it starts is born inside
        return True
    except OSError:
        return False


def _tasks_of_this_user() -> int:
    uid, count = os.getuid(), 0
    try:
        entries = os.listdir("/proc")
    except OSError:  # no /proc (macOS): ask psutil, slower
        return _tasks_of_this_user_psutil(uid)
    for entry in entries:
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid:
                count += len(os.listdir(f"/proc/{entry}/task"))
        except OSError:
            pass
    return count


def _tasks_of_this_user_psutil(uid: int) -> int:
    import psutil

    count = 0
    for proc in psutil.process_iter():
        try:
            if proc.uids().real == uid:
                count += proc.num_threads()
        except (psutil.Error, OSError):
            pass
    return count


def limit_tasks(max_tasks: int, own_user_namespace: bool) -> bool:
    """RLIMIT_NPROC for this process and its descendants; whether it binds (never for real root).

    RLIMIT_NPROC counts a user's tasks (processes and threads): per user namespace since Linux
    5.14 (`own_user_namespace`: this process is alone in a fresh one), so the cap is `max_tasks`;
    machine-wide before that, or outside a namespace, so the cap is set `max_tasks` above what
    this user already runs.
    """
    release = tuple(int(part) for part in os.uname().release.split(".")[:2] if part.isdigit())
    fresh = own_user_namespace and release >= (5, 14)
    nproc = max_tasks if fresh else max_tasks + _tasks_of_this_user()
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    except (ValueError, OSError):
        return False
    return os.getuid() != 0 if fresh else os.geteuid() != 0


def cap_tasks(max_tasks: int, own_user_namespace: bool = False) -> str:
    """Cap the processes and threads this process and its descendants hold at once at `max_tasks`.

    A pids control group where this process may make one (it binds root too), and RLIMIT_NPROC
    (`limit_tasks`). Returns the cap that binds: "cgroup", "rlimit" or "none".
    """
    joined = _join_pids_cgroup(max_tasks)
    limited = limit_tasks(max_tasks, own_user_namespace)
    return "cgroup" if joined else "rlimit" if limited else "none"


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"grading sandbox: {what}: {os.strerror(err)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                       ctypes.c_ulong(flags), data.encode() if data else None), f"mount {target}")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _set_read_only(path: str, read_only: bool, recursive: bool) -> None:
    attr = _MountAttr(MOUNT_ATTR_RDONLY if read_only else 0, 0 if read_only else MOUNT_ATTR_RDONLY, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    _check(_libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), flags, ctypes.byref(attr),
                         ctypes.sizeof(attr)), f"make {path} {'read-only' if read_only else 'writable'}")


def _cover(path: str, size: str, writable: bool) -> None:
    mode = "1777" if path in PRIVATE_SIZES else "755"
    _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | (0 if writable else MS_RDONLY),
           f"size={size},mode={mode}")


def _put_back(path: str, held: int, writable: bool) -> None:
    os.makedirs(path, exist_ok=True)  # inside a private or covering folder, made just now
    _mount(f"/proc/self/fd/{held}", path, None, MS_BIND)
    _set_read_only(path, not writable, recursive=False)


def _enter_locked_namespace() -> None:
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as handle:
            handle.write(text)


def confine(writable: list[str], keep: list[str], hide: list[str]) -> None:
    """Wall this process in (see the module docstring); it must be root of its own namespaces."""
    writable = [os.path.realpath(p) for p in writable]
    keep = sorted({os.path.realpath(p) for p in keep if os.path.isdir(p)}, key=len)
    held = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in [*keep, *writable]}
    home = os.path.realpath(os.path.expanduser("~"))

    _set_read_only("/", True, recursive=True)
    _set_read_only("/proc", False, recursive=False)  # the kernel's own process settings, as before
    for path, size in PRIVATE_SIZES.items():
        if os.path.isdir(path):
            _cover(path, size, writable=True)
    if os.path.isdir(home) and home != "/":
        _cover(home, HOME_SIZE, writable=True)
    for path in keep:  # the course and Python, where a private folder now covers them
        if not os.path.exists(path):
            _put_back(path, held[path], writable=False)
    covered = []
    for path in sorted({os.path.realpath(p) for p in hide}, key=len):
        if any(path.startswith(w + os.sep) for w in writable):
            continue  # inside a folder put back writable below, which would shadow the cover
        if os.path.isfile(path):  # a file (the submissions' zip): an empty one bound over it, read-only
            empty = "/tmp/.hidden-file"  # in the private /tmp made above
            open(empty, "w").close()
            _mount(empty, path, None, MS_BIND)
            _set_read_only(path, True, recursive=False)
            continue
        try:  # a hidden path under /tmp or home is gone already: cover its place all the same
            os.makedirs(path, exist_ok=True)
        except OSError:
            continue  # absent, in a read-only place: nothing to hide
        _cover(path, "1m", writable=True)   # writable only long enough to make mount points
        covered.append(path)
    for path in sorted(writable, key=len):
        _put_back(path, held[path], writable=True)
    for path in writable:   # nbgrader's bookkeeping beside the notebook: read-only mount points
        for name in GRADER_FILES:
            target = os.path.join(path, name)
            if os.path.isfile(target) and not os.path.islink(target):
                _mount(target, target, None, MS_BIND)
                _set_read_only(target, True, recursive=False)
    for path in covered:
        _set_read_only(path, True, recursive=False)  # the binds on top keep their own flags
    for fd in held.values():
        os.close(fd)
    _enter_locked_namespace()


def _options(argv: list[str]) -> tuple[bool, list[str], int | None, list[str]]:
    confined, hide, tasks, rest = False, [], None, []
    items = iter(argv)
    for item in items:
        if item == "--confine":
            confined = True
        elif item == "--tasks":
            tasks = int(next(items))
        elif item == "--hide":
            hide.append(next(items))
        else:
            rest.append(item)
    return confined, hide, tasks, rest


def allowed(name: str, value: str = "") -> bool:
    """Whether the grading kernel may see the environment variable `name` (`KEEP_NAMES`, `KEEP_PREFIXES`;
    never a name with a secret word, never credentials in a URL)."""
    upper = name.upper()
    if any(word in upper for word in SECRET_WORDS):
        return False
    if CREDENTIALS_IN_URL.search(value):
        return False
    return upper in KEEP_NAMES or upper.startswith(KEEP_PREFIXES)


def secret(name: str) -> bool:
    """Whether an environment variable is kept from grading kernels (see `allowed`)."""
    return not allowed(name)


def without_secrets(argv: list[str]) -> None:
    """Start this script again with only the allowed environment (`allowed`; exec: the new process's
    /proc/self/environ never held the rest); a no-op once that is all there is."""
    if not all(allowed(name, value) for name, value in os.environ.items()):
        clean = {name: value for name, value in os.environ.items() if allowed(name, value)}
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *argv], clean)


def main(argv: list[str]) -> None:
    without_secrets(argv)
    limit(int(argv[0]), int(argv[1]))
    confined, hide, tasks, rest = _options(argv[2:])
    if tasks is not None and not confined:
        cap_tasks(tasks)
    if confined:
        connection = rest[rest.index("-f") + 1]
        with open(connection) as handle:
            info = json.load(handle)
        work = os.getcwd()
        sockets = [os.path.dirname(info["ip"])] if info.get("transport") == "ipc" else []
        course = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        keep = [course, sys.prefix, sys.base_prefix, *(p for p in sys.path if p)]
        if tasks is not None:  # while /sys is writable; the rlimit binds in the locked namespace
            _join_pids_cgroup(tasks)
        confine(writable=[work, *sockets], keep=keep, hide=hide)
        if tasks is not None:
            limit_tasks(tasks, own_user_namespace=True)
        os.chdir(work)  # onto the writable mount, not the read-only one below it
        private = "/tmp/kernel-connection.json"   # the original lies in a folder now hidden
        with open(private, "w") as handle:
            json.dump(info, handle)
        rest[rest.index("-f") + 1] = private
    sys.argv = ["ipykernel_launcher", *rest]
    runpy.run_module("ipykernel_launcher", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
