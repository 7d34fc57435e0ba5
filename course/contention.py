"""Latency at the tail while other models share the core: background inference processes and percentiles.

Taught in 01_edge ("Budgets at the tail, on a shared chip"). `background_models` starts small CNNs (a
driver-monitoring camera model and a keyword-spotting voice model) in separate processes, each running
inference in a loop, pinned to the same core(s) as the measurement; they always stop: at the end of the
`with` block (terminate, then kill), at their own deadline, or when their parent dies.

Run as a worker: ``python -m course.contention WORKLOAD --cores 0 --seconds 30 --nice 0``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from course import processes
from course.bench import measure_time

WORKLOADS = ("driver monitoring", "voice")
READY = "ready"


def _workload(name: str):
    """(model, input) of a background workload; small CNNs, batch 1, float32."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if name == "driver monitoring":      # a 96 x 96 grey cabin-camera frame -> eyes open / closed
        model = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
                              nn.Conv2d(32, 32, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(32, 2))
        return model.eval(), torch.rand(1, 1, 96, 96)
    if name == "voice":                  # 40 mel bands x 98 frames (one second) -> 12 keywords
        model = nn.Sequential(nn.Conv1d(40, 64, 3), nn.ReLU(), nn.Conv1d(64, 64, 3), nn.ReLU(),
                              nn.Conv1d(64, 64, 3), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(64, 12))
        return model.eval(), torch.rand(1, 40, 98)
    raise ValueError(f"unknown workload {name!r}; choose from {WORKLOADS}")


def _serve(name: str, cores: Sequence[int], seconds: float, nice: int) -> None:
    """The worker's loop: inference until `seconds` have passed or the parent process is gone."""
    import torch

    parent = os.getppid()
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cores))
    if nice:
        os.nice(nice)
    torch.set_num_threads(1)
    model, x = _workload(name)
    deadline = time.monotonic() + seconds
    print(READY, flush=True)
    with torch.inference_mode():
        while time.monotonic() < deadline and os.getppid() == parent:
            model(x)


@contextmanager
def pinned(cores: set[int]) -> Iterator[set[int]]:
    """Run this process (all its threads) on `cores` inside the block; the old affinity comes back after."""
    if not hasattr(os, "sched_setaffinity"):
        yield set()
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield cores
    finally:
        os.sched_setaffinity(0, before)


@contextmanager
def background_models(workloads: Sequence[str] = WORKLOADS, cores: set[int] | None = None, seconds: float = 60.0,
                      nice: int = 0, start_timeout: float = 60.0) -> Iterator[list[subprocess.Popen]]:
    """Run each workload in its own process, in a loop, pinned to `cores`, at niceness `nice` (0 = the same
    priority as us, 19 = the lowest); yield once every one has loaded its model. The processes stop when the
    block ends (terminate, then kill after 5 s), after `seconds` at the latest, or if this process dies."""
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    core_list = ",".join(str(c) for c in sorted(cores or []))
    workers: list[subprocess.Popen] = []
    try:
        for name in workloads:
            command = [sys.executable, "-m", "course.contention", name, "--seconds", str(seconds), "--nice", str(nice)]
            if core_list:
                command += ["--cores", core_list]
            workers.append(processes.start(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL))
        give_up = time.monotonic() + start_timeout
        for process in workers:
            line = process.stdout.readline().strip()   # blocks until the worker has loaded torch and its model
            if line != READY or time.monotonic() > give_up:
                raise RuntimeError(f"a background worker did not start (said {line!r}, exit code {process.poll()})")
        yield workers
    finally:
        processes.stop_tree(*workers, grace_s=5)


def latency_samples(fn: Callable[[], object], count: int, max_seconds: float, warmup: int = 20,
                    clock: Callable[[], float] = time.perf_counter) -> np.ndarray:
    """Seconds taken by each of up to `count` calls of `fn`, stopping early after `max_seconds`
    (`course.bench.measure_time`'s samples, as an array for percentiles)."""
    return np.asarray(measure_time(fn, repeats=count, warmup=warmup, clock=clock, max_seconds=max_seconds).samples)


def tail_summary(samples_s: np.ndarray, budget_s: float) -> dict:
    """p50, p99 and max in ms (NumPy's linear interpolation between order statistics), the fraction of calls
    over `budget_s`, and the number of samples. A p99 from n samples rests on about n/100 of them: with fewer
    than a few hundred it is little more than the maximum. Raises ValueError when there are no samples."""
    ms = np.asarray(samples_s, dtype=float) * 1e3
    if ms.size == 0:
        raise ValueError("no latency samples to summarise: measure at least one call")
    return {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()), "miss_rate": float((ms > budget_s * 1e3).mean())}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one background model in a loop (course.contention).")
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("--cores", default="", help="comma-separated cores to pin to")
    parser.add_argument("--seconds", type=float, default=60.0, help="stop after this long in any case")
    parser.add_argument("--nice", type=int, default=0)
    args = parser.parse_args(argv)
    cores = [int(c) for c in args.cores.split(",") if c]
    _serve(args.workload, cores, args.seconds, args.nice)


if __name__ == "__main__":
    main()
