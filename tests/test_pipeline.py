"""Pipeline parallelism (course/pipeline.py, taught in 04b_model_parallel section 4): the schedules as lists
of actions against torch's real schedules, and the pipelined step against one device, on real gloo ranks."""

import pytest
import torch
from torch import nn

from course import launch as launcher
from course import pipeline as pp
from course.launch import launch


@pytest.fixture
def fork_server():
    """Ranks forked from one warm Python: these launches are about the pipeline, not the launcher."""
    launcher.set_start_method("fork-server")
    yield
    launcher.set_start_method("torchrun")
    launcher.stop_fork_server()


def test_gpipe_runs_every_forward_then_every_backward():
    assert pp.schedule_gpipe(1, 3, 2) == [("F", 0), ("F", 1), ("B", 0), ("B", 1)]
    assert pp.max_in_flight(pp.schedule_gpipe(0, 4, 8)) == 8
    with pytest.raises(ValueError):
        pp.schedule_gpipe(3, 3, 2)


def test_1f1b_warms_up_then_alternates_and_holds_at_most_stages_minus_stage():
    assert pp.schedule_1f1b(0, 2, 3) == [("F", 0), ("F", 1), ("B", 0), ("F", 2), ("B", 1), ("B", 2)]
    assert pp.schedule_1f1b(1, 2, 3) == [("F", 0), ("B", 0), ("F", 1), ("B", 1), ("F", 2), ("B", 2)]
    for stages in range(1, 7):
        for m in range(stages, 13):
            for stage in range(stages):
                actions = pp.schedule_1f1b(stage, stages, m)
                assert sorted(actions) == sorted(pp.schedule_gpipe(stage, stages, m))  # each F and B once
                assert pp.max_in_flight(actions) == stages - stage
                done = set()
                for kind, i in actions:  # a backward only after its forward
                    assert kind == "F" or ("F", i) in done
                    done.add((kind, i))


@pytest.mark.parametrize("args", [(0, 4, 3), (4, 4, 8), (-1, 2, 2), (0, 0, 1), (0, 1, 0)])
def test_1f1b_refuses_what_torch_refuses(args):
    with pytest.raises(ValueError):
        pp.schedule_1f1b(*args)


def test_max_in_flight_counts_forwards_not_yet_backwarded():
    assert pp.max_in_flight([]) == 0
    assert pp.max_in_flight([("F", 0), ("B", 0), ("F", 1), ("F", 2), ("B", 1), ("B", 2)]) == 2


def test_the_slices_make_the_whole_model():
    slices = pp.pipeline_mlp(4, width=8, layers=4, seed=3)
    assert [len(s) for s in slices] == [4, 2, 2, 3]
    whole, again = nn.Sequential(*slices), nn.Sequential(*pp.pipeline_mlp(2, width=8, layers=4, seed=3))
    x = torch.randn(5, 64)
    assert whole(x).shape == (5, 10)
    assert torch.equal(whole(x), again(x))  # same seed, same weights, however it is cut
    with pytest.raises(ValueError):
        pp.pipeline_mlp(3, layers=4)


@pytest.mark.parametrize("schedule", pp.SCHEDULES)
def test_pipelined_training_equals_one_device_and_runs_the_documented_order(fork_server, schedule):
    ranks = launch(pp.pipeline_check, 2, schedule=schedule, micro_batches=4, steps=3, quiet=True).results
    for r in ranks:
        assert r["grad_diff"] < 1e-6 and r["weight_diff"] < 1e-5
        reference = pp.schedule_gpipe if schedule == "GPipe" else pp.schedule_1f1b
        assert r["order"] == reference(r["stage"], 2, 4)
    losses, single = ranks[1]["losses"], ranks[1]["single_losses"]
    assert ranks[0]["losses"] is None
    assert max(abs(a - b) for a, b in zip(losses, single, strict=True)) < 1e-5


def test_torch_1f1b_on_three_ranks_runs_the_reference_order(fork_server):
    for stage, order in enumerate(launch(pp.record_order, 3, "1F1B", 5, quiet=True).results):
        assert order == pp.schedule_1f1b(stage, 3, 5)


