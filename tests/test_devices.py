"""course.devices on a simulated T4 (capability 7.5, 14.74 GiB) and H200 (9.0, 141 GiB): torch.cuda is
monkeypatched, so these run without a GPU. What they cannot show: that a real T4's allocator stops at the
cap, or that bfloat16 kernels are slow there (see tests/gpu_check.py for the run on a real GPU)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from course import devices

GiB = 2**30
T4 = dict(name="Tesla T4", capability=(7, 5), total=devices.T4_TOTAL_BYTES)   # 14.74 GiB
H200 = dict(name="NVIDIA H200", capability=(9, 0), total=141 * GiB)


@pytest.fixture
def gpu(monkeypatch):
    """Install a fake CUDA device; returns a function that picks which one and what the allocator holds."""
    state = {"fractions": []}
    monkeypatch.delenv(devices.PROFILE_ENV, raising=False)
    monkeypatch.setattr(devices, "FALLBACKS", [])
    monkeypatch.setattr(devices, "_noted", set())

    def install(card: dict):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: card["capability"])
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: card["name"])
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(
            name=card["name"], total_memory=card["total"], major=card["capability"][0],
            minor=card["capability"][1]))
        # torch's own answer on a T4 is True (it can hold bfloat16 tensors): devices must not trust it
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
        monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                            lambda fraction, device=None: state["fractions"].append(fraction))
        return state

    return install


def test_cpu_answers_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.bf16_native("cpu") and devices.bf16_native(None)
    assert devices.gpu_memory_bytes("cpu") is None and devices.capability("cpu") is None
    assert devices.require_bf16("cpu", "the bf16 row")
    assert devices.apply_profile("cpu") is None


def test_t4_has_no_native_bf16_though_torch_says_supported(gpu, capsys):
    """The fixture's torch answers True to ``is_bf16_supported()`` (as a real T4's does): a `bf16_native` that
    asked torch would pass bfloat16 on here, and this test would fail."""
    gpu(T4)
    assert not devices.bf16_native("cuda")
    assert not devices.require_bf16("cuda", "the bfloat16 autocast row")
    out = capsys.readouterr().out
    assert "skipped: the bfloat16 autocast row needs bfloat16" in out and "Tesla T4 (capability 7.5)" in out


def test_h200_runs_bf16_until_the_t4_profile_says_otherwise(gpu, monkeypatch, capsys):
    state = gpu(H200)
    assert devices.bf16_native("cuda") and devices.require_bf16("cuda", "x")
    assert devices.gpu_memory_bytes("cuda") == 141 * GiB
    assert capsys.readouterr().out == ""
    monkeypatch.setenv(devices.PROFILE_ENV, "t4")
    assert not devices.bf16_native("cuda")
    assert devices.gpu_memory_bytes("cuda") == devices.T4_TOTAL_BYTES
    assert devices.apply_profile("cuda").name.startswith("Tesla T4")
    assert state["fractions"] == [pytest.approx(devices.T4_TOTAL_BYTES / (141 * GiB))]
    assert "Tesla T4 (emulated) (capability 7.5)" == devices.device_name("cuda")


def test_unknown_profile_is_an_error_not_a_silent_full_gpu(gpu, monkeypatch):
    gpu(H200)
    monkeypatch.setenv(devices.PROFILE_ENV, "a100")
    with pytest.raises(ValueError, match="a100"):
        devices.bf16_native("cuda")


def test_on_cpu_records_always_and_notes_once_with_a_gpu(gpu, monkeypatch, capsys):
    monkeypatch.setattr(devices, "FALLBACKS", [])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    devices.on_cpu("gloo workers")
    assert capsys.readouterr().out == ""                                 # no GPU: nothing to explain
    gpu(T4)
    first = devices.on_cpu("ONNX Runtime runs on the CPU", cell="code-44")
    devices.on_cpu("ONNX Runtime runs on the CPU")
    out = capsys.readouterr().out
    assert out.count("note: on the CPU on purpose") == 1 and "ONNX Runtime" in out
    assert [f.reason for f in devices.FALLBACKS] == ["gloo workers"] + ["ONNX Runtime runs on the CPU"] * 2
    assert first.cell == "code-44" and first.gpu_present and not devices.FALLBACKS[0].gpu_present
    assert first.caller.endswith("test_on_cpu_records_always_and_notes_once_with_a_gpu")


def test_setup_applies_the_t4_cap_on_cuda(gpu, monkeypatch):
    from course import env

    state = gpu(H200)
    monkeypatch.setenv(devices.PROFILE_ENV, "t4")
    monkeypatch.setattr(torch, "manual_seed", lambda seed: None)        # would initialise CUDA's generators
    ctx = env.setup("00_orientation", device="cuda", quiet=True)
    assert ctx.device.type == "cuda"
    assert state["fractions"] == [pytest.approx(devices.T4_TOTAL_BYTES / (141 * GiB))]


def test_helpers_that_run_on_the_cpu_by_design_say_so(monkeypatch, tmp_path):
    """Two of the helpers that record a deliberate CPU run (ONNX Runtime's session, 06's training process),
    with what they would start replaced: each leaves one record naming itself."""
    import onnxruntime

    from course import edge, processes, reliability

    monkeypatch.setattr(devices, "FALLBACKS", [])
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *args, **kwargs: "session")
    monkeypatch.setattr(processes, "start", lambda *args, **kwargs: "process")
    monkeypatch.setattr(reliability, "_STARTED", [])
    assert edge.onnx_session(tmp_path / "model.onnx") == "session"
    reliability.start_training(tmp_path, steps=1, every=1, log_path=tmp_path / "log")
    assert [f.caller for f in devices.FALLBACKS] == ["course.edge.onnx_session",
                                                     "course.reliability.start_training"]
    assert "CPU execution provider" in devices.FALLBACKS[0].reason
