"""Binder in a box: the course as mybinder.org would run it, measured on this machine.

    python -m tests.binder_box [MODULE ...] [--memory-gb 2] [--cpus 1] [--reuse] [--user NAME]
    (or: make binder-box)

1. Copies the repository's tracked files (what Binder clones; nothing ignored or untracked) into
   ``.binder-box/home``, which is both $HOME and the repository there, as repo2docker's REPO_DIR=$HOME.
2. Builds a fresh virtual environment from `binder/requirements.txt` with the Python that
   `binder/runtime.txt` names (a pyenv build of that version when there is one), over the Jupyter
   packages repo2docker's base environment preinstalls, so that our pins up- or downgrade them as on
   Binder; torch's CPU build comes from this machine's wheels instead of the PyTorch CPU index, which
   these machines cannot reach. Then runs `binder/postBuild` there. `--reuse` keeps an environment built
   before (the copy is always refreshed).
3. Runs each solution notebook of the copy through `binder/start`, in a control group capped at 2 GB of
   memory (no swap) and one CPU: what a Binder session gets; `--user NAME` runs it as that user (Binder:
   jovyan, uid 1000), else as root.
4. Prints each notebook's wall time and peak memory under those limits: the control group's own
   peak (what the limit counts, page cache included) and the summed PSS of the kernel's processes.

It prints first what still differs from mybinder.org (`differences`). Needs root and control groups
(v1 or v2) for the caps; without them it says so and stops.

What repo2docker does with binder/ (jupyterhub/repo2docker at 808ae6bb, 2026-08-21, read with the search
tool and `fetch`; /tmp/work/facts23.md section 4): binder/ present, so top-level configuration files are
ignored and the top-level pyproject.toml is not installed (postBuild installs it); runtime.txt
``python-3.11`` gives a conda environment /srv/conda/envs/notebook with Python 3.11.14 from
environment.py-3.11-linux-64.lock, which already holds jupyterlab 4.4.9, notebook 7.4.7, jupyter_server
2.17.0, ipykernel 7.0.1, ipywidgets 8.1.7, jupyterhub-singleuser 5 and jupyter-resource-usage 1; then
``pip install --no-cache-dir -r binder/requirements.txt`` into it as jovyan; the repository is copied to
$HOME=/home/jovyan (REPO_DIR); postBuild runs there as jovyan; start becomes the entrypoint's
R2D_ENTRYPOINT at every launch. mybinder.org (mybinder.org-user-guide, docs/about/user-guidelines.md,
2026-01-16): 1 GB guaranteed, 2 GB at most ("your kernel will be restarted"), some outgoing traffic at
about 1 Mbit/s, sessions culled after 10 idle minutes.
"""

from __future__ import annotations

import argparse
import os
import platform
import pwd
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from autograders import settings

REPO = settings.REPO
BOX = REPO / ".binder-box"  # ignored by git: the environment (env/), Binder's $HOME and repository (home/)
ENV = BOX / "env"
HOME = BOX / "home"
BINDER_USER, BINDER_UID = "jovyan", 1000
PYENV = Path("/root/.pyenv/versions")

#: What repo2docker's base environment holds for Python 3.11 before binder/requirements.txt is installed
#: (repo2docker 808ae6bb, buildpacks/conda/environment.py-3.11-linux-64.lock; conda packages there, pip here).
BASE_ENVIRONMENT = ("jupyterlab==4.4.9", "notebook==7.4.7", "jupyter_server==2.17.0", "ipykernel==7.0.1",
                    "ipywidgets==8.1.7", "jupyter-resource-usage==1.2.0")
REPO2DOCKER_PYTHON = {"3.11": "3.11.14"}  # the same lock file's python


def runtime_version(text: str) -> str:
    """``python-3.11`` (binder/runtime.txt) -> ``"3.11"``; repo2docker's format is name-version[-date]."""
    parts = text.strip().split("-")
    if len(parts) not in (2, 4, 5) or parts[0] != "python" or not re.fullmatch(r"3\.\d+", parts[1]):
        raise ValueError(f"binder/runtime.txt should read python-3.X, not {text.strip()!r}")
    return parts[1]


def others_can_run(path: Path) -> bool:
    """Whether a user other than root can run `path`: every folder on its real path searchable by others."""
    real = Path(os.path.realpath(path))
    return all(os.stat(p).st_mode & 0o001 for p in (real, *real.parents))


