"""course.contention: background model processes always stop; latency samples and tail summaries (01_edge)."""
import os
import time

import numpy as np
import pytest

from course import contention


def test_tail_summary_percentiles_and_miss_rate():
    samples = np.array([1e-4] * 98 + [2e-3, 5e-3])
    s = contention.tail_summary(samples, budget_s=1e-3)
    assert s["n"] == 100
    assert s["p50_ms"] == pytest.approx(0.1)
    assert s["p99_ms"] == pytest.approx(np.percentile(samples * 1e3, 99))
    assert s["max_ms"] == pytest.approx(5.0)
    assert s["miss_rate"] == pytest.approx(0.02)


def test_latency_samples_counts_and_stops_in_time():
    ticks = iter(range(10_000))
    samples = contention.latency_samples(lambda: None, count=50, max_seconds=1e9, warmup=2,
                                         clock=lambda: float(next(ticks)))
    assert len(samples) == 50 and np.all(samples == 1.0)
    start = time.perf_counter()
    samples = contention.latency_samples(lambda: time.sleep(0.01), count=10_000, max_seconds=0.1, warmup=0)
    assert len(samples) < 100 and time.perf_counter() - start < 1.0


def test_pinned_restores_the_affinity():
    before = os.sched_getaffinity(0)
    core = {min(before)}
    with contention.pinned(core):
        assert os.sched_getaffinity(0) == core
    assert os.sched_getaffinity(0) == before


@pytest.mark.slow
def test_background_models_start_run_and_always_stop():
    core = {min(os.sched_getaffinity(0))}
    with pytest.raises(RuntimeError, match="boom"):
        with contention.background_models(cores=core, seconds=30) as workers:
            assert len(workers) == 2 and all(w.poll() is None for w in workers)
            assert all(os.sched_getaffinity(w.pid) == core for w in workers)
            raise RuntimeError("boom")
    assert all(w.poll() is not None for w in workers)


@pytest.mark.slow
def test_a_worker_stops_at_its_own_deadline():
    with contention.background_models(workloads=("voice",), seconds=0.5) as workers:
        workers[0].wait(timeout=20)
        assert workers[0].returncode == 0


def test_unknown_workload_is_refused():
    with pytest.raises(ValueError):
        contention._workload("radar")
