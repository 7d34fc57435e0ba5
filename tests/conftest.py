import os

from autograders.settings import tools_on_path

tools_on_path()  # nbgrader needs `alembic` and `jupyter` from this environment
# The notebooks pick CUDA when present; the suite must pass on the CI's CPU-only machine too.
os.environ.setdefault("MPLBACKEND", "Agg")
