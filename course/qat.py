"""Quantization-aware training (QAT): fake quantization with a straight-through estimator.

Taught in 01_edge ("Exercise 5: fake quantization" and "When post-training quantization breaks"). The
forward pass rounds and clamps to the integer grid and returns to floats; the backward pass lets the gradient
through unchanged where the value was inside the grid and stops it where the value was clipped (the
straight-through estimator of Bengio, Léonard and Courville 2013, as used for QAT by Jacob et al. 2018,
section 3). It matches torch's own `torch.fake_quantize_per_tensor_affine` / `..._per_channel_affine`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from course.data import Split
from course.training import fit


def fake_quantize(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int) -> torch.Tensor:
    """Quantize `x` to integers in [qmin, qmax] and back to floats, with a straight-through gradient.

    `scale` (float or tensor broadcastable to x) and `zero_point` (int or tensor) define the grid
    x ≈ scale * (q - zero_point). Forward: q = clamp(round(x / scale) + zero_point, qmin, qmax).
    Backward: the gradient passes unchanged where round(x / scale) + zero_point lies inside [qmin, qmax]
    and is zero where it was clipped, as in torch.fake_quantize_per_tensor_affine. Same shape as x.
    Raises ValueError for a scale that is not positive or for qmin > qmax.
    """
    if qmin > qmax:
        raise ValueError(f"qmin ({qmin}) must not exceed qmax ({qmax})")
    if not bool((torch.as_tensor(scale) > 0).all()):
        raise ValueError("every scale must be positive (a zero scale divides by zero)")
    q = torch.round(x / scale) + zero_point
    inside = (q >= qmin) & (q <= qmax)
    x_hat = (torch.clamp(q, qmin, qmax) - zero_point) * scale
    return x_hat.detach() + (x - x.detach()) * inside


def symmetric_qrange(bits: int) -> tuple[int, int]:
    """Signed integer range of `bits` bits: (-2**(bits-1), 2**(bits-1) - 1); bits >= 2."""
    if bits < 2:
        raise ValueError(f"bits must be at least 2 for a signed grid, got {bits}")
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def weight_scale(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-row symmetric scale, shape (rows, 1): max|row| / ((qmax - qmin) / 2), as torchao's
    `IntxFakeQuantizeConfig(..., granularity="per_channel", is_symmetric=True)` computes it (0.18)."""
    qmin, qmax = symmetric_qrange(bits)
    amax = weight.detach().abs().amax(dim=1, keepdim=True)
    return torch.clamp(amax / ((qmax - qmin) / 2), min=torch.finfo(torch.float32).eps)


class FakeQuantLinear(nn.Linear):
    """nn.Linear whose weight is fake-quantized to `bits` bits per output row at every forward pass."""

    def __init__(self, linear: nn.Linear, bits: int, fake_quant: Callable = fake_quantize):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device=linear.weight.device)
        self.load_state_dict(linear.state_dict())
        self.bits, self.fake_quant = bits, fake_quant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qmin, qmax = symmetric_qrange(self.bits)
        weight = self.fake_quant(self.weight, weight_scale(self.weight, self.bits), 0, qmin, qmax)
        return nn.functional.linear(x, weight, self.bias)


def with_fake_quant(model: nn.Module, bits: int, fake_quant: Callable = fake_quantize) -> nn.Module:
    """A copy of `model` with every nn.Linear replaced by a FakeQuantLinear of `bits` bits."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, child_name, FakeQuantLinear(child, bits, fake_quant))
    return model


@torch.no_grad()
def quantize_weights(model: nn.Module, bits: int) -> nn.Module:
    """Post-training quantization of the weights: a copy whose nn.Linear weights hold the `bits`-bit
    per-row symmetric values (dequantized to float32 so that the model runs as before). Biases stay float."""
    model = copy.deepcopy(model)
    qmin, qmax = symmetric_qrange(bits)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            weight = module.weight
            weight.copy_(fake_quantize(weight, weight_scale(weight, bits), 0, qmin, qmax))
    return model


def to_plain_linear(model: nn.Module) -> nn.Module:
    """A copy of a fake-quantized model with plain nn.Linear layers holding its quantized weights."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, FakeQuantLinear):
                plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                plain.load_state_dict({k: v for k, v in child.state_dict().items()})
                setattr(module, child_name, quantize_weights(plain, child.bits))
    return model


def qat_finetune(model: nn.Module, bits: int, train: Split, epochs: int, lr: float = 1e-3, seed: int = 0,
                 fake_quant: Callable = fake_quantize) -> nn.Module:
    """Fine-tune a copy of a trained `model` with fake-quantized weights; return it with plain nn.Linear
    layers holding the final `bits`-bit weights (what would be deployed)."""
    qat = with_fake_quant(model, bits, fake_quant)
    torch.manual_seed(seed)
    fit(qat, train, epochs=epochs, lr=lr, seed=seed)
    return to_plain_linear(qat).eval()
