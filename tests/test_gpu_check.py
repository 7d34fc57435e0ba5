"""The gpu-check harness (tests/gpu_check.py) on a tiny generated notebook, on the CPU: per-cell records reach
the right cell ids, deliberate CPU runs, undeclared CPU work and errors are reported, expected errors are not,
and the harness refuses to run without a GPU unless told it is a dry run."""

from __future__ import annotations

import json

import nbformat
import pytest
import torch

from tests import gpu_check

BUSY = "import time\n_t = time.process_time()\nwhile time.process_time() - _t < 0.8:\n    pass\n"
# CUDA as the kernel's hook sees it, without a GPU: initialised, 8 MiB reserved, allocations counted in _cuda
FAKE_CUDA = """import torch
_cuda = {"allocations": 0}
torch.cuda.is_available = lambda: True
torch.cuda.is_initialized = lambda: True
torch.cuda.memory_stats = lambda device=None: {"allocation.all.allocated": _cuda["allocations"]}
torch.cuda.max_memory_allocated = lambda device=None: 3 * 2**20
torch.cuda.max_memory_reserved = lambda device=None: 8 * 2**20
torch.cuda.reset_peak_memory_stats = lambda device=None: None
_cuda["allocations"] += 3
"""


def _notebook(path):
    cells = [
        nbformat.v4.new_code_cell("from course import devices\nx = 1", id="first"),
        nbformat.v4.new_code_cell("devices.on_cpu('ONNX Runtime runs on the CPU')", id="fallback"),
        nbformat.v4.new_code_cell("raise ValueError('wrong on purpose')", id="broken"),
        nbformat.v4.new_code_cell("raise KeyError('expected')", id="expected",
                                  metadata={"tags": ["raises-exception"]}),
        nbformat.v4.new_code_cell(BUSY, id="heavy-cpu"),                      # undeclared: no GPU here
        nbformat.v4.new_code_cell("devices.on_cpu('declared')\n" + BUSY, id="declared"),
        nbformat.v4.new_code_cell(FAKE_CUDA + BUSY, id="fake-cuda"),           # heavy, but CUDA allocated
        nbformat.v4.new_code_cell(BUSY, id="heavy-no-alloc"),                # CUDA initialised, no allocation
        nbformat.v4.new_code_cell("y = x + 1\ndevices.on_cpu('gloo workers')", id="after"),
    ]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    return path


def test_harness_reports_cells_fallbacks_undeclared_cpu_and_errors(tmp_path):
    root = str(gpu_check.Path(gpu_check.__file__).resolve().parent.parent)
    env = dict(gpu_check.os.environ, PYTHONPATH=root)
    row = gpu_check.run_notebook(_notebook(tmp_path / "tiny.ipynb"), tmp_path, timeout_s=60, env=env,
                                 cpu_flag_s=0.5)
    cells = {c["cell"]: c for c in row["cells"]}
    assert list(cells) == ["first", "fallback", "broken", "expected", "heavy-cpu", "declared", "fake-cuda",
                           "heavy-no-alloc", "after"]
    assert row["fallbacks"] == [
        {"cell": "fallback", "reason": "ONNX Runtime runs on the CPU", "caller": "__main__.<module>"},
        {"cell": "declared", "reason": "declared", "caller": "__main__.<module>"},
        {"cell": "after", "reason": "gloo workers", "caller": "__main__.<module>"}]
    assert row["errors"] == [{"cell": "broken", "error": "ValueError: wrong on purpose"}]  # not "expected"
    assert [u["cell"] for u in row["undeclared_cpu"]] == ["heavy-cpu", "heavy-no-alloc"]
    assert all(u["cpu_s"] >= 0.75 for u in row["undeclared_cpu"])        # 0.8 s busy, os.times' 10 ms ticks
    assert cells["first"]["cpu_s"] < 0.5
    assert cells["fake-cuda"]["cuda_allocations"] == 3 and cells["heavy-no-alloc"]["cuda_allocations"] == 0
    assert cells["heavy-cpu"]["cuda_peak"] is None                            # CUDA not initialised yet
    assert (row["kernel_cuda_reserved_bytes"], row["kernel_cuda_reserved_cell"]) == (8 * 2**20, "fake-cuda")
    assert row["kernel_cuda_peak_bytes"] == 3 * 2**20 and row["wall_s"] > 0
    lines = gpu_check.format_row(row)
    assert lines[0].startswith("tiny") and "FAILED (1 cell(s))" in lines[0] and " 8 " in lines[0]
    assert "    cpu fallback in fallback: ONNX Runtime runs on the CPU" in lines
    assert any(line.startswith("    ran on the CPU (undeclared) in heavy-cpu (") and "heavy-no-alloc" in line
               and "declared (" not in line for line in lines)
    assert "    error in broken: ValueError: wrong on purpose" in lines


def test_refuses_without_a_gpu(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["00_orientation", "--out", str(tmp_path)]) == 2
    assert "gpu-check needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "gpu_check.json").exists()


def test_unknown_module_is_refused(monkeypatch, capsys, tmp_path):
    assert gpu_check.main(["99_nothing", "--allow-cpu", "--out", str(tmp_path)]) == 2
    assert "unknown module" in capsys.readouterr().err


def test_device_sampler_reports_what_the_notebook_added():
    readings = iter([1000, 1500, 4000, None, 1200])                   # bytes used by every process on the GPU
    sampler = gpu_check.DeviceMemorySampler(interval_s=0.001, reader=lambda: next(readings, 1200))
    sampler.start()
    gpu_check.time.sleep(0.2)
    sampler.done.set()
    sampler.join()
    assert (sampler.baseline, sampler.peak, sampler.added()) == (1000, 4000, 3000)


