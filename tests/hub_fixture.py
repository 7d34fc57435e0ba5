"""The lab hub for tests (autograders/hub): a module-scoped pytest fixture, `hub`.

    from tests.hub_fixture import hub  # noqa: F401  (in a test module: pytest finds the fixture)

A hub with an instructor and two learners (accounts ``<prefix>instructor``, ``<prefix>learner01`` and
``<prefix>learner02``; the prefix is ``SYSML_HUB_TEST_PREFIX``, default ``sysmlt-``) and the assignment
00_orientation released, on a free port. Its environment lives in ``SYSML_HUB_TEST_ROOT`` and is built once
(about 3 minutes on 2 cores), then reused by every later run. The accounts, their homes and every process they
ran are removed when the module's tests end.

The default root is /srv/sysml-hub-test, outside /tmp, on purpose: the grading kernel always gets a private
/tmp (autograders/kernel.py `confine`), so under /tmp the exchange would be out of its sight whatever the
sandbox's hide list says, and tests/test_hub.py's probe of the exchange would prove nothing. /srv/sysml-hub,
`make hub`'s default, is outside /tmp too. (Every user must be able to enter the root: a pytest tmp_path is
closed to other users.)

Two runs at once must not share a prefix: one's teardown would remove the other's accounts. The fixture
refuses to start where a live hub of another root, or a live hub of this root (another run's, or one left
running: stop it with ``python -m autograders.hub down --root ROOT``), holds accounts with this prefix; give
each concurrent run its own ``SYSML_HUB_TEST_ROOT`` and ``SYSML_HUB_TEST_PREFIX``.

Needs root, npm and a Python every user can run (`autograders.hub.base_python`): in CI (CI=true) a machine
without them fails the test, elsewhere it skips with the reason.
"""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

import pytest

from autograders.hub import Hub, HubError, base_python, read_accounts

ROOT = Path(os.environ.get("SYSML_HUB_TEST_ROOT", "/srv/sysml-hub-test"))
PREFIX = os.environ.get("SYSML_HUB_TEST_PREFIX", "sysmlt-")


def missing() -> str | None:
    """Why a hub cannot run here, or None."""
    if os.geteuid() != 0:
        return "the hub makes Unix accounts: run as root"
    if not shutil.which("npm"):
        return "npm is missing (JupyterHub's proxy): apt-get install nodejs npm"
    if not shutil.which("runuser") or not shutil.which("useradd"):
        return "runuser and useradd are missing"
    try:
        base_python()
    except HubError as error:
        return str(error)
    return None


def _skip_or_fail(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"the hub cannot run in CI: {reason}")
    pytest.skip(reason)


