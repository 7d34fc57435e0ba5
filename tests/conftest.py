import atexit
import os
import shutil
import tempfile

import pytest
import torch

from autograders.settings import tools_on_path

tools_on_path()  # nbgrader needs `alembic` and `jupyter` from this environment
# The notebooks pick CUDA when present; the suite must pass on the CI's CPU-only machine too.
os.environ.setdefault("MPLBACKEND", "Agg")
# course.metrics records what notebooks measure; the suite's runs go to a scratch file, not your home.
if "COURSE_METRICS" not in os.environ:
    _scratch = tempfile.mkdtemp(prefix="course-metrics-")
    os.environ["COURSE_METRICS"] = os.path.join(_scratch, "metrics.json")
    atexit.register(shutil.rmtree, _scratch, ignore_errors=True)


@pytest.fixture
def small_lm():
    """Make an untrained TinyLM small enough for unit tests: ``small_lm(seed)``, in eval mode."""
    from course import lm

    def make(seed=0):
        torch.manual_seed(seed)
        return lm.TinyLM(lm.LMConfig(vocab_size=11, context=32, d_model=16, n_layers=2, n_heads=2)).eval()

    return make


@pytest.fixture(scope="module")
def closed_repository():
    """The repository closed to other users (mode 700) while a lab-hub test module runs, as an instructor
    must close it before `make hub` (which refuses an open one: learners would read solutions/ and the hidden
    tests); its mode is put back after the module."""
    from autograders.settings import REPO

    mode = REPO.stat().st_mode & 0o7777
    REPO.chmod(mode & 0o700)
    try:
        yield REPO
    finally:
        REPO.chmod(mode)
