"""Checkpoints, restarts and silent errors: the references and machinery of 06_reliability.

`TrainingRun` is a small training job that holds every kind of state a real one has (model,
optimizer, learning-rate schedule, three random generators, a position in the data), so a
checkpoint that forgets one of them shows up as a resumed loss curve that differs from the
uninterrupted one. The files, the supervisor and the elastic worker are real: checkpoints are
written with fsync and rename, a training process is killed with SIGKILL, and torchrun
restarts a crashed gloo group.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn import functional as F

from course import processes
from course.data import load_digit_splits
from course.models import digit_mlp

# Dubey et al. 2024, "The Llama 3 Herd of Models" (arXiv:2407.21783), section 3.3.4: a 54-day
# snapshot of pre-training on 16,384 H100 GPUs had 466 job interruptions, 47 planned and 419 unexpected.
LLAMA3 = {"gpus": 16_384, "days": 54, "unexpected": 419, "planned": 47}
HOUR = 3600.0

# The same paper's Table 5: (component, the paper's category, interruptions) for the 419 unexpected
# ones, as transcribed by glennklockwood.com/garden/component-reliability (checked against DCD's
# report; see tests/claims/06_reliability.md). The counts add up to 419; shares are computed from
# them, since the table's printed share for "Faulty GPU" (30.1 %) is not 148/419 (35.3 %).
LLAMA3_TABLE5 = [
    ("Faulty GPU", "GPU", 148), ("GPU HBM3 Memory", "GPU", 72), ("Software Bug", "Dependency", 54),
    ("Network Switch/Cable", "Network", 35), ("Host Maintenance", "Unplanned Maintenance", 32),
    ("GPU SRAM Memory", "GPU", 19), ("GPU System Processor", "GPU", 17), ("NIC", "Host", 7),
    ("NCCL Watchdog Timeouts", "Unknown", 7), ("Silent Data Corruption", "GPU", 6),
    ("GPU Thermal Interface + Sensor", "GPU", 6), ("SSD", "Host", 3), ("Power Supply", "Host", 3),
    ("Server Chassis", "Host", 2), ("IO Expansion Board", "Host", 2), ("Dependency", "Dependency", 2),
    ("CPU", "Host", 2), ("System Memory", "Host", 2),
]


# ----------------------------------------------------------------- failure arithmetic

def job_mtbf(device_mtbf: float, n_devices: int) -> float:
    """Mean time between failures of a job that fails when any of its `n_devices` fails."""
    if device_mtbf <= 0 or n_devices < 1:
        raise ValueError(f"need device_mtbf > 0 and n_devices >= 1, got {device_mtbf}, {n_devices}")
    return device_mtbf / n_devices


def young_daly_interval(checkpoint_cost: float, mtbf: float) -> float:
    """Young's optimal time between checkpoints, sqrt(2 C M) (first order, C << M)."""
    if checkpoint_cost <= 0 or mtbf <= 0:
        raise ValueError(f"need checkpoint_cost > 0 and mtbf > 0, got {checkpoint_cost}, {mtbf}")
    return math.sqrt(2 * checkpoint_cost * mtbf)


def expected_waste(interval: float, checkpoint_cost: float, mtbf: float, restart_cost: float = 0.0) -> float:
    """First-order fraction of wall time not spent on useful work: writing checkpoints (C / tau)
    plus, per failure, half an interval of lost work and the restart ((tau / 2 + R) / M)."""
    if interval <= 0 or mtbf <= 0 or checkpoint_cost < 0 or restart_cost < 0:
        raise ValueError("interval and mtbf must be positive, costs non-negative")
    return checkpoint_cost / interval + (interval / 2 + restart_cost) / mtbf


