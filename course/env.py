"""The first cell of every module: seeds, device, threads, plotting defaults, versions.

Taught in 00_orientation ("The setup cell"). Every notebook starts with::

    from course import setup
    ctx = setup("00_orientation")

`setup` is idempotent: running the cell again resets the seeds and prints the same line.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import random
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

DEFAULT_SEED = 0
MAX_THREADS = 4  # more threads than this only add contention on tiny course workloads

#: Packages whose versions a learner (or a bug report) needs to see (on Colab: `reported_packages`).
REPORTED_PACKAGES = ("torch", "numpy", "scikit-learn", "snntorch", "flwr", "nbgrader")
#: The versions the course was verified with: requirements.txt's pins (tests/test_colab.py keeps them equal to
#: `requirement_pins`). An installed package (Colab's install cell) carries no requirements.txt, so setup()
#: compares with these.
PINNED = {"torch": "2.13.0", "numpy": "2.4.6", "scikit-learn": "1.9.1", "snntorch": "1.0.0", "flwr": "1.42.0",
          "nbgrader": "0.9.6"}
#: Packages the course reads only a data file of (course.data reads scikit-learn's digits, imports no code of
#: it): their version is no reason to warn.
DATA_ONLY = ("scikit-learn",)
_last_module: str | None = None  # the notebook setup() last ran for: environment_report's default


def requirement_pins(path: str | os.PathLike) -> dict[str, str]:
    """A requirements file's exact pins as {name: version}: each under its name as written, lower case
    (``flwr[simulation]``), and bare (``flwr``; ``_`` as ``-``). Lines without ``==`` are left out."""
    import re

    pins = {}
    for line in open(path).read().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = (part.strip() for part in line.split("==", 1))
            bare = re.sub(r"\[.*\]", "", name).lower().replace("_", "-")
            pins[name.lower()] = pins[bare] = version.split(";")[0].strip()
    return pins


def extra_packages(module: str, requires: list[str] | None = None) -> list[str]:
    """The libraries notebook `module`'s extra installs (pyproject.toml's
    ``[project.optional-dependencies]``), read from the installed package's metadata (`requires`: its
    ``Requires-Dist`` lines); [] when the course is not installed as a package (a checkout on PYTHONPATH)."""
    import re

    from course.colab import extra_name
    from course.links import DISTRIBUTION

    if requires is None:
        try:
            requires = importlib.metadata.requires(DISTRIBUTION) or []
        except importlib.metadata.PackageNotFoundError:
            requires = []
    names = []
    for line in requires:
        marker = re.search(r"extra\s*==\s*[\"']([^\"']+)[\"']", line)
        if marker and marker.group(1) == extra_name(module):
            names.append(re.match(r"[A-Za-z0-9._-]+", line).group(0))
    return names


def reported_packages(module: str | None, colab: bool | None = None) -> tuple[str, ...]:
    """What setup() reports: `REPORTED_PACKAGES`, and on Colab only what matters there: torch, numpy and the
    libraries of the notebook's extra (what its install cell brought; nbgrader is never installed there)."""
    if not (colab if colab is not None else _on_colab()):
        return REPORTED_PACKAGES
    extra = extra_packages(module) if module else []
    return ("torch", "numpy", *[name for name in extra if name not in ("torch", "numpy")])


@dataclass(frozen=True)
class Context:
    """What `setup` decided, so later cells can read it (``ctx.device``, ``ctx.fast``)."""

    module: str
    seed: int
    device: torch.device
    threads: int
    fast: bool
    versions: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"python {platform.python_version()}"]
        parts += [f"{name} {ver}" for name, ver in self.versions.items()]
        mode = " | FAST mode" if self.fast else ""
        return (
            f"[{self.module}] device={self.device} threads={self.threads} "
            f"seed={self.seed}{mode}\n" + " | ".join(parts)
        )


