"""Sharded training state: activations and recomputation, FSDP2 on real ranks, sharded checkpoints.

Taught in 04b_model_parallel, sections 1 and 2. Functions documented "runs on each rank" expect an
initialised process group: start them with `course.launch.launch`. The others are plain functions.
The ZeRO arithmetic of model states (`memory_per_rank`) lives in `course.distributed`.
"""

from __future__ import annotations

import os
import statistics
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from course.distributed import global_batches
from course.models import digit_mlp

# Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", Table 2 with
# no tensor parallelism (t = 1): bytes of activations per transformer layer, in units of s*b*h (16-bit
# activations, 1-byte dropout masks). "none" is Eq. 1 without its attention-score term 5as/h, added below.
RECOMPUTE_PER_SBH = {"none": 34, "selective": 34, "full": 2}
# Bytes per parameter of plain fp32 training with Adam (this notebook's ranks): weights, gradients, and
# Adam's two moments. No separate master copy: the weights are already fp32.
FP32_ADAM_BYTES = {"weights": 4, "gradients": 4, "optimizer": 8}
SHARDED = {0: (), 1: ("optimizer",), 2: ("optimizer", "gradients"), 3: ("optimizer", "gradients", "weights")}


def activation_memory(layers: int, hidden: int, heads: int, seq: int, micro_batch: int = 1,
                      recompute: str = "none") -> float:
    """Bytes of activations a GPT-style transformer keeps from forward for backward, on one rank.

    Korthikanti et al. 2022, Table 2 (no tensor or sequence parallelism), per layer, for s = `seq` tokens,
    b = `micro_batch` sequences, h = `hidden`, a = `heads`:

    - ``"none"``: s b h (34 + 5 a s / h) (Eq. 1); 5 a s / h is the softmax output, its dropout mask and the
      dropout output (Section 4.1);
    - ``"selective"``: 34 s b h: the attention-score part is recomputed in backward (what FlashAttention-style
      kernels do as well);
    - ``"full"``: 2 s b h: only each layer's 16-bit input is kept, the whole layer is recomputed (about one
      more forward pass; Section 5: "as much as 30-40%" more time).

    Multiplied by `layers`. ZeRO and FSDP do not shard activations: each rank keeps those of its own
    micro-batch. Raises ValueError for another `recompute` or a non-positive size.
    """
    if recompute not in RECOMPUTE_PER_SBH:
        raise ValueError(f"recompute must be one of {sorted(RECOMPUTE_PER_SBH)}, got {recompute!r}")
    if min(layers, hidden, heads, seq, micro_batch) < 1:
        raise ValueError("layers, hidden, heads, seq and micro_batch must all be at least 1")
    per_sbh = RECOMPUTE_PER_SBH[recompute] + (5 * heads * seq / hidden if recompute == "none" else 0)
    return layers * seq * micro_batch * hidden * per_sbh


def state_bytes_per_rank(n_params: float, world: int, stage: int,
                         bytes_per_param: dict | None = None) -> float:
    """Bytes of weights, gradients and optimizer state per rank under ZeRO `stage`, for any bytes per
    parameter (default: fp32 Adam, `FP32_ADAM_BYTES`, 4 + 4 + 8). With the course's mixed-precision
    split (2 + 2 + 12) it is `course.distributed.memory_per_rank`. Raises ValueError like it,
    and for a part other than "weights", "gradients", "optimizer"."""
    parts = FP32_ADAM_BYTES if bytes_per_param is None else bytes_per_param
    if stage not in SHARDED:
        raise ValueError(f"stage must be 0 (plain data parallel), 1, 2 or 3; got {stage!r}")
    if world < 1 or n_params < 0:
        raise ValueError(f"need world >= 1 and n_params >= 0, got world={world}, n_params={n_params}")
    unknown = set(parts) - set(FP32_ADAM_BYTES)
    if unknown:
        raise ValueError(f"unknown part(s) {sorted(unknown)}: the parts are {sorted(FP32_ADAM_BYTES)}")
    return sum(n_params * b / (world if part in SHARDED[stage] else 1) for part, b in parts.items())


# ----------------------------------------------------------------- activation checkpointing, measured

