"""Spiking neural networks: encode, simulate, train, convert, count operations, inject faults.

Taught in 02_snn. snntorch 1.0 supplies the neurons, surrogate gradients and encoders.
Its `utils.reset` resets every live neuron of a class in the process and misses neurons
nested in blocks (fixed only after 1.0), so state here is always reset explicitly with
`reset_mem()` at the start of each forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import snntorch as snn
import torch
from snntorch import surrogate
from torch import nn

from course.data import Split, epoch_orders
from course.edge import ENERGY_PJ, distillation_loss

MAC_PJ = ENERGY_PJ["fp32_mult"] + ENERGY_PJ["fp32_add"]   # 4.6 pJ: a multiply-accumulate
AC_PJ = ENERGY_PJ["fp32_add"]                              # 0.9 pJ: an accumulate, what a spike costs


# ----------------------------------------------------------------- neurons and encoders

def lif_step(current: torch.Tensor, mem: torch.Tensor, beta: float, threshold: float = 1.0):
    """One step of snn.Leaky's default neuron: leak, integrate, fire, and subtract the
    threshold one step after a spike (snntorch's `reset_delay=True`). Returns (spike, mem)."""
    reset = (mem > threshold).float()
    mem = beta * mem + current - reset * threshold
    return (mem > threshold).float(), mem


def rate_code(x: torch.Tensor, num_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[num_steps, *x.shape] Bernoulli spikes firing with probability x (x in [0, 1])."""
    if x.min() < 0 or x.max() > 1:
        raise ValueError("rate coding needs intensities in [0, 1]")
    return torch.bernoulli(x.expand(num_steps, *x.shape), generator=generator)


def latency_code(x: torch.Tensor, num_steps: int, threshold: float = 0.01) -> torch.Tensor:
    """One spike per input at step round((1 - x) * (num_steps - 1)); none below `threshold`.
    Equals spikegen.latency(x, num_steps, linear=True, normalize=True, clip=True)."""
    times = torch.round((1 - x) * (num_steps - 1)).long()
    spikes = torch.zeros(num_steps, *x.shape)
    spikes.scatter_(0, times.unsqueeze(0), 1.0)
    return spikes * (x >= threshold).float()


# ----------------------------------------------------------------- a trainable SNN

class DigitSNN(nn.Module):
    """64 inputs -> `hidden` LIF neurons -> 10 LIF neurons, trained with a fast-sigmoid surrogate.

    Input: spikes [T, B, 64]. Output: output spikes [T, B, 10]; the class is the most active neuron.
    """

    def __init__(self, hidden: int = 128, beta: float = 0.9, slope: float = 25.0):
        super().__init__()
        grad = surrogate.fast_sigmoid(slope=slope)
        self.fc1, self.lif1 = nn.Linear(64, hidden), snn.Leaky(beta=beta, spike_grad=grad)
        self.fc2, self.lif2 = nn.Linear(hidden, 10), snn.Leaky(beta=beta, spike_grad=grad)

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        mem1, mem2 = self.lif1.reset_mem(), self.lif2.reset_mem()  # a fresh state for every batch
        out = []
        for step in spikes:
            spk1, mem1 = self.lif1(self.fc1(step), mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            out.append(spk2)
        return torch.stack(out)


def spike_count_accuracy(net: nn.Module, split: Split, num_steps: int, seed: int = 0) -> float:
    """Accuracy of the most active output neuron, with rate-coded inputs from a fixed seed."""
    device = next(net.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    net.eval()
    with torch.no_grad():
        spikes = rate_code(split.x, num_steps, generator).to(device)
        counts = net(spikes).sum(0)
    return (counts.argmax(1).cpu() == split.y).float().mean().item()


def train_snn(net: nn.Module, train: Split, num_steps: int = 25, epochs: int = 8, lr: float = 2e-3,
              batch_size: int = 64, seed: int = 0, teacher_logits: torch.Tensor | None = None,
              temperature: float = 4.0, alpha: float = 0.5) -> nn.Module:
    """Adam on cross-entropy of spike counts; with `teacher_logits`, distil from an ANN too."""
    from snntorch import functional as SF

    device = next(net.parameters()).device
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    count_loss = SF.ce_count_loss()
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for order in epoch_orders(len(train), epochs, seed):
        for batch in order.split(batch_size):
            x, y = train.x[batch], train.y[batch]
            spikes = rate_code(x, num_steps, generator).to(device)
            out = net(spikes)
            if teacher_logits is None:
                loss = count_loss(out, y.to(device))
            else:
                loss = distillation_loss(out.sum(0), teacher_logits[batch].to(device), y.to(device),
                                         T=temperature, alpha=alpha)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval()


# ----------------------------------------------------------------- ANN-to-SNN conversion

class ReluMLP(nn.Module):
    """A bias-free ReLU network: the kind that converts cleanly to integrate-and-fire neurons."""

    def __init__(self, widths: Sequence[int] = (64, 128, 10)):
        super().__init__()
        pairs = zip(widths[:-1], widths[1:], strict=True)
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in pairs)

    def forward(self, x: torch.Tensor, record: list | None = None) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
                if record is not None:
                    record.append(x)
        return x


def balance_weights(ann: ReluMLP, x: torch.Tensor, percentile: float = 99.9) -> list[torch.Tensor]:
    """Data-based normalisation, the robust variant of Rueckauer et al. 2017 as their SNN toolbox
    computes it (snntoolbox/conversion/utils.py): lambda_l = `percentile` of layer l's NON-ZERO ReLU
    outputs on `x` (the toolbox's default is 99.9); each layer's weights are scaled by
    lambda_{l-1} / lambda_l, with lambda_0 = 1 for inputs in [0, 1], and the output layer, which
    does not spike, by lambda_{L-1} alone."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile is in percent, in (0, 100]; got {percentile}")
    activations: list[torch.Tensor] = []
    with torch.no_grad():
        ann(x, record=activations)
    lambdas = [1.0]
    for i, a in enumerate(activations):
        active = a[a > 0]
        if active.numel() == 0:
            raise ValueError(f"hidden layer {i} never activates on these inputs: no scale to measure")
        lambdas.append(torch.quantile(active, percentile / 100).item())
    weights = []
    for i, layer in enumerate(ann.layers):
        scale = lambdas[i] / lambdas[i + 1] if i + 1 < len(lambdas) else lambdas[i]
        weights.append(layer.weight.detach() * scale)
    return weights


def run_if_network(weights: Sequence[torch.Tensor], x: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Integrate-and-fire simulation of a converted network with constant input current `x`.
    Hidden neurons: threshold 1, reset by subtraction. Output: accumulated membrane (no spikes).
    Returns the output membrane divided by num_steps, comparable with the ANN's logits."""
    mems = [torch.zeros(x.shape[0], w.shape[0]) for w in weights]
    for _ in range(num_steps):
        signal = x
        for i, w in enumerate(weights):
            mems[i] = mems[i] + signal @ w.T
            if i < len(weights) - 1:
                spikes = (mems[i] >= 1.0).float()
                mems[i] = mems[i] - spikes
                signal = spikes
    return mems[-1] / num_steps


def relu_network(weights: Sequence[torch.Tensor], x: torch.Tensor, clip: float | None = None) -> torch.Tensor:
    """The ReLU network that `weights` compute, as an ANN: the logits of x. With balanced weights
    (from `balance_weights`) it computes the same function as the original ANN, because ReLU
    commutes with positive scaling. With `clip`, every hidden ReLU saturates at `clip`: clip=1 is
    what an integrate-and-fire neuron firing at most once per step computes (02_snn's fault section)."""
    signal = x
    for i, w in enumerate(weights):
        signal = signal @ w.T
        if i < len(weights) - 1:
            signal = torch.relu(signal) if clip is None else torch.clamp(signal, 0.0, clip)
    return signal


def label_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose largest logit is the label."""
    return (logits.argmax(1) == labels).float().mean().item()


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of a few runs."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    return t.mean().item(), (t.std().item() if len(t) > 1 else 0.0)


def compare_paired(a: Sequence[float], b: Sequence[float], name_a: str, name_b: str,
                   unit: str = "seeds", negligible: float = 0.0) -> str:
    """One sentence saying whether runs `b` differ from runs `a` beyond seed-to-seed noise.

    a[i] and b[i] come from the same seed (or the same run: name it with `unit`). The rule is a
    rough one: the mean of the paired differences b - a against twice its standard error. A
    difference beyond that but smaller than `negligible` is reported as consistent but small."""
    if len(a) != len(b) or not a:
        raise ValueError("compare_paired needs two equally long, non-empty lists of paired runs")
    diffs = [float(y) - float(x) for x, y in zip(a, b, strict=True)]
    if len(diffs) == 1:
        return f"one run only: {name_b} minus {name_a} is {diffs[0]:+.3f}; with no spread, no verdict"
    mean, std = mean_std(diffs)
    se = std / len(diffs) ** 0.5
    spread = f"{mean:+.3f} ± {se:.3f} (standard error over {len(diffs)} {unit})"
    if abs(mean) <= 2 * se:
        return f"no clear difference: {name_b} minus {name_a} is {spread}, within two standard errors of 0"
    if abs(mean) < negligible:
        return (f"a consistent but small difference: {name_b} minus {name_a} is {spread}, "
                f"beyond two standard errors but below {negligible:g}")
    direction = "higher" if mean > 0 else "lower"
    return f"{name_b} is {direction} than {name_a}: the difference is {spread}, beyond two standard errors"


# ----------------------------------------------------------------- operations and energy

def count_synops(layer_inputs: Sequence[torch.Tensor], layers: Sequence[nn.Linear]) -> float:
    """Synaptic operations per sample: every input spike to a layer adds its weight to each of
    the layer's out_features neurons. layer_inputs[l] is [T, B, in_features] of 0/1 spikes."""
    batch = layer_inputs[0].shape[1]
    return sum(spikes.sum().item() * layer.out_features
               for spikes, layer in zip(layer_inputs, layers, strict=True)) / batch


# ----------------------------------------------------------------- faults

def flip_bits(weight: torch.Tensor, count: int, bit: int, generator: torch.Generator) -> torch.Tensor:
    """A copy of float32 `weight` with `bit` flipped in `count` randomly chosen elements."""
    flipped = weight.detach().clone().contiguous()
    as_int = flipped.view(torch.int32).view(-1)
    chosen = torch.randperm(as_int.numel(), generator=generator)[:count]
    mask = torch.tensor(1 << bit if bit < 31 else -(1 << 31), dtype=torch.int32)
    as_int[chosen] ^= mask
    return flipped


def dead_neuron_mask(size: int, rate: float, generator: torch.Generator) -> torch.Tensor:
    """1 for a working neuron, 0 for a dead one; round(rate * size) dead, chosen at random."""
    mask = torch.ones(size)
    mask[torch.randperm(size, generator=generator)[:round(rate * size)]] = 0.0
    return mask