def seed_everything(seed: int = DEFAULT_SEED) -> None:
    """Seed Python's, NumPy's and torch's generators (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA when present, else CPU. ``COURSE_DEVICE=cpu`` (or `prefer`) overrides."""
    choice = prefer or os.environ.get("COURSE_DEVICE")
    if choice:
        device = torch.device(choice)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"COURSE_DEVICE={choice!r} asks for CUDA, but torch sees no CUDA device. "
                "Unset COURSE_DEVICE to fall back to the CPU."
            )
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def available_cores() -> int:
    """Cores this process may run on (a container's quota, not the host's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


def choose_threads() -> int:
    """``OMP_NUM_THREADS`` when set (Binder's start script sets it), else the cores, capped."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(available_cores(), MAX_THREADS))


def package_versions(names: tuple[str, ...] = REPORTED_PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def fast_mode() -> bool:
    """True while nbgrader grades or validates, or when ``COURSE_FAST=1``: long cells shrink."""
    return bool(os.environ.get("NBGRADER_EXECUTION")) or os.environ.get("COURSE_FAST") == "1"


def setup(module: str, seed: int = DEFAULT_SEED, device: str | None = None,
          quiet: bool = False) -> Context:
    """Make a module's run reproducible and print what it runs on.

    Seeds every generator, picks the device (CUDA when present), sets torch's thread
    count, applies the course's plotting defaults and reports package versions.
    """
    seed_everything(seed)
    chosen = pick_device(device)
    threads = choose_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if chosen.type == "cuda":
        torch.backends.cudnn.benchmark = False  # autotuning picks kernels by timing: not reproducible
        torch.backends.cudnn.deterministic = True
        from course import devices

        devices.apply_profile(chosen)  # COURSE_GPU_PROFILE=t4: cap the allocator at a T4's 14.74 GiB

    from course import plots  # matplotlib loads only when a notebook sets up

    global _last_module
    _last_module = module
    plots.apply_defaults()
    ctx = Context(module=module, seed=seed, device=chosen, threads=threads,
                  fast=fast_mode(), versions=package_versions(reported_packages(module)))
    if not quiet:
        print(ctx.summary(), file=sys.stdout)
        for note in version_notes(ctx.versions):
            print(note, file=sys.stdout)
    return ctx


def version_notes(versions: dict[str, str], colab: bool | None = None) -> list[str]:
    """Lines for setup's report: installed versions that differ from `PINNED` (local tags such as ``+cpu``
    ignored, missing packages and `DATA_ONLY` ones left out), and on Google Colab (`course.colab.on_colab`)
    what that means."""
    differ = [f"{name} {version} (pinned {PINNED[name]})" for name, version in versions.items()
              if name in PINNED and name not in DATA_ONLY and version != "missing"
              and version.split("+")[0] != PINNED[name]]
    notes = []
    if differ:
        notes.append(f"Not the course's pins: {', '.join(differ)}. The course was verified with the pinned "
                     "versions (requirements.txt); if a cell fails, say which versions you ran.")
    if colab if colab is not None else _on_colab():
        notes.append("On Google Colab: the course's helpers are installed in this runtime only; in a new "
                     "runtime the notebook's first code cell installs them again.")
    return notes


def _on_colab() -> bool:
    from course.colab import on_colab

    return on_colab()


def memory_limit_bytes() -> int | None:
    """The container's memory limit (cgroup v2 or v1), or None when there is none."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # v1 reports "no limit" as a huge number
            return int(text)
    return None


def environment_report(min_python=(3, 11), min_memory_gb: float = 1.5,
                       module: str | None = None) -> list[tuple[str, bool, str]]:
    """Rows of (check, passed, detail) for the orientation's environment check. On Colab the packages are
    `reported_packages` of `module` (default: the notebook setup() last ran for): torch, numpy and that
    notebook's extra, as each notebook's install cell brings its own."""
    import psutil

    rows = [("python", sys.version_info[:2] >= min_python,
             f"{platform.python_version()} (needs {'.'.join(map(str, min_python))}+)")]
    colab = _on_colab()
    names = reported_packages(module or _last_module, colab) if colab else REPORTED_PACKAGES
    for name, version in package_versions(names).items():
        rows.append((name, version != "missing", version))
    device = pick_device()
    detail = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU: CPU is fine"
    rows.append(("device", True, f"{device} ({detail})"))
    rows.append(("cores", True, f"{available_cores()} available, torch uses {torch.get_num_threads()}"))
    limit = memory_limit_bytes()
    available = psutil.virtual_memory().available if limit is None else limit
    rows.append(("memory", available >= min_memory_gb * 2**30,
                 f"{available / 2**30:.1f} GiB {'limit' if limit else 'available'} "
                 f"(needs {min_memory_gb} GiB)"))
    return rows
