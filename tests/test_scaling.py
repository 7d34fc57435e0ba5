"""course/scaling.py: speed-up and efficiency, the cluster predictions, and (on real gloo ranks) the byte
counts of the compression hooks, the hook check and the scaling measurement."""

import math

import pytest
import torch

from course import scaling
from course import distributed as D
from course.distributed import ring_time
from course.launch import launch


def test_strong_scaling_efficiency_is_speed_up_over_the_growth_in_ranks():
    table = scaling.scaling_efficiency({1: 0.010, 2: 0.006, 4: 0.004}, "strong")
    assert table[1] == (1.0, 1.0)
    assert table[2] == pytest.approx((10 / 6, 10 / 12))
    assert table[4] == pytest.approx((2.5, 0.625))


def test_weak_scaling_efficiency_is_the_ratio_of_step_times():
    table = scaling.scaling_efficiency({1: 0.010, 2: 0.0125, 4: 0.020}, "weak")
    assert table[2] == pytest.approx((1.6, 0.8))
    assert table[4] == pytest.approx((2.0, 0.5))


def test_the_baseline_is_the_smallest_world_whatever_the_order():
    table = scaling.scaling_efficiency({64: 0.5, 8: 2.0, 16: 1.25}, "strong")
    assert table[8] == (1.0, 1.0)
    assert table[16] == pytest.approx((1.6, 0.8))
    assert table[64] == pytest.approx((4.0, 0.5))


@pytest.mark.parametrize("times, mode", [({1: 1.0}, "linear"), ({}, "strong"), ({1: 1.0, 2: 0.0}, "weak")])
def test_scaling_efficiency_rejects_bad_input(times, mode):
    with pytest.raises(ValueError):
        scaling.scaling_efficiency(times, mode)


def test_link_speeds_are_per_direction():
    assert scaling.NVLINK4_BYTES_PER_S == 450e9  # 900 GB/s both directions together
    assert scaling.IB_NDR_BYTES_PER_S == 50e9  # 400 Gb/s


def test_hierarchical_all_reduce_is_the_node_ring_plus_the_ring_of_shards_across_nodes():
    size = 14e9
    intra, inter = (2e-6, 450e9), (1e-5, 50e9)
    one_node = scaling.hierarchical_all_reduce_time(8, size, intra=intra, inter=inter)
    assert one_node == ring_time(8, size, *intra)
    expected = ring_time(8, size, *intra) + ring_time(16, size / 8, *inter)
    sixteen_nodes = scaling.hierarchical_all_reduce_time(128, size, intra=intra, inter=inter)
    assert sixteen_nodes == pytest.approx(expected)
    # across nodes the flat ring runs at the network's speed for every byte: slower than the hierarchy
    assert scaling.flat_ring_time(128, size) > scaling.hierarchical_all_reduce_time(128, size)
    with pytest.raises(ValueError):
        scaling.hierarchical_all_reduce_time(0, size)


def test_predicted_scaling_strong_and_weak():
    strong = scaling.predicted_scaling([8, 1024], params=7e9, tokens_per_step=2**22)
    assert strong[0]["compute_s"] == pytest.approx(6 * 7e9 * 2**22 / 8 / (0.4 * 989e12))
    assert strong[1]["compute_s"] == pytest.approx(strong[0]["compute_s"] / 128)
    assert strong[1]["comm_s"] == pytest.approx(scaling.hierarchical_all_reduce_time(1024, 14e9))
    assert strong[1]["efficiency_serial"] < strong[0]["efficiency_serial"] <= 1
    weak = scaling.predicted_scaling([8, 1024], params=7e9, tokens_per_step=None, tokens_per_gpu=2**15)
    assert weak[0]["compute_s"] == weak[1]["compute_s"]
    one = scaling.predicted_scaling([1], tokens_per_step=2**22)[0]
    assert one["comm_s"] == 0 and one["efficiency_overlap"] == 1
    with pytest.raises(ValueError):
        scaling.predicted_scaling([8], tokens_per_step=2**22, tokens_per_gpu=2**15)


def test_every_precision_setting_names_a_known_hook():
    assert set(hook for _, hook in scaling.PRECISIONS.values()) <= {"allreduce", "bf16", "fp16", "powersgd"}
    assert scaling.bf16_wire_hook.__name__ != "bf16_compress_hook"  # DDP refuses that name on a CPU build


def _wire_bytes():
    return {name: scaling.precision_run(name, epochs=1, batch_per_rank=128, powersgd_start=2)
            for name in scaling.PRECISIONS}


