"""course.processes: the course's one way to start a process and stop it with everything it started."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from course import processes

PY = sys.executable

# A process that starts a child in a session of its own (as torchrun and Ray do), a grandchild under that
# child, and an orphan that stays in the first session after its parent exits; prints their pids, then sleeps.
TREE = textwrap.dedent("""
    import subprocess, sys, time
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    own_session = subprocess.Popen([sys.executable, "-c",
        "import subprocess, sys, time; p = subprocess.Popen(" + repr(sleeper) + "); "
        "print(p.pid, flush=True); time.sleep(120)"],
        start_new_session=True, stdout=subprocess.PIPE, text=True)
    grandchild = int(own_session.stdout.readline())
    parent_of_orphan = subprocess.Popen([sys.executable, "-c",
        "import subprocess, sys; p = subprocess.Popen(" + repr(sleeper) + "); print(p.pid, flush=True)"],
        stdout=subprocess.PIPE, text=True)
    orphan = int(parent_of_orphan.stdout.readline())
    parent_of_orphan.wait()
    print(own_session.pid, grandchild, orphan, flush=True)
    time.sleep(120)
""")

IGNORES_SIGTERM = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                   "print('ready', flush=True); time.sleep(120)")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_tree_across_sessions_and_its_orphans_is_stopped_entirely():
    root = processes.start([PY, "-c", TREE], stdout=subprocess.PIPE)
    pids = [int(p) for p in root.stdout.readline().split()]
    assert len(pids) == 3 and all(_alive(p) for p in pids)
    orphan = psutil.Process(pids[2])
    assert orphan.ppid() != root.pid and os.getsid(orphan.pid) == root.pid  # not a descendant: its session's
    start = time.monotonic()
    assert processes.stop_tree(root, grace_s=5) == []  # all of them exit on SIGTERM
    assert time.monotonic() - start < 5
    assert root.returncode is not None and root.stdout.closed
    assert not any(_alive(p) for p in [root.pid, *pids])


def test_sigterm_then_sigkill_after_the_grace_for_a_process_that_ignores_sigterm():
    stubborn = processes.start([PY, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE)
    assert stubborn.stdout.readline().strip() == "ready"
    start = time.monotonic()
    killed = processes.stop_tree(stubborn, grace_s=1.0)
    took = time.monotonic() - start
    assert killed == [stubborn.pid] and stubborn.returncode == -signal.SIGKILL
    assert 0.9 <= took < 8, took


def test_grace_zero_kills_at_once_and_keeps_the_pipes_when_asked():
    chatty = processes.start([PY, "-c", "import time; print('said', flush=True); time.sleep(120)"],
                             stdout=subprocess.PIPE)
    time.sleep(0.5)
    assert processes.stop_tree(chatty, grace_s=0, close_streams=False) == [chatty.pid]
    assert chatty.returncode == -signal.SIGKILL
    assert chatty.communicate()[0].strip() == "said"
    with pytest.raises(ValueError):
        processes.stop_tree(chatty, grace_s=-1)


def test_already_finished_processes_and_pids_are_fine():
    done = processes.start([PY, "-c", "pass"])
    done.wait()
    unreaped = processes.start([PY, "-c", "pass"])
    time.sleep(0.5)  # exited, not yet waited for: a zombie
    assert processes.stop_tree(done, unreaped, 2**22 + 12345, grace_s=1) == []
    assert unreaped.returncode == 0
    gone = psutil.Process(done.pid) if _alive(done.pid) else None
    assert gone is None or gone.ppid() != os.getpid()  # a reaped pid is never signalled as ours


def test_a_child_started_with_start_dies_with_its_parent():
    script = ("import subprocess, sys, time\n"
              "from course import processes\n"
              "child = processes.start([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
              "print(child.pid, flush=True)\n"
              "time.sleep(120)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([PY, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        parent.kill()  # no exit handler runs: only the kernel's parent-death signal can stop the child
        parent.wait()
        child.wait(timeout=10)  # raises TimeoutExpired if it outlived its parent
    finally:
        processes.stop_tree(parent, grace_s=0)