def renewal_waste(interval: float, checkpoint_cost: float, mtbf: float, restart_cost: float = 0.0) -> float:
    """Expected fraction of wall time wasted under exponential failures, without the first-order
    approximation (the renewal model behind Daly 2006's higher-order interval): a segment of
    `interval` work plus its checkpoint, T = tau + C, is retried until it runs without a failure, each
    failure costing the time lost plus the restart, so E[time per segment] = (e^{T/M} - 1)(M + R).
    It assumes, as `simulate_waste` does, that no failure strikes during a restart."""
    if interval <= 0 or mtbf <= 0 or checkpoint_cost < 0 or restart_cost < 0:
        raise ValueError("interval and mtbf must be positive, costs non-negative")
    per_segment = math.expm1((interval + checkpoint_cost) / mtbf) * (mtbf + restart_cost)
    return 1 - interval / per_segment


MAX_SIMULATED_INTERVALS = 5_000_000  # about 5 s of Python loop; 06's demo needs under 30,000


def simulate_waste(interval: float, checkpoint_cost: float, mtbf: float, restart_cost: float = 0.0,
                   work: float | None = None, seed: int = 0) -> float:
    """Monte-Carlo check of `expected_waste` and `renewal_waste`: run a job that needs `work`
    seconds of compute (default 2000 MTBFs), checkpointing every `interval` seconds of work, under
    failures with exponential inter-arrival times; return the fraction of wall time that was not
    useful work.

    Raises ValueError when the job would take over `MAX_SIMULATED_INTERVALS` checkpoint intervals (work /
    interval): a job MTBF many orders too large (a device's MTBF multiplied by the device count instead of
    divided) would otherwise keep a notebook cell running for hours."""
    if interval <= 0 or mtbf <= 0:
        raise ValueError(f"need interval > 0 and mtbf > 0, got {interval}, {mtbf}")
    work = 2000 * mtbf if work is None else work
    if work / interval > MAX_SIMULATED_INTERVALS:
        raise ValueError(
            f"simulating {work / interval:.3g} checkpoint intervals (work {work:.3g} s / interval "
            f"{interval:.3g} s) would take hours; the limit is {MAX_SIMULATED_INTERVALS:.0e}. Is the MTBF "
            f"({mtbf / 3600:.4g} h) "
            "right? A job that stops when any device fails has a shorter MTBF than one device.")
    rng = np.random.default_rng(seed)
    done, wall = 0.0, 0.0
    next_failure = rng.exponential(mtbf)
    while done < work:
        segment = min(interval, work - done) + checkpoint_cost  # compute, then write the checkpoint
        if wall + segment <= next_failure:
            wall += segment
            done += segment - checkpoint_cost
        else:  # the segment is lost: pay for the time until the failure, then restart
            wall = next_failure + restart_cost
            next_failure = wall + rng.exponential(mtbf)
    return 1 - work / wall


# ----------------------------------------------------------------- a job with all its state

def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The sample order of `epoch`: a function of (seed, epoch) only, so a position in the data
    is just (epoch, batch index)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


