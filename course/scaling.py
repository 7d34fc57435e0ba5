"""Scaling a data-parallel job, measured and predicted; mixed precision and compressed gradients under DDP.

Taught in 04_distributed (part 1, "Does it scale?" and "Fewer bytes on the wire"). Functions documented
"runs on each rank" expect an initialised process group: start them with `course.launch.launch`. The
others are plain functions: the reference for the scaling exercise and the cost model's predictions.

Scaling vocabulary (as in HPC, e.g. Cornell Virtual Workshop, "Scaling"): **strong scaling** keeps the
total problem (here the global batch) fixed as ranks are added; **weak scaling** keeps the work per rank
(the batch per rank) fixed, so the total grows with the ranks.
"""

from __future__ import annotations

import itertools
import math
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from course.data import load_digit_splits
from course.distributed import count_all_reduce, ring_time, sharded_loader, timed_step
from course.models import digit_mlp

MODES = ("strong", "weak")

# Published link speeds, per GPU and per direction (see tests/claims/04_distributed.md):
# NVLink 4 on an H100 SXM: 900 GB/s bidirectional in all (NVIDIA Hopper architecture page), 450 GB/s each way;
# InfiniBand NDR: 400 Gb/s per port = 50 GB/s each way; a DGX H100 has one single-port ConnectX-7 per GPU
# (NVIDIA DGX BasePOD reference architecture, "Core Components").
NVLINK4_BYTES_PER_S = 900e9 / 2
IB_NDR_BYTES_PER_S = 400e9 / 8
GPUS_PER_NODE = 8


# ----------------------------------------------------------------- reading a scaling run

def scaling_efficiency(step_seconds: dict[int, float], mode: str) -> dict[int, tuple[float, float]]:
    """{world: (speed-up, efficiency)} from {world: seconds per training step}, against the smallest world w0.

    Strong scaling (same global batch at every size): speed-up = T(w0) / T(w); efficiency = speed-up / (w/w0).
    Weak scaling (same batch per rank, so w / w0 times the samples per step): speed-up = (w / w0) T(w0) / T(w)
    (the scaled speed-up of Gustafson's law); efficiency = T(w0) / T(w). Ideal: speed-up w / w0, efficiency 1.
    Raises ValueError for an unknown mode, an empty dict, a world below 1, or a time that is not positive.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be 'strong' or 'weak', got {mode!r}")
    if not step_seconds or any(t <= 0 for t in step_seconds.values()):
        raise ValueError(f"need positive seconds per step for at least one world size, got {step_seconds!r}")
    if any(world < 1 for world in step_seconds):
        raise ValueError(f"world sizes must be at least 1, got {sorted(step_seconds)}")
    base = min(step_seconds)
    out = {}
    for world, seconds in step_seconds.items():
        grow = world / base
        ratio = step_seconds[base] / seconds
        out[world] = (ratio, ratio / grow) if mode == "strong" else (grow * ratio, ratio)
    return out


# ----------------------------------------------------------------- counting what goes on the wire

# ----------------------------------------------------------------- strong and weak scaling, measured

def _batches(batch_per_rank: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` batches of this rank's shard of the training digits, cycling when the shard runs out."""
    loader, _ = sharded_loader(batch_per_rank)
    full = [b for b in loader if len(b[1]) == batch_per_rank] or list(loader)
    return list(itertools.islice(itertools.cycle(full), count))


