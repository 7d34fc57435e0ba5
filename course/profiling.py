"""Profiling and accelerating: the roofline, a systolic array, and a deliberately slow pipeline.

Taught in 03_profiling. The slow pipeline is correct but wasteful in the ways real code is
(per-sample Python work, float64, work redone every step, host syncs, no inference mode);
`pipeline(..., fixes=FIXES)` is the course's reference for the case study, one fix at a time.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from course.bench import measure_time
from course.data import epoch_orders

UPSCALE = 4  # 8x8 digits become 32x32 images: enough work for a convolution to matter

# Published peak figures, for the roofline's comparison: dense (no 2:4 sparsity), per chip.
# NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column: FP32 67 TFLOP/s; BF16 Tensor Core
# 1,979 TFLOP/s "with sparsity", so 989 dense (the footnote: half without sparsity); GPU memory
# bandwidth 3.35 TB/s. Ridge points: FP32 67 / 3.35 = 20 FLOP/byte, BF16 989 / 3.35 = 295.
# Google Cloud TPU v5e documentation, "System architecture" table: 197 TFLOP/s BF16 per chip,
# HBM2 16 GB at 819 GB/s. Ridge point: 197 / 0.819 = 240 FLOP/byte.
ACCELERATORS = {
    "NVIDIA H100 SXM (BF16)": (989e12, 3.35e12),
    "NVIDIA H100 SXM (FP32)": (67e12, 3.35e12),
    "Google TPU v5e (BF16)": (197e12, 0.819e12),
}


# ----------------------------------------------------------------- timing and profiles

def benchmark(fn, threads: int = 1, min_run_time: float = 0.2):
    """torch.utils.benchmark's Measurement (median, IQR) of fn() on `threads` threads."""
    from torch.utils import benchmark as torch_benchmark

    timer = torch_benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time)


def op_table(prof, k: int = 8, sort_by: str = "self_cpu_time_total", width: int = 40) -> str:
    """A narrow text table of a profile's top-k operators (fits a notebook; key_averages().table
    has ten wide columns): name, self CPU time, its share, calls and self CPU memory; and, when the profile
    recorded a GPU (ProfilerActivity.CUDA), self GPU time, since on CUDA an operator's CPU time is mostly the
    cost of launching its kernel (``sort_by="self_device_time_total"`` ranks by GPU time)."""
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    memory = any(e.self_cpu_memory_usage for e in events)    # recorded only with profile_memory=True
    gpu = any(getattr(e, "self_device_time_total", 0) for e in events)
    events = sorted(events, key=lambda e: getattr(e, sort_by), reverse=True)[:k]
    lines = [f"{'operator':<{width}} {'self CPU':>10} {'share':>6} {'calls':>6}"
             + (f" {'self GPU':>10}" if gpu else "") + (f" {'self mem':>9}" if memory else "")]
    for e in events:
        name = e.key if len(e.key) <= width else e.key[:width - 3] + "..."
        cpu = e.self_cpu_time_total
        lines.append(f"{name:<{width}} {cpu / 1e3:>8.2f}ms {cpu / total:>6.1%} {e.count:>6}"
                     + (f" {e.self_device_time_total / 1e3:>8.2f}ms" if gpu else "")
                     + (f" {e.self_cpu_memory_usage / 2**20:>7.2f}MB" if memory else ""))
    return "\n".join(lines)


def interleaved_times(runs: dict, repeats: int = 3) -> dict[str, list[float]]:
    """Wall seconds of each named zero-argument callable, `repeats` times each, in rounds
    (a, b, c, a, b, c, ...), so that a slow patch of a busy machine hits every variant alike."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def top_ops(prof, k: int = 5) -> list[str]:
    """Names of the k operators with the most self CPU time in a torch.profiler profile."""
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [e.key for e in events[:k]]


# ----------------------------------------------------------------- roofline

def attainable_flops(intensity: float, peak_flops: float, peak_bandwidth: float) -> float:
    """The roofline: min(peak compute, intensity x peak bandwidth), in FLOP/s."""
    return min(peak_flops, intensity * peak_bandwidth)


def measure_peak_matmul(n: int = 1024, repeats: int = 10, device: str | torch.device = "cpu") -> float:
    """Achieved FLOP/s of an n x n float32 matrix product, median of `repeats`."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    timing = measure_time(lambda: a @ b, repeats=repeats, warmup=2, device=device)
    return 2 * n ** 3 / timing.median


