"""What the GPU in use can do, and where the course runs on the CPU on purpose.

Course infrastructure. Callers: 03_profiling's bfloat16 row (`require_bf16`), `course.setup`
(`apply_profile`), the helpers that run on the CPU by design (`on_cpu`), and ``make gpu-check``
(tests/gpu_check.py: `FALLBACKS`, `bf16_native`, `gpu_memory_bytes`). No notebook checks free GPU memory
before it allocates: none was written to need more than a T4's 14.74 GiB (the course's models are small; not
yet measured on a GPU: the reserved-MiB column of ``make gpu-check PROFILE=t4`` is that evidence).

- `bf16_native(device)`: does the device compute bfloat16 in hardware? The CPU: True (torch computes it
  everywhere, fast only with AVX-512 BF16 or AMX). CUDA: compute capability 8.0 (Ampere) or newer. Colab's
  free T4 is a Turing GPU, capability 7.5 (deviceQuery on a Tesla T4: "CUDA Capability Major/Minor version
  number: 7.5"): no bfloat16 units. ``torch.cuda.is_bf16_supported()`` is not this test: by default
  (``including_emulation=True``) it answers True on any GPU that can *hold* a bfloat16 tensor, a T4 included
  (torch/cuda/__init__.py in torch 2.13: capability >= 8 or a bf16 tensor allocates; a real Colab T4 printed
  "Tesla T4 (sm_75) bf16 supported True", MakazhanAlpamys/Soup #385, 2026-08); the capability decides here.
- `gpu_memory_bytes(device)`: the bytes this process may use (the T4 profile's when emulated);
  `require_bf16(device, what)`: the check a cell makes before it casts to bfloat16; it prints why the cell
  skips instead of failing.
- `on_cpu(reason, cell=None)`: helpers call it where, a GPU present or not, they run on the CPU by design
  (torchrun workers on gloo, ONNX Runtime and LiteRT, Flower's simulated clients, the model server). Each call
  is kept in `FALLBACKS`, which ``make gpu-check`` (tests/gpu_check.py) reads after every cell; with a GPU
  present, each reason is also printed once as a note.
- ``COURSE_GPU_PROFILE=t4``: on a bigger GPU, behave as Colab's T4 would: bfloat16 is reported not native,
  and `apply_profile` (called by `course.setup`) caps this process's CUDA allocator at a T4's 14.74 GiB with
  ``torch.cuda.set_per_process_memory_fraction``, so that an H100/H200 run predicts what a T4 can hold.
  Limits of the emulation: a T4 is also ~20x slower, has no TF32 and its own kernels; the cap covers the
  caching allocator of this process only (not the CUDA context, not other processes).
"""

from __future__ import annotations

import inspect
import os
import sys
from dataclasses import dataclass

import torch

PROFILE_ENV = "COURSE_GPU_PROFILE"
BF16_CAPABILITY = (8, 0)   # Ampere: the first capability with bfloat16 tensor-core and ALU instructions


@dataclass(frozen=True)
class GpuProfile:
    """A GPU to emulate on a bigger one: its compute capability and the memory a process may allocate."""

    name: str
    capability: tuple[int, int]
    memory_bytes: int


#: Colab's free GPU (as of 2026-11; Colab does not guarantee it): a Tesla T4, capability 7.5, "16 GB" GDDR6 of
#: which CUDA reports 15,828,320,256 bytes (14.74 GiB) as totalGlobalMem, the figure torch's
#: ``get_device_properties(0).total_memory`` returns (cudaGetDeviceProperties output of T4s in public repos;
#: nvidia-smi shows 15360 MiB). The CUDA context takes some of that too (not measured here).
T4_TOTAL_BYTES = 15_828_320_256
PROFILES = {"t4": GpuProfile("Tesla T4 (emulated)", (7, 5), T4_TOTAL_BYTES)}


@dataclass(frozen=True)
class Fallback:
    """One deliberate CPU run: why, in which notebook cell (when known), from which helper."""

    reason: str
    cell: str | None
    caller: str
    gpu_present: bool


#: Every `on_cpu` call of this process, in order (the gpu-check harness reads it after each cell).
FALLBACKS: list[Fallback] = []
_noted: set[str] = set()


