"""Run a function on N processes under ``torchrun`` and bring back what each rank returned.

Taught in 04_distributed. A function defined in a notebook cannot be imported by a new
process, so `launch` ships it *by value* with cloudpickle into a job folder, starts::

    torchrun --standalone --nproc_per_node=N -m course.launch JOB_FOLDER

and each rank (this file's `main`) joins a gloo process group, calls the function, and
writes its return value (or its traceback) back to the folder. Every rank is a real
process in a real ``torch.distributed`` process group; nothing is simulated.

A failure on any rank raises `WorkerError` naming the rank and its exception; a hang is
cut off after `timeout` seconds; either way every process the launch started is killed.

Starting a rank costs a fresh Python that imports torch (a second or two of CPU), and every
torchrun job adds its agent. Where that start-up is all that matters (grading, which runs a
dozen launches), ``set_start_method("fork-server")`` starts one warm Python that has imported
torch once and forks each rank from it: the same `main` below runs in each rank, in a real gloo
group initialised from the same environment variables, with the same results, errors and
clean-up; only torchrun's agent is left out.
"""

from __future__ import annotations

import gc
import json
import linecache
import os
import pickle
import re
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from course import processes

DEFAULT_TIMEOUT_S = 120.0
COLLECTIVE_TIMEOUT_S = 30.0  # a collective that waits longer than this is stuck: raise, don't hang
MAX_FRAMES = 8  # of a failed rank's traceback, the innermost; library frames are left out


class WorkerError(RuntimeError):
    """A rank failed, or the launch ran past its timeout. The message says which and why."""


@dataclass
class Launch:
    """What a launch returned: one value per rank, the wall time, and the command it ran."""

    results: list
    seconds: float
    command: str
    output: str


START_METHODS = ("torchrun", "fork-server")
_start_method = "torchrun"


def set_start_method(method: str) -> None:
    """How `launch` starts the ranks from now on: ``"torchrun"`` (the default, as taught: one
    torchrun job per launch, each rank a fresh Python) or ``"fork-server"`` (each rank forked from
    one warm Python that imported torch once; much cheaper to start, used while grading).

    Launches that need torchrun itself (``max_restarts``, or an ``env`` read at import time such
    as TORCH_DISTRIBUTED_DEBUG) use torchrun whatever is set, as does every launch where the fork server
    cannot run (`fork_server_supported`: not on macOS). Raises ValueError for another name.
    """
    global _start_method
    if method not in START_METHODS:
        raise ValueError(f"start method must be one of {START_METHODS}, got {method!r}")
    _start_method = method


def fork_server_supported() -> bool:
    """Whether the fork server can run here: Linux only. It checks that it is single-threaded through
    /proc (absent on macOS), and on macOS a process that has loaded torch's libraries must not fork without
    exec (Apple's frameworks are not fork-safe; Python's own default there is "spawn"). Elsewhere a launch
    asking for "fork-server" uses torchrun (tests/test_long_tmpdir.py)."""
    return sys.platform.startswith("linux")


def torchrun_command(nproc: int, job: str | os.PathLike, max_restarts: int = 0) -> list[str]:
    """The torchrun command line that runs `job` on `nproc` local processes."""
    restarts = [f"--max-restarts={max_restarts}"] if max_restarts else []
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", *restarts,
            f"--nproc_per_node={nproc}", "-m", "course.launch", str(job)]


