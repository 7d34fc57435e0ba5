"""Tensor parallelism: Megatron-LM's split of an MLP over ranks, by hand and with PyTorch's DTensor.

Taught in 04b_model_parallel, section 3. The MLP is ``y = gelu(x W1^T + b1) W2^T + b2`` with the
weights laid out as `torch.nn.Linear` stores them: ``w1`` (hidden, d), ``b1`` (hidden,), ``w2`` (d, hidden),
``b2`` (d,). Megatron-LM (Shoeybi et al., 2019, Section 3 and Figure 3) splits the first layer by the
columns of ``A = W1^T`` (rows of ``w1``: each rank computes a slice of the hidden units), applies GeLU to
its slice with no communication, multiplies by the matching rows of ``B = W2^T`` (columns of ``w2``), and
sums the partial outputs with one all-reduce (the operator g). Its conjugate f is the identity in the forward
pass and an all-reduce of the input's gradient in the backward pass.

Functions documented "runs on each rank" expect an initialised process group: start them with
`course.launch.launch`. The others are plain functions.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from course.distributed import count_all_reduce, watch_communication

SHARD_NAMES = ("w1", "b1", "w2", "b2")


# ----------------------------------------------------------------- Megatron's f and g

class _CopyToRanks(torch.autograd.Function):
    """f: identity forward; backward, the sum over ranks of the input's gradient (each rank's part)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _SumOverRanks(torch.autograd.Function):
    """g: all-reduce (sum) forward; identity backward (every rank already holds the whole gradient)."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad


def f(x: torch.Tensor) -> torch.Tensor:
    """Megatron's f, put where a replicated input enters the tensor-parallel region: returns `x` unchanged,
    and in the backward pass all-reduces (sums) its gradient, since each rank computed only its part of it."""
    return _CopyToRanks.apply(x)


def g(x: torch.Tensor) -> torch.Tensor:
    """Megatron's g, where the region ends: the sum over ranks of `x` (one all-reduce), as a new tensor;
    in the backward pass the gradient passes through unchanged."""
    return _SumOverRanks.apply(x)


# ----------------------------------------------------------------- the MLP, whole and split

def mlp_weights(d: int = 6, hidden: int = 8, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(w1, b1, w2, b2) of a d -> hidden -> d MLP, as `nn.Linear` lays them out, the same on every rank."""
    generator = torch.Generator().manual_seed(seed)
    w1 = torch.randn(hidden, d, generator=generator) / d ** 0.5
    b1 = torch.randn(hidden, generator=generator) * 0.1
    w2 = torch.randn(d, hidden, generator=generator) / hidden ** 0.5
    b2 = torch.randn(d, generator=generator) * 0.1
    return w1, b1, w2, b2


def mlp_forward(x: torch.Tensor, w1, b1, w2, b2) -> torch.Tensor:
    """The single-device MLP: gelu(x w1^T + b1) w2^T + b2, for x of shape (..., d)."""
    return F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)


def shard_mlp(w1, b1, w2, b2, rank: int, world: int) -> dict[str, torch.Tensor]:
    """Rank `rank`'s part of the MLP among `world` ranks: rows ``rank*n:(rank+1)*n`` of w1 and b1, the same
    columns of w2 (n = hidden // world), and all of b2, as a dict with keys "w1", "b1", "w2", "b2".
    Raises ValueError when the hidden width does not divide by `world`, for a world below 1 or a rank outside
    0..world-1, and when w2 is not (d, hidden) (e.g. transposed). The reference for the exercise."""
    hidden = w1.shape[0]
    if world < 1:
        raise ValueError(f"world must be at least 1, got {world}")
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in 0..{world - 1}, got {rank}")
    if w2.dim() != 2 or w2.shape[1] != hidden or b1.shape[0] != hidden or b2.shape[0] != w2.shape[0]:
        raise ValueError(f"expected w1 (hidden, d), b1 (hidden,), w2 (d, hidden), b2 (d,) as nn.Linear stores "
                         f"them; got w1 {tuple(w1.shape)}, b1 {tuple(b1.shape)}, w2 {tuple(w2.shape)}, "
                         f"b2 {tuple(b2.shape)}")
    if hidden % world:
        raise ValueError(f"the hidden width {hidden} does not divide by {world} ranks")
    n = hidden // world
    part = slice(rank * n, (rank + 1) * n)
    return {"w1": w1[part], "b1": b1[part], "w2": w2[:, part], "b2": b2}


