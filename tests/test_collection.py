"""What `make test` collects: the course's notebooks, never copies an editor left beside them."""

import json
import shutil
import subprocess
import sys

from autograders.settings import REPO


def test_editor_checkpoints_are_never_collected(tmp_path):
    """JupyterLab saves `.ipynb_checkpoints/<name>-checkpoint.ipynb` next to every notebook it opens;
    nbval must not run those stale copies (the project's own settings, in a copy of its layout)."""
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    module = tmp_path / "solutions" / "00_orientation"
    (module / ".ipynb_checkpoints").mkdir(parents=True)
    notebook = json.dumps({"cells": [{"cell_type": "code", "id": "a", "metadata": {}, "outputs": [],
                                      "execution_count": None, "source": "1 + 1"}],
                           "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    (module / "00_orientation.ipynb").write_text(notebook)
    (module / ".ipynb_checkpoints" / "00_orientation-checkpoint.ipynb").write_text(notebook)
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "solutions"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "00_orientation.ipynb" in done.stdout, done.stdout + done.stderr
    assert "checkpoint" not in done.stdout, done.stdout
