"""course.accelerators: the latency model, performance per dollar, and energy counters (03_profiling)."""

import pytest
import torch
from torch import nn

from course import accelerators as acc
from course.profiling import DigitCNN


def test_gpu_latency_adds_two_copies_launches_and_compute():
    assert acc.gpu_latency(0, 0, 1, 0) == pytest.approx(2 * acc.COPY_FIXED_S + acc.LAUNCH_S)
    assert acc.gpu_latency(64e9, 64e9, 0, 0, copy_fixed=0.0) == pytest.approx(2.0)
    assert acc.gpu_latency(0, 0, 0, 67e12, copy_fixed=0.0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        acc.gpu_latency(-1, 0, 0, 0)


def test_workload_counts_flops_and_computing_leaves():
    flops, kernels = acc.workload(nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Flatten()), torch.zeros(3, 8))
    assert flops == 2 * 3 * 8 * 4
    assert kernels == 2                                  # Linear and ReLU; Flatten is a view
    cnn_flops, cnn_kernels = acc.workload(DigitCNN(), torch.zeros(2, 1, 32, 32))
    assert cnn_kernels == 7
    assert cnn_flops == 2 * acc.workload(DigitCNN(), torch.zeros(1, 1, 32, 32))[0]


def test_break_even_batch():
    assert acc.break_even_batch([1, 2, 4], [1.0, 2.0, 4.0], [3.0, 2.5, 3.0]) == 4
    assert acc.break_even_batch([4, 1, 2], [4.0, 1.0, 2.0], [3.0, 3.0, 3.0]) == 4   # unsorted input
    assert acc.break_even_batch([1, 2], [1.0, 1.0], [2.0, 2.0]) is None
    # one slow CPU sample at batch 32 must not move the point: the GPU is behind again at 64
    batches = [16, 32, 64, 128]
    assert acc.break_even_batch(batches, [1.0, 9.0, 3.0, 8.0], [2.0, 2.5, 3.5, 4.0]) == 128
    with pytest.raises(ValueError, match="differ in length"):
        acc.break_even_batch([1, 2], [1.0], [1.0, 2.0])


def test_perf_per_dollar():
    assert acc.perf_per_dollar(1e12, 3.6) == pytest.approx(1e15)
    with pytest.raises(ValueError):
        acc.perf_per_dollar(1e12, 0.0)


def test_energy_joules_handles_the_wrap():
    assert acc.energy_joules(1_000_000, 3_500_000, 262_143_328_850) == pytest.approx(2.5)
    assert acc.energy_joules(900, 100, 1000) == pytest.approx(200e-6)
    assert acc.energy_joules(7, 7, 1000) == 0.0
    with pytest.raises(ValueError):
        acc.energy_joules(1001, 0, 1000)


def test_read_rapl_reads_zones_and_skips_unreadable(tmp_path):
    good = tmp_path / "intel-rapl:0"
    good.mkdir()
    (good / "name").write_text("package-0\n")
    (good / "energy_uj").write_text("12345\n")
    (good / "max_energy_range_uj").write_text("262143328850\n")
    hidden = tmp_path / "intel-rapl:1"
    hidden.mkdir()
    (hidden / "name").write_text("psys\n")              # no energy_uj: as when only root may read it
    assert acc.read_rapl(tmp_path) == {"intel-rapl:0 (package-0)": (12345, 262143328850)}
    assert acc.read_rapl(tmp_path / "absent") == {}


def test_read_rapl_counts_a_package_seen_through_msr_and_mmio_once(tmp_path):
    for folder, name in [("intel-rapl:0", "package-0"), ("intel-rapl-mmio:0", "package-0"),
                         ("intel-rapl-mmio:1", "package-1"), ("intel-rapl:0:0", "core")]:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "name").write_text(name + "\n")
        (tmp_path / folder / "energy_uj").write_text("7\n")
        (tmp_path / folder / "max_energy_range_uj").write_text("100\n")
    assert sorted(acc.read_rapl(tmp_path)) == ["intel-rapl-mmio:1 (package-1)", "intel-rapl:0 (package-0)",
                                               "intel-rapl:0:0 (core)"]


def test_nvml_energy_is_none_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert acc.nvml_energy_j() is None


def test_estimated_energy_floor():
    assert acc.estimated_energy_j(1e9, 0) == pytest.approx(4.6e-3)     # 1 GMAC at 4.6 pJ
    assert acc.estimated_energy_j(0, 4) == pytest.approx(640e-12)      # one 32-bit DRAM word


def test_offers_carry_sources_and_positive_prices():
    for offer in acc.OFFERS:
        assert offer.usd_per_hour > 0 and offer.source
        assert offer.peak_flops is None or offer.peak_flops > 1e12
