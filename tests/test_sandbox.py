"""autograders/sandbox.py and kernel.py: the grading kernel's limits, checked in real processes."""

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from autograders import grade, kernel, sandbox
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
    name = sandbox.write_kernelspec(tmp_path, memory_bytes=123, file_bytes=456, hide=["/x/y"], max_tasks=78)
    argv = json.loads((tmp_path / "kernels" / name / "kernel.json").read_text())["argv"]
    start = argv.index(sys.executable)
    assert argv[start:start + 6] == [sys.executable, str(REPO / "autograders" / "kernel.py"), "123", "456",
                                     "--tasks", "78"]
    assert argv[-2:] == ["-f", "{connection_file}"]
    walled = sandbox.namespaces_available()
    assert (argv[0] == "unshare") == walled
    assert ("--pid" in argv) == sandbox.pid_namespace_available()
    assert (argv[start + 6:-2] == ["--confine", "--hide", "/x/y"]) == walled
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
    command = [*sandbox.unshare_argv(), "sh", "-c", 'ip link set lo up && exec "$@"', "walls",
               sys.executable, "-c", script]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=work)
    finally:
        server.close()
    assert out.stdout.splitlines() == ["write course no", "write here yes", "write tmp yes", "see hidden no",
                                       "undo walls no", "reach grader no", "torch 3"], out.stderr[-2000:]
    assert (work / "mine.txt").read_text() == "ok"   # the notebook's own folder is really written
    assert not private.exists() and (hidden / "secret.txt").read_text() == "grades"  # /tmp was its own


MARKER = "987654"  # `sleep 987654`: the processes the tests below start, told apart from any other


def sleepers():
    return [p for p in psutil.process_iter(["cmdline"])
            if (p.info["cmdline"] or [])[-2:] == ["sleep", MARKER]]


SPAWNER = f"""
import subprocess
ps = [subprocess.Popen(["sleep", "{MARKER}"], start_new_session=True) for _ in range(150)]
more = []
try:
    while len(more) < 5000:
        more.append(subprocess.Popen(["sleep", "{MARKER}"], start_new_session=True))
    print("not capped")
except OSError as err:
    print("capped after", len(ps) + len(more), err.errno)
"""


def test_a_kernel_is_pid_1_interruptible_capped_and_takes_all_with_it(tmp_path, monkeypatch):
    if not sandbox.pid_namespace_available():
        pytest.skip("no PID namespaces here: the grader kills by environment mark (see the test below)")
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    name = sandbox.write_kernelspec(tmp_path / "jupyter", max_tasks=300)
    monkeypatch.setenv(sandbox.MARK, mark := f"test{os.getpid()}")
    (tmp_path / "work").mkdir()
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "jupyter" / "kernels")])
    manager = KernelManager(kernel_name=name, transport="ipc", ip=str(tmp_path / "k"),
                            kernel_spec_manager=specs)
    manager.start_kernel(cwd=str(tmp_path / "work"))
    client = manager.client()
    client.start_channels()
    printed = []

    def hook(msg):
        if msg["msg_type"] in ("stream", "error"):
            printed.append(msg["content"].get("text") or msg["content"].get("ename"))

    def run(code):
        return client.execute_interactive(code, timeout=120, output_hook=hook)["content"]["status"]

    try:
        client.wait_for_ready(timeout=120)
        assert run("import os; print(os.getpid())") == "ok" and printed[-1].strip() == "1"
        interrupt = threading.Timer(3, manager.interrupt_kernel)
        interrupt.start()
        assert run("import time; time.sleep(600)") == "error" and printed[-1] == "KeyboardInterrupt"
        assert run(SPAWNER) == "ok"
        capped = printed[-1].split()
        assert capped[:2] == ["capped", "after"] and capped[3] == "11", printed  # EAGAIN
        assert 150 <= int(capped[2]) <= 300, printed
        assert len(sleepers()) == int(capped[2])
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=False)
    psutil.wait_procs(sleepers(), timeout=10)
    assert sleepers() == []
    sandbox.after_run(mark)  # and the kernel's empty control group goes
    parent = kernel._own_pids_cgroup()
    assert parent is None or not [p for p in os.listdir(parent) if p.startswith(kernel.CGROUP_PREFIX + mark)]


def test_without_a_pid_namespace_the_marked_processes_are_found_and_killed():
    mark = "test-" + str(threading.get_ident())
    env = {**os.environ, sandbox.MARK: mark}
    starter = (f"import subprocess\nfor _ in range(5): subprocess.Popen(['sleep', '{MARKER}'], "
               "start_new_session=True)")
    subprocess.run([sys.executable, "-c", starter], env=env, check=True, timeout=60)
    assert len(sleepers()) == 5  # orphans in sessions of their own: no process tree leads to them
    assert sandbox.kill_marked(mark) == 5
    assert sleepers() == []


def test_kernel_limits_start_on_macos_without_a_memory_cap(monkeypatch):
    """macOS may refuse RLIMIT_DATA (EINVAL): the grading kernel starts anyway and the report says memory is not
    capped; on Linux the same refusal is an error, never silently skipped."""
    import resource

    calls = []

    def setrlimit(which, limits):
        if which == resource.RLIMIT_DATA:
            raise ValueError("invalid argument")
        calls.append(which)

    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    monkeypatch.setattr(kernel.signal, "signal", lambda *a: None)
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.raises(ValueError):
        kernel.limit(2**30, 2**20)
    monkeypatch.setattr(sys, "platform", "darwin")
    kernel.limit(2**30, 2**20)
    assert resource.RLIMIT_FSIZE in calls and resource.RLIMIT_CORE in calls
    assert "memory NOT capped" in sandbox.isolation()
    monkeypatch.setattr(sys, "platform", "linux")
    assert "memory NOT capped" not in sandbox.isolation()