class TrainingRun:
    """A digit classifier in training, with all the state a real job carries.

    - `model`, `optimizer` (Adam), `scheduler` (StepLR: the learning rate halves every 50 steps);
    - `epoch` and `batch_index`: where it is in the data (the order of each epoch is fixed by
      (seed, epoch)); `step`: how many updates it has made;
    - three random generators, each used for one augmentation: `np_rng` (NumPy, pixel noise),
      Python's global `random` (a one-pixel shift), and torch's global generator (dropout).

    A new run seeds the global generators, as a freshly started process would. With
    `distributed=True` (inside a torch.distributed group) the model is wrapped in DDP and each
    rank trains on its slice of every batch; augmentation is off there, so one rank's checkpoint
    holds the state of all.
    """

    def __init__(self, seed: int = 0, batch_size: int = 64, lr: float = 1e-2, augment: bool = True,
                 distributed: bool = False):
        digits = load_digit_splits()
        self.x, self.y = digits.train.x, digits.train.y
        self.seed, self.batch_size, self.augment = seed, batch_size, augment
        random.seed(seed)
        torch.manual_seed(seed)
        self.np_rng = np.random.default_rng(seed)
        self.model = digit_mlp((64,), seed=seed)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=50, gamma=0.5)
        self.epoch, self.batch_index, self.step = 0, 0, 0
        self.forward = self.model
        if distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.forward = DistributedDataParallel(self.model)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch in the data, advancing (epoch, batch_index)."""
        order = epoch_order(self.seed, self.epoch, len(self.y))
        idx = order[self.batch_index * self.batch_size:(self.batch_index + 1) * self.batch_size]
        self.batch_index += 1
        if self.batch_index == self.batches_per_epoch:
            self.epoch, self.batch_index = self.epoch + 1, 0
        if dist.is_available() and dist.is_initialized() and self.forward is not self.model:
            idx = idx[dist.get_rank()::dist.get_world_size()]
        return self.x[idx], self.y[idx]

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.augment:
            x = x + torch.from_numpy(self.np_rng.normal(0.0, 0.05, tuple(x.shape)).astype(np.float32))
            x = torch.roll(x.view(-1, 8, 8), random.choice((-1, 0, 1)), dims=2).reshape(-1, 64)
            x = F.dropout(x, 0.1)
        return F.cross_entropy(self.forward(x), y)

    def update(self, loss: torch.Tensor) -> bool:
        """The plain update: backward, optimizer step, scheduler step. Returns True (applied)."""
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return True

    def train_step(self, batch=None, update=None) -> float:
        """One step on `batch` (default: the next one). `update(run, loss) -> bool` replaces the
        plain update (a guard may refuse to apply it); the step counts only if it was applied."""
        x, y = self.next_batch() if batch is None else batch
        loss = self.loss(x, y)
        applied = self.update(loss) if update is None else update(self, loss)
        if applied:
            self.step += 1
        return loss.item()


def make_checkpoint(run: TrainingRun) -> dict:
    """Everything needed to continue `run` exactly; every value loads with weights_only=True."""
    return {"step": run.step, "epoch": run.epoch, "batch_index": run.batch_index,
            "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "rng": {"python": random.getstate(), "numpy": run.np_rng.bit_generator.state,
                    "torch": torch.get_rng_state()}}


def restore_checkpoint(run: TrainingRun, checkpoint: dict) -> None:
    """Put `run` back in the state `make_checkpoint` captured."""
    run.model.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.scheduler.load_state_dict(checkpoint["scheduler"])
    run.step, run.epoch, run.batch_index = checkpoint["step"], checkpoint["epoch"], checkpoint["batch_index"]
    random.setstate(checkpoint["rng"]["python"])
    run.np_rng.bit_generator.state = checkpoint["rng"]["numpy"]
    torch.set_rng_state(checkpoint["rng"]["torch"])


def through_file(checkpoint: dict) -> dict:
    """What a checkpoint becomes after torch.save and a safe torch.load (weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def resumed_losses(make, restore, steps: int, stop_at: int, seed: int = 0) -> tuple[list[float], list[float]]:
    """(uninterrupted, interrupted-and-resumed) losses of a `steps`-step run.

    The second run stops after `stop_at` steps, checkpoints with `make`, goes through a file,
    and continues in a *new* TrainingRun (one that has even taken two steps of its own, as a
    restarted process might) after `restore`.
    """
    whole = TrainingRun(seed)
    uninterrupted = [whole.train_step() for _ in range(steps)]
    first = TrainingRun(seed)
    before = [first.train_step() for _ in range(stop_at)]
    saved = through_file(make(first))
    del first
    second = TrainingRun(seed)
    second.train_step(), second.train_step()
    restore(second, saved)
    return uninterrupted, before + [second.train_step() for _ in range(steps - stop_at)]


# ----------------------------------------------------------------- files that survive crashes

class CorruptCheckpoint(ValueError):
    """A checkpoint file is truncated, damaged or not a checkpoint; the message says which and why."""


CHECKPOINT_GLOB = "ckpt-*.pt"


def checkpoint_path(folder: str | os.PathLike, step: int) -> Path:
    return Path(folder) / f"ckpt-{step:08d}.pt"


def checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The finished checkpoint files in `folder`, oldest first (names sort by step)."""
    return sorted(Path(folder).glob(CHECKPOINT_GLOB))


def save_checkpoint(state: dict, folder: str | os.PathLike, step: int, keep: int = 3) -> Path:
    """Write `state` as ``ckpt-<step>.pt``: a line ``sha256:<hex digest of the payload>``, then the
    payload (torch.save bytes). Written to a temporary file, flushed and fsynced, then renamed
    over the final name (atomic on POSIX) and the folder fsynced; then all but the newest `keep`
    checkpoints are deleted."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    path = checkpoint_path(folder, step)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(b"sha256:" + hashlib.sha256(payload).hexdigest().encode() + b"\n")
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)
    for old in checkpoints(folder)[:-keep]:
        old.unlink()
    return path


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load one checkpoint written by `save_checkpoint`, or raise CorruptCheckpoint saying why."""
    path = Path(path)
    data = path.read_bytes()
    header, newline, payload = data.partition(b"\n")
    if not newline or not header.startswith(b"sha256:") or len(header) != 7 + 64:
        raise CorruptCheckpoint(f"{path.name}: no checksum header ({len(data)} bytes): "
                                "not a finished checkpoint")
    if hashlib.sha256(payload).hexdigest().encode() != header[7:]:
        raise CorruptCheckpoint(f"{path.name}: checksum mismatch ({len(payload)} payload bytes): "
                                "truncated or damaged")
    return torch.load(io.BytesIO(payload), weights_only=True)


def load_latest(folder: str | os.PathLike, log=print) -> tuple[int, dict] | None:
    """(step, state) of the newest checkpoint in `folder` that verifies, or None if there is none.
    Each damaged one is reported through `log` and skipped; temporary files are ignored."""
    for path in reversed(checkpoints(folder)):
        try:
            state = read_checkpoint(path)
        except CorruptCheckpoint as exc:
            log(f"skipping a damaged checkpoint: {exc}")
            continue
        return int(path.stem.split("-")[1]), state
    return None


def damage(path: str | os.PathLike, how: str = "truncate") -> None:
    """Damage a file as a crash or a bad disk would: 'truncate' cuts it in half, 'flip' flips one
    bit in its last quarter (inside the tensor data: torch.load alone does not notice)."""
    path = Path(path)
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[:len(data) // 2]))
    elif how == "flip":
        data[len(data) * 3 // 4] ^= 0x10
        path.write_bytes(bytes(data))
    else:
        raise ValueError(f"how must be 'truncate' or 'flip', got {how!r}")


_SCRATCH: list[Path] = []
_STARTED: list[subprocess.Popen] = []
SCRATCH_PREFIX = "course-06-"


def scratch_folder() -> Path:
    """A new temporary folder, deleted when this process exits (also after a failed cell).

    Its name holds this process's id, so folders left by a process that was killed outright
    (no exit handlers run on SIGKILL) are swept away by the next one.
    """
    for stale in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*"):
        owner = stale.name[len(SCRATCH_PREFIX):].split("-")[0]
        if owner.isdigit() and int(owner) != os.getpid() and not _alive(int(owner)):
            shutil.rmtree(stale, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))
    _SCRATCH.append(folder)
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@atexit.register
def clean_up() -> None:
    """Stop the training processes this process started, then delete its scratch folders
    (in that order: a process still writing checkpoints would refill a folder being deleted)."""
    if _STARTED:
        processes.stop_tree(*_STARTED, grace_s=0)
        _STARTED.clear()
    while _SCRATCH:
        shutil.rmtree(_SCRATCH.pop(), ignore_errors=True)


# ----------------------------------------------------------------- a process to kill

def checkpointed_training(folder: str | os.PathLike, steps: int, every: int, log_path: str | os.PathLike,
                          step_delay: float = 0.0, seed: int = 0, make=None, restore=None) -> TrainingRun:
    """Train to `steps`, resuming from the newest good checkpoint in `folder` and writing one
    every `every` steps; append "step loss" to `log_path` after every step (flushed, so a reader
    sees it at once). `step_delay` stretches each step, to stand in for a long job. `make` and
    `restore` replace `make_checkpoint` and `restore_checkpoint`."""
    make, restore = make or make_checkpoint, restore or restore_checkpoint
    run = TrainingRun(seed)
    restored = load_latest(folder)
    with open(log_path, "a") as log:
        if restored is not None:
            restore(run, restored[1])
        print("start", run.step, file=log, flush=True)
        while run.step < steps:
            loss = run.train_step()
            print(run.step, repr(loss), file=log, flush=True)
            if run.step % every == 0:
                save_checkpoint(make(run), folder, run.step)
            time.sleep(step_delay)
    return run


class TrainingProcessError(RuntimeError):
    """A training process started by `start_training` raised a Python exception; the message holds
    its traceback."""


_SHIPPED: dict[str, list] = {}  # log path -> the notebook functions shipped to its processes
_TRACEBACK_HEAD = "Traceback (most recent call last):"


def _with_source(traceback_text: str, functions: list) -> str:
    """Fill in the source lines of frames in functions shipped by value: cloudpickle renames their
    file to "<dynamic-code>", so the process that ran them could not show their lines."""
    import inspect
    import re

    sources = {}
    functions, seen = list(functions), set()
    while functions:  # the shipped functions and those they close over (a yours_or_reference wrapper's)
        fn = functions.pop()
        if id(fn) in seen or not inspect.isfunction(fn):
            continue
        seen.add(id(fn))
        functions += [cell.cell_contents for cell in fn.__closure__ or () if _filled(cell)]
        module = sys.modules.get(fn.__module__)
        if fn.__module__ != "__main__" and getattr(module, fn.__qualname__, None) is fn:
            continue  # importable: cloudpickle sends it by name, and its frames show its real file
        try:
            lines, first = inspect.getsourcelines(fn)
        except (OSError, TypeError):
            continue
        sources[fn.__name__] = (lines, first)
    out = []
    for line in traceback_text.splitlines():
        out.append(line)
        frame = re.match(r'\s*File "<dynamic-code>", line (\d+), in (\w+)', line)
        if frame and frame[2] in sources:
            lines, first = sources[frame[2]]
            index = int(frame[1]) - first
            if 0 <= index < len(lines):
                out.append("    " + lines[index].strip())
    return "\n".join(out)


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # an empty cell
        return False
    return True


def training_tracebacks(log_path: str | os.PathLike) -> list[str]:
    """The Python tracebacks that training processes logging to `log_path` wrote to stderr, oldest
    first, with the source lines of notebook functions filled in."""
    errors = Path(f"{log_path}.stderr")
    if not errors.exists():
        return []
    text = errors.read_text(errors="replace")
    found = []
    for chunk in text.split(_TRACEBACK_HEAD)[1:]:
        lines = chunk.strip("\n").splitlines()
        # A traceback ends at its first unindented line: "KeyError: 'rng'".
        end = next((i for i, line in enumerate(lines) if line and not line.startswith(" ")), len(lines) - 1)
        found.append(_with_source("\n".join([_TRACEBACK_HEAD, *lines[:end + 1]]),
                                  _SHIPPED.get(str(log_path), [])))
    return found


class crash_report:  # noqa: N801 - used as a statement: `with crash_report(log):`
    """``with crash_report(log_path): supervise(...)``: if the block fails after a training process
    raised a Python exception, raise `TrainingProcessError` with that process's traceback (the
    block's own error chained to it). A restart cannot fix a bug in the code: it crashes again at
    the same place, and without this the notebook would only see exit codes."""

    def __init__(self, log_path: str | os.PathLike):
        self.log_path = log_path
        self.seen = len(training_tracebacks(log_path))

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        new = training_tracebacks(self.log_path)[self.seen:]
        if not new:
            return False
        if error is None:  # a restart recovered: say what happened, don't fail
            print(f"note: a training process raised (a restart recovered):\n{new[-1]}")
            return False
        raise TrainingProcessError(f"the training process raised an exception ({len(new)} time(s)); the last "
                                   f"traceback from that process:\n{new[-1]}") from error


def start_training(folder: str | os.PathLike, steps: int, every: int, log_path: str | os.PathLike,
                   step_delay: float = 0.01, make=None, restore=None) -> subprocess.Popen:
    """Start `checkpointed_training` in a new Python process (which dies with this one); what it
    writes to stderr goes to ``<log_path>.stderr``. `make` and `restore` (default: this module's
    `make_checkpoint` and `restore_checkpoint`) may be functions defined in a notebook: they are
    copied to the process by value with cloudpickle. If one raises there, `crash_report` brings the
    traceback back."""
    from course.devices import on_cpu
    from course.launch import _course_root

    on_cpu("06's training processes run on the CPU: a bit-exact resume is checked, and CUDA kernels need not "
           "be bit-reproducible")
    command = [sys.executable, "-m", "course.reliability", str(folder), str(steps), str(every),
               str(log_path), str(step_delay)]
    if make is not None or restore is not None:
        import cloudpickle

        functions = Path(f"{log_path}.functions.pkl")
        functions.write_bytes(cloudpickle.dumps({"make": make or make_checkpoint,
                                                 "restore": restore or restore_checkpoint}))
        command.append(str(functions))
        _SHIPPED[str(log_path)] = [f for f in (make, restore) if f is not None]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": _course_root() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(f"{log_path}.stderr", "ab") as errors:  # a crash's traceback lands next to the log
        # Its own session: Jupyter signals the kernel's whole process group when it stops a kernel,
        # and a child there keeps the kernel from shutting down cleanly (its exit handlers never run).
        proc = processes.start(command, env=env, stdout=subprocess.DEVNULL, stderr=errors, text=False,
                               parent_death_signal=signal.SIGKILL)
    _STARTED.append(proc)
    return proc


def read_log(log_path: str | os.PathLike) -> list[list[tuple[int, float]]]:
    """The (step, loss) pairs in a training log, one list per process that wrote to it."""
    attempts: list[list[tuple[int, float]]] = []
    for line in Path(log_path).read_text().splitlines():
        word, value = line.split()
        if word == "start":
            attempts.append([])
        else:
            attempts[-1].append((int(word), float(value)))
    return attempts


def kill_at_step(proc: subprocess.Popen, log_path: str | os.PathLike, step: int,
                 timeout: float = 60.0) -> threading.Thread:
    """In the background: SIGKILL `proc` as soon as its log shows `step` (no warning, no cleanup:
    what a power cut or the kernel's out-of-memory killer does)."""
    def watch():
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            attempts = read_log(log_path) if Path(log_path).exists() else []
            if attempts and attempts[-1] and attempts[-1][-1][0] >= step:
                proc.send_signal(signal.SIGKILL)
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def supervise(start, max_restarts: int = 3, timeout: float = 120.0) -> list[int]:
    """Run ``start(attempt)`` (which returns a Popen) until a process exits with 0, restarting it
    after any other exit, at most `max_restarts` times. Returns every exit code."""
    codes = []
    for attempt in range(max_restarts + 1):
        proc = start(attempt)
        try:
            codes.append(proc.wait(timeout=timeout))
        except BaseException:  # a timeout, or the learner pressing stop: never leave the child running
            processes.stop_tree(proc, grace_s=0)
            raise
        if codes[-1] == 0:
            return codes
    raise RuntimeError(f"gave up after {max_restarts} restarts; exit codes {codes}")


# ----------------------------------------------------------------- an elastic job

def elastic_worker(folder: str, steps: int, every: int, crash_at: int | None = None) -> dict:
    """Run on each rank under torchrun --max-restarts: resume from the newest good checkpoint,
    train with DDP, rank 0 checkpoints every `every` steps; on the first attempt rank 1 dies at
    step `crash_at` (os._exit: no Python cleanup, like a segfault)."""
    rank = dist.get_rank()
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    run = TrainingRun(seed=0, augment=False, distributed=True)
    restored = load_latest(folder, log=lambda message: None)
    if restored is not None:
        restore_checkpoint(run, restored[1])
    resumed_from = run.step
    while run.step < steps:
        if attempt == 0 and rank == 1 and run.step == crash_at:
            os._exit(13)
        run.train_step()
        if run.step % every == 0:
            if rank == 0:
                save_checkpoint(make_checkpoint(run), folder, run.step)
            dist.barrier()  # no rank runs ahead of a checkpoint that is not yet on disk
    return {"attempt": attempt, "resumed_from": resumed_from, "model": run.model.state_dict()}


def elastic_cases(worker, cases: dict[str, tuple], books: str) -> dict[str, object]:
    """Run ``worker(*case)`` for each named case, in order, on this rank; return {name: its result}.

    For ``launch(elastic_cases, 2, worker, cases, books, max_restarts=<cases that crash>)``: several
    crash-and-restart cases share one torchrun launch, since every restart costs each rank a new process
    (seconds: torch and its compiler stack are imported again). Each case sees its own attempt number in
    ``TORCHELASTIC_RESTART_COUNT``: 0 on the attempt it first ran in, 1 after the restart it caused. A case
    that every rank finished in an earlier attempt is not run again; its result is read back from the
    folder `books` (pickles, one per case and rank). Raises what the worker raises.
    """
    import pickle

    rank, world = dist.get_rank(), dist.get_world_size()
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    books = Path(books)
    finished = {name for name in cases
                if all((books / f"{name}-rank{r}.pkl").exists() for r in range(world))}
    dist.barrier()  # every rank decides what to skip before any rank writes a result of this attempt
    results = {}
    try:
        for name, case in cases.items():
            done = books / f"{name}-rank{rank}.pkl"
            if name in finished:
                results[name] = pickle.loads(done.read_bytes())
                continue
            began = books / f"{name}-began-rank{rank}"
            if not began.exists():
                began.write_text(str(attempt))
            os.environ["TORCHELASTIC_RESTART_COUNT"] = str(attempt - int(began.read_text()))
            results[name] = worker(*case)
            partial = done.with_suffix(".part")  # a rank stopped mid-write leaves no half result
            partial.write_bytes(pickle.dumps(results[name]))
            partial.replace(done)
    finally:
        os.environ["TORCHELASTIC_RESTART_COUNT"] = str(attempt)
    return results


# ----------------------------------------------------------------- silent errors

def guarded_update(run: TrainingRun, loss: torch.Tensor, max_norm: float = 10.0) -> bool:
    """Apply the update only if the loss and the gradient norm are finite; clip the norm to
    `max_norm`. Returns whether the update was applied (the scheduler steps only then)."""
    run.optimizer.zero_grad()
    if not torch.isfinite(loss):
        return False
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), max_norm)
    if not torch.isfinite(norm):
        run.optimizer.zero_grad()
        return False
    run.optimizer.step()
    run.scheduler.step()
    return True