def profile() -> GpuProfile | None:
    """The emulated GPU named by ``COURSE_GPU_PROFILE`` (``t4``), or None. Raises ValueError for an unknown
    name, rather than silently measuring the real GPU."""
    name = os.environ.get(PROFILE_ENV, "").strip().lower()
    if not name:
        return None
    if name not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={name!r} is not a known GPU profile; known: {sorted(PROFILES)}")
    return PROFILES[name]


def _device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def capability(device: torch.device | str | None = None) -> tuple[int, int] | None:
    """The CUDA compute capability (major, minor) of `device`, the emulated profile's under
    ``COURSE_GPU_PROFILE``; None for a device that is not CUDA."""
    device = _device(device)
    if device.type != "cuda":
        return None
    emulated = profile()
    return emulated.capability if emulated else tuple(torch.cuda.get_device_capability(device))


def device_name(device: torch.device | str | None = None) -> str:
    """A name for messages: ``CPU``, ``NVIDIA H200 (capability 9.0)``, ``Tesla T4 (emulated) ...``."""
    device = _device(device)
    if device.type != "cuda":
        return device.type.upper()
    emulated = profile()
    name = emulated.name if emulated else torch.cuda.get_device_name(device)
    major, minor = capability(device)
    return f"{name} (capability {major}.{minor})"


def bf16_native(device: torch.device | str | None = None) -> bool:
    """True where `device` computes bfloat16 natively: the CPU (always), CUDA from capability 8.0.
    A T4 (7.5) answers False, though ``torch.cuda.is_bf16_supported()`` answers True there."""
    cap = capability(device)
    return True if cap is None else cap >= BF16_CAPABILITY


def gpu_memory_bytes(device: torch.device | str | None = None) -> int | None:
    """Bytes of GPU memory this process may use on `device`: the card's total, or the emulated profile's
    when smaller; None for a device that is not CUDA."""
    device = _device(device)
    if device.type != "cuda":
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    emulated = profile()
    return min(total, emulated.memory_bytes) if emulated else total


def apply_profile(device: torch.device | str | None = None) -> GpuProfile | None:
    """Cap this process's CUDA allocator at the emulated profile's memory (``COURSE_GPU_PROFILE``); a no-op
    without a profile or on a device that is not CUDA. Returns the profile applied. Called by
    `course.setup`."""
    emulated = profile()
    device = _device(device)
    if emulated is None or device.type != "cuda":
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, emulated.memory_bytes / total), device)
    return emulated


def require_bf16(device: torch.device | str | None, what: str) -> bool:
    """True when `device` runs bfloat16 natively; else print that `what` is skipped and why, and return False.

    Use: ``if require_bf16(ctx.device, "the bfloat16 autocast row"): ...``."""
    if bf16_native(device):
        return True
    print(f"skipped: {what} needs bfloat16, which the {device_name(device)} does not compute natively "
          f"(capability 8.0 or newer does; torch would emulate it, slowly and not as on an A100 or H100).")
    return False


def _current_cell() -> str | None:
    """The id of the notebook cell running now, where IPython knows it (nbclient, JupyterLab)."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    info = getattr(shell, "_course_cell_info", None)   # the gpu-check hook's: IPython's pre_run_cell info
    return getattr(info, "cell_id", None)


def on_cpu(reason: str, cell: str | None = None) -> Fallback:
    """Record that the caller runs on the CPU on purpose, and why (`reason`: one line, no device name needed).

    Kept in `FALLBACKS` whether or not a GPU is present (so the harness's dry run on a CPU sees the same
    records); printed once per reason as a note only when a GPU is present, where it explains why the GPU
    sits idle."""
    frame = inspect.stack()[1]
    caller = f"{frame.frame.f_globals.get('__name__', '?')}.{frame.function}"
    record = Fallback(reason=reason, cell=cell or _current_cell(), caller=caller,
                      gpu_present=torch.cuda.is_available())
    FALLBACKS.append(record)
    if record.gpu_present and reason not in _noted:
        _noted.add(reason)
        print(f"note: on the CPU on purpose ({caller}): {reason}")
    return record
