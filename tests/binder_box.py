"""Binder in a box: the course as mybinder.org would run it, measured on this machine.

    python -m tests.binder_box [MODULE ...] [--memory-gb 2] [--cpus 1] [--reuse]   (or: make binder-box)

1. Builds a fresh virtual environment from `binder/requirements.txt`, as Binder's repo2docker
   does, except that torch's CPU build comes from this machine's local wheel (``torch==2.13.0``)
   instead of the PyTorch CPU index, which these machines cannot reach; then runs
   `binder/postBuild` in it. `--reuse` keeps an environment built before.
2. Runs each solution notebook with that environment, through `binder/start`, in a control
   group capped at 2 GB of memory (no swap) and one CPU: what a Binder session gets.
3. Prints each notebook's wall time and peak memory under those limits: the control group's own
   peak (what the limit counts, page cache included) and the summed PSS of the kernel's processes.

Needs root and control groups (v1 or v2) for the caps; without them it says so and stops.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from autograders import settings

REPO = settings.REPO
BOX = REPO / ".binder-box"  # the environment (ignored by git)


def local_requirements(text: str) -> str:
    """binder/requirements.txt for a machine without the PyTorch index: torch from the local wheel."""
    lines = []
    for line in text.splitlines():
        if line.strip().startswith(("--extra-index-url", "--index-url")):
            continue
        lines.append(re.sub(r"^(torch==[^+\s]+)\+cpu\b", r"\1", line))
    return "\n".join(lines) + "\n"


def build(venv: Path) -> float:
    """A fresh environment as Binder builds it; seconds it took."""
    start = time.monotonic()
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    requirements = venv / "requirements.txt"
    requirements.write_text(local_requirements((REPO / "binder" / "requirements.txt").read_text()))
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-r", str(requirements)], check=True)
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(venv)}
    subprocess.run(["bash", str(REPO / "binder" / "postBuild")], check=True, cwd=REPO, env=env)
    return time.monotonic() - start


class Cage:
    """A control group with a memory cap (no swap) and a CPU quota; v1 or v2, whichever this machine has."""

    def __init__(self, memory_bytes: int, cpus: float):
        self.name = f"binder-box-{os.getpid()}"
        self.memory_bytes, self.cpus = memory_bytes, cpus
        unified = Path("/sys/fs/cgroup/cgroup.controllers")
        self.v2 = unified.exists()
        if self.v2:
            here = Path("/proc/self/cgroup").read_text().split("::", 1)[1].strip()
            self.folders = [Path("/sys/fs/cgroup") / here.lstrip("/") / self.name]
        else:
            self.folders = [self._v1("memory"), self._v1("cpu")]

    @staticmethod
    def _v1_here(controller: str) -> str:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, names, path = line.split(":", 2)
            if controller in names.split(","):
                return path
        return "/"

    def _v1(self, controller: str) -> Path:
        return Path("/sys/fs/cgroup") / controller / self._v1_here(controller).lstrip("/") / self.name

    def __enter__(self) -> Cage:
        for folder in self.folders:
            folder.mkdir()
        quota = int(self.cpus * 100_000)
        if self.v2:
            self._write("memory.max", self.memory_bytes)
            self._write("memory.swap.max", 0, optional=True)
            self._write("cpu.max", f"{quota} 100000")
        else:
            self._write("memory.limit_in_bytes", self.memory_bytes)
            self._write("memory.memsw.limit_in_bytes", self.memory_bytes, optional=True)
            self._write("cpu.cfs_period_us", 100_000, folder=self.folders[1])
            self._write("cpu.cfs_quota_us", quota, folder=self.folders[1])
        return self

    def _write(self, name: str, value, folder: Path | None = None, optional: bool = False) -> None:
        path = (folder or self.folders[0]) / name
        if optional and not path.exists():
            return
        path.write_text(str(value))

    def join(self) -> None:
        """Put the calling process (and so all it starts) in the group: a subprocess's preexec_fn."""
        for folder in self.folders:
            (folder / "cgroup.procs").write_text(str(os.getpid()))

    def reset_peak(self) -> None:
        if not self.v2:
            self._write("memory.max_usage_in_bytes", 0)

    def peak_bytes(self) -> int:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        path = self.folders[0] / name
        return int(path.read_text()) if path.exists() else -1

    def out_of_memory_kills(self) -> int:
        text = (self.folders[0] / ("memory.events" if self.v2 else "memory.oom_control")).read_text()
        match = re.search(r"oom_kill (\d+)", text)
        return int(match.group(1)) if match else 0

    def __exit__(self, *exc) -> None:
        for folder in self.folders:
            for _ in range(50):  # the group empties once its last process has been reaped
                try:
                    folder.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def run_in_cage(venv: Path, module: str, cage: Cage) -> tuple[str, int, int]:
    """One notebook through binder/start in the cage: the bench's line, the group's peak, OOM kills."""
    cage.reset_peak()
    kills = cage.out_of_memory_kills()
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(venv)}
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "COURSE_FAST",
                 "NBGRADER_EXECUTION"):
        env.pop(name, None)  # binder/start sets the thread counts; nothing else should leak in
    done = subprocess.run(["bash", str(REPO / "binder" / "start"), str(venv / "bin" / "python"), "-m",
                           "tests.bench_notebooks", module], cwd=REPO, env=env, capture_output=True,
                          text=True, preexec_fn=cage.join)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(module)), done.stdout[-300:])
    return line, cage.peak_bytes(), cage.out_of_memory_kills() - kills


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="module ids (default: all)")
    parser.add_argument("--memory-gb", type=float, default=2.0)
    parser.add_argument("--cpus", type=float, default=1.0)
    parser.add_argument("--reuse", action="store_true", help="keep an environment built before")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("binder box: control groups need root; run it as root (or in a container)")
        return 2
    if not (args.reuse and (BOX / "bin" / "python").exists()):
        print(f"building {BOX} from binder/requirements.txt (torch from the local wheel) ...", flush=True)
        print(f"built in {build(BOX):.0f} s", flush=True)
    memory = int(args.memory_gb * 2**30)
    print(f"each notebook in a control group of {args.memory_gb:g} GB (no swap) and {args.cpus:g} CPU")
    print(f"{'notebook':<24} {'wall (s)':>9} {'PSS peak (MB)':>14} {'group peak (MB)':>16}  status")
    failed = False
    with Cage(memory, args.cpus) as cage:
        for module in args.modules or settings.modules():
            line, peak, kills = run_in_cage(BOX, module, cage)
            fields = line.split()
            wall, pss = (fields[1], fields[2]) if len(fields) >= 3 else ("?", "?")
            status = " ".join(fields[3:]) if len(fields) > 3 else line
            if kills:
                status = f"KILLED at the memory cap ({kills} process(es)); {status}"
            failed |= status != "ok"
            print(f"{module:<24} {wall:>9} {pss:>14} {peak / 2**20:>16.0f}  {status}", flush=True)
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
