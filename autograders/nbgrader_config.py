# nbgrader configuration for the repository itself (release and instructors' CLI).
# Use from the repository root:  nbgrader <command> --NbGrader.config_file=autograders/nbgrader_config.py
# Grading runs get their own folder and config; see autograders/grade.py.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from autograders.settings import MODULES, REPO, configure  # noqa: E402

c = get_config()  # noqa: F821 (provided by traitlets when nbgrader loads this file)
configure(c, root=REPO / "grading", release_directory=MODULES)
