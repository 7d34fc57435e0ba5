"""Helpers shared by every notebook of the Systems for ML course.

Modules, one job each (the notebook that teaches each is named in its docstring):
``env`` (the setup cell), ``data`` (offline digits), ``models``, ``training``,
``bench`` (time, size, memory), ``checks`` (exercise tests), ``plots``.

``setup`` and ``Context`` (from ``env``, which imports torch) are loaded on first use, so that importing a
light helper such as ``course.processes`` (the grader stops processes with it) does not import torch.
"""

import importlib

__all__ = ["Context", "setup"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in __all__:
        from course import env

        return getattr(env, name)
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