@pytest.mark.parametrize("printed, expected", [("1234\n", 1234 * 2**20), ("[N/A]\n", None), (None, None)])
def test_device_sampler_reads_nvidia_smi(monkeypatch, tmp_path, printed, expected):
    """No NVML (pynvml not importable): the sampler reads a fake ``nvidia-smi`` on PATH, MiB -> bytes; one
    that prints "[N/A]" (as on some GPUs) or none at all leaves the device column n/a instead of crashing."""
    monkeypatch.setitem(gpu_check.sys.modules, "pynvml", None)       # import pynvml -> ImportError
    if printed is not None:
        smi = tmp_path / "nvidia-smi"
        smi.write_text(f"#!/bin/sh\nprintf '{printed}'\n")
        smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    sampler = gpu_check.DeviceMemorySampler()
    assert (sampler.baseline, sampler.added()) == (expected, None if expected is None else 0)
    assert (sampler.reader is None) is (expected is None)


@pytest.mark.slow
def test_dry_run_of_a_course_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_FAST", "1")
    assert gpu_check.main(["00_orientation", "--allow-cpu", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    (row,) = report["notebooks"]
    assert row["module"] == "00_orientation" and not row["errors"]
    install, setup = row["cells"][:2]
    assert (install["cell"], setup["cell"]) == ("install", "setup")
    assert install["outputs"] == 0 and install["error"] is None     # a no-op where course is importable
    assert "undeclared_cpu" in row and not row["kernel_cuda_reserved_bytes"]


def test_parallel_run_reports_a_harness_that_died(monkeypatch, tmp_path):
    """With --jobs, a child harness that ends without its JSON (killed, or crashed) still gets a row."""
    from types import SimpleNamespace

    monkeypatch.setattr(gpu_check.sys, "executable", "false")          # exits 1 at once, writes nothing
    args = SimpleNamespace(jobs=2, timeout=5, profile=None, allow_cpu=True)
    env = dict(gpu_check.os.environ)
    rows = list(gpu_check.run_parallel(["00_orientation", "02_snn"], args, env, tmp_path))
    assert sorted(r["module"] for r in rows) == ["00_orientation", "02_snn"]
    assert all("exited with code 1" in r["errors"][0]["error"] for r in rows)
    assert "FAILED" in gpu_check.format_row(rows[0])[0]


def test_main_selects_the_gpu_and_the_t4_profile(monkeypatch, tmp_path, capsys):
    """The device-selection path on a simulated H200 run with PROFILE=t4: the kernels get COURSE_DEVICE=cuda
    and COURSE_GPU_PROFILE=t4, and the report says what they will see (no native bf16, 14.74 GiB)."""
    from types import SimpleNamespace

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(
        name="NVIDIA H200", major=9, minor=0, total_memory=141 * 2**30))
    seen = {}

    def fake_run(path, out_dir, timeout_s=600, env=None):
        seen[path.stem] = env
        return {"module": path.stem, "wall_s": 1.0, "kernel_cuda_peak_bytes": 2**20,
                "kernel_cuda_peak_cell": "x",
                "device_peak_added_bytes": 3 * 2**20, "fallbacks": [], "errors": [], "cells": []}

    monkeypatch.setattr(gpu_check, "run_notebook", fake_run)
    assert gpu_check.main(["00_orientation", "--profile", "t4", "--out", str(tmp_path)]) == 0
    env = seen["00_orientation"]
    assert env["COURSE_DEVICE"] == "cuda" and env["COURSE_GPU_PROFILE"] == "t4"
    report = json.loads((tmp_path / "gpu_check.json").read_text())["device"]
    assert report["bf16_native"] is False and report["usable_bytes"] == 15_828_320_256
    assert report["capability"] == "9.0"
    assert "00_orientation" in capsys.readouterr().out


def test_device_report_asks_course_devices(monkeypatch):
    """device_report's bf16 and memory answers are course.devices' (under the profile asked for), and the
    harness's own COURSE_GPU_PROFILE is left as it was."""
    from types import SimpleNamespace

    from course import devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(
        name="NVIDIA H200", major=9, minor=0, total_memory=141 * 2**30))
    monkeypatch.delenv(devices.PROFILE_ENV, raising=False)
    plain = gpu_check.device_report()
    assert (plain["bf16_native"], plain["usable_bytes"]) == (True, 141 * 2**30)
    monkeypatch.setattr(devices, "bf16_native", lambda device=None: "asked devices")
    assert gpu_check.device_report("t4")["bf16_native"] == "asked devices"
    assert devices.PROFILE_ENV not in gpu_check.os.environ


def test_package_report_names_missing_and_other_versions(monkeypatch, tmp_path):
    """A GPU machine's own image lacks some pins and holds other versions of others: the report says which."""
    import importlib.metadata

    pins = {"pytest": importlib.metadata.version("pytest"), "flwr": importlib.metadata.version("flwr"),
            "numpy": "0.0.1", "no-such-course-package": "1.0"}
    report = gpu_check.package_report(pins)
    assert report["missing"] == ["no-such-course-package"]
    assert report["differ"] == [f"numpy {importlib.metadata.version('numpy')} (pinned 0.0.1)"]
    requirements = tmp_path / "requirements.txt"                       # read by course.env.requirement_pins
    requirements.write_text("flwr[simulation]==0.0.2  # extras and all\nNo_Such_Pkg==1.0\n")
    monkeypatch.setattr(gpu_check, "REQUIREMENTS", requirements)
    flwr = importlib.metadata.version("flwr")
    assert gpu_check.package_report() == {"missing": ["no-such-pkg"],
                                          "differ": [f"flwr {flwr} (pinned 0.0.2)"]}