def is_spike(history: list[float], loss: float, window: int = 20, factor: float = 3.0) -> bool:
    """True if `loss` exceeds `factor` times the median of the last `window` losses (needs at
    least `window // 2` of them; a non-finite loss is always a spike)."""
    if not math.isfinite(loss):
        return True
    recent = [h for h in history[-window:] if math.isfinite(h)]
    return len(recent) >= window // 2 and loss > factor * float(np.median(recent))


def weights_checksum(model: torch.nn.Module) -> str:
    """SHA-256 over every tensor's name, dtype, shape and raw bytes, in state_dict order: any
    flipped bit changes it, however small the change in value."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def flip_bit(tensor: torch.Tensor, index: int, bit: int) -> None:
    """Flip bit `bit` (0 = least significant) of element `index` of a float32 tensor, in place."""
    if tensor.dtype != torch.float32 or not 0 <= bit < 32:
        raise ValueError("flip_bit works on float32 tensors, bits 0..31")
    with torch.no_grad():
        bits = tensor.view(-1).view(torch.int32)
        bits[index] ^= torch.tensor(1 << bit if bit < 31 else -(1 << 31), dtype=torch.int32)


def corrupt_batch(batch: tuple[torch.Tensor, torch.Tensor], kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A damaged batch: 'nan' puts a NaN in the pixels (a bad sensor reading), 'scale' multiplies
    them by 1000 (a unit mistake upstream) and shuffles the labels."""
    x, y = batch
    if kind == "nan":
        x = x.clone()
        x[0, 0] = float("nan")
    elif kind == "scale":
        x, y = x * 1000, y.roll(1)
    else:
        raise ValueError(f"kind must be 'nan' or 'scale', got {kind!r}")
    return x, y


