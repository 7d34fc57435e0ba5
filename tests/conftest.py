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
