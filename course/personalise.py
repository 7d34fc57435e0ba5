"""Personalisation on the device: adapt a deployed classifier to one driver's handwriting.

Taught in 01_edge ("Personalisation on the device"). A driver's style is a fixed transformation of the
8 x 8 digits (a slant and thicker strokes); a few of that driver's strokes fine-tune the last layer, the
biases only (TinyTL's argument: Cai et al., "TinyTL: Reduce Memory, Not Parameters for Efficient On-Device
Learning", NeurIPS 2020), or everything. `training_step_memory` counts what a training step holds beside the
weights: gradients, optimizer state and the activations autograd saves for the backward pass.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from course.data import Split

SIDE = 8  # the digits are 8 x 8 images stored as rows of 64 pixels in [0, 1]


def driver_style(x: torch.Tensor, slant: float = 0.3, thicken: float = 0.5) -> torch.Tensor:
    """One driver's handwriting: slant the (N, 64) digits by `slant` (a horizontal shear, in image widths per
    image height) and thicken their strokes by blending in a 3 x 3 max filter (`thicken` in [0, 1]).
    Deterministic; returns (N, 64) in [0, 1]."""
    images = x.reshape(-1, 1, SIDE, SIDE)
    theta = torch.tensor([[1.0, slant, 0.0], [0.0, 1.0, 0.0]]).expand(len(images), 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    slanted = F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
    thick = F.max_pool2d(slanted, kernel_size=3, stride=1, padding=1)
    styled = (1 - thicken) * slanted + thicken * thick
    return styled.clamp(0, 1).reshape(-1, SIDE * SIDE)


def styled(split: Split, **style) -> Split:
    """`split` written in the driver's style (same labels)."""
    return type(split)(driver_style(split.x, **style), split.y)


def few_per_class(split: Split, per_class: int, seed: int) -> Split:
    """`per_class` examples of every class in `split`, drawn with `seed`."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in torch.unique(split.y):
        members = torch.nonzero(split.y == c).flatten()
        picks.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    idx = torch.cat(picks)
    return type(split)(split.x[idx], split.y[idx])


def trainable_copy(model: nn.Module, mode: str) -> nn.Module:
    """A copy of `model` in which only some parameters train: mode "last layer" (the final nn.Linear),
    "bias only" (every bias) or "all"."""
    model = copy.deepcopy(model)
    if mode == "all":
        return model.requires_grad_(True)
    model.requires_grad_(False)
    if mode == "last layer":
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        last.requires_grad_(True)
    elif mode == "bias only":
        bias_only(model)
    else:
        raise ValueError(f"mode must be 'last layer', 'bias only' or 'all', got {mode!r}")
    return model


@dataclass(frozen=True)
class StepMemory:
    """Bytes one training step holds, by kind (float32 throughout)."""

    weights: int
    gradients: int
    optimizer: int
    saved_activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.saved_activations


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for the backward pass of cross_entropy(model(x), y), counting each
    storage once and leaving out the parameters themselves (they are stored anyway). Measured with
    torch.autograd.graph.saved_tensors_hooks, which sees every tensor a backward function keeps."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = F.cross_entropy(model(x), y)
    del loss
    return sum(seen.values())


def bias_only(model: nn.Module) -> nn.Module:
    """Freeze every parameter of `model` except the biases (which are made trainable); returns `model`,
    changed in place. The reference for 01_edge's Exercise 2."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.endswith("bias"))
    return model


def training_bytes(model: nn.Module, optimizer_slots: int = 2) -> dict[str, int]:
    """{"gradients", "optimizer"}: bytes that training holds beyond the weights, a gradient and `optimizer_slots`
    state tensors (Adam 2, SGD with momentum 1, plain SGD 0) per trainable parameter, in its own dtype; each
    parameter counted once. The reference for 01_edge's Exercise 2. Raises ValueError for negative slots."""
    if optimizer_slots < 0:
        raise ValueError(f"optimizer_slots counts state tensors per parameter and cannot be negative, got {optimizer_slots}")
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return {"gradients": trainable, "optimizer": optimizer_slots * trainable}


def training_step_memory(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer_slots: int = 2) -> StepMemory:
    """What one training step of `model` on the batch (x, y) holds: every weight, a gradient per trainable
    parameter, `optimizer_slots` state tensors per trainable parameter (Adam keeps 2: the running mean and
    variance of the gradient) and the activations autograd saves (`saved_activation_bytes`)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    extra = training_bytes(model, optimizer_slots)
    return StepMemory(weights, extra["gradients"], extra["optimizer"], saved_activation_bytes(model, x, y))
