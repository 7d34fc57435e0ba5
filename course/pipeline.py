"""Pipeline parallelism on real ranks: stages, schedules (GPipe, 1F1B), the measured bubble and activations.

Taught in 04b_model_parallel, section 4. Functions documented "runs on each rank" expect an initialised
process group of one rank per stage: start them with `course.launch.launch`. They build the stages by hand
(`torch.distributed.pipelining.PipelineStage` around one slice of an MLP) and run torch's own schedules
(`ScheduleGPipe`, `Schedule1F1B`); nothing is simulated. The plain functions (`schedule_gpipe`,
`schedule_1f1b`, `max_in_flight`) are the references the notebook checks the learner against.

Sources: GPipe (Huang et al., 2019, Section 2.3) for the fill-drain schedule and its bubble
(p - 1) / (m + p - 1); 1F1B (PipeDream-Flush) as described by Narayanan et al., 2021, "Efficient Large-Scale
Language Model Training on GPU Clusters Using Megatron-LM", Section 2.2.1: the same bubble, but at most p
micro-batches' activations in flight instead of m.
"""

from __future__ import annotations

import copy
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from course.data import NUM_CLASSES, load_digit_splits
from course.models import INPUT_FEATURES

SCHEDULES = ("GPipe", "1F1B")


# ----------------------------------------------------------------- the schedules as lists of actions

def _check(stage: int, stages: int, micro_batches: int) -> None:
    if stages < 1 or micro_batches < 1:
        raise ValueError(f"need at least one stage and one micro-batch, got {stages} and {micro_batches}")
    if not 0 <= stage < stages:
        raise ValueError(f"stage must be in 0..{stages - 1}, got {stage}")


def schedule_gpipe(stage: int, stages: int, micro_batches: int) -> list[tuple[str, int]]:
    """The order of one stage's work under GPipe: every forward ("F", i), then every backward ("B", i).

    The same for every stage; `stage` and `stages` are checked only. Raises ValueError for a stage outside
    0..stages-1, or fewer than one stage or micro-batch. Huang et al. 2019, Section 2.3.
    """
    _check(stage, stages, micro_batches)
    return [("F", i) for i in range(micro_batches)] + [("B", i) for i in range(micro_batches)]


def schedule_1f1b(stage: int, stages: int, micro_batches: int) -> list[tuple[str, int]]:
    """The order of one stage's work under 1F1B (PipeDream-Flush): a list of ("F", i) and ("B", i).

    Warm-up: stages - 1 - stage forwards; steady state: one forward then one backward while forwards remain;
    cool-down: the remaining backwards. Stage s thus holds at most stages - s micro-batches' activations.
    This is the order torch's `Schedule1F1B` runs (recorded by `record_order`), which refuses fewer
    micro-batches than stages: so does this (ValueError), as for a stage outside 0..stages-1.
    Narayanan et al. 2021, Section 2.2.1 and Figure 4 (top).
    """
    _check(stage, stages, micro_batches)
    if micro_batches < stages:
        raise ValueError(f"1F1B needs micro_batches >= stages, got {micro_batches} < {stages}")
    warmup = stages - 1 - stage
    actions = [("F", i) for i in range(warmup)]
    for i in range(micro_batches - warmup):
        actions += [("F", warmup + i), ("B", i)]
    actions += [("B", i) for i in range(micro_batches - warmup, micro_batches)]
    return actions


def max_in_flight(actions: list[tuple[str, int]]) -> int:
    """The most micro-batches whose forward has run and whose backward has not, at any point of `actions`:
    how many micro-batches' activations the stage holds at its peak. Raises ValueError for an action kind
    other than "F" (forward) or "B" (backward)."""
    held = peak = 0
    for kind, _ in actions:
        if kind not in ("F", "B"):
            raise ValueError(f'an action is ("F", i) or ("B", i); got kind {kind!r}')
        held += 1 if kind == "F" else -1
        peak = max(peak, held)
    return peak


