"""One long-lived grading process: autogrades students one after another with nbgrader's own classes.

    python autograders/worker.py COURSE      (started by `autograders.grade`, one per job)

COURSE is a scratch nbgrader course that `grade.py` prepared (its nbgrader_config.py, a copy of the
gradebook, the walled-in kernel on JUPYTER_PATH). The worker reads one JSON request a line on stdin,
``{"module": ..., "student": ..., "log": path, "env": {...}}`` (variables for that student's
kernel), runs nbgrader's ``Autograde`` converter on
COURSE/submitted/<student>/<module>, then ``GenerateFeedback`` for that student, and answers one JSON
line ``{"student": ..., "autograded": bool, "feedback": bool}``. nbgrader's log for that student goes
to the request's log file; anything else the process prints goes to COURSE/worker.log, never into
the answers.

This saves what ``python -m nbgrader autograde`` pays per student (a Python start and nbgrader's
imports, a second process for the feedback page); the kernel that runs the notebook is still a new,
walled-in process per student. A student whose grading hangs or crashes the worker costs only that
student: `grade.py` kills the worker and starts another.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path

LOG_FORMAT = "[%(asctime)s %(levelname)s] %(message)s"


def _run(app, log: logging.Logger) -> bool:
    """Start one nbgrader converter; False (and the traceback logged) when it fails."""
    try:
        app.start()
    except Exception:  # nbgrader raises NbGraderException after logging why
        log.error("%s", traceback.format_exc())
        return False
    return True


def grade_student(config, module: str, student: str, log: logging.Logger) -> dict:
    """Autograde one student's submission in the course of `config`, then write their feedback page."""
    from nbgrader.converters import Autograde, GenerateFeedback
    from nbgrader.coursedir import CourseDirectory

    coursedir = CourseDirectory(config=config, log=log)
    coursedir.assignment_id, coursedir.student_id = module, student
    autograde = Autograde(coursedir=coursedir, config=config, log=log)
    autograde.force, autograde.create_student = True, True
    done = _run(autograde, log)
    feedback = False
    if done:
        feedback = _run(GenerateFeedback(coursedir=coursedir, config=config, log=log), log)
    return {"student": student, "autograded": done, "feedback": feedback}


def main(argv: list[str] | None = None) -> int:
    course = Path((argv if argv is not None else sys.argv[1:])[0]).resolve()
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    noise = os.open(course / "worker.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(noise, 1)
    os.dup2(noise, 2)
    os.chdir(course)

    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    log = logging.getLogger("autograders.worker")
    log.setLevel(logging.INFO)
    log.propagate = False
    import nbgrader.converters  # noqa: F401  (imported before the first student, not during)

    answers.write(json.dumps({"ready": os.getpid()}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        os.environ.update(request.get("env", {}))  # inherited by this student's kernel (grade.py's mark)
        handler = logging.FileHandler(request["log"], encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        log.addHandler(handler)
        try:
            answer = grade_student(config, request["module"], request["student"], log)
        finally:
            log.removeHandler(handler)
            handler.close()
        answers.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
