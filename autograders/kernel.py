"""The grading kernel: cap this process, wall it in, then become an ordinary ipykernel.

    python autograders/kernel.py MEMORY_BYTES FILE_BYTES [--confine [--hide PATH]...] -f CONNECTION_FILE

Run by path (it imports nothing of the course), from the kernel spec `sandbox.write_kernelspec`
writes. Limits and walls are inherited by everything the kernel starts (torchrun, ranks, Ray).

With ``--confine`` it must already run as root of fresh user, mount and network namespaces
(`sandbox.kernel_argv` starts it under ``unshare``). It then changes only its own view of the
file system:

- every mount is read-only: the course, the Python installation, the rest of the machine;
- /tmp, /dev/shm, /var/tmp and the home folder are fresh, empty and private (in memory, capped);
- each ``--hide`` path (the grading folder with the gradebook and every other submission,
  ``solutions/``, ``.git``) is covered by an empty read-only folder;
- writable again: only the folder the notebook runs in, and the folder of the kernel's sockets;
- the course and the Python installation are put back (read-only) where a private folder covered them.

Last, it enters a second user namespace, which locks all of that: code in the kernel is root
only there and can neither undo a read-only mount nor lift a cover (mount_namespaces(7), "locked").
"""

import ctypes
import json
import os
import resource
import runpy
import signal
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_BIND = 0x1, 0x2, 0x4, 0x1000
CLONE_NEWNS, CLONE_NEWUSER = 0x20000, 0x10000000
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 0x1
PRIVATE_SIZES = {"/tmp": "1g", "/dev/shm": "1g", "/var/tmp": "64m"}
HOME_SIZE = "256m"

_libc = ctypes.CDLL(None, use_errno=True)


def limit(memory_bytes: int, file_bytes: int) -> None:
    # RLIMIT_DATA counts what a process allocates (heap and private mappings) but not address
    # space reserved and never touched, which torch reserves generously: RLIMIT_AS would break it.
    resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write raises OSError, no kill


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"grading sandbox: {what}: {os.strerror(err)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                       ctypes.c_ulong(flags), data.encode() if data else None), f"mount {target}")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _set_read_only(path: str, read_only: bool, recursive: bool) -> None:
    attr = _MountAttr(MOUNT_ATTR_RDONLY if read_only else 0, 0 if read_only else MOUNT_ATTR_RDONLY, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    _check(_libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), flags, ctypes.byref(attr),
                         ctypes.sizeof(attr)), f"make {path} {'read-only' if read_only else 'writable'}")


def _cover(path: str, size: str, writable: bool) -> None:
    mode = "1777" if path in PRIVATE_SIZES else "755"
    _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | (0 if writable else MS_RDONLY),
           f"size={size},mode={mode}")


def _put_back(path: str, held: int, writable: bool) -> None:
    os.makedirs(path, exist_ok=True)  # inside a private or covering folder, made just now
    _mount(f"/proc/self/fd/{held}", path, None, MS_BIND)
    _set_read_only(path, not writable, recursive=False)


def _enter_locked_namespace() -> None:
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as handle:
            handle.write(text)


def confine(writable: list[str], keep: list[str], hide: list[str]) -> None:
    """Wall this process in (see the module docstring); it must be root of its own namespaces."""
    writable = [os.path.realpath(p) for p in writable]
    keep = sorted({os.path.realpath(p) for p in keep if os.path.isdir(p)}, key=len)
    held = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in [*keep, *writable]}
    home = os.path.realpath(os.path.expanduser("~"))

    _set_read_only("/", True, recursive=True)
    _set_read_only("/proc", False, recursive=False)  # the kernel's own process settings, as before
    for path, size in PRIVATE_SIZES.items():
        if os.path.isdir(path):
            _cover(path, size, writable=True)
    if os.path.isdir(home) and home != "/":
        _cover(home, HOME_SIZE, writable=True)
    for path in keep:  # the course and Python, where a private folder now covers them
        if not os.path.exists(path):
            _put_back(path, held[path], writable=False)
    covered = []
    for path in sorted({os.path.realpath(p) for p in hide}, key=len):
        try:  # a hidden path under /tmp or home is gone already: cover its place all the same
            os.makedirs(path, exist_ok=True)
        except OSError:
            continue  # absent, in a read-only place: nothing to hide
        _cover(path, "1m", writable=True)   # writable only long enough to make mount points
        covered.append(path)
    for path in sorted(writable, key=len):
        _put_back(path, held[path], writable=True)
    for path in covered:
        _set_read_only(path, True, recursive=False)  # the binds on top keep their own flags
    for fd in held.values():
        os.close(fd)
    _enter_locked_namespace()


def _options(argv: list[str]) -> tuple[bool, list[str], list[str]]:
    confined, hide, rest = False, [], []
    items = iter(argv)
    for item in items:
        if item == "--confine":
            confined = True
        elif item == "--hide":
            hide.append(next(items))
        else:
            rest.append(item)
    return confined, hide, rest


def main(argv: list[str]) -> None:
    limit(int(argv[0]), int(argv[1]))
    confined, hide, rest = _options(argv[2:])
    if confined:
        connection = rest[rest.index("-f") + 1]
        with open(connection) as handle:
            info = json.load(handle)
        work = os.getcwd()
        sockets = [os.path.dirname(info["ip"])] if info.get("transport") == "ipc" else []
        course = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        keep = [course, sys.prefix, sys.base_prefix, *(p for p in sys.path if p)]
        confine(writable=[work, *sockets], keep=keep, hide=hide)
        os.chdir(work)  # onto the writable mount, not the read-only one below it
        private = "/tmp/kernel-connection.json"   # the original lies in a folder now hidden
        with open(private, "w") as handle:
            json.dump(info, handle)
        rest[rest.index("-f") + 1] = private
    sys.argv = ["ipykernel_launcher", *rest]
    runpy.run_module("ipykernel_launcher", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
