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
"""

from __future__ import annotations

import os
import signal
import subprocess
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