def runtime_python(version: str, pyenv: Path = PYENV, current: str = sys.executable,
                   system: tuple[Path, ...] = (Path("/usr/local/bin"), Path("/usr/bin")),
                   for_others: bool = False) -> tuple[str, str]:
    """An interpreter of `version` (``"3.11"``) and its full version: the newest pyenv or system build of it
    (repo2docker takes the newest 3.11 too), else this one if it matches; with `for_others`, only one another
    user can run (pyenv under /root is not). SystemExit if there is none."""
    builds = [p for p in pyenv.glob(f"{version}.*") if re.fullmatch(r"\d+\.\d+\.\d+", p.name)]
    candidates = [(2, p / "bin" / "python") for p in builds]  # at the same version: pyenv, system, this one
    candidates += [(1, folder / f"python{version}") for folder in system] + [(0, Path(current))]
    found = []
    for rank, path in candidates:
        if not path.exists() or (for_others and not others_can_run(path)):
            continue
        if path.parent.parent.parent == pyenv:  # pyenv's folder names its version
            full = path.parent.parent.name
        else:
            done = subprocess.run([str(path), "-c", "import platform; print(platform.python_version())"],
                                  capture_output=True, text=True)
            full = done.stdout.strip()
        if full.rsplit(".", 1)[0] == version:
            found.append((tuple(int(x) for x in full.split(".")), rank, str(path), full))
    if not found:
        raise SystemExit(f"binder/runtime.txt asks for Python {version}: none in {pyenv}, "
                         f"{', '.join(map(str, system))} or {current}"
                         + (" that another user can run" if for_others else ""))
    *_, path, full = max(found)
    return path, full


def cpu_model() -> str:
    """This machine's CPU model (/proc/cpuinfo), else its architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def differences(python_version: str, runtime: str, user: str | None) -> list[str]:
    """What this box still does differently from mybinder.org, one line each (printed before a run)."""
    wanted = REPO2DOCKER_PYTHON.get(runtime, f"the newest {runtime}")
    lines = [
        "torch: this machine's local wheel (pip's find-links and local index here), not the PyTorch CPU "
        "index; other packages also resolve through this machine's pip configuration",
        f"Python: {python_version} in a venv; Binder: conda-forge Python {wanted} "
        f"(runtime.txt python-{runtime}) in the conda environment /srv/conda/envs/notebook",
        "base packages: pip installs of repo2docker's Jupyter set (" + ", ".join(BASE_ENVIRONMENT)
        + ") before binder/requirements.txt; Binder has them as conda packages, plus jupyterhub-singleuser, "
        "jupyter-offlinenotebook and nodejs 20",
        f"user and home: {user or 'root'} with HOME={HOME}; Binder: {BINDER_USER} (uid {BINDER_UID}) with "
        f"HOME=/home/{BINDER_USER}, the repository copied there"
        + ("" if user else " (--user NAME runs as another user)"),
        "server: notebooks run by nbclient (tests.bench_notebooks) inside the cage; Binder also runs "
        "Jupyter Server (and its memory counts toward the same 2 GB)",
        "network: whatever this machine has; mybinder.org allows some outgoing traffic at about 1 Mbit/s",
        f"CPU: this machine's ({cpu_model()}), capped by a CFS quota; Binder's "
        "nodes are other cloud CPUs, shared, about one core, and 1-2 GB of memory (2 GB here)",
    ]
    return lines


def stage(home: Path = HOME) -> int:
    """Copy the repository's tracked files into `home` (Binder's $HOME and REPO_DIR); files copied.

    What git does not track (a venv, build/, grading folders, the box itself) is not on GitHub, so Binder
    never sees it: a notebook or postBuild that needs one fails here as it would there.
    """
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    files = [f for f in listed.decode().split("\0") if f and (REPO / f).is_file()]
    shutil.rmtree(home, ignore_errors=True)
    for name in files:
        target = home / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    return len(files)


def binder_env(venv: Path, home: Path, user: str | None = None) -> dict[str, str]:
    """The environment postBuild and the notebooks see: the venv first on PATH, HOME and REPO_DIR the copy."""
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(venv),
           "HOME": str(home), "REPO_DIR": str(home), "USER": user or BINDER_USER}
    for name in ("PYTHONPATH", "COURSE_METRICS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                 "COURSE_FAST", "NBGRADER_EXECUTION"):
        env.pop(name, None)  # binder/start sets the thread counts; nothing of this machine's should leak in
    return env


def local_requirements(text: str) -> str:
    """binder/requirements.txt for a machine without the PyTorch index: torch from the local wheel."""
    lines = []
    for line in text.splitlines():
        if line.strip().startswith(("--extra-index-url", "--index-url")):
            continue
        lines.append(re.sub(r"^(torch==[^+\s]+)\+cpu\b", r"\1", line))
    return "\n".join(lines) + "\n"


def lock_differences(freeze: str, lock: str) -> list[str]:
    """Packages whose version in the box (``pip freeze`` text) is not the one constraints.txt locks, which
    every other environment of the course is installed with: Binder installs binder/requirements.txt with no
    lock, over repo2docker's base packages, so these are what a Binder learner runs that tests never did."""
    def versions(text: str) -> dict[str, str]:
        found = {}
        for line in text.splitlines():
            match = re.match(r"([A-Za-z0-9_.\-]+)==([^\s;#+]+)", line.strip())
            if match:
                found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
        return found

    box, locked = versions(freeze), versions(lock)
    return [f"{name} {box[name]} (lock: {locked[name]})" for name in sorted(box)
            if name in locked and locked[name] != box[name]]


