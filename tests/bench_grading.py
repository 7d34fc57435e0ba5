"""Grading throughput: one module's submissions graded one at a time, then in parallel.

    python -m tests.bench_grading [MODULE] [--students N] [--jobs J]     (or: make bench-grading)

Builds N submissions of MODULE from its student release (half answered with the reference
solutions, half left blank, as a real class hands in a mix), grades them with the real
grader (nbgrader, the walled-in kernel) once with one job and once with J jobs, each into a
fresh folder, and prints submissions per minute for both and checks that the grades agree.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from autograders import grade
from tests.notebooks import reference_answers, submission


def build(folder: Path, module: str, students: int) -> None:
    folder.mkdir(parents=True)
    done = json.dumps(submission(module, reference_answers(module)))
    blank = json.dumps(submission(module))
    for index in range(students):
        (folder / f"student{index:02d}.ipynb").write_text(done if index % 2 == 0 else blank)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", nargs="?", default="00_orientation")
    parser.add_argument("--students", type=int, default=6)
    parser.add_argument("--jobs", type=int, default=grade.default_jobs())
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="bench-grading-"))
    try:
        build(base / "in", args.module, args.students)
        scores = {}
        for jobs in dict.fromkeys([1, args.jobs]):
            start = time.monotonic()
            results = grade.grade(args.module, base / "in", base / f"out-{jobs}", jobs=jobs)
            took = time.monotonic() - start
            scores[jobs] = {r.student: r.score for r in results}
            print(f"BENCH {args.module}: {args.students} submissions, {jobs} at a time: {took:.0f} s, "
                  f"{60 * args.students / took:.1f} submissions/min", flush=True)
        if len({json.dumps(s, sort_keys=True) for s in scores.values()}) != 1:
            print("BENCH the grades differ between runs:", scores)
            return 1
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
