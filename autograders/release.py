"""Generate the student notebooks in ``modules/`` from ``solutions/`` with nbgrader.

    python -m autograders.release            # every module
    python -m autograders.release 00_orientation
    python -m autograders.release 04b_model_parallel   # its folder, 04_distributed/, both notebooks

nbgrader's generate_assignment replaces each ``### BEGIN SOLUTION`` region with a stub,
deletes hidden tests, clears outputs, locks test cells and records their checksums.
The result is byte-for-byte reproducible, which tests/test_release.py relies on.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from traitlets.config import Config

from autograders import settings


def generate(module: str, release_dir: Path = settings.MODULES) -> Path:
    """Write the student version of `module`'s folder to ``release_dir/<folder>`` and return that folder.

    `module` is a module id or a module folder; nbgrader releases a whole folder, so every notebook of
    the folder is released (``04_distributed`` and ``04b_model_parallel`` together).
    """
    if module in settings.folders():
        folder = module
    elif module in settings.modules():
        folder = settings.folder(module)
    else:
        raise SystemExit(f"unknown module {module!r}; known: {', '.join(settings.modules())}")
    from nbgrader.apps import NbGraderAPI  # slow import: only when used

    settings.tools_on_path()

    with tempfile.TemporaryDirectory() as scratch:  # a throwaway course root and gradebook
        config = Config()
        settings.configure(config, root=scratch, release_directory=Path(release_dir).resolve())
        result = NbGraderAPI(config=config).generate_assignment(folder, force=True, create=True)
    if not result["success"]:
        raise RuntimeError(f"nbgrader could not generate {folder}:\n{result.get('error') or result['log']}")
    target = Path(release_dir) / folder
    shutil.rmtree(target / ".ipynb_checkpoints", ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("modules", nargs="*", help="module ids or folders (default: all)")
    args = parser.parse_args(argv)
    wanted = args.modules or settings.folders()
    folders = dict.fromkeys(settings.folder(m) if m in settings.modules() else m
                            for m in wanted)  # each folder once, in order (a folder's name is its first module's)
    for folder in folders:
        print(f"released {generate(folder).relative_to(settings.REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
