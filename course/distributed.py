"""Distributed data parallelism: collectives, a ring all-reduce, DDP, and the memory of sharding.

Taught in 04_distributed. Functions documented "runs on each rank" expect an initialised
process group: start them with `course.launch.launch`, which runs them under torchrun.
The others are plain functions (the references the notebook checks the learner against).
"""

from __future__ import annotations

import itertools
import threading
import time
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from course.data import load_digit_splits
from course.models import digit_mlp

COLLECTIVES = ("broadcast", "all_reduce", "all_gather", "reduce_scatter")
SAMPLER_SEED = 0

# Mixed-precision Adam, as in the ZeRO paper (Rajbhandari et al., SC 2020): bf16/fp16 weights
# and gradients (2 + 2 bytes per parameter) and an fp32 master copy, momentum and variance (12).
BYTES_PER_PARAM = {"weights": 2, "gradients": 2, "optimizer": 12}
# What each ZeRO stage shards across the ranks (stage 3 is what FSDP's full sharding does).
SHARDED = {0: (), 1: ("optimizer",), 2: ("optimizer", "gradients"),
           3: ("optimizer", "gradients", "weights")}


def rank_and_world() -> tuple[int, int]:
    return dist.get_rank(), dist.get_world_size()


# ----------------------------------------------------------------- collectives

def start_tensor(rank: int, world: int) -> torch.Tensor:
    """What rank `rank` holds before each collective: [0, 1, ..., world-1] + 10 * rank."""
    return torch.arange(world, dtype=torch.float32) + 10 * rank


def predict_collective(name: str, rank: int, world: int) -> torch.Tensor:
    """What `rank` holds after collective `name` (sum, root 0) when every rank starts from
    `start_tensor`. The reference for exercise 1."""
    everyone = torch.stack([start_tensor(r, world) for r in range(world)])
    if name == "broadcast":
        return everyone[0].clone()
    if name == "all_reduce":
        return everyone.sum(dim=0)
    if name == "all_gather":
        return everyone.reshape(-1)
    if name == "reduce_scatter":
        return everyone.sum(dim=0)[rank:rank + 1]
    raise ValueError(f"unknown collective {name!r}; expected one of {COLLECTIVES}")


def run_collectives() -> dict[str, torch.Tensor]:
    """Runs on each rank: every collective of `COLLECTIVES` on `start_tensor`, for real."""
    rank, world = rank_and_world()
    results = {}
    x = start_tensor(rank, world)
    dist.broadcast(x, src=0)
    results["broadcast"] = x
    x = start_tensor(rank, world)
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    results["all_reduce"] = x
    parts = [torch.empty(world) for _ in range(world)]
    dist.all_gather(parts, start_tensor(rank, world))
    results["all_gather"] = torch.cat(parts)
    mine = torch.empty(1)
    dist.reduce_scatter(mine, list(start_tensor(rank, world).chunk(world)), op=dist.ReduceOp.SUM)
    results["reduce_scatter"] = mine
    return results


# ----------------------------------------------------------------- ring all-reduce