@pytest.mark.slow
def test_compression_hooks_send_what_they_say_on_gloo():
    runs = launch(_wire_bytes, 2, quiet=True).results[0]
    fp32 = runs["fp32"]["bytes_per_step"]
    params = sum(p.numel() for p in scaling.digit_mlp((256, 256), seed=0).parameters())
    assert fp32 == 4 * params
    assert runs["bf16 autocast"]["bytes_per_step"] == fp32
    assert runs["bf16 autocast"]["dtypes"]["activations"] == "bfloat16"
    assert runs["bf16 autocast"]["dtypes"]["gradients"] == "float32"  # the master weights' gradients
    assert runs["bf16 autocast + bf16 grads on the wire"]["bytes_per_step"] == fp32 / 2
    assert runs["bf16 autocast + bf16 grads on the wire"]["dtypes"]["wire"] == "bfloat16"
    assert runs["bf16 autocast + fp16 grads on the wire"]["dtypes"]["wire"] == "float16"
    assert runs["bf16 autocast + PowerSGD rank 2"]["bytes_per_step"] < fp32 / 10
    for run in runs.values():
        assert 0.1 < run["accuracy"] <= 1 and math.isfinite(run["test_loss"])


def _reduction_and_scaling():
    return {"error": scaling.reduction_error(numel=1000),
            "point": scaling.scaling_point(global_batch=64, batch_per_rank=16, pairs=4, hidden=(32,))}


@pytest.mark.slow
def test_reduction_error_and_a_scaling_point_on_two_ranks():
    result = launch(_reduction_and_scaling, 2, quiet=True).results[0]
    assert result["error"][1e-3]["float16"] < result["error"][1e-3]["bfloat16"] < 1e-2
    assert result["error"][1e-8]["float16"] == pytest.approx(1.0)  # below fp16's range: all zeros
    point = result["point"]
    assert point["strong"]["batch_per_rank"] == 32 and point["weak"]["batch_per_rank"] == 16
    for r in point.values():
        assert r["step_ms"] > 0 and r["compute_ms"] > 0 and r["step_q1_ms"] <= r["step_ms"] <= r["step_q3_ms"]
        assert r["grad_bytes"] == 4 * (64 * 32 + 32 + 32 * 10 + 10)


def test_count_all_reduce_outside_a_group_counts_nothing_and_restores_all_reduce():
    import torch.distributed as dist

    before = dist.all_reduce
    for every_name in (True, False):
        with D.count_all_reduce(every_name=every_name) as seen:
            assert dist.all_reduce is not before  # counted on every thread (DDP's hook callbacks)
            torch.ones(3).sum()
        assert dist.all_reduce is before
        assert seen == {"calls": 0, "bytes": 0, "dtypes": set(), "sizes": []}
    assert torch.finfo(torch.bfloat16).smallest_normal == torch.finfo(torch.float32).smallest_normal


def _bf16_hook(process_group, bucket):
    import torch.distributed as dist

    buffer = bucket.buffer()
    compressed = buffer.div(dist.get_world_size()).to(torch.bfloat16)
    future = dist.all_reduce(compressed, async_op=True).get_future()
    return future.then(lambda fut: buffer.copy_(fut.value()[0]))


def _no_future_hook(process_group, bucket):
    return None


@pytest.mark.slow
def test_hook_check_counts_a_bf16_hook_and_names_a_hook_that_returns_no_future():
    from course.launch import WorkerError

    ranks = launch(scaling.hook_check, 2, _bf16_hook, quiet=True).results
    for r in ranks:
        assert r["dtypes"] == ["bfloat16"] and r["bytes"] == r["fp32_bytes"] // 2 and r["calls"] == 1
        for got, want in zip(r["grads"], r["expected"], strict=True):
            assert got.dtype == torch.float32
            assert ((got - want).norm() / want.norm()).item() < 2e-2
    with pytest.raises(WorkerError, match="must return a torch.futures.Future"):
        launch(scaling.hook_check, 2, _no_future_hook, quiet=True)


def test_scaling_efficiency_and_predicted_scaling_refuse_a_world_below_one():
    with pytest.raises(ValueError, match="at least 1"):
        scaling.scaling_efficiency({0: 1.0, 2: 0.6}, "strong")
    with pytest.raises(ValueError, match="at least 1"):
        scaling.scaling_efficiency({-2: 1.0, 2: 0.6}, "weak")
    with pytest.raises(ValueError, match="at least 1"):
        scaling.predicted_scaling([0, 8])


def test_all_reduce_times_refuse_negative_sizes():
    for fn in (scaling.flat_ring_time, scaling.hierarchical_all_reduce_time):
        with pytest.raises(ValueError, match="negative"):
            fn(16, -1.0)


def test_the_link_models_take_the_learners_ring_model():
    calls = []

    def ring(n, size, latency, bandwidth):
        calls.append(n)
        return ring_time(n, size, latency, bandwidth)

    assert scaling.hierarchical_all_reduce_time(64, 1e9, ring=ring) == scaling.hierarchical_all_reduce_time(64, 1e9)
    assert scaling.flat_ring_time(64, 1e9, ring=ring) == scaling.flat_ring_time(64, 1e9)
    assert calls == [8, 8, 64]
