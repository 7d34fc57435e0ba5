import copy

import numpy as np
import pytest
import torch

from course import profiling
from course.data import load_digit_splits


def test_roofline_and_published_peaks():
    assert profiling.attainable_flops(1.0, 100.0, 10.0) == 10.0
    assert profiling.attainable_flops(100.0, 100.0, 10.0) == 100.0
    for peak, bandwidth in profiling.ACCELERATORS.values():
        assert peak / bandwidth > 10  # ridge points: H100 FP32 20, BF16 295; TPU v5e 240 FLOP/byte


def test_measured_peaks_are_plausible():
    flops = profiling.measure_peak_matmul(256, repeats=3)
    bandwidth = profiling.measure_bandwidth(8, repeats=3)
    assert 1e8 < flops < 1e14 and 1e8 < bandwidth < 1e13


def test_systolic_model():
    assert profiling.systolic_matmul(4, 4, 4, 4, 4) == (14, pytest.approx(64 / (14 * 16)))
    big = profiling.systolic_matmul(4096, 128, 128, 128, 128)[1]
    assert big > 0.9 > profiling.systolic_matmul(1, 128, 128, 128, 128)[1]
    with pytest.raises(ValueError):
        profiling.systolic_matmul(1, 0, 1, 1, 1)


def test_slow_items_equal_prepared_images():
    digits = load_digit_splits()
    pixels = digits.train.x.double()
    mean, std = pixels.mean().item(), pixels.std(correction=0).item()
    fast = profiling.prepare_images(digits.val.x[:5], mean, std)
    slow = profiling.SlowDigits(digits.val.x, digits.val.y, digits.train.x)
    for i in range(5):
        image, label = slow[i]
        assert image.dtype == torch.float64 and label == int(digits.val.y[i])
        assert np.allclose(image.numpy(), fast[i].numpy(), atol=1e-5)


def test_every_fix_keeps_the_results():
    digits = load_digit_splits()
    torch.manual_seed(0)
    model = profiling.DigitCNN()
    _, slow = profiling.pipeline(copy.deepcopy(model), digits, epochs=1)
    _, fast = profiling.pipeline(copy.deepcopy(model), digits, epochs=1, fixes=profiling.FIXES)
    assert fast[0][0] == pytest.approx(slow[0][0], rel=1e-3)
    assert abs(fast[0][1] - slow[0][1]) <= 0.01 and slow[0][1] > 0.5
    with pytest.raises(ValueError, match="unknown fixes"):
        profiling.pipeline(model, digits, fixes=("turbo",))


def test_benchmark_and_top_ops_references():
    seen = []
    measurement = profiling.benchmark(lambda: seen.append(torch.get_num_threads()), threads=1,
                                      min_run_time=0.02)
    assert set(seen) == {1} and measurement.median > 0
    big = torch.randn(300, 300)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            big @ big
    assert profiling.top_ops(prof, 1) == ["aten::mm"]



def test_each_fix_alone_keeps_the_results():
    digits = load_digit_splits()
    quarter = type(digits)(*(type(s)(s.x[:64], s.y[:64]) for s in (digits.train, digits.val, digits.test)))
    torch.manual_seed(0)
    model = profiling.DigitCNN()
    _, slow = profiling.pipeline(copy.deepcopy(model), quarter, epochs=1)
    for fix in profiling.FIXES:
        _, alone = profiling.pipeline(copy.deepcopy(model), quarter, epochs=1, fixes=(fix,))
        assert alone[0][0] == pytest.approx(slow[0][0], rel=1e-4) and alone[0][1] == pytest.approx(slow[0][1]), fix


def test_op_table_is_narrow_and_interleaved_times_run_in_rounds():
    big = torch.randn(200, 200)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        big @ big
    table = profiling.op_table(prof, 3)
    assert "aten::mm" in table and max(len(line) for line in table.splitlines()) <= 90
    order = []
    seconds = profiling.interleaved_times({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=2)
    assert order == ["a", "b", "a", "b"] and all(len(t) == 2 and min(t) >= 0 for t in seconds.values())


def test_op_table_shows_gpu_time_when_the_profile_has_it():
    """On CUDA an operator's self CPU time is its launch: the table must show the GPU's time beside it (a
    profile with CUDA activity, faked here: no GPU on these machines)."""
    from types import SimpleNamespace

    def event(key, cpu_us, gpu_us):
        return SimpleNamespace(key=key, self_cpu_time_total=cpu_us, self_device_time_total=gpu_us, count=5,
                               self_cpu_memory_usage=0)

    events = [event("aten::mm", 40.0, 9000.0), event("aten::add_", 60.0, 100.0)]
    prof = SimpleNamespace(key_averages=lambda: events)
    table = profiling.op_table(prof, 2).splitlines()
    assert "self GPU" in table[0] and "9.00ms" in table[2] and table[1].startswith("aten::add_")
    by_gpu = profiling.op_table(prof, 2, sort_by="self_device_time_total").splitlines()
    assert by_gpu[1].startswith("aten::mm")
    cpu_only = SimpleNamespace(key_averages=lambda: [event("aten::mm", 40.0, 0.0)])
    assert "self GPU" not in profiling.op_table(cpu_only, 1)
