"""Starting and stopping the course's background processes: the one way to stop a process tree.

Every process the course starts outside the notebook's kernel (torchrun and its ranks in 04, the fork server,
Flower's SuperLink and SuperNodes in 05, training runs that crash and restart in 06, the model server in 07b)
is started with `start` and stopped with `stop_tree`, so that no stray process survives a finished cell, an
interrupted one, or a killed kernel.

- `start(command, ...)` runs a command in a session of its own (Ctrl-C in the notebook does not reach it
  half-way) and asks Linux to signal it when its parent dies (a killed kernel), so nothing outlives the
  kernel.
- `stop_tree(*processes, grace_s=...)` sends SIGTERM to each process, every descendant (found through
  psutil, since torchrun and Ray start children in sessions of their own, which a process-group kill would
  miss) and the rest of the session it leads, waits up to `grace_s` seconds, then SIGKILLs whatever is left
  and reaps it. `grace_s=0` kills at once, for what has no state worth a clean exit (a timed-out launch,
  a grading kernel).

The grader (`autograders/`), the tests (`tests/processes.py`) and every helper in `course/` stop processes
through `stop_tree`; tests/test_processes.py checks it.

- `short_temp_dir(prefix, tail)` makes a folder for a program that puts Unix sockets under it (Ray, in 05's
  simulations): in the temporary folder when the socket paths fit there, else in /tmp, else it raises
  `SocketFolderError` at once, saying what to do, instead of letting the program fail later or hang.
  tests/test_long_tmpdir.py runs every process-starting helper with a long TMPDIR (macOS's is ~49 characters).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import psutil


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send `sig` to this process when its parent dies (PR_SET_PDEATHSIG); a no-op elsewhere.

    Call it in a child before it runs anything (``preexec_fn``), or at the top of a forked rank. Linux sends
    the signal when the *thread* that forked the child exits, not only the process: start long-lived
    children from the main thread (a helper thread that starts a server and returns would take it along)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start(command: Sequence[str], *, env: dict | None = None, cwd: str | os.PathLike | None = None,
          stdin=subprocess.DEVNULL, stdout=None, stderr=None, text: bool = True,
          parent_death_signal: int = signal.SIGTERM) -> subprocess.Popen:
    """Start `command` in a new session that receives `parent_death_signal` if this process dies.

    Returns the Popen; stop it (and all it started) with `stop_tree`. `stdout`/`stderr` as for Popen
    (None inherits, a file or subprocess.PIPE captures)."""
    return subprocess.Popen(list(command), env=env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr,
                            text=text, start_new_session=True,
                            preexec_fn=lambda: die_with_parent(parent_death_signal))


def _session(leader: psutil.Process) -> list[psutil.Process]:
    """Every other process in the session `leader` leads (none when it leads no session, or leads ours).

    A process that `start` started leads a session; what it started and then left (a daemon that re-parented
    to init) is no longer its descendant, but is still in its session unless it made one of its own."""
    try:
        sid = os.getsid(leader.pid)
        if sid != leader.pid or sid == os.getsid(0):
            return []
    except OSError:
        return []
    members = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.pid != leader.pid and os.getsid(proc.pid) == sid:
                members.append(proc)
        except (OSError, psutil.Error):
            continue
    return members


def _tree(process: subprocess.Popen | psutil.Process | int) -> list[psutil.Process]:
    """The process, its descendants and the rest of the session it leads; [] when it is gone.

    A Popen already reaped (its return code read) is skipped: its pid may now be another process's. A psutil
    process is checked to be the one it was (psutil compares creation times), for the same reason."""
    try:
        if isinstance(process, subprocess.Popen):
            if process.returncode is not None:
                return []
            root = psutil.Process(process.pid)
        elif isinstance(process, psutil.Process):
            if not process.is_running():
                return []
            root = process
        else:
            root = psutil.Process(process)
        return [*root.children(recursive=True), *_session(root), root]
    except psutil.NoSuchProcess:
        return []


def stop_tree(*processes: subprocess.Popen | psutil.Process | int, grace_s: float = 5.0,
              close_streams: bool = True) -> list[int]:
    """Stop each process and everything under it: SIGTERM, up to `grace_s` seconds to exit, then SIGKILL.

    "Everything under it" is its descendants, in whatever session each runs (torchrun and Ray start children
    in sessions of their own, which a process-group kill would miss), and, when it leads a session (as
    `start` makes it), every other process of that session (an orphan a process-group kill would catch).
    Accepts Popen objects, psutil processes or pids; already finished ones are fine. A Popen is also waited
    for (no zombie is left) and, unless `close_streams` is False (to read what is left in its pipes), its
    pipes are closed. Returns the pids that had to be killed (empty when all exited on SIGTERM; all of them
    with `grace_s=0`, which kills at once: SIGKILL, no SIGTERM)."""
    if grace_s < 0:
        raise ValueError(f"grace_s must be >= 0, got {grace_s}")
    victims: dict[int, psutil.Process] = {}
    for process in processes:
        for proc in _tree(process):  # the tree is read before anything is signalled: orphans re-parent
            victims[proc.pid] = proc
    # A Popen is waited for through itself, so that it keeps its exit code (psutil would reap it first).
    popens = {p.pid: p for p in processes if isinstance(p, subprocess.Popen) and p.pid in victims}
    others = [proc for pid, proc in victims.items() if pid not in popens]
    signal_first = signal.SIGTERM if grace_s > 0 else signal.SIGKILL
    for proc in victims.values():
        try:
            proc.send_signal(signal_first)
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    alive = _wait(popens, others, max(grace_s, 0.1))
    for proc in alive:
        try:
            proc.kill()
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    _wait({pid: p for pid, p in popens.items() if p.returncode is None},
          [p for p in alive if p.pid not in popens], 10)
    for process in processes:
        if isinstance(process, subprocess.Popen):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            if close_streams:
                for stream in (process.stdin, process.stdout, process.stderr):
                    if stream is not None:
                        try:
                            stream.close()
                        except OSError:
                            pass
    return [proc.pid for proc in alive] if grace_s > 0 else list(victims)


def _wait(popens: dict[int, subprocess.Popen], others: list[psutil.Process],
          timeout: float) -> list[psutil.Process]:
    """Wait up to `timeout` seconds in all for the Popens and the other processes to end; those still
    running."""
    deadline = time.monotonic() + timeout
    alive = []
    for pid, popen in popens.items():
        try:
            popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                alive.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
    _, still = psutil.wait_procs(others, timeout=max(0.0, deadline - time.monotonic()))
    return alive + still


# ----------------------------------------------------------------- folders for Unix sockets

# A Unix socket's path (with its final NUL) must fit in sockaddr_un.sun_path: 108 bytes on Linux
# (UNIX_PATH_MAX in include/uapi/linux/un.h), 104 on macOS (4.4BSD's size; POSIX leaves it to the system).
SOCKET_PATH_MAX = (104 if sys.platform == "darwin" else 108) - 1
# Where short_temp_dir looks when the temporary folder (TMPDIR) is too long: Ray's own default on macOS.
FALLBACK_DIRS = ("/tmp",)
# What Ray 2.x appends to the folder it is given (`ray.init(_temp_dir=...)`) for its longest socket:
# session_<date with microseconds>_<pid>/sockets/plasma_store (ray/_private/node.py); the pid here has the
# 7 digits of Linux's largest pid_max, so any pid fits.
RAY_SOCKET_TAIL = len("/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store")


class SocketFolderError(OSError):
    """No folder short enough for a program's Unix sockets could be made (see `short_temp_dir`)."""