def cpu_budget() -> int:
    """Processors this process may keep busy at once: its cores (affinity), capped by its control group's CPU
    quota (cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``; Binder caps a session at 1 CPU this way while
    the machine shows many cores). With fewer than p processors, p pipeline stages cannot all compute at once,
    and each stage idles at least 1 - processors / p of the time, whatever the schedule."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    for line in _read("/proc/self/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2
            quota, _, period = _read(f"/sys/fs/cgroup{path}/cpu.max").partition(" ")
        elif "cpu" in controllers.split(","):
            folder = f"/sys/fs/cgroup/{controllers}{path}"
            quota, period = _read(f"{folder}/cpu.cfs_quota_us"), _read(f"{folder}/cpu.cfs_period_us")
        else:
            continue
        if quota.strip().lstrip("-").isdigit() and int(quota) > 0 and period.strip().isdigit():
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    return cores


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


# ----------------------------------------------------------------- the model and its stages

def pipeline_mlp(stages: int, width: int = 256, layers: int = 4, seed: int = 0) -> list[nn.Sequential]:
    """An MLP for the 8x8 digits cut into `stages` consecutive slices (one nn.Sequential each).

    64 pixels -> Linear(64, width), ReLU -> `layers` x [Linear(width, width), ReLU] -> Linear(width, 10).
    The `layers` hidden blocks are shared out evenly (ValueError if `stages` does not divide them); the first
    slice also gets the input layer, the last the output layer. The weights depend only on `seed`, so every
    rank can build the same model and keep its own slice. nn.Sequential(*slices) is the whole model.
    """
    if stages < 1 or layers % stages:
        raise ValueError(f"{layers} hidden layers cannot be shared evenly by {stages} stages")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        first = [nn.Linear(INPUT_FEATURES, width), nn.ReLU()]
        hidden = [[nn.Linear(width, width), nn.ReLU()] for _ in range(layers)]
        last = [nn.Linear(width, NUM_CLASSES)]
    per = layers // stages
    slices = []
    for s in range(stages):
        modules = (first if s == 0 else []) + [m for block in hidden[s * per:(s + 1) * per] for m in block]
        slices.append(nn.Sequential(*modules, *(last if s == stages - 1 else [])))
    return slices


def digit_batch(size: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`size` training digits from `offset` on, wrapping: x of shape (size, 64), labels y of shape (size,)."""
    train = load_digit_splits().train
    index = (torch.arange(size) + offset) % len(train.y)
    return train.x[index], train.y[index]


# ----------------------------------------------------------------- instruments on a stage

class StageMeter:
    """Wraps a `PipelineStage`'s forward_one_chunk and backward_one_chunk (the compute the schedule runs) to
    record their order, their start and end times (`time.perf_counter`, one clock for every process of
    the machine, so the ranks' timelines line up), the processor time they used (`time.thread_time`: a
    rank that waits for a busy processor inside a call does not count the wait), and the bytes of
    activations autograd saves for backward.

    Activations are counted with `torch.autograd.graph.saved_tensors_hooks`: each tensor saved during a
    forward (parameters left out, each tensor once however often it is saved) is counted from then until
    autograd releases it after that micro-batch's backward. `peak_bytes` is the most held at once.
    """

    def __init__(self, stage, count_memory: bool = False):
        self.stage = stage
        self.count_memory = count_memory
        self.params = {p.untyped_storage().data_ptr() for p in stage.submod.parameters()}
        self.reset()
        forward, backward = stage.forward_one_chunk, stage.backward_one_chunk

        def timed_forward(chunk, *args, **kwargs):
            start, cpu = time.perf_counter(), time.thread_time()
            if self.count_memory:
                with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
                    out = forward(chunk, *args, **kwargs)
            else:
                out = forward(chunk, *args, **kwargs)
            self._record("F", chunk, start, cpu)
            return out

        def timed_backward(chunk, *args, **kwargs):
            start, cpu = time.perf_counter(), time.thread_time()
            out = backward(chunk, *args, **kwargs)
            self._record("B", chunk, start, cpu)
            return out

        stage.forward_one_chunk, stage.backward_one_chunk = timed_forward, timed_backward

    def reset(self) -> None:
        self.order: list[tuple[str, int]] = []
        self.events: list[tuple[str, int, float, float]] = []  # (kind, micro-batch, start s, end s)
        self.compute_s = 0.0  # wall time inside forward and backward calls
        self.cpu_s = 0.0  # processor time of this thread inside them (autograd runs a CPU backward here too)
        self.held: dict[tuple, list[int]] = {}  # (address, bytes) -> [bytes, number of saves alive]
        self.held_bytes = self.peak_bytes = 0

    def _record(self, kind: str, chunk: int, start: float, cpu: float) -> None:
        end = time.perf_counter()
        self.cpu_s += time.thread_time() - cpu
        self.order.append((kind, chunk))
        self.events.append((kind, chunk, start, end))
        self.compute_s += end - start

    def _pack(self, tensor: torch.Tensor):
        if tensor.untyped_storage().data_ptr() in self.params:
            return tensor
        size = tensor.numel() * tensor.element_size()  # a micro-batch is a view of the batch: count the view
        key = (tensor.data_ptr(), size)
        entry = self.held.setdefault(key, [size, 0])
        if entry[1] == 0:
            self.held_bytes += entry[0]
            self.peak_bytes = max(self.peak_bytes, self.held_bytes)
        entry[1] += 1
        return _Saved(tensor, key, self)

    def _release(self, key: tuple) -> None:
        entry = self.held[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.held_bytes -= entry[0]
            del self.held[key]

    @staticmethod
    def _unpack(saved):
        return saved.tensor if isinstance(saved, _Saved) else saved


class _Saved:
    """A tensor autograd saved for backward; tells its meter when autograd lets it go."""

    __slots__ = ("tensor", "key", "meter")

    def __init__(self, tensor, key, meter):
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self):
        self.meter._release(self.key)


