"""What accelerators cost, where they stop helping, and how much energy a run takes.

Taught in 03_profiling ("What accelerators cost"). Three pieces:

- list prices and datasheet peaks, and performance per dollar (prices change: each row carries its
  source and the date it was read; look up today's before you decide anything);
- a latency model of one inference on a GPU behind PCIe (transfers + kernel launches + compute), to set
  against a CPU's measured time and find the batch size where the accelerator starts to win;
- energy: read the machine's own counters where it exposes them (RAPL under /sys/class/powercap on
  Linux, NVML on an NVIDIA GPU), handling the counter's wrap-around, or estimate it and say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Offer:
    """One rentable machine: its list price and the published peak of its accelerator (or CPU)."""

    name: str
    usd_per_hour: float        # on-demand list price for what `peak_flops` counts (one GPU, one instance)
    peak_flops: float | None   # datasheet peak, FLOP/s, in the precision named in `precision`
    precision: str
    source: str                # where the price was read, and when


# Prices read in November 2026 (see tests/claims/03_profiling.md for how each was checked). They change:
# the notebook prints them with their dates and asks the learner to look up today's.
OFFERS = [
    Offer("NVIDIA H100 SXM, AWS p5.48xlarge (1/8)", 55.04 / 8, 989e12, "BF16 dense",
          "AWS EC2 On-Demand, us-east-1, Linux, $55.04/h for 8 GPUs (price list as of 2026-11-09)"),
    Offer("NVIDIA H100 SXM, RunPod Community Cloud", 2.69, 989e12, "BF16 dense",
          "runpod.io/pricing, H100 SXM 80GB, $2.69/GPU-h (read 2026-09-25 and 2026-11-09)"),
    Offer("NVIDIA H100 SXM, AWS p5.48xlarge (1/8)", 55.04 / 8, 67e12, "FP32",
          "the same instance; FP32 peak (no tensor cores) from the H100 datasheet"),
    Offer("AWS c6i.large (2 vCPU, a CPU instance)", 0.085, None, "FP32 (measure it)",
          "AWS EC2 On-Demand, us-east-1, Linux, $62.05 per 730 h = $0.085/h (undated transcription)"),
]

# Host-to-device link, from the NVIDIA H100 Tensor Core GPU datasheet (SXM column, "Interconnect":
# "PCIe Gen5: 128GB/s"): that figure adds both directions, so one direction gets 64 GB/s at most.
PCIE_GEN5_X16 = 64e9               # bytes/s, one direction, theoretical
# Fixed cost of one kernel launch from the host: about 4-6 us per launch, as reported
# for a consumer GPU (susun-blog.com, "pegainfer (3): From Launch Overhead to CUDA Graph", RTX 5070 Ti, CUDA 13.0).
LAUNCH_S = 5e-6
# Fixed cost of one small host-device copy (driver call, DMA set-up): an ASSUMPTION of the same order as a
# launch, not a cited figure; on a GPU the notebook measures it.
COPY_FIXED_S = 5e-6
H100_SXM_FP32 = 67e12               # FLOP/s, datasheet (course.profiling.ACCELERATORS)
H100_SXM_HBM = 3.35e12              # bytes/s, datasheet
H100_SXM_TDP_W = 700.0              # "Max thermal design power (TDP): up to 700W", datasheet, SXM column

# Energy per operation at 45 nm (Horowitz, ISSCC 2014, as tabulated in PMC8934428, Table 3; 02_snn uses the
# same): a float32 multiply-accumulate 3.7 + 0.9 pJ. DRAM: about 640 pJ per 32-bit word (the same table).
MAC_J = 4.6e-12
DRAM_J_PER_BYTE = 640e-12 / 4


def perf_per_dollar(flops_per_s: float, usd_per_hour: float) -> float:
    """FLOP per dollar: throughput (FLOP/s) x 3600 s / price ($/h). Raises ValueError for a price <= 0."""
    if usd_per_hour <= 0:
        raise ValueError(f"a price must be positive, got {usd_per_hour}")
    return flops_per_s * 3600 / usd_per_hour


# ----------------------------------------------------------------- the latency model

def gpu_latency(bytes_in: int, bytes_out: int, kernels: int, flops: float, *, pcie: float = PCIE_GEN5_X16,
                copy_fixed: float = COPY_FIXED_S, launch: float = LAUNCH_S,
                peak_flops: float = H100_SXM_FP32) -> float:
    """Modelled seconds for one inference on a GPU behind PCIe: two copies (input to the device, output back),
    each a fixed cost plus bytes / bandwidth; one launch per kernel; and the arithmetic at the peak rate.

    A lower bound for the compute term (real kernels of a small model reach a few percent of peak), and a
    model, not a measurement: 03_profiling measures the real thing where a GPU is present.
    """
    if min(bytes_in, bytes_out, kernels, flops) < 0:
        raise ValueError("bytes, kernels and flops cannot be negative")
    transfers = 2 * copy_fixed + (bytes_in + bytes_out) / pcie
    return transfers + kernels * launch + flops / peak_flops


def workload(model: nn.Module, example: torch.Tensor) -> tuple[float, int]:
    """(FLOPs, kernels) of one forward pass of `model` on `example`: FLOPs from FlopCounterMode (matmul and
    convolution only, a multiply-add counted as 2), kernels as the leaf modules that compute (Flatten and
    Identity are views: no kernel)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(example)
    views = (nn.Flatten, nn.Identity)
    leaves = [m for m in model.modules() if not list(m.children()) and not isinstance(m, views)]
    return float(counter.get_total_flops()), len(leaves)


