"""A Ray cluster of a head and worker nodes on this machine, started with Ray's own commands, for tests and
benchmarks of grading on a cluster (`autograders.cluster`).

    with LocalCluster(nodes=2, cpus=1) as cluster:   # cluster.address: "127.0.0.1:PORT"
        ...
        cluster.kill(1)                              # the worker node dies: raylet, workers, all they started

Each node is one ``ray start --block`` process (the head with ``--head``, the others ``--address``) with a
temporary folder of its own (`course.processes.short_temp_dir`: Ray's socket paths must stay under 107 bytes)
and ports of its own, so several nodes share one machine, as in Ray's own multi-node tests on one host. They
are stopped as the process trees this object started (`course.processes.stop_tree`), never with ``ray stop``,
which would stop every Ray on the machine (another test's; run as root, another user's too).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from course.processes import short_temp_dir, stop_tree

RAY = Path(sys.executable).with_name("ray")
START_TIMEOUT_S = 180  # a loaded 2-core machine takes 15-30 s per node
ATTEMPTS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """`nodes` Ray nodes on this machine, `cpus` Ray CPUs each; the first is the head."""

    def __init__(self, nodes: int = 2, cpus: int = 1, env: dict | None = None):
        self.cpus, self.env = cpus, {**os.environ, **(env or {})}
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen] = []
        self.folders: list[str] = []
        self.wanted = nodes

    def _start(self, head: bool) -> None:
        folder = short_temp_dir("rn-", 70)
        self.folders.append(folder)
        tmp = Path(folder) / "t"  # the node's temporary folder: its grading courses, removed with it
        tmp.mkdir()
        # RAY_raylet_start_wait_time_s: a setting the raylet reads (its name is in the raylet binary; Ray's
        # default 30 s). On this loaded 2-core machine the head's raylet died three times in a row with
        # "Timed out waiting for file .../metrics_agent_port" (raylet.out) while its agents were starting;
        # with 120 the next start came up (one trial: a precaution, not a measured cure).
        env = {**self.env, "TMPDIR": str(tmp), "RAY_raylet_start_wait_time_s": "120"}
        args = [str(RAY), "start", "--block", f"--num-cpus={self.cpus}", "--disable-usage-stats",
                f"--temp-dir={folder}", f"--dashboard-agent-listen-port={free_port()}",
                f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
        if head:
            args += ["--head", f"--port={self.port}", "--include-dashboard=false",
                     f"--ray-client-server-port={free_port()}", "--node-ip-address=127.0.0.1",
                     # a killed node is noticed in seconds, not Ray's default half minute
                     '--system-config={"health_check_period_ms": 1000, "health_check_failure_threshold": 3,'
                     ' "health_check_timeout_ms": 2000}']
        else:
            args += [f"--address={self.address}", "--node-ip-address=127.0.0.1"]
        with open(Path(folder) / "start.log", "wb") as log:
            self.nodes.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                               stdin=subprocess.DEVNULL, start_new_session=True))

    def started(self, index: int) -> bool:
        """Whether node `index`'s ``ray start`` said "Ray runtime started." (ray/scripts/scripts.py): its
        raylet registered with the head."""
        log = Path(self.folders[index]) / "start.log"
        return "Ray runtime started." in log.read_text(errors="replace")

    def start(self) -> LocalCluster:
        """Start the nodes one after another; return when all have joined. Ray gives a starting raylet a
        fixed 30 s to register (ray/_private/node.py), which a loaded machine can miss: a node whose
        ``ray start`` gives up is started again, up to `ATTEMPTS` times."""
        for index in range(self.wanted):
            for attempt in range(1, ATTEMPTS + 1):
                self._start(head=index == 0)
                if self.wait(index + 1):
                    break
                stop_tree(self.nodes.pop(), *self._left(self.folders[-1]), grace_s=2)
                folder = self.folders.pop()
                log = (Path(folder) / "start.log").read_text(errors="replace")[-1500:]
                shutil.rmtree(folder, ignore_errors=True)
                if attempt == ATTEMPTS:
                    raise RuntimeError(f"Ray node {index} did not start in {ATTEMPTS} attempts; the last "
                                       "said:\n" + log)
        return self

    def wait(self, count: int) -> bool:
        """Whether `count` nodes are alive before the last one's ``ray start`` gives up or times out."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.nodes[-1].poll() is not None:
                return False
            if self.started(count - 1):
                return True
            time.sleep(1)
        return False

    @staticmethod
    def _left(folder: str) -> list[psutil.Process]:
        """Processes whose command line names this node's own folder (its GCS, raylet, agents), also those
        a ``ray start`` that gave up left behind as orphans: never another Ray's."""
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any(folder in arg for arg in proc.info["cmdline"] or ()):
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def processes(self, index: int) -> list[psutil.Process]:
        """Node `index`'s processes: its ``ray start``, raylet, Ray workers and all they started."""
        found = {proc.pid: proc for proc in self._left(self.folders[index])}
        try:
            root = psutil.Process(self.nodes[index].pid)
            found.update({proc.pid: proc for proc in [root, *root.children(recursive=True)]})
        except psutil.Error:
            pass
        return list(found.values())

    def kill(self, index: int) -> list[int]:
        """Node `index` dies at once (SIGKILL to all its processes), as a machine lost mid-run."""
        return stop_tree(self.nodes[index], *self.processes(index), grace_s=0)

    def stop(self) -> None:
        for index in reversed(range(len(self.nodes))):
            stop_tree(self.nodes[index], *self.processes(index), grace_s=5)
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
