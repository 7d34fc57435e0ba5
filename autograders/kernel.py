"""The grading kernel: set this process's limits, then become an ordinary ipykernel.

    python autograders/kernel.py MEMORY_BYTES FILE_BYTES -f CONNECTION_FILE

Run by path (it imports nothing of the course), from the kernel spec `sandbox.write_kernelspec`
writes. Limits are inherited by everything the kernel starts (torchrun, ranks, Ray).
"""

import resource
import runpy
import signal
import sys


def limit(memory_bytes: int, file_bytes: int) -> None:
    # RLIMIT_DATA counts what a process allocates (heap and private mappings) but not address
    # space reserved and never touched, which torch reserves generously: RLIMIT_AS would break it.
    resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write raises OSError, no kill


if __name__ == "__main__":
    limit(int(sys.argv[1]), int(sys.argv[2]))
    sys.argv = ["ipykernel_launcher", *sys.argv[3:]]
    runpy.run_module("ipykernel_launcher", run_name="__main__", alter_sys=True)