def break_even_batch(batches: list[int], cpu_seconds: list[float], gpu_seconds: list[float]) -> int | None:
    """The smallest batch size from which the accelerator's time is below the CPU's at every larger batch
    measured, or None if it is not faster at the largest one.

    Taught in 03_profiling. Asking for the accelerator to stay ahead, rather than to be ahead once, keeps one
    noisy CPU timing (a batch that happened to be slow) from moving the break-even point.
    Raises ValueError when the three lists differ in length.
    """
    if not len(batches) == len(cpu_seconds) == len(gpu_seconds):
        raise ValueError(f"batches, cpu_seconds and gpu_seconds differ in length: "
                         f"{len(batches)}, {len(cpu_seconds)}, {len(gpu_seconds)}")
    found = None
    for batch, cpu, gpu in sorted(zip(batches, cpu_seconds, gpu_seconds), reverse=True):
        if gpu >= cpu:
            break
        found = batch
    return found


# ----------------------------------------------------------------- energy

def energy_joules(before_uj: int, after_uj: int, max_range_uj: int) -> float:
    """Joules between two readings of a wrapping microjoule counter (RAPL's energy_uj counts up to
    max_energy_range_uj and starts again from 0): after - before, plus one range if it wrapped."""
    if not 0 <= before_uj <= max_range_uj or not 0 <= after_uj <= max_range_uj:
        raise ValueError("readings must lie between 0 and max_range_uj")
    delta = after_uj - before_uj
    if delta < 0:
        delta += max_range_uj
    return delta / 1e6


def read_rapl(root: str | Path = "/sys/class/powercap") -> dict[str, tuple[int, int]]:
    """{zone name: (energy_uj, max_energy_range_uj)} for every RAPL zone this process may read; {} if none.

    Containers and VMs often hide /sys/class/powercap, and since the PLATYPUS power side channel (Intel
    advisory INTEL-SA-00389, CVE-2020-8694, November 2020) Linux lets only root read energy_uj, so an empty
    answer is common and not an error.

    Many Intel laptops expose the same package twice, through the MSR interface (``intel-rapl:0``) and the MMIO
    one (``intel-rapl-mmio:0``), both named ``package-0``: an MMIO zone whose name an MSR zone already has is
    left out, so that summing the package zones counts each package once.
    """
    found = []
    for zone in sorted(Path(root).glob("*")):
        try:
            name = (zone / "name").read_text().strip()
            found.append((zone.name, name, (int((zone / "energy_uj").read_text()),
                                            int((zone / "max_energy_range_uj").read_text()))))
        except (OSError, ValueError):
            continue
    msr_names = {name for folder, name, _ in found if "mmio" not in folder}
    return {f"{folder} ({name})": values for folder, name, values in found
            if "mmio" not in folder or name not in msr_names}


def nvml_energy_j(device: int = 0) -> float | None:
    """The GPU's energy counter in joules since the driver loaded (NVML, Volta or newer), or None where NVML
    (the pynvml module) or the counter is missing."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device)
        return pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1e3     # millijoules
    except Exception:                                                        # no pynvml, no GPU, no counter
        return None


def estimated_energy_j(macs: float, dram_bytes: float) -> float:
    """A floor on the energy of a computation from Horowitz's 45 nm table: MACs x 4.6 pJ plus DRAM bytes x
    160 pJ. It leaves out caches, control, leakage and the idle machine, which dominate a real CPU's draw."""
    return macs * MAC_J + dram_bytes * DRAM_J_PER_BYTE
