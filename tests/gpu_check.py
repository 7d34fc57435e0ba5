"""Run every solution notebook on the GPU; print time, peak GPU memory, CPU runs and errors of each.

    python -m tests.gpu_check [MODULE ...] [--profile t4] [--out DIR] [--allow-cpu]
    make gpu-check [NB="00_orientation 03_profiling"] [PROFILE=t4]

Each notebook runs top to bottom in a fresh kernel (nbclient) with ``COURSE_DEVICE=cuda``, so that
`course.setup` selects the GPU and fails loudly if torch sees none. Errors do not stop a notebook: every cell
runs, and every cell that raised is listed (a later error may follow from an earlier one). Per notebook:

- wall time;
- the kernel's peak GPU memory, read and reset after every cell by IPython ``pre_run_cell``/``post_run_cell``
  hooks injected as an extra first cell (the largest cell is named): ``torch.cuda.max_memory_reserved``, the
  table's column (the caching allocator's blocks: what ``--profile t4``'s cap binds on), and
  ``max_memory_allocated`` (tensors only, in the JSON). Neither counts the CUDA context and the kernel
  libraries' code (torch's memory_allocated docs: "some context needs to be created on GPU"; nvidia-smi showed
  781 MB for a small torch process in pytorch/pytorch#34323): a T4 holds less than the cap suggests by that
  much. The device column below includes it;
- the whole device's peak (every process: torchrun workers, the model server), sampled every 0.2 s from
  NVML (pynvml) or ``nvidia-smi --query-gpu=memory.used``, minus its level before the notebook started;
- the cells that recorded a deliberate CPU run (``course.devices.on_cpu``: id and reason);
- the cells that ran on the CPU undeclared: over `CPU_FLAG_S` (1 s) of the kernel's CPU time (``os.times``,
  its own and its waited-for children's; Ray workers and other processes it did not start are not counted),
  no CUDA allocation (``memory_stats()["allocation.all.allocated"]`` unchanged) and no ``on_cpu`` record:
  a cell whose model was never moved with ``.to(ctx.device)`` looks like this, and so does honest CPU work
  (data, plots) worth declaring; a cell that sends even one tensor to the GPU and computes the rest on the CPU
  does not (one CUDA allocation clears it: read the time column too);
- the cells that raised (id and error), cells tagged ``raises-exception`` excepted.

Everything is also written to ``<out>/gpu_check.json`` (default ``build/gpu-check/``). The exit code is 1
when a notebook had an unexpected error. ``--profile t4`` sets ``COURSE_GPU_PROFILE=t4`` (see
course/devices.py): bf16 reported not native and the allocator capped at a T4's 14.74 GiB, to predict Colab.
``--allow-cpu`` runs without a GPU (a dry run of the harness itself: GPU columns read n/a, and every cell
over 1 s of CPU time without an ``on_cpu`` record is listed as undeclared CPU work).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from autograders import settings

HOOK_ID = "gpu-check-hook"
#: A cell that used more CPU time than this (seconds, the kernel process and its waited-for children), made no
#: CUDA allocation and recorded no `on_cpu` is reported as "ran on the CPU (undeclared)".
CPU_FLAG_S = 1.0
# Runs in the notebook's kernel before its first cell. Per cell, as one JSON line in the file named by
# GPU_CHECK_LOG: the CUDA peaks since the last reset (allocated and reserved), how many CUDA allocations the
# cell made (torch.cuda.memory_stats()["allocation.all.allocated"], a count that includes blocks served from
# the cache; read only once CUDA is initialised), the kernel's CPU seconds (os.times: user + system of the
# process and of the children it waited for), the new CPU fallbacks and the error if any.
HOOK_SOURCE = """\
import json as _gc_json, os as _gc_os, IPython as _gc_ipython

