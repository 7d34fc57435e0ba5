"""autograders/sandbox.py and kernel.py: the grading kernel's limits, checked in real processes."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from autograders import sandbox
from autograders.settings import REPO

PROBE = """
import sys
sys.path.insert(0, {repo!r})
from autograders.kernel import limit
limit(1 * 2**30, 10 * 2**20)
try:
    hog = bytearray(2 * 2**30)
    print("allocated")
except MemoryError:
    print("MemoryError")
try:
    with open({path!r}, "wb") as f:
        f.write(b"x" * (20 * 2**20))
    print("wrote")
except OSError as e:
    print("OSError", e.errno)
import torch
print("torch", int(torch.ones(4).sum()))
"""


def test_limits_stop_a_memory_bomb_and_a_huge_file_but_not_torch(tmp_path):
    out = subprocess.run([sys.executable, "-c", PROBE.format(repo=str(REPO), path=str(tmp_path / "big"))],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split("\n")[:3] == ["MemoryError", "OSError 27", "torch 4"], out.stderr[-2000:]


def test_the_kernel_spec_runs_the_limited_kernel(tmp_path):
    name = sandbox.write_kernelspec(tmp_path, memory_bytes=123, file_bytes=456, hide=["/x/y"])
    argv = json.loads((tmp_path / "kernels" / name / "kernel.json").read_text())["argv"]
    start = argv.index(sys.executable)
    assert argv[start:start + 4] == [sys.executable, str(REPO / "autograders" / "kernel.py"), "123", "456"]
    assert argv[-2:] == ["-f", "{connection_file}"]
    walled = sandbox.namespaces_available()
    assert (argv[0] == "unshare") == walled
    assert (argv[start + 4:-2] == ["--confine", "--hide", "/x/y"]) == walled
    assert ("NOT ISOLATED" in sandbox.isolation()) != walled


WALLS = """
import os, socket, sys
sys.path.insert(0, {folder!r})
from kernel import confine
confine(writable=[os.getcwd()], keep=[{repo!r}, sys.prefix, sys.base_prefix, *sys.path], hide=[{hidden!r}])
os.chdir(os.getcwd())
def attempt(what, action):
    try:
        action()
        print(what, "yes")
    except OSError:
        print(what, "no")
attempt("write course", lambda: open({repo!r} + "/course/checks.py", "ab"))
attempt("write here", lambda: open("mine.txt", "w").write("ok"))
attempt("write tmp", lambda: open({private!r}, "w").write("ok"))
attempt("see hidden", lambda: open({hidden!r} + "/secret.txt"))
def undo_walls():
    if os.system("mount -o remount,rw / 2>/dev/null") != 0:
        raise OSError("refused")
attempt("undo walls", undo_walls)
attempt("reach grader", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=2))
import torch
print("torch", int(torch.ones(3).sum()))
"""


def test_the_walls_hold_in_a_real_process(tmp_path):
    if not sandbox.namespaces_available():
        pytest.skip("user namespaces are not allowed here: only the limits apply (README)")
    hidden, work = tmp_path / "gradebook", tmp_path / "work"
    hidden.mkdir()
    work.mkdir()
    (hidden / "secret.txt").write_text("grades")
    server = socket.create_server(("127.0.0.1", 0))
    private = Path("/tmp") / f"{tmp_path.name}-private"
    script = WALLS.format(folder=str(REPO / "autograders"), repo=str(REPO), hidden=str(hidden),
                          port=server.getsockname()[1], private=str(private))
    command = [*sandbox.NAMESPACES, "sh", "-c", 'ip link set lo up && exec "$@"', "walls",
               sys.executable, "-c", script]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=work)
    finally:
        server.close()
    assert out.stdout.splitlines() == ["write course no", "write here yes", "write tmp yes", "see hidden no",
                                       "undo walls no", "reach grader no", "torch 3"], out.stderr[-2000:]
    assert (work / "mine.txt").read_text() == "ok"   # the notebook's own folder is really written
    assert not private.exists() and (hidden / "secret.txt").read_text() == "grades"  # /tmp was its own