def train_with_rollback(steps: int, corrupt: dict[int, str], folder: str | os.PathLike, every: int = 10,
                        update=guarded_update, spike=is_spike, seed: int = 0, log=print) -> dict:
    """Train `steps` applied steps; at the (0-based) batch numbers in `corrupt`, feed a damaged
    batch. `update` guards each step; when `spike` fires, roll back to the newest checkpoint and
    skip the batch that caused it. Returns the losses seen, what was skipped and rolled back."""
    run = TrainingRun(seed)
    history: list[float] = []
    seen, skipped, rollbacks = [], [], []
    batch_number = 0
    save_checkpoint(make_checkpoint(run), folder, 0)
    while run.step < steps:
        batch = run.next_batch()
        if batch_number in corrupt:
            batch = corrupt_batch(batch, corrupt[batch_number])
        batch_number += 1
        loss = run.loss(*batch)
        value = loss.item()
        if math.isfinite(value) and spike(history, value):  # a NaN or Inf is the guard's to skip
            restored = load_latest(folder, log=log)
            if restored is None:
                raise RuntimeError("a loss spike and no checkpoint to roll back to")
            position = (run.epoch, run.batch_index)  # keep moving forward through the data
            restore_checkpoint(run, restored[1])
            run.epoch, run.batch_index = position
            history = history[:restored[0]]
            rollbacks.append((len(seen), restored[0]))
            seen.append(value)
            continue
        if not update(run, loss):
            skipped.append(len(seen))
            seen.append(value)
            continue
        run.step += 1
        seen.append(value)
        history.append(value)
        if run.step % every == 0:
            save_checkpoint(make_checkpoint(run), folder, run.step)
    return {"losses": seen, "skipped": skipped, "rollbacks": rollbacks, "run": run}