def _gc_install():
    import torch
    from course import devices
    shell = _gc_ipython.get_ipython()
    log = _gc_os.environ["GPU_CHECK_LOG"]
    seen = [len(devices.FALLBACKS)]
    start = {}

    def cpu_seconds():
        t = _gc_os.times()
        return t.user + t.system + t.children_user + t.children_system

    def allocations():
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return 0
        return int(torch.cuda.memory_stats().get("allocation.all.allocated", 0))

    def pre(info):
        shell._course_cell_info = info
        start.update(cpu=cpu_seconds(), allocations=allocations())

    def post(result):
        peak = reserved = None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            peak, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
            torch.cuda.reset_peak_memory_stats()
        new = devices.FALLBACKS[seen[0]:]
        seen[0] = len(devices.FALLBACKS)
        error = result.error_in_exec or result.error_before_exec
        info = getattr(result, "info", None)
        with open(log, "a") as out:
            out.write(_gc_json.dumps({
                "count": result.execution_count, "cell": getattr(info, "cell_id", None), "cuda_peak": peak,
                "cuda_reserved": reserved, "cuda_allocations": allocations() - start.get("allocations", 0),
                "cpu_s": round(cpu_seconds() - start.get("cpu", cpu_seconds()), 3),
                "fallbacks": [{"reason": f.reason, "caller": f.caller} for f in new],
                "error": None if error is None else f"{type(error).__name__}: {str(error)[:300]}"}) + "\\n")

    shell.events.register("pre_run_cell", pre)
    shell.events.register("post_run_cell", post)

