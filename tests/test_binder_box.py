"""tests/binder_box.py's pieces: the requirements it installs and the cage it runs notebooks in."""

import os
import subprocess
import sys

import pytest

from autograders.settings import REPO
from tests import binder_box
from tests.test_environment import pins


def test_binder_requirements_for_this_machine_keep_every_pin_but_the_index():
    text = binder_box.local_requirements((REPO / "binder" / "requirements.txt").read_text())
    assert "index-url" not in text and "torch==2.13.0\n" in text and "+cpu" not in text
    local = REPO / "build" / "binder-local-requirements.txt"
    local.parent.mkdir(exist_ok=True)
    local.write_text(text)
    assert pins(local.relative_to(REPO)) == pins("binder/requirements.txt")  # same packages, same versions


def cages_available():
    if os.geteuid() != 0:
        return False
    try:
        with binder_box.Cage(64 * 2**20, 1.0):
            return True
    except OSError:
        return False


def test_the_cage_kills_a_process_over_its_memory_cap():
    if not cages_available():
        pytest.skip("needs root and writable control groups")
    hog = "x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096]); print('survived')"
    with binder_box.Cage(128 * 2**20, 1.0) as cage:
        done = subprocess.run([sys.executable, "-c", hog], capture_output=True, text=True,
                              preexec_fn=cage.join)
        small = subprocess.run([sys.executable, "-c", "print('fits')"], capture_output=True, text=True,
                               preexec_fn=cage.join)
        assert done.returncode != 0 and "survived" not in done.stdout
        assert cage.out_of_memory_kills() >= 1
        assert small.stdout.strip() == "fits" and 0 < cage.peak_bytes() <= 128 * 2**20