def paired_step_times(batch_per_rank: int, pairs: int = 24, hidden=(512, 512), warmup: int = 4) -> dict:
    """Runs on each rank: ms per DDP step with the gradient all-reduce and without it (inside `no_sync`),
    interleaved pair by pair in alternating order (as `course.distributed.step_times`); each pair's
    difference is what communication added. Returns medians and quartiles in ms, bytes per step."""
    model = DDP(digit_mlp(hidden, seed=0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = _batches(batch_per_rank, pairs)

    def one_step(x, y, sync: bool) -> float:
        return timed_step(model, optimizer, x, y, sync)

    for x, y in batches[:warmup]:  # the first steps build DDP's buckets and connections
        one_step(x, y, sync=True)
    synced, local = [], []
    for k, (x, y) in enumerate(batches):
        order = (False, True) if k % 2 else (True, False)
        for sync in order:
            (synced if sync else local).append(one_step(x, y, sync))
    quantiles = torch.tensor([0.25, 0.5, 0.75], dtype=torch.double)
    step_q = torch.quantile(torch.tensor(synced, dtype=torch.double), quantiles)
    added = torch.tensor(synced, dtype=torch.double) - torch.tensor(local, dtype=torch.double)
    comm_q = torch.quantile(added, quantiles)
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"batch_per_rank": batch_per_rank, "pairs": pairs,
            "step_ms": float(step_q[1]), "step_q1_ms": float(step_q[0]), "step_q3_ms": float(step_q[2]),
            "compute_ms": float(torch.tensor(local).median()),
            "comm_ms": float(comm_q[1]), "comm_q1_ms": float(comm_q[0]), "comm_q3_ms": float(comm_q[2]),
            "grad_bytes": grad_bytes}


def scaling_point(global_batch: int = 256, batch_per_rank: int = 64, pairs: int = 24,
                  hidden=(512, 512)) -> dict[str, dict]:
    """Runs on each rank: one world size's strong-scaling point (the global batch split over the ranks)
    and weak-scaling point (`batch_per_rank` on every rank), both measured with `paired_step_times`
    in this one launch. Where the two use the same batch per rank, it is measured once."""
    _, world = dist.get_rank(), dist.get_world_size()
    if global_batch % world:
        raise ValueError(f"the global batch {global_batch} must divide by the {world} ranks")
    strong = paired_step_times(global_batch // world, pairs, hidden)
    same = global_batch // world == batch_per_rank
    weak = strong if same else paired_step_times(batch_per_rank, pairs, hidden)
    return {"strong": strong, "weak": weak}


# ----------------------------------------------------------------- predictions for real clusters

def _check_sizes(n_gpus: int, size: float, gpus_per_node: int) -> None:
    if n_gpus < 1 or gpus_per_node < 1:
        raise ValueError(f"need n_gpus >= 1 and gpus_per_node >= 1, got {n_gpus} and {gpus_per_node}")
    if size < 0:
        raise ValueError(f"size is in bytes and cannot be negative, got {size}")


def hierarchical_all_reduce_time(n_gpus: int, size: float, gpus_per_node: int = GPUS_PER_NODE,
                                 intra=(2e-6, NVLINK4_BYTES_PER_S),
                                 inter=(1e-5, IB_NDR_BYTES_PER_S), ring=ring_time) -> float:
    """Seconds to all-reduce `size` bytes over n_gpus GPUs in nodes of `gpus_per_node`, by the ring's
    alpha-beta model (`ring_time`, Exercise 3) at each level: a ring inside each node over NVLink
    (reduce-scatter and all-gather: every GPU ends with the sum), with, between its two halves, a ring
    across the nodes of each GPU's 1/gpus_per_node shard over that GPU's own network port. `intra` and
    `inter` are (latency in s, bytes per s per direction). With one node, the inner ring alone. `ring` is
    the ring's cost model, `ring(n, size, latency, bandwidth)` (the learner's Exercise 3 in the notebook).

    A prediction, not a measurement: NCCL chooses its own algorithms (rings, trees) and rarely reaches
    the links' peak; the latencies are assumptions of the order of microseconds.
    """
    _check_sizes(n_gpus, size, gpus_per_node)
    local = min(n_gpus, gpus_per_node)
    nodes = math.ceil(n_gpus / gpus_per_node)
    return ring(local, size, *intra) + ring(nodes, size / local, *inter)


def flat_ring_time(n_gpus: int, size: float, gpus_per_node: int = GPUS_PER_NODE,
                   intra=(2e-6, NVLINK4_BYTES_PER_S), inter=(1e-5, IB_NDR_BYTES_PER_S),
                   ring=ring_time) -> float:
    """Seconds for one ring through all n_gpus GPUs: as soon as it leaves a node, every step waits for
    the slowest link, the network port (with one node, NVLink). ValueError and `ring` as the hierarchical
    time."""
    _check_sizes(n_gpus, size, gpus_per_node)
    latency, bandwidth = intra if n_gpus <= gpus_per_node else inter
    return ring(n_gpus, size, latency, bandwidth)


def predicted_scaling(n_gpus: list[int], params: float = 7e9, grad_bytes_per_param: int = 2,
                      tokens_per_step: float | None = 2**22, tokens_per_gpu: float | None = None,
                      sustained_flops: float = 0.4 * 989e12,
                      all_reduce=hierarchical_all_reduce_time) -> list[dict]:
    """Predicted data-parallel step of a `params`-parameter transformer on each GPU count: compute
    = 6 params tokens / sustained FLOP/s per GPU (the 6N FLOPs per token of forward + backward, Kaplan
    et al. 2020), communication = `all_reduce` of the gradients; with no overlap (they add) and with
    perfect overlap (the larger one). Strong scaling: give `tokens_per_step` (the global batch);
    weak scaling: give `tokens_per_gpu` instead. Efficiencies are against compute alone (no communication)."""
    if (tokens_per_step is None) == (tokens_per_gpu is None):
        raise ValueError("give exactly one of tokens_per_step (strong scaling) or tokens_per_gpu (weak)")
    if any(n < 1 for n in n_gpus):
        raise ValueError(f"GPU counts must be at least 1, got {list(n_gpus)}")
    rows = []
    for n in n_gpus:
        tokens = tokens_per_gpu if tokens_per_gpu is not None else tokens_per_step / n
        compute = 6 * params * tokens / sustained_flops
        comm = all_reduce(n, params * grad_bytes_per_param) if n > 1 else 0.0
        rows.append({"gpus": n, "compute_s": compute, "comm_s": comm, "serial_s": compute + comm,
                     "overlap_s": max(compute, comm), "efficiency_serial": compute / (compute + comm),
                     "efficiency_overlap": compute / max(compute, comm)})
    return rows


# ----------------------------------------------------------------- mixed precision and compression

def bf16_wire_hook(process_group, bucket):
    """torch's `default_hooks.bf16_compress_hook`, unchanged: divide the bucket by the world size, cast it
    to bfloat16, all-reduce that (half the bytes; the sum is computed in bf16), cast back into the fp32
    bucket. torch 2.13 refuses to register its own on a CPU build (DDP checks the hook's *name* for
    CUDA + NCCL), though gloo all-reduces bfloat16 tensors: this copy under another name runs."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    return default_hooks.bf16_compress_hook(process_group, bucket)


PRECISIONS = {  # name -> (bf16 autocast in forward?, communication hook)
    "fp32": (False, "allreduce"),
    "bf16 autocast": (True, "allreduce"),
    "bf16 autocast + bf16 grads on the wire": (True, "bf16"),
    "bf16 autocast + fp16 grads on the wire": (True, "fp16"),
    "bf16 autocast + PowerSGD rank 2": (True, "powersgd"),
}


def _register_hook(model: DDP, hook: str, powersgd_rank: int, powersgd_start: int) -> None:
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

    if hook == "allreduce":  # DDP's own all-reduce, called from Python so that `count_all_reduce` sees it
        model.register_comm_hook(None, default_hooks.allreduce_hook)
    elif hook == "bf16":
        model.register_comm_hook(None, bf16_wire_hook)
    elif hook == "fp16":
        model.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif hook == "powersgd":
        state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=powersgd_rank,
                                            start_powerSGD_iter=powersgd_start, min_compression_rate=2)
        model.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    else:
        raise ValueError(f"unknown hook {hook!r}")


def precision_run(name: str, seed: int = 0, epochs: int = 3, batch_per_rank: int = 32, lr: float = 0.2,
                  hidden=(256, 256), powersgd_rank: int = 2, powersgd_start: int = 10) -> dict:
    """Runs on each rank: DDP training of the digit MLP under precision setting `name` (a key of PRECISIONS),
    from `seed` (weights and data order). The weights and the optimizer stay fp32 (the master copy); with
    autocast the forward's matmuls run in bf16. Returns the test accuracy, the median bytes all-reduced
    per step and in all, and the dtypes seen."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision setting {name!r}; one of {list(PRECISIONS)}")
    autocast, hook = PRECISIONS[name]
    loader, sampler = sharded_loader(batch_per_rank, seed=seed)
    model = DDP(digit_mlp(hidden, seed=seed))
    _register_hook(model, hook, powersgd_rank, powersgd_start)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    per_step, dtypes = [], {}
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            optimizer.zero_grad()
            with count_all_reduce(every_name=False) as wire:  # the course's hooks call dist.all_reduce
                with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext():
                    logits = model(x)
                F.cross_entropy(logits.float(), y).backward()
            optimizer.step()
            per_step.append(wire["bytes"])
            if not dtypes:
                dtypes = {"weights": str(next(model.parameters()).dtype).replace("torch.", ""),
                          "activations": str(logits.dtype).replace("torch.", ""),
                          "gradients": str(next(model.parameters()).grad.dtype).replace("torch.", "")}
            seen = set(dtypes.get("wire", "").split(", ")) - {""}
            dtypes["wire"] = ", ".join(sorted(wire["dtypes"] | seen))
    test = load_digit_splits().test
    with torch.no_grad():
        logits = model.module(test.x)
        accuracy = (logits.argmax(1) == test.y).float().mean().item()
        test_loss = F.cross_entropy(logits, test.y).item()
    return {"name": name, "seed": seed, "accuracy": accuracy, "test_loss": test_loss, "steps": len(per_step),
            "bytes_per_step": float(torch.tensor(per_step, dtype=torch.double).median()),
            "bytes_total": sum(per_step), "dtypes": dtypes}


def reduction_error(numel: int = 100_000, scales=(1e-3, 1e-8)) -> dict[float, dict[str, float]]:
    """Runs on each rank: the relative error (norm of the difference / norm) of averaging a gradient-like
    tensor (normal, times `scale`, different on each rank) over the ranks in bf16 or fp16, as the
    compression hooks do (divide, cast, sum in that dtype, cast back), against fp32. {scale: {dtype: error}}.
    fp16 has 10 mantissa bits but a narrow range (below about 6e-8 it rounds to zero); bf16 has 7 bits and
    fp32's range."""
    rank, world = dist.get_rank(), dist.get_world_size()
    out = {}
    for scale in scales:
        grad = torch.randn(numel, generator=torch.Generator().manual_seed(rank)) * scale
        exact = grad / world
        dist.all_reduce(exact)
        out[scale] = {}
        for dtype in (torch.bfloat16, torch.float16):
            wire = (grad / world).to(dtype)
            dist.all_reduce(wire)
            error = (wire.float() - exact).norm() / exact.norm()
            out[scale][str(dtype).replace("torch.", "")] = error.item()
    return out


def precision_table(seeds=(0, 1, 2), epochs: int = 3, names=tuple(PRECISIONS)) -> dict:
    """Runs on each rank: `precision_run` for every setting and seed, and `reduction_error` (one launch
    for all of them). {"runs": [...], "reduction_error": {...}}."""
    return {"runs": [precision_run(name, seed=seed, epochs=epochs) for name in names for seed in seeds],
            "reduction_error": reduction_error()}


def hook_check(hook, hidden=(32,), global_batch: int = 48, bucket_cap_mb: float = 25.0) -> dict:
    """Runs on each rank: one backward pass of a DDP digit MLP with the communication hook `hook` registered
    (the global batch split evenly over the ranks). Returns what the hook handed to `dist.all_reduce` (calls,
    bytes, dtypes), the gradients it left in `.grad`, and the whole batch's fp32 gradients computed by this
    process alone: the average DDP must produce, all of the second of two identical steps (from the second
    step on, a small `bucket_cap_mb` makes several buckets)."""
    from course.distributed import global_batches

    rank, world = dist.get_rank(), dist.get_world_size()
    if global_batch % world:
        raise ValueError(f"the global batch {global_batch} must divide by the {world} ranks")
    (x, y), = global_batches(1, global_batch)

    def checked(state, bucket):  # DDP crashes on a hook that returns anything but a Future: say so instead
        result = hook(state, bucket)
        if not isinstance(result, torch._C.Future):  # get_future()'s type; torch.futures.Future subclasses it
            raise TypeError("a communication hook must return a torch.futures.Future, e.g. "
                            f"dist.all_reduce(t, async_op=True).get_future(); got {type(result).__name__}")
        return result

    model = DDP(digit_mlp(hidden, seed=0), bucket_cap_mb=bucket_cap_mb)
    model.register_comm_hook(None, checked)
    for step in range(2):  # DDP sizes its buckets by bucket_cap_mb from the second step on
        model.zero_grad()
        with count_all_reduce() as wire:
            F.cross_entropy(model(x.chunk(world)[rank]), y.chunk(world)[rank]).backward()
    single = digit_mlp(hidden, seed=0)
    F.cross_entropy(single(x), y).backward()
    return {"calls": wire["calls"], "bytes": wire["bytes"], "dtypes": sorted(wire["dtypes"]),
            "fp32_bytes": sum(p.numel() * 4 for p in single.parameters()),
            "grads": [p.grad.detach().clone() for p in model.parameters()],
            "expected": [p.grad.detach().clone() for p in single.parameters()]}
