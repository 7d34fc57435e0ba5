"""Run every solution notebook top to bottom; print wall time and peak memory of each.

    python -m tests.bench_notebooks [MODULE ...] [--fast]      (or: make bench)

Peak memory is the largest sum, over the kernel and every process it starts (torchrun
workers, Flower's Ray actors), of proportional set size (PSS: shared pages split between
the processes that share them), sampled every 0.1 s. Budgets: 3 minutes and 1.5 GB a
notebook on 2 CPU cores (Binder kills a kernel past 2 GB).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import nbformat
import psutil
from nbclient import NotebookClient

from autograders import settings

BUDGET_S = 180
BUDGET_BYTES = 1.5 * 2**30


def _memory(proc: psutil.Process) -> int:
    try:
        return proc.memory_full_info().pss
    except (psutil.AccessDenied, AttributeError):
        return proc.memory_info().rss


class TreeMemorySampler(threading.Thread):
    """Peak summed memory of this process's descendants (the kernel and what it spawns)."""

    def __init__(self, interval_s: float = 0.1):
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self.done.is_set():
            total = 0
            for child in me.children(recursive=True):
                try:
                    total += _memory(child)
                except psutil.NoSuchProcess:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.interval_s)


def run_notebook(module: str, timeout_s: int = 600) -> tuple[float, int, str]:
    path = settings.solution_notebook(module)
    nb = nbformat.read(path, as_version=4)
    sampler = TreeMemorySampler()
    sampler.start()
    start = time.monotonic()
    status = "ok"
    try:
        NotebookClient(nb, timeout=timeout_s, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    except Exception as err:  # noqa: BLE001 - report and go on to the next notebook
        status = f"FAILED: {type(err).__name__}: {str(err).strip().splitlines()[-1][:120]}"
    elapsed = time.monotonic() - start
    sampler.done.set()
    sampler.join()
    return elapsed, sampler.peak, status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("modules", nargs="*", help="module ids (default: all)")
    parser.add_argument("--fast", action="store_true", help="set COURSE_FAST=1 (grading mode)")
    args = parser.parse_args(argv)
    settings.tools_on_path()
    if args.fast:
        os.environ["COURSE_FAST"] = "1"
    print(f"{psutil.cpu_count()} CPUs visible, torch threads per kernel follow OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{'notebook':<24} {'wall (s)':>9} {'peak (MB)':>10}  status")
    worst = 0
    for module in args.modules or settings.modules():
        elapsed, peak, status = run_notebook(module)
        over = []
        if elapsed > BUDGET_S:
            over.append(f"over {BUDGET_S} s")
        if peak > BUDGET_BYTES:
            over.append(f"over {BUDGET_BYTES / 2**30:.1f} GB")
        if over and status == "ok":
            status = "OVER BUDGET: " + ", ".join(over)
        worst |= status != "ok"
        print(f"{module:<24} {elapsed:>9.1f} {peak / 2**20:>10.0f}  {status}", flush=True)
    return int(worst)


if __name__ == "__main__":
    sys.exit(main())