def grad_hint(name: str, got: torch.Tensor, expected: torch.Tensor, world: int) -> str:
    """The likely causes that fit how one rank's gradient of its shard `name` differs from the single-device
    slice, for the exercise's failure message: zero (the parameter took no part on this rank), `world` times
    too large (an all-reduce in g's backward), or otherwise wrong."""
    scale = expected.abs().max().item()
    if got.shape != expected.shape:
        return f"the shard has shape {tuple(got.shape)}, the single-device slice {tuple(expected.shape)}"
    if got.abs().max().item() <= 1e-6 * max(scale, 1e-12):
        return (f"this rank's gradient of {name} is 0: it took no part in this rank's output. Is it used on "
                "every rank (no `if rank == 0`)? b2 is added once per rank, after tp.g's sum")
    if world > 1 and torch.allclose(got, world * expected, rtol=1e-4, atol=1e-6):
        return (f"{world}x the right gradient: an all-reduce in the backward pass (e.g. torch.distributed.nn's "
                "all_reduce as g) sums gradients every rank already holds whole")
    return ("the gradient differs: check which slice each shard is (rows of w1 and b1, the same columns of w2) "
            "and that b2 is added after the sum, once")


def tp_mlp_forward(x: torch.Tensor, shards: dict[str, torch.Tensor]) -> torch.Tensor:
    """Runs on each rank: the whole MLP's output from this rank's `shards`, with one all-reduce (g) forward
    and one (f, on x's gradient) backward. The reference for the exercise."""
    x = f(x)
    hidden = F.gelu(F.linear(x, shards["w1"], shards["b1"]))  # this rank's hidden units: no communication
    return g(F.linear(hidden, shards["w2"])) + shards["b2"]   # bias once, after the sum


# ----------------------------------------------------------------- checks and counts