_gc_install()
"""


def undeclared_cpu(cell: dict, threshold_s: float = CPU_FLAG_S) -> bool:
    """True for a cell record that used over `threshold_s` CPU seconds with no CUDA allocation and no
    `on_cpu` record: compute that a forgotten ``.to(ctx.device)`` left on the CPU, or CPU work nobody
    declared. On a run without a GPU (``--allow-cpu``) every heavy cell is such a cell."""
    heavy = (cell.get("cpu_s") or 0) > threshold_s
    return heavy and not cell.get("cuda_allocations") and not cell["fallbacks"]


class DeviceMemorySampler(threading.Thread):
    """Peak memory used on one GPU by every process, sampled from NVML or nvidia-smi (bytes); None without
    either. `baseline` is the first reading, so `peak - baseline` is what the notebook added."""

    def __init__(self, index: int = 0, interval_s: float = 0.2, reader=None):
        super().__init__(daemon=True)
        self.index, self.interval_s = index, interval_s
        self.peak: int | None = None
        self.baseline: int | None = None
        self.done = threading.Event()
        self.reader = reader or self._reader()
        if self.reader is not None:
            self.baseline = self.peak = self.reader()

    def _reader(self):
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            return lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        except Exception:                                   # no pynvml, no driver
            pass
        if shutil.which("nvidia-smi") is None:
            return None

        def smi() -> int | None:
            out = subprocess.run(["nvidia-smi", f"--id={self.index}", "--query-gpu=memory.used",
                                  "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10)
            return int(out.stdout.split()[0]) * 2**20 if out.returncode == 0 and out.stdout.strip() else None

        try:
            return smi if smi() is not None else None
        except (OSError, subprocess.SubprocessError, ValueError):
            return None

    def run(self) -> None:
        while self.reader is not None and not self.done.is_set():
            try:
                used = self.reader()
            except Exception:                               # a failed reading must not end the sampling
                used = None
            if used is not None:
                self.peak = max(self.peak or 0, used)
            self.done.wait(self.interval_s)

    def added(self) -> int | None:
        return None if self.peak is None else max(0, self.peak - (self.baseline or 0))


def _expected_error(cell) -> bool:
    return "raises-exception" in cell.get("metadata", {}).get("tags", [])


def run_notebook(path: Path, out_dir: Path, timeout_s: int = 600, env: dict[str, str] | None = None,
                 cpu_flag_s: float = CPU_FLAG_S) -> dict:
    """Run one notebook with the hook in a kernel whose environment is `env` (default: this process's);
    return its row (see the module docstring) as a dict. A cell over `cpu_flag_s` CPU seconds with no CUDA
    allocation and no `on_cpu` record is listed under "undeclared_cpu"."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(HOOK_SOURCE, id=HOOK_ID))
    log = out_dir / f"{path.stem}.cells.jsonl"
    log.unlink(missing_ok=True)
    counts: dict[int, str] = {}
    timings: dict[str, float] = {}
    started: dict[str, float] = {}

    def on_start(cell, cell_index):
        started[cell.id] = time.monotonic()

    def on_done(cell, cell_index, execute_reply):
        timings[cell.id] = time.monotonic() - started.get(cell.id, time.monotonic())
        count = (execute_reply or {}).get("content", {}).get("execution_count")
        if count is not None:
            counts[count] = cell.id

    sampler = DeviceMemorySampler()
    sampler.start()
    start = time.monotonic()
    stopped = None
    client = NotebookClient(nb, timeout=timeout_s, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}},
                            on_cell_start=on_start, on_cell_executed=on_done)
    try:
        client.execute(env={**(os.environ if env is None else env), "GPU_CHECK_LOG": str(log)})
    except Exception as err:  # noqa: BLE001 - a timeout or a dead kernel: report, go on to the next notebook
        last = str(err).strip().splitlines()[-1][:200] if str(err).strip() else ""
        stopped = f"{type(err).__name__}: {last}"
    wall = time.monotonic() - start
    sampler.done.set()
    sampler.join()
    cells = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    by_id = {c.id: c for c in nb.cells}
    for rec in cells:
        rec["cell"] = rec["cell"] or counts.get(rec["count"])
        rec["seconds"] = round(timings.get(rec["cell"], float("nan")), 3)
        rec["outputs"] = len(by_id[rec["cell"]].get("outputs", [])) if rec["cell"] in by_id else None
    cells = [rec for rec in cells if rec["cell"] != HOOK_ID]
    errors = [{"cell": r["cell"], "error": r["error"]} for r in cells
              if r["error"] and not (r["cell"] in by_id and _expected_error(by_id[r["cell"]]))]
    if stopped:
        errors.append({"cell": None, "error": f"run stopped: {stopped}"})
    peaks = [r for r in cells if r["cuda_peak"] is not None]
    top = max(peaks, key=lambda r: r["cuda_peak"], default=None)
    top_reserved = max(peaks, key=lambda r: r["cuda_reserved"] or 0, default=None)
    return {
        "module": path.stem, "wall_s": round(wall, 1),
        "kernel_cuda_peak_bytes": top["cuda_peak"] if top else None,
        "kernel_cuda_peak_cell": top["cell"] if top else None,
        "kernel_cuda_reserved_bytes": top_reserved["cuda_reserved"] if top_reserved else None,
        "kernel_cuda_reserved_cell": top_reserved["cell"] if top_reserved else None,
        "device_peak_added_bytes": sampler.added(), "device_baseline_bytes": sampler.baseline,
        "fallbacks": [{"cell": r["cell"], **f} for r in cells for f in r["fallbacks"]],
        "undeclared_cpu": [{"cell": r["cell"], "cpu_s": r["cpu_s"]} for r in cells
                           if undeclared_cpu(r, cpu_flag_s)],
        "errors": errors, "cells": cells,
    }


def _mib(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:,.0f}"


