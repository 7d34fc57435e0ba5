"""Stopping what a test started in a session of its own (a Lab server and everything it runs)."""

import subprocess

from course.processes import stop_tree


def stop_session(process: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM to `process`, everything it started and the rest of the session it leads (it was started with
    ``start_new_session=True``), then SIGKILL to what is still there after `grace_s` seconds
    (`course.processes.stop_tree`)."""
    stop_tree(process, grace_s=grace_s)
