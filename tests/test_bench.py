import pytest
import torch
from torch import nn

from course import bench
from course.checks import ScriptedWork


def test_measure_time_excludes_warmup_and_reports_median_and_iqr():
    work = ScriptedWork([100.0, 1.0, 2.0, 3.0, 4.0, 50.0])
    timing = bench.measure_time(work.work, repeats=5, warmup=1, clock=work.clock)
    assert work.calls == 6
    assert timing.samples == (1.0, 2.0, 3.0, 4.0, 50.0)
    assert timing.median == 3.0
    assert timing.iqr == pytest.approx(2.0)  # quartiles 2 and 4 of 1..4 and the outlier
    assert timing.min == 1.0
    assert "median 3000.000 ms" in str(timing)


def test_measure_time_validates_arguments():
    with pytest.raises(ValueError, match="repeats"):
        bench.measure_time(lambda: None, repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        bench.measure_time(lambda: None, warmup=-1)


def test_single_sample_has_zero_spread():
    assert bench.measure_time(lambda: None, repeats=1, warmup=0).iqr == 0.0


def test_model_size_counts_params_buffers_dtypes_and_shared_once():
    assert bench.model_size_bytes(nn.Linear(64, 10)) == 2600
    assert bench.model_size_bytes(nn.BatchNorm1d(8)) == 4 * 8 * 4 + 8
    assert bench.model_size_bytes(nn.Linear(64, 10).half()) == 1300
    tied = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    tied[1].weight = tied[0].weight
    assert bench.model_size_bytes(tied) == (100 + 10 + 10) * 4
    assert bench.param_count(tied) == 120


def test_param_count_trainable_only():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    assert bench.param_count(model) == 20 + 10
    assert bench.param_count(model, trainable_only=True) == 10


def test_serialized_size_exceeds_raw_bytes_by_pickle_overhead():
    model = nn.Linear(256, 256)
    raw, saved = bench.model_size_bytes(model), bench.serialized_size_bytes(model)
    assert raw < saved < raw + 4096


def test_peak_memory_sees_a_temporary_allocation():
    def allocate():
        block = torch.ones(25_000_000)  # 100 MB, freed on return
        return float(block[0])

    peak, result = bench.measure_peak_memory(allocate)
    assert result == 1.0
    assert 80 * 2**20 < peak.cpu_bytes < 400 * 2**20, peak
    assert peak.cuda_bytes is None
    small, _ = bench.measure_peak_memory(lambda: None)
    assert small.cpu_bytes < 20 * 2**20


def test_peak_memory_sampling_fallback(monkeypatch):
    monkeypatch.setattr(bench, "_reset_peak_rss", lambda: False)

    def allocate():
        block = torch.ones(25_000_000)
        import time
        time.sleep(0.05)  # the sampler reads every millisecond
        return block.sum().item()

    peak, _ = bench.measure_peak_memory(allocate)
    assert peak.method == "sampled RSS"
    assert peak.cpu_bytes > 80 * 2**20


def test_limit_threads_restores_the_count():
    before = torch.get_num_threads()
    with bench.limit_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), bench.limit_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