def build_stage(stages: int, width: int, layers: int, seed: int = 0, whole: bool = True):
    """Runs on each rank: (this rank's slice of `pipeline_mlp`, its PipelineStage, a copy of the whole model
    as one device would hold it, or None without `whole`)."""
    from torch.distributed.pipelining import PipelineStage

    rank = dist.get_rank()
    slices = pipeline_mlp(stages, width, layers, seed)
    whole = copy.deepcopy(nn.Sequential(*slices)) if whole else None  # the single-device model, same weights
    module = slices[rank]
    stage = PipelineStage(module, rank, stages, torch.device("cpu"))
    return module, stage, whole


def make_schedule(name: str, stage, micro_batches: int):
    """torch's schedule `name` ("GPipe" or "1F1B") for `stage`, mean cross-entropy per micro-batch."""
    from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe

    kinds = {"GPipe": ScheduleGPipe, "1F1B": Schedule1F1B}
    if name not in kinds:
        raise ValueError(f"unknown schedule {name!r}; expected one of {SCHEDULES}")
    return kinds[name](stage, n_microbatches=micro_batches, loss_fn=F.cross_entropy)


def _step(schedule, stage_index: int, stages: int, x: torch.Tensor, y: torch.Tensor) -> float | None:
    """One pipelined forward + backward of the batch (x, y); the mean loss on the last stage, else None.

    The batch must split into equal micro-batches: torch's stages size their receive buffers from the first
    one, and a shorter last micro-batch fails on the last stage ("Expected input batch_size (5) to match
    target batch_size (4)"). ValueError here says so first.
    """
    if len(x) % schedule._n_microbatches:
        raise ValueError(f"a batch of {len(x)} does not split into {schedule._n_microbatches} equal parts")
    losses: list = []
    if stage_index == 0:
        schedule.step(x, target=y if stages == 1 else None, losses=losses if stages == 1 else None)
    elif stage_index == stages - 1:
        schedule.step(target=y, losses=losses)
    else:
        schedule.step()
    return torch.stack(losses).mean().item() if losses else None


# ----------------------------------------------------------------- what runs on each rank

def pipeline_check(schedule: str = "1F1B", micro_batches: int = 4, steps: int = 10, batch: int = 64,
                   width: int = 128, layers: int = 4, lr: float = 1e-2) -> dict:
    """Runs on each rank (one rank per stage): train `steps` Adam steps with torch's pipelined `schedule`,
    each stage stepping its own slice, and the same steps on this rank's single-device copy of the whole
    model, from the same weights on the same batches.

    Returns {"stage", "losses" (pipelined, on the last stage; None elsewhere), "single_losses", "grad_diff"
    (largest |difference| between this stage's gradients and the single-device ones, first step),
    "weight_diff" (the same for the weights after the last step), "order" (the ("F", i) / ("B", i) this
    stage ran in the first step)}.
    """
    rank, stages = dist.get_rank(), dist.get_world_size()
    module, stage, whole = build_stage(stages, width, layers)
    meter = StageMeter(stage)
    pipe = make_schedule(schedule, stage, micro_batches)
    mine = list(zip(module.parameters(), whole[rank].parameters(), strict=True))  # whole[rank]: this slice
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    reference = torch.optim.Adam(whole.parameters(), lr=lr)
    losses, single, grad_diff, order = [], [], None, None
    for step in range(steps):
        x, y = digit_batch(batch, offset=step * batch)
        optimizer.zero_grad()
        meter.reset()
        losses.append(_step(pipe, rank, stages, x, y))
        reference.zero_grad()
        loss = F.cross_entropy(whole(x), y)
        loss.backward()
        single.append(loss.item())
        if step == 0:
            order = list(meter.order)
            grad_diff = max((a.grad - b.grad).abs().max().item() for a, b in mine)
        optimizer.step()
        reference.step()
    weight_diff = max((a - b).abs().max().item() for a, b in mine)
    return {"stage": rank, "losses": losses if rank == stages - 1 else None, "single_losses": single,
            "grad_diff": grad_diff, "weight_diff": weight_diff, "order": order}


