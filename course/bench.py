"""Measuring honestly: time with warm-up and repeats, model size, peak memory.

Taught in 00_orientation ("Measuring honestly"); used by every module that makes a
speed or memory claim. A single timing is an anecdote: report the median and the spread.
"""

from __future__ import annotations

import gc
import io
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil
import torch
from torch import nn


@dataclass(frozen=True)
class Timing:
    """Repeated wall-clock samples of one operation, in seconds."""

    samples: tuple[float, ...]
    warmup: int

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def iqr(self) -> float:
        """Interquartile range: the spread of the middle half, robust to a stray slow run."""
        if len(self.samples) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q3 - q1

    @property
    def min(self) -> float:
        return min(self.samples)

    def __str__(self) -> str:
        return (f"median {self.median * 1e3:.3f} ms, IQR {self.iqr * 1e3:.3f} ms "
                f"over {len(self.samples)} runs after {self.warmup} warm-up")


@contextmanager
def limit_threads(threads: int) -> Iterator[None]:
    """Run torch on `threads` threads inside the block (a small device's single core, say)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def synchronize(device: torch.device | str | None) -> None:
    """Wait for the GPU to finish its queued work (CUDA runs asynchronously); nothing on a CPU."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure_time(fn: Callable[[], object], repeats: int = 20, warmup: int = 3,
                 device: torch.device | str | None = None,
                 clock: Callable[[], float] = time.perf_counter, max_seconds: float | None = None) -> Timing:
    """Call `fn` `warmup` times untimed, then time `repeats` calls one by one.

    On CUDA, kernels run asynchronously: pass `device` so the clock is read only after
    the GPU has finished. With `max_seconds`, timing stops early after the first call that ends
    past that budget (at least one call is timed), so a slow machine cannot stretch a cell.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup cannot be negative, got {warmup}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    stop = None if max_seconds is None else clock() + max_seconds
    for _ in range(repeats):
        start = clock()
        fn()
        synchronize(device)
        end = clock()
        samples.append(end - start)
        if stop is not None and end > stop:
            break
    return Timing(samples=tuple(samples), warmup=warmup)


def _unique_tensors(model: nn.Module):
    seen = set()
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            yield tensor


def param_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters; a weight shared by two layers is counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_size_bytes(model: nn.Module) -> int:
    """Bytes the model's parameters and buffers occupy in memory, each tensor counted once.

    Tensor subclasses (torchao's Int8Tensor, say) report their logical dtype, not their
    storage: measure quantized models with `serialized_size_bytes` (taught in 01_edge).
    """
    return sum(t.numel() * t.element_size() for t in _unique_tensors(model))


def serialized_size_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: what a file on the device would hold."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


@dataclass(frozen=True)
class MemoryPeak:
    """Peak memory while a function ran, above what the process held before it started."""

    cpu_bytes: int
    cuda_bytes: int | None
    method: str

    def __str__(self) -> str:
        text = f"CPU peak +{self.cpu_bytes / 2**20:.1f} MiB ({self.method})"
        if self.cuda_bytes is not None:
            text += f", CUDA peak {self.cuda_bytes / 2**20:.1f} MiB"
        return text


def _read_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Linux lets a process reset its own high-water mark (VmHWM) by writing 5 to clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return _read_status_kib("VmHWM") is not None


class _RssSampler(threading.Thread):
    """Fallback where /proc is missing: sample the resident size every millisecond."""

    def __init__(self):
        super().__init__(daemon=True)
        self.process = psutil.Process(os.getpid())
        self.peak = self.process.memory_info().rss
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.001)


def measure_peak_memory(fn: Callable[[], object],
                        device: torch.device | str | None = None) -> tuple[MemoryPeak, object]:
    """Run `fn` once; return (peak memory above the starting point, fn's result)."""
    gc.collect()
    on_cuda = device is not None and torch.device(device).type == "cuda"
    if on_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        cuda_start = torch.cuda.memory_allocated(device)
    baseline = psutil.Process(os.getpid()).memory_info().rss
    if _reset_peak_rss():
        result = fn()
        peak, method = _read_status_kib("VmHWM") * 1024, "VmHWM"
    else:
        sampler = _RssSampler()
        sampler.start()
        try:
            result = fn()
        finally:
            sampler.done.set()
            sampler.join()
        peak, method = sampler.peak, "sampled RSS"
    cuda_bytes = None
    if on_cuda:
        torch.cuda.synchronize(device)
        cuda_bytes = torch.cuda.max_memory_allocated(device) - cuda_start
    return MemoryPeak(cpu_bytes=max(0, peak - baseline), cuda_bytes=cuda_bytes, method=method), result