def mlp_blocks(layers: int = 4, width: int = 256, seed: int = 0) -> nn.ModuleList:
    """`layers` transformer-style MLP blocks, Linear(width, 4 width) -> ReLU -> Linear(4 width, width),
    then a 10-way head as the last entry."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        blocks = [nn.Sequential(nn.Linear(width, 4 * width), nn.ReLU(), nn.Linear(4 * width, width))
                  for _ in range(layers)]
        return nn.ModuleList([*blocks, nn.Linear(width, 10)])


def saved_activation_bytes(blocks: nn.ModuleList, x: torch.Tensor, y: torch.Tensor,
                           recompute: bool) -> tuple[float, torch.Tensor]:
    """One forward and backward through `mlp_blocks`; returns (bytes of the distinct tensors autograd
    saved for backward, parameters left out, counted by a `saved_tensors_hooks` pack hook; the loss).

    With `recompute`, each block runs under `torch.utils.checkpoint.checkpoint(use_reentrant=False)`:
    only its input is kept and the block is run again in backward."""
    params = {p.data_ptr() for p in blocks.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in params:
            saved[t.data_ptr()] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        h = x
        for block in blocks[:-1]:
            h = checkpoint(block, h, use_reentrant=False) if recompute else block(h)
        loss = F.cross_entropy(blocks[-1](h), y)
    loss.backward()
    return float(sum(saved.values())), loss.detach()


def checkpointing_cost(layers: int = 4, width: int = 128, batch: int = 256, steps: int = 3,
                       repeats: int = 3, seed: int = 0) -> dict[str, dict]:
    """Activation checkpointing on `mlp_blocks`, without and with: saved-activation bytes, the loss (equal:
    recomputation changes no number), and CPU seconds per training step (forward + backward; process time
    on one torch thread, so other programs on the machine do not count; `repeats` medians of `steps` steps
    each, the two alternating)."""
    blocks = mlp_blocks(layers, width, seed)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(batch, width, generator=g), torch.randint(0, 10, (batch,), generator=g)
    result = {name: {"seconds": []} for name in ("stored", "recomputed")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: no other thread's spinning while it waits is counted
    for name, recompute in (("stored", False), ("recomputed", True)):
        result[name]["saved_bytes"], result[name]["loss"] = saved_activation_bytes(blocks, x, y, recompute)
    for _ in range(repeats):
        for name, recompute in (("stored", False), ("recomputed", True)):
            times = []
            for _ in range(steps):
                blocks.zero_grad()
                start = time.process_time()
                saved_activation_bytes(blocks, x, y, recompute)
                times.append(time.process_time() - start)
            result[name]["seconds"].append(statistics.median(times))
    torch.set_num_threads(threads)
    return result


# ----------------------------------------------------------------- FSDP2 on real ranks

def linears(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def local_bytes(tensors) -> int:
    """Bytes this rank stores for `tensors`: a DTensor's local shard, a plain tensor whole."""
    total = 0
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


def training_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Runs on each rank: bytes this rank holds of weights, gradients and optimizer state (Adam's moments;
    its one-element step counters left out)."""
    state = [t for s in optimizer.state.values() for t in s.values()
             if isinstance(t, torch.Tensor) and t.dim() > 0]
    return {"weights": local_bytes(model.parameters()),
            "gradients": local_bytes(p.grad for p in model.parameters()),
            "optimizer": local_bytes(state)}


def rank_slice(x: torch.Tensor) -> torch.Tensor:
    """Runs on each rank: this rank's equal share of a global batch (rows split in rank order)."""
    return x.chunk(dist.get_world_size())[dist.get_rank()]