def launch(fn, nproc: int = 2, *args, timeout: float = DEFAULT_TIMEOUT_S, threads: int = 1,
           collective_timeout: float = COLLECTIVE_TIMEOUT_S, env: dict | None = None,
           quiet: bool = False, max_restarts: int = 0, **kwargs) -> Launch:
    """Run ``fn(*args, **kwargs)`` on every rank of an `nproc`-process gloo group.

    Inside `fn`, ``torch.distributed`` is initialised: use ``dist.get_rank()`` and
    ``dist.get_world_size()``. Returns a `Launch` whose ``results[r]`` is rank r's return value
    (tensors are fine). Each rank runs on `threads` torch threads, so N ranks share the cores
    fairly. What the ranks print is printed here unless `quiet`.

    With `max_restarts`, torchrun restarts the whole group when a rank fails, up to that many
    times (taught in 06_reliability); each rank reads the attempt from TORCHELASTIC_RESTART_COUNT.
    """
    import cloudpickle

    if not callable(fn):
        raise TypeError(f"launch needs a function to run on each rank, got {type(fn).__name__}")
    if not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be a positive number of processes, got {nproc!r}")
    try:
        payload = cloudpickle.dumps({"fn": fn, "args": args, "kwargs": kwargs,
                                     "collective_timeout": collective_timeout})
    except Exception as exc:  # noqa: BLE001 - any pickling failure gets the same explanation
        raise TypeError(
            f"launch cannot copy {getattr(fn, '__name__', fn)!r} or its arguments to new processes: {exc}. "
            "A function that uses a global no process can copy (an open file, a figure, a lock, a "
            "process group) fails like this: create it inside the function, or pass what it needs "
            "as arguments.") from exc
    from course.devices import on_cpu

    on_cpu("torchrun workers form a gloo group on the CPU: N processes on a machine's cores, as taught in "
           "04/06, not N GPUs")
    with tempfile.TemporaryDirectory(prefix="torchrun-") as folder:
        job = Path(folder)
        (job / "job.pkl").write_bytes(payload)
        command = torchrun_command(nproc, job, max_restarts)
        child_env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
                     "PYTHONPATH": _course_root() + os.pathsep + os.environ.get("PYTHONPATH", ""),
                     # A restarted group must not reuse the old TCPStore's stale addresses
                     # (pytorch/pytorch#135712: gloo then fails with "Connection refused").
                     "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
                     **(env or {})}
        start = time.perf_counter()
        if _start_method == "fork-server" and not max_restarts and not env and fork_server_supported():
            returncode, output = _fork_server(child_env).run(job, nproc, threads, timeout)
            shown = f"fork-server --nproc_per_node={nproc} -m course.launch JOB"
        else:
            returncode, output = _run(command, child_env, timeout)
            shown = " ".join(["torchrun", *map(shlex.quote, command[3:-1]), "JOB"])
        seconds = time.perf_counter() - start
        printed = _printed(job, nproc)
        if not quiet and printed:
            print(printed)
        if returncode is None:
            raise WorkerError(
                f"{shown} ran past its {timeout:.0f} s timeout and was stopped (every process killed). "
                "A rank waiting for a collective the others never call hangs like this: do all ranks "
                "call the same collectives in the same order?" + _tail(output))
        failures = _silent_death(job, output) + _failures(job, _notebook_code(fn, args, kwargs))
        if returncode != 0 or (failures and not max_restarts):  # a restarted group may have recovered
            detail = "\n\n".join(failures) if failures else _crash_logs(job, nproc) or _tail(output)
            if failures and re.match(r"rank \d+: NotImplementedError\b", failures[0]):
                # An exercise stub: raise what a local call would, so the learner sees the same error.
                raise NotImplementedError(f"{shown}: {failures[0]}")
            raise WorkerError(f"{shown} failed (exit code {returncode}).\n{detail}")
        results = [pickle.loads((job / f"rank{r}.pkl").read_bytes()) for r in range(nproc)]
    return Launch(results=results, seconds=seconds, command=shown, output=printed)


def _course_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


