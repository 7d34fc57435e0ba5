"""Adversarial examples against the digit networks, a cheap defence, and event (delta) encoding.

Taught in 02_snn. Pixels live in [0, 1] (course.data scales the digits' 0..16 by 1/16), so every
attack here keeps its images in that box and in an L-infinity ball of radius `eps` around the
clean image. Sources of the methods:
- FGSM: Goodfellow, Shlens and Szegedy, "Explaining and harnessing adversarial examples", ICLR 2015.
- PGD: Madry et al., "Towards deep learning models resistant to adversarial attacks", ICLR 2018
  (they start from a random point in the ball; `pgd` here starts at the clean image, so it is
  deterministic: the "basic iterative method" of Kurakin et al. 2017 with a projection).
- BPDA: Athalye, Carlini and Wagner, "Obfuscated gradients give a false sense of security", ICML 2018:
  run the true (non-differentiable) function forward, differentiate an approximation of it backward.
- Bit-depth reduction: Xu, Evans and Qi, "Feature squeezing", NDSS 2018.
- Delta encoding: snntorch.spikegen.delta (snntorch 1.0), the model of an event camera's pixel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from course.snn import relu_network, run_if_network


# ----------------------------------------------------------------- attacks

def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
         low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Fast gradient sign method: x + eps * sign(d loss / d x), clamped to [low, high].

    x: [B, ...] clean inputs; y: [B] TRUE labels (not the model's predictions: with the prediction,
    a misclassified input is pushed towards its wrong class, which it already has). The model is put
    in eval mode (dropout off, batch-norm statistics fixed: the deployed behaviour) and its
    parameters receive no gradient (torch.autograd.grad, not loss.backward()). Returns a detached
    tensor of x's shape. Raises ValueError for a negative eps or labels that do not match the batch."""
    if eps < 0:
        raise ValueError(f"eps is a distance and cannot be negative, got {eps}")
    if y.shape != x.shape[:1]:
        raise ValueError(f"y must hold one label per input: x is {tuple(x.shape)}, y is {tuple(y.shape)}")
    model.eval()
    x_adv = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(x_adv), y)
    (grad,) = torch.autograd.grad(loss, x_adv)
    return (x.detach() + eps * grad.sign()).clamp(low, high)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
        low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Projected gradient descent on the loss (ascent, really): `steps` FGSM steps of size `alpha`,
    each followed by a projection back into the L-infinity ball of radius `eps` around the CLEAN x
    (not around the previous iterate, which lets the image drift steps * alpha away) and into
    [low, high]. Starts at x (no random start; see the module docstring).
    Raises ValueError for a negative eps or alpha, or a negative number of steps."""
    if eps < 0 or alpha < 0 or steps < 0:
        raise ValueError(f"eps, alpha and steps cannot be negative, got {eps}, {alpha}, {steps}")
    x = x.detach()
    x_adv = x.clone()
    for _ in range(steps):
        x_adv = fgsm(model, x_adv, y, alpha, low, high)
        x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps)
    return x_adv


def straight_through(forward_value: torch.Tensor, backward_value: torch.Tensor) -> torch.Tensor:
    """A tensor equal to `forward_value` whose gradient is that of `backward_value` (the BPDA trick)."""
    return backward_value + (forward_value - backward_value).detach()


# ----------------------------------------------------------------- the spiking networks as attack targets

class RateCodedSNN(nn.Module):
    """An SNN over rate-coded pixels seen as a classifier of images: [B, 64] pixels -> [B, 10] spike counts.

    Rate coding samples Bernoulli spikes, which have no gradient; the spikes here pass the gradient
    straight through to the pixel (d spike / d pixel = 1, the derivative of the expected spike), and
    the network's own LIF neurons use their surrogate gradient. The generator is reseeded on every
    call, so the same image always gets the same spikes (a fixed, deterministic classifier). The spikes are
    drawn on the CPU (the same spikes on every machine) and sent to the device of `net`'s parameters (a CUDA
    SNN from 02's training); the spike counts come back to the device of x, gradient included."""

    def __init__(self, net: nn.Module, num_steps: int, seed: int = 0):
        super().__init__()
        self.net, self.num_steps, self.seed = net, num_steps, seed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        probs = x.clamp(0, 1).expand(self.num_steps, *x.shape)
        spikes = straight_through(torch.bernoulli(probs.detach().cpu(), generator=generator).to(x.device), probs)
        device = next(self.net.parameters(), x).device
        return self.net(spikes.to(device)).sum(0).to(x.device)


