"""Small models that recur across modules.

Taught in 00_orientation ("The running example"): `DigitMLP` is the touchpad digit
classifier that later modules compress, spike, profile, distribute and federate.
"""

from __future__ import annotations

import torch
from torch import nn

from course.data import NUM_CLASSES

INPUT_FEATURES = 64  # 8 x 8 pixels


class DigitMLP(nn.Module):
    """64 pixels -> `hidden` ReLU units (one layer per entry) -> 10 logits."""

    def __init__(self, hidden: tuple[int, ...] = (64,), num_classes: int = NUM_CLASSES):
        super().__init__()
        layers: list[nn.Module] = []
        width = INPUT_FEATURES
        for units in hidden:
            layers += [nn.Linear(width, units), nn.ReLU()]
            width = units
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() > 2:  # accept (N, 1, 8, 8) images as well as (N, 64) rows
            x = x.flatten(1)
        if x.shape[-1] != INPUT_FEATURES:
            raise ValueError(
                f"DigitMLP expects {INPUT_FEATURES} pixels per sample, got shape {tuple(x.shape)}"
            )
        return self.net(x)


def digit_mlp(hidden: tuple[int, ...] = (64,), seed: int = 0, num_classes: int = NUM_CLASSES) -> DigitMLP:
    """A freshly initialised `DigitMLP` whose weights depend only on `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DigitMLP(hidden, num_classes)