def _run(command: list[str], env: dict, timeout: float) -> tuple[int | None, str]:
    """Run the command; on timeout (or Ctrl-C) kill it and every process under it at once."""
    proc = processes.start(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = proc.communicate(timeout=timeout)
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        processes.stop_tree(proc, grace_s=0, close_streams=False)  # what it printed is still to be read
        output, _ = proc.communicate()
        return None, output
    except BaseException:
        processes.stop_tree(proc, grace_s=0)
        raise


class _ForkServer:
    """One warm Python (``python -m course.launch --fork-server``) that has imported torch and this
    course's distributed code, and forks the ranks of each launch from itself.

    It reads one JSON line per launch on its stdin, forks `nproc` ranks that run `main` with
    torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, ...), kills the
    others when one fails (as torchrun's agent does), and answers one JSON line with every rank's
    exit code. It dies with the process that started it (or when its stdin closes).
    """

    def __init__(self, env: dict):
        self.env = env
        self.proc = processes.start([sys.executable, "-m", "course.launch", "--fork-server"], env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    parent_death_signal=signal.SIGKILL)
        self.lock = threading.Lock()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _read_line(self, deadline: float) -> str | None:
        """The server's next line, or None at the deadline (or if it died)."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 1.0))
            if ready:
                line = self.proc.stdout.readline()
                return line or None
            if not self.alive():
                return None

    def run(self, job: Path, nproc: int, threads: int, timeout: float) -> tuple[int | None, str]:
        """Run the job's ranks; (0 or 1, a torchrun-like summary), or (None, "") past `timeout`."""
        with self.lock:
            deadline = time.monotonic() + timeout
            try:
                request = {"job": str(job), "nproc": nproc, "threads": threads}
                self.proc.stdin.write(json.dumps(request) + "\n")
                self.proc.stdin.flush()
                line = self._read_line(deadline)
            except BaseException:
                self.stop()
                raise
            if line is None:  # past the timeout, or the server died: nothing of it may survive
                self.stop()
                return None, ""
            codes = json.loads(line)["codes"]
        failed = [(rank, code) for rank, code in codes if code != 0]
        if not failed:
            return 0, ""
        rank, code = failed[0]  # the first to fail, as torchrun reports it
        return 1, f"Root Cause (first observed failure):\n  rank      : {rank}\n  exitcode  : {code}"

    def stop(self) -> None:
        """Kill the server and every rank it forked."""
        processes.stop_tree(self.proc, grace_s=0)


_server: _ForkServer | None = None


def _fork_server(env: dict) -> _ForkServer:
    """The running fork server, started (a few seconds) if there is none or the environment changed."""
    global _server
    if _server is None or not _server.alive() or _server.env != env:
        stop_fork_server()
        _server = _ForkServer(env)
    return _server


def stop_fork_server() -> None:
    """Stop the fork server of ``set_start_method("fork-server")``, if one runs (a no-op otherwise);
    the next launch that needs one starts it again."""
    global _server
    if _server is not None:
        server, _server = _server, None
        server.stop()


def _failures(job: Path, notebook_code: dict | None = None) -> list[str]:
    """Each failed rank's error with its traceback, the first to fail first: later ones are
    usually its echo."""
    errors = sorted(job.glob("rank*.err"), key=lambda e: e.stat().st_mtime_ns)
    failures = []
    for error in errors:
        frames = error.with_suffix(".frames")
        where = _format_frames(pickle.loads(frames.read_bytes()), notebook_code or {}) if frames.exists() else ""
        failures.append(f"rank {error.stem[4:]}: {error.read_text().rstrip()}" + (f"\n{where}" if where else ""))
    return failures


def _code_key(code: types.CodeType) -> tuple:
    return code.co_qualname, code.co_firstlineno, code.co_code


def _notebook_code(*roots) -> dict[tuple, str]:
    """Where each function shipped to the ranks was defined, for the ones defined in a notebook
    cell: cloudpickle renames their file "<dynamic-code>", and a rank cannot read a cell's
    source, but this kernel can (IPython keeps every cell in `linecache`)."""
    found, seen, stack = {}, set(), list(roots)
    while stack and len(seen) < 10_000:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, types.MethodType):
            stack.append(obj.__func__)
        elif hasattr(obj, "func") and hasattr(obj, "keywords"):  # functools.partial
            stack += [obj.func, obj.args, obj.keywords]
        elif isinstance(obj, types.FunctionType) and not Path(obj.__code__.co_filename).is_file():
            codes, names = [obj.__code__], set()
            while codes:
                code = codes.pop()
                found[_code_key(code)] = code.co_filename
                names.update(code.co_names)
                codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
            stack += [obj.__globals__[n] for n in names if n in obj.__globals__]
            stack += [*(obj.__defaults__ or ()), *(obj.__kwdefaults__ or {}).values()]
            for cell in obj.__closure__ or ():
                try:
                    stack.append(cell.cell_contents)
                except ValueError:  # an empty cell
                    pass
    return found


def _format_frames(frames: list[dict], notebook_code: dict) -> str:
    """A rank's traceback, each frame with its source line; frames of notebook cells found
    through `notebook_code` and shown as IPython shows them ("Cell In[5], line 3")."""
    lines = []
    for frame in frames:
        filename, line = frame["filename"], frame["line"]
        if frame["key"] in notebook_code:
            filename = notebook_code[frame["key"]]
            line = linecache.getline(filename, frame["lineno"]).strip() or line
        label = _cell_label(filename) or f'File "{filename}"'
        lines.append(f"  {label}, line {frame['lineno']}, in {frame['name']}")
        if line:
            lines.append(f"    {line}")
    return "\n".join(lines)