def fsdp_exercise(train_fn, hidden=(512, 512), steps: int = 4, batch: int = 64, lr: float = 1e-2) -> dict:
    """Runs on each rank: what the FSDP exercise's tests check of ``train_fn(model, batches, lr)``.

    Builds ``digit_mlp(hidden, seed=0)``, counts the rows each forward pass sees, calls `train_fn` on
    `steps` global batches of `batch` digits, and returns its losses, whether the root and each Linear
    became an FSDP module (and whether some FSDP module holds every parameter: model or model.net), each
    parameter's local shard shape, the rows seen, and the final weights gathered whole (a collective: every rank calls it). Rows are counted only for forwards under grad, so
    an extra forward under no_grad (accuracy logging) is not counted. ValueError when `batch` does not
    divide by the world size."""
    from torch.distributed.fsdp import FSDPModule

    world = dist.get_world_size()
    if batch % world:
        raise ValueError(f"the global batch {batch} must divide by the {world} ranks")
    model = digit_mlp(hidden, seed=0)
    rows = []

    def count_rows(_module, args):  # training forwards only: an extra one under no_grad (logging) is fine
        if torch.is_grad_enabled():
            rows.append(args[0].shape[0])

    model.register_forward_pre_hook(count_rows)
    n_params = len(list(model.parameters()))
    losses = train_fn(model, global_batches(steps, batch), lr)
    full = {name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for name, p in model.named_parameters()}
    return {"losses": losses,
            "root_sharded": isinstance(model, FSDPModule),
            # fully_shard(model.net) is a root too: DigitMLP keeps every parameter in .net
            "root_covers_all": any(isinstance(m, FSDPModule) and len(list(m.parameters())) == n_params
                                   for m in model.modules()),
            "layers_sharded": [isinstance(m, FSDPModule) for m in linears(model)],
            "local_shapes": {name: tuple((p.to_local() if hasattr(p, "to_local") else p).shape)
                             for name, p in model.named_parameters()},
            "rows_seen": rows, "weights": full}


def loss_mismatch_hint(losses: list[float], expected: list[float]) -> str:
    """The likely causes that fit how FSDP losses differ from one process's (`single_process_adam`), for the
    exercise's failure message: losses that never move, a first loss that already differs, or losses that
    start equal and drift apart."""
    if len(losses) > 1 and max(losses) - min(losses) < 1e-6 * max(1.0, abs(losses[0])):
        return ("your losses never move: the optimizer updates nothing. Was it built after fully_shard, from "
                "model.parameters()? Sharding replaces the parameters")
    if losses and expected and abs(losses[0] - expected[0]) > 1e-4:
        return ("already the first loss differs, before any update: is it each rank's loss on its own rows "
                "x.chunk(world)[rank], averaged over the ranks with op=dist.ReduceOp.AVG (not summed)?")
    return ("the first loss agrees and later ones drift: the updates differ. optimizer.zero_grad() every step "
            "(else gradients pile up)? Adam with this lr, one step per batch, built after fully_shard?")


def single_process_adam(hidden=(512, 512), steps: int = 4, batch: int = 64, lr: float = 1e-2) -> dict:
    """What `fsdp_exercise` should find, by one process on the whole batches: losses and final weights."""
    model = digit_mlp(hidden, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for x, y in global_batches(steps, batch):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return {"losses": losses, "weights": {k: v.detach().clone() for k, v in model.named_parameters()}}


def shard_per_layer(model: nn.Module, reshard_after_forward: bool = True, layers: bool = True) -> nn.Module:
    """Runs on each rank: FSDP2 `fully_shard` on each Linear (unless `layers` is False), then on the root,
    over a CPU mesh of all ranks (without one, fully_shard picks CUDA's where a GPU exists)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    if layers:
        for layer in linears(model):
            fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return model


def held_parameter_bytes(model: nn.Module, shard_bytes: int) -> int:
    """Runs on each rank: parameter bytes alive now: this rank's shards (`shard_bytes`, counted once right
    after sharding; FSDP keeps them all the time), plus the whole of each parameter it has all-gathered and
    not yet freed (such a parameter shows as a plain tensor instead of a DTensor)."""
    gathered = [p for p in model.parameters() if not hasattr(p, "to_local")]
    return shard_bytes + sum(p.numel() * p.element_size() for p in gathered)


def _fsdp_model(hidden, reshard_after_forward=True, layers=True) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = shard_per_layer(digit_mlp(hidden, seed=0), reshard_after_forward, layers)
    model.shard_bytes = local_bytes(model.parameters())
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def _train_step(model, optimizer, x, y) -> tuple[float, float]:
    """One step on this rank's slice; returns (seconds, parameter bytes held between forward and backward)."""
    start = time.perf_counter()
    optimizer.zero_grad()
    loss = F.cross_entropy(model(rank_slice(x)), rank_slice(y))
    held = held_parameter_bytes(model, getattr(model, "shard_bytes", 0))
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start, held