class ConvertedSNN(nn.Module):
    """The integrate-and-fire network of `course.snn.run_if_network` as an attack target.

    Forward: the exact IF simulation (mean output membrane per step, [B, classes]). Backward:
    - gradient="true": what autograd gives through the thresholds, zero everywhere (the output is
      a step function of the input); x is kept in the graph so torch returns those zeros;
    - gradient="bpda": the gradient of the ANN with ReLU clipped at 1, the function the IF
      neurons approximate (BPDA, Athalye et al. 2018)."""

    def __init__(self, weights: Sequence[torch.Tensor], num_steps: int, gradient: str = "true"):
        super().__init__()
        if gradient not in ("true", "bpda"):
            raise ValueError(f"gradient is 'true' or 'bpda', got {gradient!r}")
        self.weights, self.num_steps, self.gradient = list(weights), num_steps, gradient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = run_if_network(self.weights, x.detach(), self.num_steps)
        if self.gradient == "true":
            return out + 0.0 * x.sum(dim=1, keepdim=True)
        return straight_through(out, relu_network(self.weights, x, clip=1.0))


class Squeezed(nn.Module):
    """`model` behind bit-depth reduction of its input to `bits` bits per pixel (Xu et al. 2018).

    Rounding has zero gradient almost everywhere: with bpda=False an attacker who differentiates
    the whole pipeline gets nothing; with bpda=True the rounding is treated as the identity on the
    way back, the adaptive attack of Athalye et al. 2018."""

    def __init__(self, model: nn.Module, bits: int, bpda: bool = False):
        super().__init__()
        self.model, self.bits, self.bpda = model, bits, bpda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = reduce_bit_depth(x, self.bits)
        return self.model(straight_through(squeezed, x) if self.bpda else squeezed)


def reduce_bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Round [0, 1] pixels to 2**bits levels: round(x * (2**bits - 1)) / (2**bits - 1)."""
    if not isinstance(bits, int) or bits < 1:
        raise ValueError(f"bits must be a whole number of at least 1, got {bits!r}")
    levels = 2 ** bits - 1
    return torch.round(x * levels) / levels


def robust_accuracy(target: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> float:
    """Accuracy of `target` on attack(x, y): the attack may differentiate another model (transfer)."""
    x_adv = attack(x, y)
    with torch.no_grad():
        return (target(x_adv).argmax(1) == y).float().mean().item()


# ----------------------------------------------------------------- events

def delta_encode(frames: torch.Tensor, threshold: float) -> torch.Tensor:
    """ON (+1) / OFF (-1) events where a pixel changes by at least `threshold` from the previous frame.

    frames: [T, ...]; the frame before the first is taken as zeros (a sensor switched on in the dark).
    Equals snntorch.spikegen.delta(frames, threshold, padding=False, off_spike=True)."""
    previous = torch.cat([torch.zeros_like(frames[:1]), frames[:-1]])
    change = frames - previous
    return (change >= threshold).float() - (change <= -threshold).float()


def drawn_and_moved(image: torch.Tensor, draw_frames: int = 8, hold_frames: int = 8,
                    move_frames: int = 8, width: int = 12) -> torch.Tensor:
    """A digit that is drawn, held still, then slides right: frames [T, 8, width] in [0, 1].

    image: [64] or [8, 8]. Drawing reveals the columns left to right, a pen sweep, over
    `draw_frames`; the digit then holds still; then moves one pixel right every other frame."""
    img = image.reshape(8, 8)
    frames = []
    for f in range(draw_frames):
        canvas = torch.zeros(8, width)
        shown = round((f + 1) * 8 / draw_frames)
        canvas[:, :shown] = img[:, :shown]
        frames.append(canvas)
    frames += [frames[-1].clone() for _ in range(hold_frames)]
    for f in range(move_frames):
        shift = min((f + 2) // 2, width - 8)
        canvas = torch.zeros(8, width)
        canvas[:, shift:shift + 8] = img
        frames.append(canvas)
    return torch.stack(frames)