def format_row(row: dict) -> list[str]:
    """The table's line for one notebook, then indented lines: declared CPU runs (one per reason), cells that
    ran on the CPU undeclared (one line), errors (one per cell)."""
    status = "ok" if not row["errors"] else f"FAILED ({len(row['errors'])} cell(s))"
    lines = [f"{row['module']:<24} {row['wall_s']:>8.1f} {_mib(row.get('kernel_cuda_reserved_bytes')):>12} "
             f"{_mib(row['device_peak_added_bytes']):>12}  {status}"]
    reasons: dict[str, list[str]] = {}
    for f in row["fallbacks"]:
        reasons.setdefault(f["reason"], []).append(str(f["cell"]))
    lines += [f"    cpu fallback in {', '.join(dict.fromkeys(ids))}: {reason}"
              for reason, ids in reasons.items()]
    if row.get("undeclared_cpu"):
        lines.append("    ran on the CPU (undeclared) in " + ", ".join(
            f"{u['cell']} ({u['cpu_s']:.1f} s CPU)" for u in row["undeclared_cpu"]) + ": no CUDA allocation")
    lines += [f"    error in {e['cell']}: {e['error']}" for e in row["errors"]]
    return lines


REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"


def package_report(pins: dict[str, str] | None = None) -> dict:
    """{"missing": [...], "differ": ["torch 2.11.0 (pinned 2.13.0)", ...]} for `pins` ({name: version};
    default requirements.txt's, as `course.env.requirement_pins` reads them, each package once under its bare
    name) in this environment: a GPU machine's own image may lack packages (then the notebooks that import
    them fail, and the table says so) or hold other versions (whose numbers then differ from the course's)."""
    import importlib.metadata

    from course import env

    if pins is None:
        pins = {name: version for name, version in env.requirement_pins(REQUIREMENTS).items()
                if "[" not in name and "_" not in name}
    missing, differ = [], []
    for name, wanted in pins.items():
        try:
            found = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
            continue
        if found.split("+")[0] != wanted:
            differ.append(f"{name} {found} (pinned {wanted})")
    return {"missing": missing, "differ": differ}