def build(venv: Path = ENV, home: Path = HOME, python: str = sys.executable) -> float:
    """A fresh environment as Binder builds it, postBuild run in the staged copy `home`; seconds it took."""
    start = time.monotonic()
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    requirements = venv / "requirements.txt"
    requirements.write_text(local_requirements((home / "binder" / "requirements.txt").read_text()))
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    base = subprocess.run([*pip, *BASE_ENVIRONMENT], capture_output=True, text=True)  # repo2docker's base
    if base.returncode:
        print(f"could not preinstall repo2docker's base set ({base.stderr.strip()[-200:]}); continuing "
              "without it: the pins below then install into an empty environment", flush=True)
    subprocess.run([*pip, "-r", str(requirements)], check=True)
    subprocess.run(["bash", str(home / "binder" / "postBuild")], check=True, cwd=home,
                   env=binder_env(venv, home))
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


def run_in_cage(venv: Path, module: str, cage: Cage, home: Path = HOME,
                user: str | None = None) -> tuple[str, int, int]:
    """One notebook of the copy through binder/start in the cage (as `user`, if given): the bench's line, the
    group's peak, OOM kills."""
    cage.reset_peak()
    kills = cage.out_of_memory_kills()
    ids = pwd.getpwnam(user) if user else None

    def enter() -> None:
        cage.join()
        if ids:
            os.setgid(ids.pw_gid)
            os.setgroups([ids.pw_gid])
            os.setuid(ids.pw_uid)

    done = subprocess.run(["bash", str(home / "binder" / "start"), str(venv / "bin" / "python"), "-m",
                           "tests.bench_notebooks", module], cwd=home, env=binder_env(venv, home, user),
                          capture_output=True, text=True, preexec_fn=enter)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(module)),
                (done.stdout + done.stderr)[-300:])
    return line, cage.peak_bytes(), cage.out_of_memory_kills() - kills


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="module ids (default: all)")
    parser.add_argument("--memory-gb", type=float, default=2.0)
    parser.add_argument("--cpus", type=float, default=1.0)
    parser.add_argument("--reuse", action="store_true", help="keep an environment built before")
    parser.add_argument("--user", help=f"run the notebooks as this user (Binder: {BINDER_USER}); "
                        "default root")
    args = parser.parse_args(argv)
    runtime = runtime_version((REPO / "binder" / "runtime.txt").read_text())
    if args.user:
        pwd.getpwnam(args.user)  # KeyError now, not in the first notebook
    python, version = runtime_python(runtime, for_others=bool(args.user))
    print("binder box: what still differs from mybinder.org")
    for line in differences(version, runtime, args.user):
        print(f"  - {line}")
    if os.geteuid() != 0:
        print("binder box: control groups need root; run it as root (or in a container)")
        return 2
    print(f"copied {stage()} tracked files to {HOME} (Binder's $HOME and REPO_DIR)", flush=True)
    if not (args.reuse and (ENV / "bin" / "python").exists()):
        print(f"building {ENV} with Python {version} from binder/requirements.txt ...", flush=True)
        print(f"built in {build(ENV, HOME, python):.0f} s", flush=True)
    else:  # the editable install points at the copy, which was just refreshed
        subprocess.run(["bash", str(HOME / "binder" / "postBuild")], check=True, cwd=HOME,
                       env=binder_env(ENV, HOME), capture_output=True)
    freeze = subprocess.run([str(ENV / "bin" / "python"), "-m", "pip", "freeze", "--exclude-editable"],
                            capture_output=True, text=True).stdout
    unlocked = lock_differences(freeze, (HOME / "constraints.txt").read_text())
    print("versions that differ from constraints.txt (what Binder runs untested): "
          + ("; ".join(unlocked) if unlocked else "none"), flush=True)
    if args.user:
        ids = pwd.getpwnam(args.user)
        for folder, _, names in os.walk(BOX):
            for name in [".", *names]:
                os.chown(os.path.join(folder, name), ids.pw_uid, ids.pw_gid)
    memory = int(args.memory_gb * 2**30)
    print(f"each notebook in a control group of {args.memory_gb:g} GB (no swap) and {args.cpus:g} CPU")
    print(f"{'notebook':<24} {'wall (s)':>9} {'PSS peak (MB)':>14} {'group peak (MB)':>16}  status")
    failed = False
    with Cage(memory, args.cpus) as cage:
        for module in args.modules or settings.modules():
            line, peak, kills = run_in_cage(ENV, module, cage, HOME, args.user)
            fields = line.split() if line.startswith(module) else []
            wall, pss = (fields[1], fields[2]) if len(fields) >= 3 else ("?", "?")
            status = " ".join(fields[3:]) if len(fields) > 3 else " ".join(line.split())
            if kills:
                status = f"KILLED at the memory cap ({kills} process(es)); {status}"
            failed |= status != "ok"
            print(f"{module:<24} {wall:>9} {pss:>14} {peak / 2**20:>16.0f}  {status}", flush=True)
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
