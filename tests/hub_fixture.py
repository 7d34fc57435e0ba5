"""The lab hub for tests (autograders/hub): a module-scoped pytest fixture, `hub`.

    from tests.hub_fixture import hub  # noqa: F401  (in a test module: pytest finds the fixture)

A hub with an instructor and two learners (accounts ``sysmlt-instructor``, ``sysmlt-learner01`` and
``sysmlt-learner02``) and the assignment 00_orientation released, on a free port. Its environment lives in
``SYSML_HUB_TEST_ROOT`` (default /tmp/sysml-hub-test, which every user can enter: a pytest tmp_path is closed
to other users) and is built once (about 3 minutes on 2 cores), then reused by every later run. The accounts,
their homes and every process they ran are removed when the module's tests end.

Needs root, npm and a Python every user can run (`autograders.hub.base_python`): in CI (CI=true) a machine
without them fails the test, elsewhere it skips with the reason.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from autograders.hub import Hub, HubError, base_python

ROOT = Path(os.environ.get("SYSML_HUB_TEST_ROOT", "/tmp/sysml-hub-test"))
PREFIX = "sysmlt-"


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


@pytest.fixture(scope="module")
def hub():
    reason = missing()
    if reason:
        _skip_or_fail(reason)
    lab = Hub(ROOT, learners=2, prefix=PREFIX, modules=("00_orientation",), port=0)
    try:
        lab.up()
        yield lab
    finally:
        lab.down(remove_accounts=True)


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