def test_activations_held_follow_the_schedule(fork_server):
    for stage, r in enumerate(launch(pp.activation_peaks, 2, micro_batches=4, batch=32, width=16,
                                     quiet=True).results):
        assert r["GPipe"]["peak_bytes"] == 4 * r["micro_batch_bytes"]
        assert r["1F1B"]["peak_bytes"] == (2 - stage) * r["micro_batch_bytes"]


@pytest.mark.slow
def test_bubble_sweep_times_every_setting(fork_server):
    rows = launch(pp.bubble_sweep, 2, micro_batches=(1, 2), repeats=2, batch=32, width=32, quiet=True).results
    for stage, mine in enumerate(rows):
        assert [(r["schedule"], r["m"]) for r in mine] == [("GPipe", 1), ("GPipe", 2), ("1F1B", 2)]
        for r in mine:
            assert r["stage"] == stage and len(r["step_s"]) == len(r["compute_s"]) == len(r["cpu_s"]) == 2
            assert all(0 < c <= s for c, s in zip(r["compute_s"], r["step_s"], strict=True))
            assert all(0 < c <= w * 1.05 for c, w in zip(r["cpu_s"], r["compute_s"], strict=True))
            assert [(kind, i) for kind, i, _, _ in r["timeline"]] == r["order"]


@pytest.mark.parametrize("files, expected", [
    ({"/proc/self/cgroup": "0::/box", "/sys/fs/cgroup/box/cpu.max": "100000 100000"}, 1),  # v2, 1 CPU
    ({"/proc/self/cgroup": "0::/", "/sys/fs/cgroup/cpu.max": "max 100000"}, None),  # v2, no quota
    ({"/proc/self/cgroup": "4:cpu,cpuacct:/box\n2:memory:/box",
      "/sys/fs/cgroup/cpu,cpuacct/box/cpu.cfs_quota_us": "150000",
      "/sys/fs/cgroup/cpu,cpuacct/box/cpu.cfs_period_us": "100000"}, 2),  # v1, 1.5 CPUs: 2 can run at once
    ({"/proc/self/cgroup": "4:cpu,cpuacct:/", "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1",
      "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000"}, None),  # v1, no quota
])
def test_cpu_budget_reads_the_control_groups_quota(monkeypatch, files, expected):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(pp, "_read", lambda path: files.get(path, ""))
    assert pp.cpu_budget() == (16 if expected is None else expected)


def _traced_pipeline_loss():
    import torch.distributed as dist
    from torch.distributed.pipelining import ScheduleGPipe, SplitPoint, pipeline
    from torch.nn import functional as F

    model = nn.Sequential(*pp.pipeline_mlp(1, width=32, layers=4)[0])  # "4": the third Linear
    x, y = pp.digit_batch(32)
    pipe = pipeline(model, mb_args=(x[:8],), split_spec={"4": SplitPoint.BEGINNING})
    stage = pipe.build_stage(dist.get_rank(), torch.device("cpu"))
    schedule = ScheduleGPipe(stage, 4, loss_fn=F.cross_entropy)
    losses = []
    if dist.get_rank() == 0:
        schedule.step(x)
    else:
        schedule.step(target=y, losses=losses)
    return pipe.num_stages, losses, F.cross_entropy(model(x), y)


@pytest.mark.slow
def test_torchs_tracing_frontend_also_runs_on_gloo(fork_server):
    """The notebook cuts the model by hand; `pipeline` + `SplitPoint` (torch.export tracing) runs too."""
    ranks = launch(_traced_pipeline_loss, 2, quiet=True).results
    stages, losses, whole = ranks[1]
    assert stages == 2 and ranks[0][1] == [] and len(losses) == 4
    assert torch.stack(losses).mean().item() == pytest.approx(whole.item(), abs=1e-5)


def test_max_in_flight_finds_a_peak_after_the_first_backward_and_refuses_unknown_kinds():
    assert pp.max_in_flight([("F", 0), ("B", 0), ("F", 1), ("F", 2), ("B", 1), ("B", 2)]) == 2
    with pytest.raises(ValueError, match="kind 'f'"):
        pp.max_in_flight([("F", 0), ("f", 1), ("B", 0)])