def bubble_sweep(micro_batches=(1, 2, 4, 8), schedules=SCHEDULES, repeats: int = 3, batch: int = 256,
                 width: int = 1024, layers: int = 4) -> list[dict]:
    """Runs on each rank (one rank per stage): for each schedule and micro-batch count, one untimed warm-up
    step, then `repeats` timed steps of the same global `batch`; one group, one model, for the whole sweep.

    The warm-up step also counts the activations saved for backward (`StageMeter`). For each timed step:
    `step_s` (wall time from a barrier before schedule.step to a barrier after it: the whole pipeline's step,
    the same on every stage; a stage's own step() returns as soon as its own work is done), `compute_s` (wall
    time inside the stage's forward and backward calls) and `cpu_s` (processor time used inside them);
    idle = 1 - cpu / step is the share of the step the stage did not compute: waiting for its neighbours,
    sending to them, and (on a shared machine) waiting for a processor. 1F1B with fewer micro-batches than
    stages is skipped (torch refuses it). Returns one dict per setting: schedule, m, stage, step_s,
    compute_s, cpu_s (lists), peak_bytes, order, and the last timed step's `timeline` [(kind, micro-batch,
    start, end)] in seconds from `start` (that step's start on this rank, `time.perf_counter`).
    """
    rank, stages = dist.get_rank(), dist.get_world_size()
    _, stage, _ = build_stage(stages, width, layers, whole=False)
    meter = StageMeter(stage)
    x, y = digit_batch(batch)
    rows = []
    for name in schedules:
        for m in micro_batches:
            if name == "1F1B" and m < stages:
                continue
            pipe = make_schedule(name, stage, m)
            meter.count_memory = True  # the untimed warm-up (shapes, buffers, first calls) counts activations
            meter.reset()
            _step(pipe, rank, stages, x, y)
            meter.count_memory = False
            peak_bytes, order = meter.peak_bytes, list(meter.order)
            step_s, compute_s, cpu_s = [], [], []
            for _ in range(repeats):
                dist.barrier()
                meter.reset()
                start = time.perf_counter()
                _step(pipe, rank, stages, x, y)
                dist.barrier()  # the step ends when the last stage is done, for every stage
                step_s.append(time.perf_counter() - start)
                compute_s.append(meter.compute_s)
                cpu_s.append(meter.cpu_s)
            timeline = [(kind, i, t0 - start, t1 - start) for kind, i, t0, t1 in meter.events]  # last step
            stage.submod.zero_grad()
            rows.append({"schedule": name, "m": m, "stage": rank, "step_s": step_s, "compute_s": compute_s,
                         "cpu_s": cpu_s, "peak_bytes": peak_bytes, "order": order, "start": start,
                         "timeline": timeline})
    return rows


def record_order(schedule: str = "1F1B", micro_batches: int = 4, width: int = 16) -> list:
    """Runs on each rank (one rank per stage): the ("F", i) / ("B", i) this stage runs in one step of torch's
    `schedule`, on a tiny model and 2 samples per micro-batch (cheap enough for a test)."""
    rank, stages = dist.get_rank(), dist.get_world_size()
    _, stage, _ = build_stage(stages, width, stages, whole=False)
    meter = StageMeter(stage)
    x, y = digit_batch(2 * micro_batches)
    _step(make_schedule(schedule, stage, micro_batches), rank, stages, x, y)
    return meter.order


def pipeline_demo(micro_batches=(1, 2, 4, 8), repeats: int = 3, check_micro_batches: int = 4) -> dict:
    """Runs on each rank: the notebook's whole demonstration in one group (one launch): `pipeline_check`
    for both schedules, then `bubble_sweep`. Returns {"checks": {schedule: pipeline_check's dict},
    "sweep": bubble_sweep's rows}."""
    checks = {name: pipeline_check(name, micro_batches=check_micro_batches) for name in SCHEDULES}
    return {"checks": checks, "sweep": bubble_sweep(micro_batches, repeats=repeats)}


def activation_peaks(micro_batches: int = 8, batch: int = 256, width: int = 256, layers: int = 4) -> dict:
    """Runs on each rank (one rank per stage): one step of each schedule with `micro_batches` micro-batches,
    counting the activations this stage holds for backward (`StageMeter`). Returns {schedule: {"peak_bytes",
    "order"}, "micro_batch_bytes": the peak of one micro-batch alone (a GPipe step with m = 1, batch / m
    samples)}."""
    rank, stages = dist.get_rank(), dist.get_world_size()
    _, stage, _ = build_stage(stages, width, layers, whole=False)
    meter = StageMeter(stage, count_memory=True)
    x, y = digit_batch(batch)
    out = {}
    settings = [(name, micro_batches, batch) for name in SCHEDULES] + [("one", 1, batch // micro_batches)]
    for name, m, rows in settings:
        meter.reset()
        _step(make_schedule("GPipe" if name == "one" else name, stage, m), rank, stages, x[:rows], y[:rows])
        out[name] = {"peak_bytes": meter.peak_bytes, "order": list(meter.order)}
    out["micro_batch_bytes"] = out.pop("one")["peak_bytes"]
    return out

