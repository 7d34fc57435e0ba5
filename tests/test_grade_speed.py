"""How many students the grader runs at once, the time each cell gets, and the long-lived grading workers.

An honest grade must not depend on how busy the grader is (issue 18, case 10): the default number of
jobs counts the processes a module's tests start, and cell limits stretch with the load the grader
itself puts on the cores. The workers that grade many students in one process must cost a student who
hangs or kills them only that student.
"""

import json
import math
import os
import re

import nbformat
import psutil
import pytest

from autograders import grade, guard, settings
from tests.notebooks import load, reference_answers, solution_path, source, submission

GB = 2**30


def test_default_jobs_counts_the_processes_each_students_tests_start():
    plenty = 64 * GB
    assert grade.default_jobs("00_orientation", n_cores=2, available_bytes=plenty) == 2
    # 06's elastic test runs torchrun with two ranks under an agent: one student fills two cores
    assert grade.default_jobs("06_reliability", n_cores=2, available_bytes=plenty) == 1
    assert grade.default_jobs("04_distributed", n_cores=2, available_bytes=plenty) == 1
    assert grade.default_jobs("06_reliability", n_cores=8, available_bytes=plenty) == 2
    assert grade.default_jobs("00_orientation", n_cores=1, available_bytes=plenty) == 1
    # memory counts too, and there is always one job
    assert grade.default_jobs("00_orientation", n_cores=16, available_bytes=5.5 * GB) == 2
    assert grade.default_jobs("06_reliability", n_cores=16, available_bytes=1 * GB) == 1


def test_every_module_whose_tests_start_processes_declares_them():
    """A module whose code cells launch torchrun (course.launch) must be in grade.PROCESSES, or the
    default jobs would put two such students on two cores."""
    for module in settings.modules():
        code = "\n".join(source(c) for c in load(solution_path(module))["cells"] if c["cell_type"] == "code")
        starts_ranks = bool(re.search(r"\blaunch\(|torchrun", code))
        assert starts_ranks == (grade.processes(module) > 1), module


def test_cell_limits_stretch_with_the_graders_own_load():
    assert grade.cell_limit(60, "00_orientation", jobs=2, n_cores=2) == 60  # one kernel per core
    assert grade.cell_limit(60, "00_orientation", jobs=4, n_cores=2) == 120
    assert grade.cell_limit(60, "06_reliability", jobs=1, n_cores=2) == 90  # three busy processes, two cores
    assert grade.cell_limit(60, "06_reliability", jobs=2, n_cores=2) == 180
    assert grade.cell_limits("06_reliability", jobs=2, n_cores=2) == {"elastic_tests": 360}
    assert grade.cell_limits("00_orientation", jobs=2, n_cores=2) == {}
    # a machine already busy stretches them too, up to MAX_STRETCH
    assert grade.cell_limit(60, "00_orientation", jobs=2, n_cores=2, machine_load=2) == 120
    most = 60 * grade.MAX_STRETCH
    assert grade.cell_limit(60, "00_orientation", jobs=2, n_cores=2, machine_load=50) == most


def test_guarded_execute_gives_named_test_cells_their_own_limit():
    execute = guard.GuardedExecute(timeout=60, cell_timeouts={"elastic_tests": 200.0})
    def test_cell(grade_id):
        return nbformat.v4.new_code_cell("pass", metadata={"nbgrader": {"grade": True, "grade_id": grade_id}})

    heavy, other = test_cell("elastic_tests"), test_cell("other_tests")
    plain = nbformat.v4.new_code_cell("pass")
    assert execute._get_timeout(heavy) == 200
    assert execute._get_timeout(other) == 60
    assert execute._get_timeout(plain) == 60
    # never less than the general limit
    generous = guard.GuardedExecute(timeout=300, cell_timeouts={"elastic_tests": 200.0})
    assert generous._get_timeout(heavy) == 300


def test_the_graders_course_config_carries_the_limits(tmp_path):
    grade._write_config(tmp_path, 90, {"elastic_tests": 180})
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(tmp_path)).load_config()
    assert config.Execute.timeout == 90
    assert config.GuardedExecute.cell_timeouts == {"elastic_tests": 180}


# The whole-notebook limit the hanging student waits out in full. An honest 00 takes about 14 s alone (in CI
# run 23 all of this test but the 180 s wait took 35 s: three other students, two worker starts): 60 s leaves
# four times that.
# A machine busier than its cores when the test starts (load average per core above 1) stretches it, up to
# grade.MAX_STRETCH times, for the honest students graded after the hang. (A flat 180 s made this test the
# suite's slowest.)
STUDENT_TIMEOUT_S = 60


def student_limit() -> int:
    """STUDENT_TIMEOUT_S, stretched by the load on the machine beyond its cores."""
    busy = os.getloadavg()[0] / grade.cores()
    return math.ceil(STUDENT_TIMEOUT_S * min(grade.MAX_STRETCH, max(1.0, busy)))


HANG = "import time\nwhile True:\n    time.sleep(1)\n"
# the kernel's parent is the worker, unless walls (a PID namespace) hide it: then nothing to kill
KILL_THE_GRADER = "import os, signal\nif os.getppid() > 1:\n    os.kill(os.getppid(), signal.SIGKILL)\n"


@pytest.mark.slow
def test_a_student_who_hangs_or_kills_the_worker_costs_only_that_student(tmp_path):
    """One worker (jobs=1) grades four students in turn: the one that hangs past the whole-notebook limit
    and the one whose code kills the grading process each get a clear result, and the honest students
    after them are graded in full by the worker started in its place."""
    module = "00_orientation"
    reference = reference_answers(module)
    folder = tmp_path / "in"
    folder.mkdir()
    first = next(iter(reference))  # reference_answers: {cell id: None}, None meaning the solution's source
    answer = next(source(c) for c in load(solution_path(module))["cells"] if c["id"] == first)
    notebooks = {"a_honest": reference, "b_hangs": {**reference, first: HANG + answer},
                 "c_kills": {**reference, first: KILL_THE_GRADER + answer}, "d_honest": reference}
    for name, answers in notebooks.items():
        (folder / f"{name}.ipynb").write_text(json.dumps(submission(module, answers)))
    limit = student_limit()
    results = {r.student: r for r in grade.grade(module, folder, tmp_path / "out", cell_timeout_s=600,
                                                 student_timeout_s=limit, jobs=1)}
    assert results["a_honest"].status == "graded" and results["a_honest"].score == 6, results["a_honest"]
    assert results["d_honest"].status == "graded" and results["d_honest"].score == 6, results["d_honest"]
    hung = results["b_hangs"]
    assert hung.status == "timed out" and f"ran past {limit} s" in hung.detail, hung
    assert limit <= hung.seconds < limit + 60, f"the hang took {hung.seconds:.0f} s, limit {limit} s"
    killed = results["c_kills"]
    assert (killed.status == "grading failed" and "grading process ended" in killed.detail
            or killed.status == "graded" and killed.score == 6), killed
    for name in ("a_honest", "d_honest"):
        assert (tmp_path / "out" / "feedback" / name / module / f"{module}.html").exists()
    assert not (tmp_path / "out" / "work").exists(), "the workers' scratch courses are left behind"
    # every grading kernel names the grading folder (it hides it); the one whose worker it killed included
    left = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"])
            if any(str(tmp_path / "out") in part for part in p.info["cmdline"] or [])]
    assert not left, f"processes of the grading run outlived it: {left}"
