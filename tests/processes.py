"""Stopping what a test started in a session of its own (a Lab server and everything it runs)."""

import os
import signal
import subprocess


def stop_session(process: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM to the process group `process` leads (started with ``start_new_session=True``),
    then SIGKILL to the group if it is still there after `grace_s` seconds."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