def device_report(profile: str | None = None) -> dict:
    """What the run ran on: torch's view of the GPU, and what the kernels will see under `profile` (bfloat16
    native or not, bytes usable), as `course.devices` answers with ``COURSE_GPU_PROFILE=<profile>``."""
    import torch

    from course import devices

    report = {"torch": torch.__version__, "cuda": torch.version.cuda,
              "cuda_available": torch.cuda.is_available(), "profile": profile}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        before = os.environ.pop(devices.PROFILE_ENV, None)
        if profile:
            os.environ[devices.PROFILE_ENV] = profile
        try:
            report.update(name=props.name, capability=f"{props.major}.{props.minor}",
                          total_bytes=props.total_memory, bf16_native=devices.bf16_native("cuda:0"),
                          usable_bytes=devices.gpu_memory_bytes("cuda:0"))
        finally:
            os.environ.pop(devices.PROFILE_ENV, None)
            if before is not None:
                os.environ[devices.PROFILE_ENV] = before
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("modules", nargs="*", help="module ids (default: every solution notebook)")
    parser.add_argument("--profile", choices=["t4"], help="emulate Colab's T4 (bf16 not native, 14.74 GiB)")
    parser.add_argument("--out", default="build/gpu-check", help="folder for gpu_check.json and cell logs")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="run without a GPU (a dry run of the harness)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds one cell may run (default 600)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="notebooks run at once, each by its own harness process (default 1; the device "
                             "column then overlaps with the others')")
    args = parser.parse_args(argv)

    import torch

    harness = [name for name in ("nbclient", "nbformat", "ipykernel")
               if importlib.util.find_spec(name) is None]
    if harness:
        print(f"gpu-check runs notebooks with {', '.join(harness)}, missing in {sys.executable}: install "
              "them (or carry their wheels to a machine with no index).", file=sys.stderr)
        return 2
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(f"gpu-check needs a CUDA GPU, and torch {torch.__version__} sees none "
              f"(torch.version.cuda={torch.version.cuda}: a CPU-only build of torch also reads None). "
              "Run it on a GPU machine, or pass --allow-cpu for a dry run of the harness.", file=sys.stderr)
        return 2
    modules = args.modules or settings.modules()
    unknown = sorted(set(modules) - set(settings.modules()))
    if unknown:
        print(f"unknown module(s) {unknown}; known: {settings.modules()}", file=sys.stderr)
        return 2
    settings.tools_on_path()
    root = Path(__file__).resolve().parent.parent
    paths = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=paths, COURSE_DEVICE="cuda" if torch.cuda.is_available() else "cpu")
    if args.profile:
        env["COURSE_GPU_PROFILE"] = args.profile
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    device = device_report(args.profile)
    print("gpu-check on", ", ".join(f"{k}={v}" for k, v in device.items()), flush=True)
    device["packages"] = package_report()
    for kind, names in device["packages"].items():
        if names:
            print(f"packages {kind} here: {', '.join(names)}", flush=True)
    print(f"{'notebook':<24} {'wall (s)':>8} {'reserved MiB':>12} {'device MiB':>12}  status", flush=True)
    rows = []
    started = time.monotonic()
    if args.jobs > 1:
        finished = run_parallel(modules, args, env, out_dir)
    else:
        finished = (run_notebook(settings.solution_notebook(m), out_dir, args.timeout, env) for m in modules)
    for row in finished:
        rows.append(row)
        print("\n".join(format_row(row)), flush=True)
        (out_dir / "gpu_check.json").write_text(json.dumps({"device": device, "jobs": args.jobs,
                                                            "notebooks": rows}, indent=1))
    failed = [r["module"] for r in rows if r["errors"]]
    undeclared = sum(len(r.get("undeclared_cpu", [])) for r in rows)
    overlap = f" (with {args.jobs} notebooks at once: overlapping)" if args.jobs > 1 else ""
    print(f"{len(rows)} notebook(s) in {time.monotonic() - started:.0f} s; reserved MiB = "
          f"torch.cuda.max_memory_reserved of the largest cell (the caching allocator's blocks, what "
          f"PROFILE=t4's cap binds on; not counted: the CUDA context, which the device column includes), "
          f"device MiB = all processes on the GPU above the level before the notebook{overlap}; "
          f"{undeclared} cell(s) ran on the CPU undeclared (over {CPU_FLAG_S:.0f} s CPU, no CUDA allocation, "
          f"no on_cpu); "
          f"{'failed: ' + ', '.join(failed) if failed else 'no errors'}. "
          f"Details: {out_dir / 'gpu_check.json'}")
    return int(bool(failed))


def run_parallel(modules: list[str], args, env: dict[str, str], out_dir: Path):
    """Run each module by a harness process of its own (``--jobs 1``, its own folder under `out_dir`),
    `args.jobs` at a time; yield each notebook's row as its process ends, in the order they end."""
    root = Path(__file__).resolve().parent.parent
    pending, running = list(modules), {}
    while pending or running:
        while pending and len(running) < args.jobs:
            module = pending.pop(0)
            folder = out_dir / module
            folder.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-m", "tests.gpu_check", module, "--out", str(folder),
                       "--timeout", str(args.timeout)]
            command += (["--profile", args.profile] if args.profile else []) + (
                ["--allow-cpu"] if args.allow_cpu else [])
            with open(folder / "harness.log", "w") as log:
                running[module] = subprocess.Popen(command, env=env, cwd=root, stdout=log, stderr=log)
        time.sleep(0.2)
        for module, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[module]
            try:
                yield json.loads((out_dir / module / "gpu_check.json").read_text())["notebooks"][0]
            except (OSError, ValueError, KeyError, IndexError):
                yield {"module": module, "wall_s": float("nan"), "kernel_cuda_peak_bytes": None,
                       "kernel_cuda_reserved_bytes": None, "device_peak_added_bytes": None, "fallbacks": [],
                       "undeclared_cpu": [], "cells": [],
                       "errors": [{"cell": None, "error": f"its harness exited with code {proc.returncode} "
                                   f"and no report: see {out_dir / module / 'harness.log'}"}]}


if __name__ == "__main__":
    sys.exit(main())