# ----------------------------------------------------------------- stragglers

def sync_step_times(compute: np.ndarray) -> np.ndarray:
    """Step times of synchronous training: every step waits for the slowest rank."""
    return np.asarray(compute).max(axis=1)


def backup_step_times(compute: np.ndarray, k: int) -> np.ndarray:
    """Step times when a step goes on with the first `k` of n ranks (backup workers)."""
    compute = np.asarray(compute)
    if not 1 <= k <= compute.shape[1]:
        raise ValueError(f"k must be between 1 and {compute.shape[1]}, got {k}")
    return np.sort(compute, axis=1)[:, k - 1]


def straggler_steps(steps: int = 30, slow_rank: int | None = None, delay: float = 0.03,
                    work: int = 384) -> dict:
    """On each rank: per step, compute (a `work`-sized matmul, plus `delay` seconds of sleep on
    `slow_rank`), then all-reduce a gradient-sized tensor. Returns this rank's compute times and
    step times (seconds). Run it with `launch`."""
    rank = dist.get_rank()
    a = torch.randn(work, work)
    grad = torch.randn(100_000)
    compute, step = [], []
    dist.barrier()
    for _ in range(steps):
        start = time.perf_counter()
        a @ a
        if rank == slow_rank:
            time.sleep(delay)
        computed = time.perf_counter()
        dist.all_reduce(grad)
        end = time.perf_counter()
        compute.append(computed - start)
        step.append(end - start)
    return {"compute": compute, "step": step}


if __name__ == "__main__":  # python -m course.reliability FOLDER STEPS EVERY LOG [STEP_DELAY [FUNCTIONS]]
    folder, steps, every, log_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(1)
    shipped = {}
    if len(sys.argv) > 6:
        import pickle

        shipped = pickle.loads(Path(sys.argv[6]).read_bytes())
    checkpointed_training(folder, steps, every, log_path, float(sys.argv[5]) if len(sys.argv) > 5 else 0.0,
                          make=shipped.get("make"), restore=shipped.get("restore"))