def ring_all_reduce(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Runs on each rank: the sum of every rank's `tensor`, by a ring of send/recv, and the bytes
    this rank sent. Reduce-scatter for world-1 steps, then all-gather for world-1 steps."""
    rank, world = rank_and_world()
    result = tensor.detach().clone()
    chunks = result.view(-1).tensor_split(world)
    right, left = (rank + 1) % world, (rank - 1) % world
    sent = 0

    def pass_along(send: int, receive: int, combine) -> None:
        nonlocal sent
        incoming = torch.empty_like(chunks[receive])
        request = dist.isend(chunks[send], right)
        dist.recv(incoming, left)
        request.wait()
        combine(chunks[receive], incoming)
        sent += chunks[send].numel() * chunks[send].element_size()

    for step in range(world - 1):  # after this, rank owns the full sum of chunk (rank + 1) % world
        pass_along((rank - step) % world, (rank - step - 1) % world, torch.Tensor.add_)
    for step in range(world - 1):  # pass each finished chunk once around the ring
        pass_along((rank + 1 - step) % world, (rank - step) % world, torch.Tensor.copy_)
    return result, sent


COLLECTIVE_CALLS = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "reduce", "all_to_all",
                    "all_to_all_single", "all_gather_single", "reduce_scatter_single",
                    "all_gather_into_tensor", "reduce_scatter_tensor", "gather", "scatter", "all_gather_object",
                    "broadcast_object_list")
# What every torch.distributed call becomes, however the learner's code reached it (`dist.all_reduce`, or a name
# imported with `from torch.distributed import all_reduce`): an operator of c10d's (or of the functional
# collectives DTensor uses), which a dispatch mode sees. Named as torch.distributed names the Python calls.
# Barriers carry no data and are left out.
C10D_COLLECTIVES = {
    "allreduce_": "all_reduce", "allreduce_coalesced_": "all_reduce", "broadcast_": "broadcast",
    "allgather_": "all_gather", "allgather_coalesced_": "all_gather", "_allgather_base_": "all_gather_into_tensor",
    "allgather_into_tensor_coalesced_": "all_gather_into_tensor", "reduce_scatter_": "reduce_scatter",
    "_reduce_scatter_base_": "reduce_scatter_tensor", "reduce_scatter_tensor_coalesced_": "reduce_scatter_tensor",
    "reduce_": "reduce", "gather_": "gather", "scatter_": "scatter", "alltoall_": "all_to_all",
    "alltoall_base_": "all_to_all_single",
    # torch.distributed._functional_collectives (DTensor)
    "all_reduce": "all_reduce", "all_reduce_coalesced": "all_reduce", "all_gather_into_tensor": "all_gather_into_tensor",
    "reduce_scatter_tensor": "reduce_scatter_tensor", "all_to_all_single": "all_to_all_single",
}


def _tensors(args) -> list[torch.Tensor]:
    """The tensors among a call's arguments, lists of tensors flattened (c10d passes lists)."""
    found = []
    for arg in args:
        if isinstance(arg, torch.Tensor):
            found.append(arg)
        elif isinstance(arg, (list, tuple)):
            found += [a for a in arg if isinstance(a, torch.Tensor)]
    return found


@contextmanager
def _c10d_calls(on_call, every_name: bool = True):
    """While inside, call `on_call(name, tensors)` for every collective (by its torch.distributed name) and,
    with `every_name`, every point-to-point send ("send") this process runs.

    Two watchers, because neither sees everything: torch.distributed's functions are replaced by counting ones
    (on every thread: DDP's communication hooks run their later all-reduces in callbacks on gloo's threads, as
    PowerSGD does), and, with `every_name`, a dispatch mode on this thread sees c10d's operators however the
    code reached them (``from torch.distributed import all_reduce`` keeps the original function) and every send.
    A call seen by the first is not counted again by the second. The dispatch mode slows every operator on this
    thread (about 2x for a small MLP's training step): course-internal measurements whose calls all go through
    torch.distributed's names pass `every_name=False`."""
    from torch.distributed import distributed_c10d as c10d
    from torch.utils._python_dispatch import TorchDispatchMode

    local = threading.local()

    def wrap(name, original):
        def watched(*args, **kwargs):
            depth = getattr(local, "depth", 0)
            if depth == 0:
                on_call(name, _tensors([*args, *kwargs.values()]))
            local.depth = depth + 1
            try:
                return original(*args, **kwargs)
            finally:
                local.depth = depth
        return watched

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            namespace, _, rest = str(func).partition(".")
            if namespace in ("c10d", "_c10d_functional"):
                op = rest.split(".")[0]
                if op == "send":
                    on_call("send", _tensors(args))
                elif op in C10D_COLLECTIVES and getattr(local, "depth", 0) == 0:
                    on_call(C10D_COLLECTIVES[op], _tensors(args))
            return func(*args, **(kwargs or {}))

    originals = {(module, name): getattr(module, name) for module in (dist, c10d)
                 for name in COLLECTIVE_CALLS if hasattr(module, name)}
    wrappers = {name: wrap(name, getattr(c10d, name)) for _, name in originals}
    try:
        for module, name in originals:
            setattr(module, name, wrappers[name])
        with Watch() if every_name else nullcontext():
            yield
    finally:
        for (module, name), original in originals.items():
            setattr(module, name, original)


@contextmanager
def watch_communication():
    """Runs on each rank: while inside, count the bytes this rank sends point to point (`send`, `isend`,
    `batch_isend_irecv`) and list every collective it calls (by its torch.distributed name, barriers left out),
    in a dict ``{"sent": bytes, "collectives": [names]}`` yielded to the caller. It watches c10d's operators
    on this thread, so a function imported under another name (``from torch.distributed import all_reduce``)
    is seen too."""
    seen = {"sent": 0, "collectives": []}

    def on_call(name, tensors):
        if name == "send":
            seen["sent"] += sum(t.numel() * t.element_size() for t in tensors)
        else:
            seen["collectives"].append(name)

    with _c10d_calls(on_call):
        yield seen


@contextmanager
def count_all_reduce(every_name: bool = True):
    """Runs on each rank: while inside, count every all-reduce this thread runs (what DDP's communication
    hooks call, the tensor-parallel layers of 04b, however the function was imported): calls, bytes of the
    tensors handed over (in all, and per call in `sizes`), and their dtypes, in a dict.

    DDP's built-in all-reduce runs in C++ and is not seen: register `default_hooks.allreduce_hook` (the same
    all-reduce, from Python) to count it. `every_name` False counts only calls through torch.distributed's names
    (all threads, no slowdown); True also calls through imported names on this thread (`_c10d_calls`). The bytes are the tensor handed to the collective; a ring sends 2 (N-1)/N times
    that per rank (Exercise 3)."""
    seen = {"calls": 0, "bytes": 0, "dtypes": set(), "sizes": []}

    def on_call(name, tensors):
        if name != "all_reduce":
            return
        size = sum(t.numel() * t.element_size() for t in tensors)
        seen["calls"] += 1
        seen["bytes"] += size
        seen["sizes"].append(size)
        seen["dtypes"] |= {str(t.dtype).replace("torch.", "") for t in tensors}

    with _c10d_calls(on_call, every_name):
        yield seen


def ring_check(all_reduce_fn, numel: int = 12, dtype=torch.float32, seed: int = 0) -> dict:
    """Runs on each rank: `all_reduce_fn` against dist.all_reduce on a random tensor; also the bytes
    it really sent point to point and the collectives it called (a ring uses none)."""
    rank, _ = rank_and_world()
    generator = torch.Generator().manual_seed(seed + rank)
    x = (torch.randn(numel, generator=generator) * 100).to(dtype)
    expected = x.clone()
    dist.all_reduce(expected)
    before = x.clone()
    with watch_communication() as seen:
        result, sent = all_reduce_fn(x)
    dist.barrier()  # every rank's sends are done before the next test starts
    return {"result": result, "sent": sent, "expected": expected, "bytes": x.numel() * x.element_size(),
            "input_unchanged": torch.equal(before, x), "counted_sent": seen["sent"],
            "collectives": seen["collectives"]}


def bytes_sent_by_busiest(design: str, n: int, size: float) -> float:
    """Bytes the busiest node sends to all-reduce `size` bytes on each of n workers."""
    if n < 1:
        raise ValueError(f"n must be at least 1 worker, got {n}")
    if design == "ring":
        return 2 * (n - 1) / n * size
    if design == "naive":  # every worker sends its whole tensor to every other worker
        return (n - 1) * size
    if design == "server":  # one parameter server sends the averaged tensor to all n workers
        return n * size
    raise ValueError(f"unknown design {design!r}; expected 'ring', 'naive' or 'server'")


def ring_time(n: int, size: float, latency: float, bandwidth: float) -> float:
    """The ring's alpha-beta model: 2(n-1) messages of latency, 2(n-1)/n * size over bandwidth."""
    return 2 * (n - 1) * latency + bytes_sent_by_busiest("ring", n, size) / bandwidth


def time_all_reduce(sizes: list[int], repeats: int = 5) -> list[float]:
    """Runs on each rank: median seconds of dist.all_reduce on float32 tensors of `sizes` bytes."""
    times = []
    for size in sizes:
        x = torch.ones(max(1, size // 4))
        samples = []
        for _ in range(repeats + 1):  # the first call sets up the connection: not timed
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(x)
            samples.append(time.perf_counter() - start)
        times.append(sorted(samples[1:])[repeats // 2])
    return times


# ----------------------------------------------------------------- data parallelism by hand

def average_gradients(model: nn.Module) -> None:
    """Runs on each rank: replace every gradient by its mean over the ranks."""
    _, world = rank_and_world()
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world


def global_batches(steps: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    train = load_digit_splits().train
    if steps * batch > len(train):
        raise ValueError(f"{steps} steps of {batch} need more than the {len(train)} training digits")
    return [(train.x[k * batch:(k + 1) * batch], train.y[k * batch:(k + 1) * batch]) for k in range(steps)]


def manual_data_parallel(average_fn, steps: int = 3, global_batch: int = 48, lr: float = 0.5,
                         hidden=(32,)) -> dict[str, torch.Tensor]:
    """Runs on each rank: SGD on this rank's slice of each global batch, gradients averaged by
    `average_fn(model)`; returns the final weights."""
    rank, world = rank_and_world()
    model = digit_mlp(hidden, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for x, y in global_batches(steps, global_batch):
        optimizer.zero_grad()
        F.cross_entropy(model(x.chunk(world)[rank]), y.chunk(world)[rank]).backward()
        average_fn(model)
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def single_process(steps: int = 3, global_batch: int = 48, lr: float = 0.5,
                   hidden=(32,)) -> dict[str, torch.Tensor]:
    """`manual_data_parallel`'s result computed by one process on the whole batches."""
    model = digit_mlp(hidden, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for x, y in global_batches(steps, global_batch):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------- DistributedDataParallel

def sharded_loader(batch_per_rank: int, seed: int = SAMPLER_SEED) -> tuple[DataLoader, DistributedSampler]:
    """Runs on each rank: this rank's loader over the training digits, and its sampler."""
    rank, world = rank_and_world()
    train = load_digit_splits().train
    dataset = TensorDataset(train.x, train.y)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    return DataLoader(dataset, batch_size=batch_per_rank, sampler=sampler), sampler


def train_ddp(epochs: int = 2, batch_per_rank: int = 32, lr: float = 0.1, hidden=(64,)) -> list[float]:
    """Runs on each rank: DDP training; the loss of every step, averaged over the ranks."""
    loader, sampler = sharded_loader(batch_per_rank)
    model = DDP(digit_mlp(hidden, seed=0))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)  # without it, every epoch repeats the same order
        for x, y in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            mean = loss.detach().clone()
            dist.all_reduce(mean, op=dist.ReduceOp.AVG)
            losses.append(mean.item())
    return losses


def sampler_order(n: int, world: int, epoch: int, seed: int = SAMPLER_SEED) -> torch.Tensor:
    """The indices DistributedSampler deals out in `epoch`: a seeded permutation, padded with
    its own first indices to a multiple of `world`; rank r takes positions r, r+world, ..."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    padding = -n % world
    return torch.cat([order, order[:padding]])


def single_process_losses(world: int, epochs: int = 2, batch_per_rank: int = 32, lr: float = 0.1,
                          hidden=(64,)) -> list[float]:
    """What `train_ddp` on `world` ranks computes, by one process: step k of every rank together
    is the k-th run of world * batch_per_rank indices of `sampler_order`."""
    train = load_digit_splits().train
    model = digit_mlp(hidden, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    step = world * batch_per_rank
    losses = []
    for epoch in range(epochs):
        order = sampler_order(len(train), world, epoch)
        for start in range(0, len(order), step):
            idx = order[start:start + step]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(train.x[idx]), train.y[idx])
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


class CommCounter:
    """State for `counting_hook`: how many all-reduces DDP made, and how many bytes they carried."""

    def __init__(self):
        self.calls = 0
        self.bytes = 0


def counting_hook(counter: CommCounter, bucket):
    """A DDP communication hook: count the bucket, then all-reduce it as DDP does by default.
    Install with ``model.register_comm_hook(counter, counting_hook)``."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    counter.calls += 1
    counter.bytes += bucket.buffer().numel() * bucket.buffer().element_size()
    return default_hooks.allreduce_hook(None, bucket)


def timed_step(model: DDP, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               sync: bool) -> float:
    """Runs on each rank: one DDP training step on (`x`, `y`), in ms from a barrier to the optimizer's step;
    with `sync` False the backward runs inside `no_sync`, so no gradient is all-reduced."""
    dist.barrier()
    start = time.perf_counter()
    with nullcontext() if sync else model.no_sync():
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
    optimizer.step()
    return 1e3 * (time.perf_counter() - start)


def step_times(steps: int = 20, batch_per_rank: int = 32, hidden=(256, 256), bucket_cap_mb: float = 25.0,
               rounds: int = 2) -> dict[str, float]:
    """Runs on each rank: ms per DDP training step with the gradient all-reduce and without it
    (inside `no_sync`). The two are interleaved, batch by batch, in alternating order, so drift
    (a warming cache, another process waking up) hits both alike; each pair's difference is what
    communication added to that step. Returns the medians, the median difference and its
    quartiles (`comm_q1_ms`, `comm_q3_ms`: the middle half of the paired differences), and the
    all-reduces and bytes per synchronised step."""
    loader, _ = sharded_loader(batch_per_rank)
    model = DDP(digit_mlp(hidden, seed=0), bucket_cap_mb=bucket_cap_mb)
    counter = CommCounter()
    model.register_comm_hook(counter, counting_hook)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = list(itertools.islice(loader, steps))

    def one_step(x, y, sync: bool) -> float:
        return timed_step(model, optimizer, x, y, sync)

    for x, y in batches:  # warm-up: the first steps build the buckets and connections
        one_step(x, y, sync=True)
    calls, sent = counter.calls, counter.bytes
    synced, local = [], []
    for k, (x, y) in enumerate(batches * rounds):
        if k % 2:
            local.append(one_step(x, y, sync=False))
            synced.append(one_step(x, y, sync=True))
        else:
            synced.append(one_step(x, y, sync=True))
            local.append(one_step(x, y, sync=False))
    differences = torch.tensor(synced) - torch.tensor(local)
    q1, median, q3 = torch.quantile(differences.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.double))
    return {"step_ms": float(torch.tensor(synced).median()), "compute_ms": float(torch.tensor(local).median()),
            "comm_ms": float(median), "comm_q1_ms": float(q1), "comm_q3_ms": float(q3),
            "pairs": len(synced), "allreduces_per_step": (counter.calls - calls) / len(synced),
            "bytes_per_step": (counter.bytes - sent) / len(synced)}


# ----------------------------------------------------------------- accumulation and no_sync

def accumulate(model: DDP, optimizer: torch.optim.Optimizer, micro_batches) -> None:
    """Runs on each rank: one optimizer step over several micro-batches, all-reducing once."""
    optimizer.zero_grad()
    last = len(micro_batches) - 1
    for i, (x, y) in enumerate(micro_batches):
        with model.no_sync() if i < last else nullcontext():
            (F.cross_entropy(model(x), y) / len(micro_batches)).backward()
    optimizer.step()


def accumulation_check(accumulate_fn, micro: int = 4, micro_batch: int = 12, lr: float = 0.5,
                       hidden=(32,)) -> dict:
    """Runs on each rank: `accumulate_fn` on DDP for one step; all-reduces made and final weights."""
    rank, world = rank_and_world()
    (x, y), = global_batches(1, world * micro * micro_batch)
    mine = slice(rank * micro * micro_batch, (rank + 1) * micro * micro_batch)
    micro_batches = list(zip(x[mine].split(micro_batch), y[mine].split(micro_batch), strict=True))
    model = DDP(digit_mlp(hidden, seed=0))
    counter = CommCounter()
    model.register_comm_hook(counter, counting_hook)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    with model.no_sync():  # a previous step's gradients, still in .grad: accumulate must start from zero
        F.cross_entropy(model(x[mine] + 1), y[mine]).backward()
    accumulate_fn(model, optimizer, micro_batches)
    weights = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    return {"calls": counter.calls, "weights": weights}


def accumulate_syncing(model: DDP, optimizer: torch.optim.Optimizer, micro_batches) -> None:
    """Gradient accumulation without `no_sync`: correct, but all-reduces after every micro-batch."""
    optimizer.zero_grad()
    for x, y in micro_batches:
        (F.cross_entropy(model(x), y) / len(micro_batches)).backward()
    optimizer.step()


def accumulation_cost(accumulate_fn, micro: int = 4, micro_batch: int = 32, steps: int = 10,
                      hidden=(256, 256)) -> dict[str, float]:
    """Runs on each rank: median ms and all-reduces per optimizer step of `accumulate_fn`."""
    loader, _ = sharded_loader(micro_batch)
    batches = list(itertools.islice(loader, micro))
    model = DDP(digit_mlp(hidden, seed=0))
    counter = CommCounter()
    model.register_comm_hook(counter, counting_hook)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    accumulate_fn(model, optimizer, batches)  # warm-up
    calls, samples = counter.calls, []
    for _ in range(steps):
        dist.barrier()
        start = time.perf_counter()
        accumulate_fn(model, optimizer, batches)
        samples.append(time.perf_counter() - start)
    return {"ms_per_step": 1e3 * sorted(samples)[steps // 2],
            "allreduces_per_step": (counter.calls - calls) / steps}


def accumulation_reference(world: int, micro: int = 4, micro_batch: int = 12, lr: float = 0.5,
                           hidden=(32,)) -> dict[str, torch.Tensor]:
    """`accumulation_check`'s weights from one process taking one step on the whole batch."""
    return single_process(steps=1, global_batch=world * micro * micro_batch, lr=lr, hidden=hidden)


# ----------------------------------------------------------------- sharding arithmetic

def memory_per_rank(n_params: float, world: int, stage: int) -> float:
    """Bytes of weights, gradients and Adam state each rank holds under ZeRO `stage` (0 = plain DDP)."""
    if stage not in SHARDED:
        raise ValueError(f"stage must be 0 (plain data parallel), 1, 2 or 3; got {stage!r}")
    if world < 1 or n_params < 0:
        raise ValueError(f"need world >= 1 and n_params >= 0, got world={world}, n_params={n_params}")
    return sum(n_params * b / (world if part in SHARDED[stage] else 1) for part, b in BYTES_PER_PARAM.items())


def bubble_fraction(stages: int, micro_batches: int) -> float:
    """Idle share of a GPipe schedule: (p - 1) / (m + p - 1) for p stages and m micro-batches."""
    if stages < 1 or micro_batches < 1:
        raise ValueError(f"need stages >= 1 and micro_batches >= 1, got {stages} and {micro_batches}")
    return (stages - 1) / (micro_batches + stages - 1)


def torchrun_nodes(nnodes: str) -> tuple[int, int]:
    """torchrun's `--nnodes` as (minimum, maximum): "2" and "2:2" both mean exactly two nodes;
    "1:4" is an elastic job of one to four."""
    from torch.distributed.run import parse_min_max_nnodes

    return parse_min_max_nnodes(str(nnodes))


def two_node_commands(host: str, port: int, nproc_per_node: int, script: str) -> list[list[str]]:
    """The torchrun command for each of two nodes meeting at host:port (c10d rendezvous)."""
    command = ["torchrun", "--nnodes=2", f"--nproc_per_node={nproc_per_node}", "--rdzv_backend=c10d",
               f"--rdzv_endpoint={host}:{port}", "--rdzv_id=course-job", script]
    return [command, list(command)]