def measure_bandwidth(megabytes: int = 64, repeats: int = 10, device: str | torch.device = "cpu") -> float:
    """Achieved bytes/s of copying a large float32 buffer (bytes read plus bytes written)."""
    src = torch.empty(megabytes * 2**20 // 4, device=device).normal_()
    dst = torch.empty_like(src)
    timing = measure_time(lambda: dst.copy_(src), repeats=repeats, warmup=2, device=device)
    return 2 * src.numel() * 4 / timing.median


# ----------------------------------------------------------------- systolic array

def systolic_matmul(m: int, k: int, n: int, rows: int, cols: int) -> tuple[int, float]:
    """Cycles and utilisation of (m x k) @ (k x n) on a rows x cols weight-stationary array.

    The weights are cut into ceil(k / rows) x ceil(n / cols) tiles. Each tile is loaded
    (rows cycles), then the m input rows stream through: m cycles, plus rows + cols - 2
    cycles to fill and drain the pipeline. Utilisation = useful MACs / (cycles x rows x cols).
    """
    if min(m, k, n, rows, cols) < 1:
        raise ValueError("all dimensions must be at least 1")
    tiles = math.ceil(k / rows) * math.ceil(n / cols)
    cycles = tiles * (rows + m + rows + cols - 2)
    return cycles, (m * k * n) / (cycles * rows * cols)


# ----------------------------------------------------------------- the case study

class DigitCNN(nn.Module):
    """A small CNN for 32 x 32 digits: two conv blocks and a linear classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Linear(32 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


FIXES = ("tensors once", "float32", "batched validation", "no per-step sync", "channels_last")


class SlowDigits(Dataset):
    """Builds every image on request, the slow way: float64 NumPy, normalisation statistics of
    the whole data set recomputed for every item, and an np.kron upscale, each time it is read."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, reference: torch.Tensor):
        self.x, self.y, self.reference = x, y, reference

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        pixels = self.reference.numpy().astype(np.float64)
        mean, std = pixels.mean(), pixels.std()          # the same numbers, recomputed every item
        image = (self.x[i].numpy().astype(np.float64).reshape(8, 8) - mean) / std
        return torch.tensor(np.kron(image, np.ones((UPSCALE, UPSCALE)))[None]), int(self.y[i])


def prepare_images(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """(N, 64) pixels -> normalised (N, 1, 32, 32) float32 images, all at once."""
    normalised = ((x - mean) / std).reshape(-1, 1, 8, 8).float()
    return F.interpolate(normalised, scale_factor=UPSCALE, mode="nearest")


def pipeline(model: nn.Module, digits, epochs: int = 2, seed: int = 0, batch_size: int = 32,
             lr: float = 0.05, fixes: tuple[str, ...] = ()) -> tuple[nn.Module, list[tuple[float, float]]]:
    """Train `epochs` epochs, validating after each; return (model, [(mean loss, val accuracy)]).

    With no `fixes` this is the deliberately slow baseline; each name in FIXES removes one waste,
    and any subset may be applied (03_profiling ablates them one at a time). Every variant follows
    the same batches and updates, so results agree up to float rounding.
    """
    unknown = set(fixes) - set(FIXES)
    if unknown:
        raise ValueError(f"unknown fixes {sorted(unknown)}; choose from {FIXES}")
    from course.devices import on_cpu

    on_cpu("03's case-study pipeline trains on the CPU: its five wastes are CPU-side ones")
    train, val = digits.train, digits.val
    dtype = torch.float32 if "float32" in fixes else torch.float64
    model = model.to(dtype)
    layout = torch.channels_last if "channels_last" in fixes else torch.contiguous_format
    model = model.to(memory_format=layout)
    slow_train, slow_val = SlowDigits(train.x, train.y, train.x), SlowDigits(val.x, val.y, train.x)
    if "tensors once" in fixes:
        pixels = train.x.double()
        mean, std = pixels.mean().item(), pixels.std(correction=0).item()
        images, val_images = prepare_images(train.x, mean, std), prepare_images(val.x, mean, std)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    history = []
    for order in epoch_orders(len(train), epochs, seed):
        model.train()
        if "tensors once" in fixes:
            batches = ((images[idx], train.y[idx]) for idx in order.split(batch_size))
        else:
            batches = DataLoader(slow_train, batch_size, sampler=order.tolist())
        losses, total = [], torch.zeros((), dtype=dtype)
        for xb, yb in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb.to(dtype).contiguous(memory_format=layout)), yb)
            loss.backward()
            optimizer.step()
            if "no per-step sync" in fixes:
                total += loss.detach()
            else:
                losses.append(loss.item())               # waits for the step: a host sync
        mean_loss = (total / len(order.split(batch_size))).item() if "no per-step sync" in fixes \
            else sum(losses) / len(losses)
        model.eval()
        if "batched validation" in fixes:                # one forward pass, no autograd
            if "tensors once" not in fixes:                # still built item by item, the slow way
                val_images = torch.stack([slow_val[i][0] for i in range(len(slow_val))])
            with torch.inference_mode():
                batch = val_images.to(dtype).contiguous(memory_format=layout)
                accuracy = (model(batch).argmax(1) == val.y).float().mean().item()
        else:                                            # one sample at a time, autograd recording
            correct = 0
            for i in range(len(slow_val)):
                image, label = slow_val[i]
                image = image.to(dtype).unsqueeze(0).contiguous(memory_format=layout)
                correct += int(model(image).argmax(1).item() == label)
            accuracy = correct / len(slow_val)
        history.append((mean_loss, accuracy))
    return model, history