def short_temp_dir(prefix: str, tail: int, program: str = "Ray", env_var: str = "RAY_TMPDIR") -> str:
    """A new, empty folder (``tempfile.mkdtemp``) whose path leaves room for `tail` more characters of
    socket path under it within `SOCKET_PATH_MAX` (107 bytes on Linux, 103 on macOS). The caller
    removes it when done. Course infrastructure, used by 05's simulations (`course.federated.ray_temp_dir`).

    Where: under the folder `env_var` names when that variable is set (the learner's choice, made if
    missing; it must fit), else in the temporary folder (``tempfile.gettempdir()``, i.e. TMPDIR) when it
    fits, else in /tmp. macOS's TMPDIR (/var/folders/xx/<28 characters>/T/, ~49) does not fit Ray's sockets.

    Raises `SocketFolderError` (an OSError) at once when no candidate fits or can be written to; its message
    names each candidate, why it failed, and what to do (set `env_var` to a short folder).
    """
    chosen = os.environ.get(env_var)
    candidates = [chosen] if chosen else list(dict.fromkeys([tempfile.gettempdir(), *FALLBACK_DIRS]))
    reasons = []
    for base in candidates:
        base = os.path.abspath(os.path.expanduser(base))
        longest = len(os.path.join(base, prefix + "x" * 8).encode()) + tail  # mkdtemp adds 8 characters
        if longest > SOCKET_PATH_MAX:
            reasons.append(f"{base} ({len(base)} characters): its socket paths would be {longest} bytes")
            continue
        try:
            if chosen:  # the learner named it: make it, as Ray would
                os.makedirs(base, exist_ok=True)
            return tempfile.mkdtemp(prefix=prefix, dir=base)
        except OSError as exc:
            reasons.append(f"{base}: cannot make a folder there ({exc.strerror or exc})")
    source = f"{env_var} is set" if chosen else f"{env_var} is not set"
    raise SocketFolderError(
        f"{program} cannot start: no folder short enough for its Unix socket paths, which may have at most "
        f"{SOCKET_PATH_MAX} bytes on this system ({source}):\n  " + "\n  ".join(reasons) + "\n"
        f"Set {env_var} to a short folder you can write to: `export {env_var}=/tmp/r` in the terminal "
        f"before starting Jupyter, or os.environ[\"{env_var}\"] = \"/tmp/r\" in the notebook; then run "
        "the cell again.")