SECRETS_PROBE = """
import os
try:
    print("class zip", open({zip!r}, "rb").read())
except OSError as error:
    print("class zip", "unreadable", error.errno)
seen = sorted(k for k in os.environ if "TOKEN" in k or "SECRET" in k or k.startswith("JUPYTERHUB")
              or k in ("DATABASE_URL", "MAKEFLAGS"))
raw = open("/proc/self/environ", "rb").read()
print("env", seen, b"hub-token-123" in raw, b"aws-456" in raw, os.environ.get("COURSE_PROBE"))
for name in ("timestamp.txt", "submission_secret.txt"):
    for what, action in (("remove", lambda: os.remove(name)), ("write", lambda: open(name, "w").write("x")),
                         ("rename", lambda: os.rename("mine.txt", name))):
        open("mine.txt", "w").write("mine")
        try:
            action()
            print(name, what, "yes")
        except OSError:
            print(name, what, "no")
"""


def test_a_kernel_gets_no_secrets_and_cannot_touch_nbgrader_files(tmp_path, monkeypatch):
    """On a lab hub the instructor's server hands JUPYTERHUB_API_TOKEN to the kernels it starts: a
    notebook printing it would get the instructor's server into its feedback (review 24c #1). And a
    notebook deleting nbgrader's timestamp.txt beside it stopped release_feedback for every later
    student (#3). Controls: an ordinary variable and an ordinary file in the same folder."""
    if not sandbox.namespaces_available():
        pytest.skip("user namespaces are not allowed here: only the limits apply (README)")
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    # the submissions as given, a zip (review 24d #1), outside /tmp (which the kernel never sees anyway)
    class_zip = REPO / f".test-class-{os.getpid()}.zip"
    (tmp_path / "ipc").mkdir()     # the kernel's sockets: a folder of their own, as the grader's are
    class_zip.write_bytes(b"PK every student's notebook")
    name = sandbox.write_kernelspec(tmp_path / "jupyter", hide=grade.hideable(class_zip))
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hub-token-123")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-456")
    monkeypatch.setenv("COURSE_PROBE", "kept")
    monkeypatch.setenv("DATABASE_URL", "postgres://u:aws-456@h/db")       # a password in a URL
    monkeypatch.setenv("MAKEFLAGS", " -- GITHUB_TOKEN=aws-456")           # make's command-line variables
    work = tmp_path / "work"
    work.mkdir()
    (work / "timestamp.txt").write_text("2026-11-30 20:00:00.000000 UTC")
    (work / "submission_secret.txt").write_text("s3cret")
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "jupyter" / "kernels")])
    manager = KernelManager(kernel_name=name, transport="ipc", ip=str(tmp_path / "ipc" / "k"),
                            kernel_spec_manager=specs)
    manager.start_kernel(cwd=str(work))
    client = manager.client()
    client.start_channels()
    printed = []
    try:
        client.wait_for_ready(timeout=120)
        def hook(msg):
            if msg["msg_type"] == "stream":
                printed.append(msg["content"].get("text", ""))

        reply = client.execute_interactive(SECRETS_PROBE.format(zip=str(class_zip)), timeout=120,
                                           output_hook=hook)
        assert reply["content"]["status"] == "ok", printed
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=False)
        seen = class_zip.read_bytes()
        class_zip.unlink()
    lines = "".join(printed).splitlines()
    assert lines.pop(0) == "class zip b''", lines
    assert seen == b"PK every student's notebook"
    assert lines[0] == "env [] False False kept", lines
    assert lines[1:] == [f"{f} {w} no" for f in ("timestamp.txt", "submission_secret.txt")
                         for w in ("remove", "write", "rename")], lines
    assert (work / "timestamp.txt").read_text() == "2026-11-30 20:00:00.000000 UTC"
    assert (work / "submission_secret.txt").read_text() == "s3cret"
    assert (work / "mine.txt").read_text() == "mine"      # the folder itself stays the notebook's to write
    assert not kernel.secret("COURSE_PROBE") and kernel.secret("JPY_API_TOKEN") and kernel.secret("MY_TOKEN")
    assert kernel.allowed("NBGRADER_EXECUTION", "autograde") and kernel.allowed("OMP_NUM_THREADS", "1")
    assert not kernel.allowed("PIP_INDEX_URL", "https://u:p@pypi.example/simple")
    assert not kernel.allowed("PYTHONPATH", "https://u:p@x/") and not kernel.allowed("OLDPWD", "/root")


def test_submissions_are_hidden_unless_they_hold_the_course(tmp_path, capsys):
    """`make grade SUBMISSIONS=folder` left that folder, the whole class, readable from every student's
    kernel (review 24d #1). It is hidden now, unless it holds the course or Python, which the kernel needs:
    then the grader warns instead."""
    assert grade.hideable(tmp_path / "class") == [str(tmp_path / "class")]
    assert grade.hideable(None) == []
    assert grade.hideable(REPO / "subs") == [str(REPO / "subs")]          # inside the repository: fine
    assert grade.hideable(REPO) == [] and grade.hideable(REPO.parent) == []
    assert "grading kernels can read every submission" in capsys.readouterr().out
