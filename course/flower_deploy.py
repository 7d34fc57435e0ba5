"""Run the touchpad app on Flower's deployment engine, on this machine, then stop everything.

Taught in 05_federated ("From simulation to deployment"). Run it with::

    python -m course.flower_deploy --rounds 3

It starts what a real deployment runs on separate machines, here as separate processes on
localhost: one SuperLink (the server's coordinator), two SuperNodes (two cars, each with its
own partition of the digits), then ``flwr run`` submits the app and streams its log. Every
process it started is stopped at the end, on failure, and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from course import processes

APP = Path(__file__).resolve().parent / "flower_app"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen, name: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode} before it was ready")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{name} did not open port {port} within {timeout:.0f} s")


def stop(started: list[subprocess.Popen]) -> None:
    """Stop each process and everything under it (a SuperNode leaves a `flower-superexec` child):
    SIGTERM, then SIGKILL after 10 s."""
    processes.stop_tree(*started, grace_s=10)


def deploy(rounds: int = 3, partitioning: str = "iid", timeout: float = 300, app: Path = APP, nodes: int = 2,
           node_config: Callable[[int], str] | None = None, run_config: str | None = None) -> str:
    """Run an app on a local SuperLink and `nodes` SuperNodes; return the run's log.

    Defaults: the touchpad app (course/flower_app) on two cars, `rounds` and `partitioning` in its run config.
    `app` is another app folder (the project's: course/fl_project/flower_app); `node_config(car)` the
    SuperNode's --node-config (default "partition-id=CAR num-partitions=NODES"); `run_config` replaces the
    --run-config. The run must print "test accuracy per round", as both apps' ServerApps do.
    """
    bin_dir = Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="flower-deploy-"))
    port = free_port()
    home = work / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink.local-deployment]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "OMP_NUM_THREADS": "1",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    logs = {}

    def start(name: str, args: list[str]) -> subprocess.Popen:
        logs[name] = open(work / f"{name}.log", "w")
        return processes.start([str(bin_dir / args[0]), *args[1:]], env=env, cwd=work,
                               stdout=logs[name], stderr=subprocess.STDOUT)

    started: list[subprocess.Popen] = []
    finished = False
    try:
        superlink = start("superlink", ["flower-superlink", "--insecure",
                                        "--disable-runtime-dependency-installation",
                                        "--database", str(work / "state.db"), "--port", str(port)])
        started.append(superlink)
        wait_for_port(port, 60, superlink, "the SuperLink")
        for car in range(nodes):
            started.append(start(f"supernode{car}", [
                "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}",
                "--port", str(free_port()),
                "--node-config",
                node_config(car) if node_config else f"partition-id={car} num-partitions={nodes}"]))
        run = subprocess.run(
            [str(bin_dir / "flwr"), "run", str(Path(app).resolve()), "local-deployment", "--stream",
             "--run-config", run_config or f"num-server-rounds={rounds} partitioning='{partitioning}'"],
            env=env, cwd=work, capture_output=True, text=True, timeout=timeout)
        output = run.stdout + run.stderr
        if run.returncode != 0 or "test accuracy per round" not in output:
            tails = "\n".join(f"--- {n}.log ---\n" + (work / f"{n}.log").read_text()[-1500:] for n in logs)
            raise RuntimeError(f"flwr run failed (exit code {run.returncode}):\n{output[-3000:]}\n{tails}")
        finished = True
        return output
    finally:
        stop(started)
        for log in logs.values():
            log.close()
        if finished:  # the SuperLink's database and the logs; kept after a failure, for its logs
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--partitioning", choices=["iid", "dirichlet"], default="iid")
    parser.add_argument("--app", type=Path, default=APP,
                        help="an app folder with a pyproject.toml (default: the touchpad app; the project's "
                        "is course/fl_project/flower_app)")
    parser.add_argument("--nodes", type=int, default=2, help="SuperNodes (cars) to start")
    parser.add_argument("--num-partitions", type=int, default=None,
                        help="partitions of the split (default: --nodes; the project's fleet has 10)")
    parser.add_argument("--run-config", default=None,
                        help="the app's --run-config (replaces --rounds and --partitioning)")
    args = parser.parse_args()
    if not args.app.is_absolute() and not args.app.exists():  # course/... in the installed course (Colab)
        args.app = Path(__file__).resolve().parents[1] / args.app
    start = time.perf_counter()
    partitions = args.num_partitions or args.nodes
    output = deploy(args.rounds, args.partitioning, app=args.app, nodes=args.nodes,
                    node_config=lambda car: f"partition-id={car} num-partitions={partitions}",
                    run_config=args.run_config)
    lines = [line for line in output.splitlines()
             if "accuracy" in line or "round" in line.lower() or "epsilon" in line]
    print("\n".join(lines[-12:]))
    print(f"deployment run finished in {time.perf_counter() - start:.0f} s; every process stopped")


if __name__ == "__main__":
    main()
