import atexit
import os
import shutil
import tempfile

from autograders.settings import tools_on_path

tools_on_path()  # nbgrader needs `alembic` and `jupyter` from this environment
# The notebooks pick CUDA when present; the suite must pass on the CI's CPU-only machine too.
os.environ.setdefault("MPLBACKEND", "Agg")
# course.metrics records what notebooks measure; the suite's runs go to a scratch file, not your home.
if "COURSE_METRICS" not in os.environ:
    _scratch = tempfile.mkdtemp(prefix="course-metrics-")
    os.environ["COURSE_METRICS"] = os.path.join(_scratch, "metrics.json")
    atexit.register(shutil.rmtree, _scratch, ignore_errors=True)
