"""Helpers shared by every notebook of the Systems for ML course.

Modules, one job each (the notebook that teaches each is named in its docstring):
``env`` (the setup cell), ``data`` (offline digits), ``models``, ``training``,
``bench`` (time, size, memory), ``checks`` (exercise tests), ``plots``.
"""

from course.env import Context, setup

__all__ = ["Context", "setup"]
__version__ = "0.1.0"
