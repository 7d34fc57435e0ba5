"""Grading throughput: the course's grader against plain serial nbgrader, on the same submissions.

    python -m tests.bench_grading [MODULE] [--students N] [--jobs J] [--cores C] [--no-baseline]
                                  [--ray ADDRESS | --local-cluster NODES]
    (or: make bench-grading [MODULE=...])

Builds N honest submissions of MODULE (the reference answers in its student release), then grades
them twice, each into a fresh folder, on C cores (this process and everything it starts are pinned
to them):

- plain: nbgrader as an instructor would run it by hand, serial and without walls: a course folder
  configured by `autograders.settings.configure`, then ``nbgrader generate_assignment``,
  ``nbgrader autograde`` (every student, one process) and ``nbgrader generate_feedback``;
- ours: `autograders.grade.grade` with J students at a time (default: what this machine's default
  would pick for MODULE on C cores), walled-in kernels, the feedback pages, the report.

It prints both times, seconds per submission, the CPU seconds each spent per submission (this process
and all it started), and the ratio of the two throughputs (ours over plain), with the machine's load
average: on a shared machine the times are inflated and the ratio moves with the other load; the CPU
seconds do not. It fails when the two disagree on a score. ``--students 1 --jobs 1 --no-baseline`` gives
one submission's grading time on one core, module by module.

On a Ray cluster (`autograders.cluster`): ``--ray ADDRESS`` grades "ours" there instead (the cluster's
nodes, whatever they are; ``--jobs`` and ``--cores`` then do not apply to them); ``--local-cluster NODES``
first starts that many nodes on this machine with Ray's own ``ray start`` (tests/ray_cluster.py), each
given ``--cluster-cpus`` Ray CPUs (default 1), times the grading only (not the nodes' start), and stops
them. Nodes on one machine share its cores: that measures the cluster machinery, not more hardware.
Every line also gives submissions per minute.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autograders import grade, settings
from tests.notebooks import reference_answers, submission


def build(folder: Path, module: str, students: int) -> list[str]:
    """N copies of the reference answers as student notebooks in `folder`; their student ids."""
    folder.mkdir(parents=True)
    done = json.dumps(submission(module, reference_answers(module)))
    names = [f"student{index:02d}" for index in range(students)]
    for name in names:
        (folder / f"{name}.ipynb").write_text(done)
    return names


def plain_nbgrader(module: str, notebooks: Path, names: list[str], course: Path,
                   cell_timeout_s: int) -> dict[str, float]:
    """Grade with plain nbgrader commands, serially, no walls; {student: score}."""
    course.mkdir(parents=True)
    (course / "nbgrader_config.py").write_text(
        f"import sys\nsys.path.insert(0, {str(settings.REPO)!r})\n"
        "from autograders.settings import configure\n"
        f"configure(get_config(), root={str(course)!r}, cell_timeout_s={cell_timeout_s})\n")
    for name in names:
        into = course / "submitted" / name / module
        into.mkdir(parents=True)
        shutil.copyfile(notebooks / f"{name}.ipynb", into / f"{module}.ipynb")
    env = settings.tools_on_path(dict(os.environ))
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    with open(course / "nbgrader.log", "wb") as log:
        for args in (["generate_assignment", module, "--force"], ["autograde", module, "--force"],
                     ["generate_feedback", module, "--force"]):
            subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env, check=True,
                           stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        return {name: float(gb.find_submission(module, name).score) for name in names}


def cpu_seconds() -> float:
    """CPU time (user and system) of this process and every process it waited for, in seconds."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def pin(cores: int) -> list[int]:
    """Run this process (and what it starts) on the first `cores` of the cores it may use."""
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[:cores]
    os.sched_setaffinity(0, chosen)
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", nargs="?", default="00_orientation")
    parser.add_argument("--students", type=int, default=6)
    parser.add_argument("--jobs", type=int,
                        help="students at once (default: the grader's default on these cores)")
    parser.add_argument("--cores", type=int, default=2, help="cores to run on (default 2)")
    parser.add_argument("--cell-timeout", type=int, default=60)
    parser.add_argument("--no-baseline", action="store_true", help="skip plain nbgrader")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--ray", metavar="ADDRESS", help="grade on this Ray cluster (HOST:PORT or auto)")
    where.add_argument("--local-cluster", type=int, metavar="NODES",
                       help="start NODES Ray nodes on this machine and grade on them")
    parser.add_argument("--cluster-cpus", type=int, default=1, help="Ray CPUs per local node (default 1)")
    args = parser.parse_args(argv)
    used = pin(args.cores)
    jobs = args.jobs or grade.default_jobs(args.module, n_cores=len(used))
    base = Path(tempfile.mkdtemp(prefix="bench-grading-"))
    tag = f"BENCH {args.module}, {args.students} submissions, {len(used)} cores"
    local = None
    if args.local_cluster:
        from tests.ray_cluster import LocalCluster

        local = LocalCluster(nodes=args.local_cluster, cpus=args.cluster_cpus).start()
        args.ray = local.address
    try:
        names = build(base / "in", args.module, args.students)
        took, cpu, scores = {}, {}, {}
        if not args.no_baseline:
            start, used_cpu = time.monotonic(), cpu_seconds()
            scores["plain"] = plain_nbgrader(args.module, base / "in", names, base / "plain",
                                             args.cell_timeout)
            took["plain"], cpu["plain"] = time.monotonic() - start, cpu_seconds() - used_cpu
            print(f"{tag}: plain serial nbgrader {took['plain']:.0f} s, "
                  f"{took['plain'] / args.students:.1f} s "
                  f"per submission, CPU {cpu['plain'] / args.students:.1f} s per submission "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
        start, used_cpu = time.monotonic(), cpu_seconds()
        results = grade.grade(args.module, base / "in", base / "ours", cell_timeout_s=args.cell_timeout,
                              jobs=jobs, ray=args.ray)
        took["ours"], cpu["ours"] = time.monotonic() - start, cpu_seconds() - used_cpu
        scores["ours"] = {r.student: r.score for r in results}
        how = (f"on a local Ray cluster of {args.local_cluster} nodes x {args.cluster_cpus} CPU (sharing "
               "this machine's cores)" if local else f"on the Ray cluster at {args.ray}" if args.ray
               else f"{jobs} at a time")
        # on a cluster the CPU seconds of the nodes' processes are not this process's children: not counted
        cpu_note = "" if args.ray else f", CPU {cpu['ours'] / args.students:.1f} s per submission"
        print(f"{tag}: the course's grader, {how}, walls on: {took['ours']:.0f} s, "
              f"{took['ours'] / args.students:.1f} s per submission, "
              f"{60 * args.students / took['ours']:.1f} submissions per minute{cpu_note} "
              f"(load average {os.getloadavg()[0]:.1f})", flush=True)
        if "plain" in took:
            print(f"{tag}: throughput ratio ours/plain = {took['plain'] / took['ours']:.2f}x "
                  f"(target 1.8x at --jobs 2 on 2 cores); CPU per submission ours/plain = "
                  f"{cpu['ours'] / cpu['plain']:.2f}", flush=True)
        if len({json.dumps(s, sort_keys=True) for s in scores.values()}) != 1:
            print("BENCH the scores differ:", scores)
            return 1
    finally:
        shutil.rmtree(base, ignore_errors=True)
        if local:
            local.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
