"""Plotting defaults and the few plots that recur.

Taught in 00_orientation; `setup` applies the defaults, so figures look the same everywhere.
"""

from __future__ import annotations

import statistics

import matplotlib as mpl
import matplotlib.pyplot as plt
import torch

# Okabe and Ito's palette: its colours stay apart under every common colour-vision deficiency
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442", "#000000"]

DEFAULTS = {
    "axes.prop_cycle": mpl.cycler(color=OKABE_ITO),
    "image.cmap": "viridis",          # perceptually uniform, and readable in grey or with deuteranopia
    "figure.figsize": (6.0, 3.5),
    "figure.dpi": 100,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 10,
}


def apply_defaults() -> None:
    mpl.rcParams.update(DEFAULTS)


def show_digits(x: torch.Tensor, labels=None, ncols: int = 10, title: str | None = None):
    """Show rows of 64 pixels (or 8x8 images) as a grid, with optional labels above each."""
    images = x.detach().cpu().reshape(-1, 8, 8).numpy()
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 0.75, nrows * 1.0 + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=1)
            if labels is not None:
                ax.set_title(str(int(labels[i])), fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_samples(samples_s, label: str, ax=None, unit: str = "ms"):
    """A strip of repeated timings with its median marked: shows spread, not just a number."""
    scale = {"s": 1.0, "ms": 1e3, "us": 1e6}[unit]
    values = [s * scale for s in samples_s]
    ax = ax or plt.gca()
    ax.plot(range(1, len(values) + 1), values, "o", alpha=0.6, label=label)
    median = statistics.median(values)
    ax.axhline(median, linestyle="--", linewidth=1, color=ax.lines[-1].get_color())
    ax.set_xlabel("repeat")
    ax.set_ylabel(f"time ({unit})")
    return ax