def live_hubs() -> dict[Path, int]:
    """root -> pid of each JupyterHub that runs as root with a hub's config
    (``<root>/hub/jupyterhub_config.py`` after ``-f``, as `Hub` starts it), read from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != 0:
                continue
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in argv]
        if len(argv) < 3 or not any(Path(a).name == "jupyterhub" for a in argv[:2]) or "-f" not in argv:
            continue
        config = Path(argv[argv.index("-f") + 1]) if argv.index("-f") + 1 < len(argv) else None
        if config is not None and config.name == "jupyterhub_config.py" and config.parent.name == "hub":
            found[config.parents[1].resolve()] = int(entry)
    return found


def conflict(root: Path, prefix: str) -> str | None:
    """Why a test hub with `prefix` in `root` would touch another run's accounts, or None.

    Another run's hub is live (its JupyterHub runs) and its accounts.csv lists accounts with this prefix, or
    a hub of this very root is live before this run started it (a concurrent run's, or a leftover).
    """
    root = Path(root).resolve()
    for other, pid in live_hubs().items():
        if other == root:
            return (f"a hub of {root} is already running (JupyterHub pid {pid}): another test run's, or "
                    f"one left running (stop it: python -m autograders.hub down --root {root}); a run of "
                    "its own needs another SYSML_HUB_TEST_ROOT and SYSML_HUB_TEST_PREFIX")
        try:
            theirs = sorted(name for name in read_accounts(other / "accounts.csv") if name.startswith(prefix))
        except OSError:
            continue
        if theirs:
            return (f"accounts {', '.join(theirs)} belong to the live hub of {other} (JupyterHub pid "
                    f"{pid}); this run's teardown would remove them: set SYSML_HUB_TEST_PREFIX (and "
                    "SYSML_HUB_TEST_ROOT) to this run's own")
    return None


def _remove_stale_ipc(uid: int | None) -> None:
    """The grading kernel's socket folder of an older hub's code, /tmp/sysml-hub-ipc-<uid>, if it is the
    instructor's (older `Hub`s left it behind)."""
    if uid is None:
        return
    folder = Path(f"/tmp/sysml-hub-ipc-{uid}")
    try:
        if not folder.is_symlink() and folder.is_dir() and folder.stat().st_uid == uid:
            shutil.rmtree(folder, ignore_errors=True)
    except OSError:
        pass


@pytest.fixture(scope="module")
def hub(closed_repository):
    reason = missing()
    if reason:
        _skip_or_fail(reason)
    clash = conflict(ROOT, PREFIX)
    if clash:  # before anything is made or removed: the other run keeps its accounts
        pytest.fail(f"the test hub cannot start: {clash}")
    lab = Hub(ROOT, learners=2, prefix=PREFIX, modules=("00_orientation",), port=0)
    try:
        lab.up()
        yield lab
    finally:
        try:
            uid = pwd.getpwnam(lab.instructor).pw_uid
        except KeyError:
            uid = None
        lab.down(remove_accounts=True)
        _remove_stale_ipc(uid)


def run_as(lab: Hub, user: str, argv: list[str], cwd=None, check: bool = False, **kwargs):
    """Run `argv` as `user` in their home with the hub environment's tools first on PATH (text output)."""
    kwargs.setdefault("capture_output", True)
    return lab._as(user, [str(a) for a in argv], cwd=cwd or lab.home(user), check=check, text=True, **kwargs)


def execute(lab: Hub, user: str, code: str, timeout_s: float = 120, then=None) -> tuple[str, str]:
    """Run `code` in a fresh kernel of `user`'s running server (REST and websocket, with a token of theirs);
    (stdout, error text). `then()`, if given, is called while the kernel still runs; it is shut down after."""
    import json as _json
    import urllib.request
    import uuid

    from tornado.httpclient import HTTPRequest
    from tornado.ioloop import IOLoop
    from tornado.websocket import websocket_connect

    token = lab.token(user)
    headers = {"Authorization": f"token {token}"}
    base = f"{lab.url}user/{user}/api/kernels"
    request = urllib.request.Request(base, method="POST", data=b"{}", headers=headers)
    with urllib.request.urlopen(request, timeout=60) as answer:
        kernel = _json.loads(answer.read())["id"]

    async def run() -> tuple[str, str]:
        ws = await websocket_connect(
            HTTPRequest(
                f"{base.replace('http', 'ws', 1)}/{kernel}/channels", headers=headers, connect_timeout=60
            )
        )
        msg_id = uuid.uuid4().hex
        ws.write_message(
            _json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "msg_type": "execute_request",
                        "username": user,
                        "session": msg_id,
                        "version": "5.3",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "channel": "shell",
                    "buffers": [],
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": False,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": True,
                    },
                }
            )
        )
        out, err = [], []
        while True:
            message = await ws.read_message()
            if message is None:
                break
            message = _json.loads(message)
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                (out if content["name"] == "stdout" else err).append(content["text"])
            elif kind == "error":
                err.append(f"{content['ename']}: {content['evalue']}")
            elif kind == "status" and content["execution_state"] == "idle":
                break
        ws.close()
        return "".join(out), "".join(err)

    try:
        result = IOLoop.current().run_sync(run, timeout=timeout_s)
        if then is not None:
            then()
        return result
    finally:
        request = urllib.request.Request(f"{base}/{kernel}", method="DELETE", headers=headers)
        urllib.request.urlopen(request, timeout=60).close()