def _cell_label(filename: str) -> str | None:
    """ "Cell In[5]" for a notebook cell's file name, as IPython's own tracebacks say."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
        label = shell.compile.format_code_name(filename) if shell is not None else None
    except (ImportError, AttributeError):
        return None
    return " ".join(label) if label else None


def _silent_death(job: Path, output: str) -> list[str]:
    """torchrun's root cause, when that rank left no Python error of its own (os._exit, a signal,
    a crash in C++): it goes first, since the other ranks' errors are its echo."""
    found = re.search(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", output, re.S)
    if not found or (job / f"rank{found[1]}.err").exists():
        return []
    return [f"rank {found[1]}: exited with code {found[2]} without a Python exception (os._exit, a signal, "
            "or a crash inside C++); the errors below followed from it"]


def _crash_logs(job: Path, nproc: int) -> str:
    """The last lines each rank wrote to stderr: a rank killed by the C++ runtime leaves no
    Python traceback, only these."""
    logs = [(r, job / f"rank{r}.log") for r in range(nproc)]
    return "\n".join(f"rank {r} (stderr):{_tail(log.read_text(), 8)}" for r, log in logs
                     if log.exists() and log.read_text().strip())


def _printed(job: Path, nproc: int) -> str:
    """What the ranks printed, each line tagged with its rank."""
    lines = []
    for r in range(nproc):
        out = job / f"rank{r}.out"
        if out.exists():
            lines += [f"[rank {r}] {line}" for line in out.read_text().splitlines()]
    return "\n".join(lines)


def _tail(output: str, lines: int = 15) -> str:
    tail = output.strip().splitlines()[-lines:]
    return ("\nLast output:\n" + "\n".join(tail)) if tail else ""


# ----------------------------------------------------------------- inside each rank

def main(job: str) -> int:
    """Entry point of each rank: join the group, call the function, write the result back."""
    processes.die_with_parent(signal.SIGKILL)
    folder = Path(job)
    rank = int(os.environ["RANK"])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    # Everything this rank prints (Python or C++) goes to its own file, read back by `launch`.
    # Warnings and crashes of the C++ runtime go to another file, shown only when the rank fails.
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, name in ((1, f"rank{rank}.out"), (2, f"rank{rank}.log")):
        os.dup2(os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND), fd)
    spec = pickle.loads((folder / "job.pkl").read_bytes())
    try:
        dist.init_process_group("gloo", timeout=timedelta(seconds=spec["collective_timeout"]))
        torch.manual_seed(0)
        result = spec["fn"](*spec["args"], **spec["kwargs"])
        (folder / f"rank{rank}.pkl").write_bytes(pickle.dumps(result))
        # Free what the function built (a DDP model holds communication threads) and wait for
        # every rank, so no rank tears the group down while another still uses it.
        del result
        gc.collect()
        dist.barrier()
        return 0
    except BaseException as exc:  # noqa: BLE001 - report every failure, then exit non-zero
        # The frames of the code that raised (not torch's or other libraries'), with what `launch`
        # needs to show a notebook cell's source: the rank has no copy of the notebook's cells.
        frames = [{"filename": summary.filename, "lineno": summary.lineno, "name": summary.name,
                   "line": summary.line, "key": _code_key(frame.f_code)}
                  for (frame, _), summary in zip(list(traceback.walk_tb(exc.__traceback__))[1:],
                                                 traceback.extract_tb(exc.__traceback__)[1:], strict=True)
                  if "site-packages" not in summary.filename and "torch/" not in summary.filename]
        (folder / f"rank{rank}.frames").write_bytes(pickle.dumps(frames[-MAX_FRAMES:]))
        (folder / f"rank{rank}.err").write_text(f"{type(exc).__name__}: {exc}")
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def serve_forks() -> int:
    """The fork server's loop (see `_ForkServer`): import once, then fork the ranks of each launch."""
    import socket

    # Imported once here, not in every rank: the payload's unpickler, the course's rank functions,
    # and torch._dynamo, which an optimizer's first step imports (over a second of CPU per rank).
    # Nothing is *run* here: a backward pass would start autograd's threads, which a fork loses.
    import cloudpickle  # noqa: F401
    import torch._dynamo  # noqa: F401

    import course.distributed  # noqa: F401
    processes.die_with_parent(signal.SIGKILL)
    if threading.active_count() != 1 or len(os.listdir("/proc/self/task")) > 1:
        raise RuntimeError("the fork server must be single-threaded: a forked rank loses the other threads")
    for line in sys.stdin:
        request = json.loads(line)
        nproc = request["nproc"]
        with socket.socket() as probe:  # a free port for rank 0's store, as torchrun --standalone picks one
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        sys.stdout.flush()
        sys.stderr.flush()
        gc.freeze()  # what the server holds is left out of the ranks' garbage collections (no copy-on-write)
        pids = {}
        for rank in range(nproc):
            pid = os.fork()
            if pid == 0:  # a rank
                code = 1
                try:
                    os.environ.update({
                        "RANK": str(rank), "LOCAL_RANK": str(rank), "GROUP_RANK": "0",
                        "ROLE_RANK": str(rank), "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
                        "ROLE_WORLD_SIZE": str(nproc),
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                        "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "0",
                        "OMP_NUM_THREADS": str(request["threads"])})
                    code = main(request["job"])
                finally:
                    for stream in (sys.stdout, sys.stderr):
                        try:
                            stream.flush()
                        except (OSError, ValueError):
                            pass
                    os._exit(code)
            pids[pid] = rank
        codes = []
        while pids:
            pid, status = os.wait()
            if pid not in pids:
                continue
            codes.append((pids.pop(pid), os.waitstatus_to_exitcode(status)))
            if codes[-1][1] != 0 and pids:  # one rank failed: stop the others, as torchrun's agent does
                # a signal, not processes.stop_tree: this loop reaps them itself, to report their exit codes
                for other in pids:
                    os.kill(other, signal.SIGTERM)
        sys.stdout.write(json.dumps({"codes": codes}) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(serve_forks() if sys.argv[1:] == ["--fork-server"] else main(sys.argv[1]))
