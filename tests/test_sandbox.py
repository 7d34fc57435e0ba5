"""autograders/sandbox.py and kernel.py: the grading kernel's limits, checked in real processes."""

import json
import subprocess
import sys

from autograders import sandbox
from autograders.settings import REPO

PROBE = """
import sys
sys.path.insert(0, {repo!r})
from autograders.kernel import limit
limit(1 * 2**30, 10 * 2**20)
try:
    hog = bytearray(2 * 2**30)
    print("allocated")
except MemoryError:
    print("MemoryError")
try:
    with open({path!r}, "wb") as f:
        f.write(b"x" * (20 * 2**20))
    print("wrote")
except OSError as e:
    print("OSError", e.errno)
import torch
print("torch", int(torch.ones(4).sum()))
"""


def test_limits_stop_a_memory_bomb_and_a_huge_file_but_not_torch(tmp_path):
    out = subprocess.run([sys.executable, "-c", PROBE.format(repo=str(REPO), path=str(tmp_path / "big"))],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split("\n")[:3] == ["MemoryError", "OSError 27", "torch 4"], out.stderr[-2000:]


def test_the_kernel_spec_runs_the_limited_kernel(tmp_path):
    name = sandbox.write_kernelspec(tmp_path, memory_bytes=123, file_bytes=456)
    argv = json.loads((tmp_path / "kernels" / name / "kernel.json").read_text())["argv"]
    assert argv[-6:] == [sys.executable, str(REPO / "autograders" / "kernel.py"), "123", "456", "-f",
                         "{connection_file}"]
    assert (argv[0] == "unshare") == sandbox.namespaces_available()
    assert ("NOT ISOLATED" in sandbox.isolation()) != sandbox.namespaces_available()