def tp_check(shard_fn, forward_fn, d: int = 6, hidden: int = 8, batch: tuple = (5,), seed: int = 0) -> dict:
    """Runs on each rank: the learner's `shard_fn` and `forward_fn` against the single-device MLP on the same
    weights. Returns this rank's shard shapes, output and the whole MLP's, gradients of its shards and of the
    input beside the expected ones (the single-device gradients, sliced as `shard_mlp` slices; zeros for a shard
    that got no gradient), and the
    collectives called in the forward and in the backward pass."""
    rank, world = dist.get_rank(), dist.get_world_size()
    weights = mlp_weights(d, hidden, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(*batch, d, generator=generator)
    upstream = torch.randn(*batch, d, generator=generator)  # dL/dy, so every output element matters
    whole = [t.clone().requires_grad_() for t in (x, *weights)]
    expected = mlp_forward(*whole)
    (expected * upstream).sum().backward()
    expected_grads = shard_mlp(*(t.grad for t in whole[1:]), rank, world)
    mine = shard_fn(*(t.clone() for t in weights), rank, world)
    shards = {name: mine[name].detach().clone().requires_grad_() for name in SHARD_NAMES}
    x_mine = x.clone().requires_grad_()
    with watch_communication() as forward:
        y = forward_fn(x_mine, shards)
    with watch_communication() as backward:
        (y * upstream).sum().backward()
    dist.barrier()
    return {"shapes": {name: tuple(t.shape) for name, t in shards.items()},
            "expected_shapes": {name: tuple(t.shape) for name, t in expected_grads.items()},
            "y": y.detach(), "expected_y": expected.detach(),
            # a shard that took no part in this rank's output has no .grad: its gradient is 0
            "grads": {name: torch.zeros_like(t) if t.grad is None else t.grad for name, t in shards.items()},
            "expected_grads": expected_grads,
            "x_grad": x_mine.grad, "expected_x_grad": whole[0].grad,
            "forward_collectives": forward["collectives"], "backward_collectives": backward["collectives"]}


def mlp_module(d: int = 6, hidden: int = 8, seed: int = 0) -> nn.Sequential:
    """The same MLP as an ``nn.Sequential(Linear, GELU, Linear)`` holding `mlp_weights(d, hidden, seed)`."""
    model = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
    with torch.no_grad():
        for param, value in zip(model.parameters(), mlp_weights(d, hidden, seed)):
            param.copy_(value)
    return model


def compare_with_pytorch(shard_fn, forward_fn, d: int = 64, hidden: int = 256, batch: int = 32,
                         seed: int = 0) -> dict:
    """Runs on each rank: the same MLP three ways (one device; by hand with `shard_fn`/`forward_fn`; PyTorch's
    `parallelize_module` with ColwiseParallel on the first layer and RowwiseParallel on the second over
    ``init_device_mesh("cpu", (world,))``), and what each communicates for one forward and backward.

    Returns the largest differences between the outputs and between the first layer's weight gradients, the
    DTensor placements and local/global shapes of the parameters, the collectives `CommDebugMode` saw in
    PyTorch's forward and backward, the bytes the hand-made version all-reduced (forward, backward), and the
    bytes DDP all-reduces for the same MLP's gradients (counted by a communication hook)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.debug import CommDebugMode
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
    from torch.nn.parallel import DistributedDataParallel as DDP

    from course.distributed import CommCounter, counting_hook

    rank, world = dist.get_rank(), dist.get_world_size()
    x = torch.randn(batch, d, generator=torch.Generator().manual_seed(seed + 1))
    single = mlp_module(d, hidden, seed)
    x_single = x.clone().requires_grad_()
    y_single = single(x_single)
    y_single.sum().backward()

    weights = mlp_weights(d, hidden, seed)
    shards = {k: v.detach().clone().requires_grad_() for k, v in shard_fn(*weights, rank, world).items()}
    with count_all_reduce() as hand_forward:
        y_hand = forward_fn(x.clone().requires_grad_(), shards)
    with count_all_reduce() as hand_backward:
        y_hand.sum().backward()

    model = parallelize_module(mlp_module(d, hidden, seed), init_device_mesh("cpu", (world,)),
                               {"0": ColwiseParallel(), "2": RowwiseParallel()})
    placements = {name: {"placement": repr(p.placements[0]), "local": tuple(p.to_local().shape),
                         "global": tuple(p.shape)} for name, p in model.named_parameters()}
    x_torch = x.clone().requires_grad_()
    with CommDebugMode() as seen_forward:
        y_torch = model(x_torch)
    with CommDebugMode() as seen_backward:
        y_torch.sum().backward()
    w1_grad_torch = model[0].weight.grad.full_tensor()  # gathers the shards (a collective, not counted above)

    ddp = DDP(mlp_module(d, hidden, seed))
    counter = CommCounter()
    ddp.register_comm_hook(counter, counting_hook)
    ddp(x).sum().backward()

    mine = slice(rank * (hidden // world), (rank + 1) * (hidden // world))
    w1_grad_single = single[0].weight.grad
    return {
        "hand_vs_single": (y_hand - y_single).abs().max().item(),
        "torch_vs_single": (y_torch - y_single).abs().max().item(),
        "hand_vs_torch": (y_hand - y_torch).abs().max().item(),
        "w1_grad_hand_vs_single": (shards["w1"].grad - w1_grad_single[mine]).abs().max().item(),
        "w1_grad_torch_vs_single": (w1_grad_torch - w1_grad_single).abs().max().item(),
        "x_grad_torch_vs_single": (x_torch.grad - x_single.grad).abs().max().item(),
        "placements": placements,
        "torch_forward": {str(k).split(".")[-1]: v for k, v in seen_forward.get_comm_counts().items()},
        "torch_backward": {str(k).split(".")[-1]: v for k, v in seen_backward.get_comm_counts().items()},
        "hand_forward_bytes": hand_forward["sizes"], "hand_backward_bytes": hand_backward["sizes"],
        "ddp_calls": counter.calls, "ddp_bytes": counter.bytes,
        "batch": batch, "activation_bytes": y_single.numel() * y_single.element_size(),
        "param_bytes": sum(p.numel() * p.element_size() for p in single.parameters()),
    }


def tp_bytes_per_layer(tokens: int, width: int, ranks: int, bytes_per_value: int = 2) -> float:
    """Bytes each of `ranks` tensor-parallel devices sends per transformer layer for one micro-batch of
    `tokens` tokens (batch x sequence) of `width`: 8 b s h (t - 1) / t values (Narayanan et al., 2021,
    Section 3.2), i.e. 2 all-reduces forward and 2 backward of the layer's b s h activations (Shoeybi et al.,
    2019, Figure 4), each sending 2 (t - 1) / t of the tensor per device in a ring."""
    if ranks < 1:
        raise ValueError(f"ranks must be at least 1, got {ranks}")
    if tokens < 0 or width < 0 or bytes_per_value < 0:
        raise ValueError(f"tokens, width and bytes_per_value cannot be negative, got {tokens}, {width}, "
                         f"{bytes_per_value}")
    return 8 * tokens * width * (ranks - 1) / ranks * bytes_per_value
