"""Starting and stopping the course's background processes: the one way to stop a process tree.

Every process the course starts outside the notebook's kernel (torchrun and its ranks in 04, the fork server,
Flower's SuperLink and SuperNodes in 05, training runs that crash and restart in 06, the model server in 07b)
is started with `start` and stopped with `stop_tree`, so that no stray process survives a finished cell, an
interrupted one, or a killed kernel.

- `start(command, ...)` runs a command in a session of its own (Ctrl-C in the notebook does not reach it
  half-way) and asks Linux to signal it when its parent dies (a killed kernel), so nothing outlives the kernel.
- `stop_tree(*processes, grace_s=...)` sends SIGTERM to each process and every descendant (found through
  psutil, since torchrun and Ray start children in sessions of their own, which a process-group kill would
  miss), waits up to `grace_s` seconds, then SIGKILLs whatever is left and reaps it.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence

import psutil


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send `sig` to this process when its parent dies (PR_SET_PDEATHSIG); a no-op elsewhere.

    Call it in a child before it runs anything (``preexec_fn``), or at the top of a forked rank."""
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


def _tree(process: subprocess.Popen | psutil.Process | int) -> list[psutil.Process]:
    pid = process if isinstance(process, int) else process.pid
    try:
        root = psutil.Process(pid)
        return [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return []


def stop_tree(*processes: subprocess.Popen | psutil.Process | int, grace_s: float = 5.0) -> list[int]:
    """Stop each process and everything under it: SIGTERM, up to `grace_s` seconds to exit, then SIGKILL.

    Accepts Popen objects, psutil processes or pids; already finished ones are fine. A Popen is also waited
    for (no zombie is left) and its pipes closed. Returns the pids that had to be killed (empty when all
    exited on SIGTERM). `grace_s=0` kills at once."""
    victims: dict[int, psutil.Process] = {}
    for process in processes:
        for proc in _tree(process):  # the tree is read before anything is signalled: orphans re-parent
            victims[proc.pid] = proc
    signal_first = signal.SIGTERM if grace_s > 0 else signal.SIGKILL
    for proc in victims.values():
        try:
            proc.send_signal(signal_first)
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    _, alive = psutil.wait_procs(list(victims.values()), timeout=max(grace_s, 0.1))
    for proc in alive:
        try:
            proc.kill()
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    psutil.wait_procs(alive, timeout=10)
    for process in processes:
        if isinstance(process, subprocess.Popen):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
    return [proc.pid for proc in alive]