def fsdp_measurements(folder: str, hidden=(512, 512, 512, 512), steps: int = 3, batch: int = 64,
                      repeats: int = 3) -> dict:
    """Runs on each rank: everything section 2 of 04b measures, in one launch.

    - ``state``: bytes of weights, gradients and Adam state this rank holds after a step, under DDP
      (whole copies) and under FSDP2 (shards), and the model's parameter count;
    - ``reshard``: for reshard_after_forward True and False, parameter bytes held between forward and
      backward, and `repeats` medians of seconds per step over `steps` steps (the two settings alternating);
    - ``gathered``: the most parameter bytes held at once during forward (read as each Linear starts),
      sharded per layer then root, against the root alone;
    - ``checkpoint``: the FSDP model's outputs on a probe batch after training, then saved with
      torch.distributed.checkpoint (DCP) into `folder` (each rank writes its own shards).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.nn.parallel import DistributedDataParallel as DDP

    batches = global_batches(steps + 1, batch)
    result: dict = {"world": dist.get_world_size()}

    ddp = DDP(digit_mlp(hidden, seed=0))
    ddp_optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-3)
    _train_step(ddp, ddp_optimizer, *batches[0])
    result["n_params"] = sum(p.numel() for p in ddp.parameters())
    result["state"] = {"DDP": training_state_bytes(ddp, ddp_optimizer)}
    del ddp, ddp_optimizer

    models = {reshard: _fsdp_model(hidden, reshard_after_forward=reshard) for reshard in (True, False)}
    for reshard, (model, optimizer) in models.items():  # a first step each: lazy initialisation, Adam's state
        _train_step(model, optimizer, *batches[0])
    result["state"]["FSDP"] = training_state_bytes(*models[True])
    result["reshard"] = {reshard: {"held_bytes": _train_step(*models[reshard], *batches[0])[1], "seconds": []}
                         for reshard in models}
    for _ in range(repeats):  # alternating, so a busy moment of the machine hits both alike
        for reshard, (model, optimizer) in models.items():
            times = [_train_step(model, optimizer, x, y)[0] for x, y in batches[1:]]
            result["reshard"][reshard]["seconds"].append(statistics.median(times))
    kept = models[True]

    result["gathered"] = {}
    for name, per_layer in (("each Linear, then the root", True), ("the root only", False)):
        model, _ = _fsdp_model(hidden, layers=per_layer)
        peaks = []
        for layer in linears(model):  # registered after fully_shard's hook: runs once the layer is gathered
            layer.register_forward_pre_hook(
                lambda *_: peaks.append(held_parameter_bytes(model, model.shard_bytes)))
        model(rank_slice(batches[0][0])).sum().backward()
        result["gathered"][name] = max(peaks)
    result["full_bytes"] = result["state"]["DDP"]["weights"]

    model, optimizer = kept
    probe = batches[0][0][:8]
    with torch.no_grad():
        result["outputs"] = model(probe).clone()  # every rank feeds the same rows: the whole model's outputs
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=folder)
    return result


def load_checkpoint(folder: str, hidden=(512, 512, 512, 512), fsdp: bool = False) -> torch.Tensor:
    """Load a DCP checkpoint that `fsdp_measurements` saved into a fresh model (weights from another seed,
    so nothing is equal by accident) and return its outputs on the same probe batch.

    Without `fsdp`: one plain process, no process group (M = 1): DCP reads every rank's file and assembles
    whole tensors. With `fsdp` (runs on each rank): the model is sharded over this launch's ranks first,
    and each rank reads only the pieces of the files that make up its own shards (M ranks, any M).
    Raises FileNotFoundError, naming the folder, when it does not exist."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no checkpoint folder {folder!r}: fsdp_measurements writes it (and the notebook "
                                "removes it after loading)")
    model = digit_mlp(hidden, seed=1)
    if fsdp:
        shard_per_layer(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    with warnings.catch_warnings():  # one process without a group: DCP says it assumes so, which is the point
        warnings.filterwarnings("ignore", message=".*assuming the intent is to")
        dcp.load(state, checkpoint_id=folder)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    probe = global_batches(1, 64)[0][0][:8]
    with torch.no_grad():
        return model(probe).clone()


def checkpoint_files(folder: str) -> dict[str, int]:
    """The files in a DCP checkpoint folder and their sizes in bytes."""
    return {name: os.path.getsize(os.path.join(folder, name)) for name in sorted(os.listdir(folder))}
