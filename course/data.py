"""Offline data: scikit-learn's shipped 8x8 handwritten digits, split once and for all.

Taught in 00_orientation ("The running example"). The digits come inside the
scikit-learn wheel, so nothing is downloaded. The split is fixed by a seed, so every
module, every learner and the autograder see the same train, validation and test sets.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

SPLIT_SEED = 1234
VAL_FRACTION = 0.15
TEST_FRACTION = 0.15
PIXEL_MAX = 16.0  # the digits' pixels are integers in [0, 16]
IMAGE_SHAPE = (8, 8)
NUM_CLASSES = 10


@dataclass(frozen=True)
class Split:
    """One part of the data: ``x`` is float32 (N, 64) in [0, 1], ``y`` int64 (N,) in 0..9."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def images(self) -> torch.Tensor:
        """The same samples as (N, 1, 8, 8) images, for convolutional models and plots."""
        return self.x.reshape(-1, 1, *IMAGE_SHAPE)

    def loader(self, batch_size: int = 64, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """A DataLoader over this split; shuffling uses its own seeded generator."""
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(TensorDataset(self.x, self.y), batch_size=batch_size,
                          shuffle=shuffle, generator=generator)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class Digits:
    train: Split
    val: Split
    test: Split

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _stratified_indices(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split each class in the same proportions, so every split sees all ten digits."""
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = round(len(idx) * TEST_FRACTION)
        n_val = round(len(idx) * VAL_FRACTION)
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test:n_test + n_val])
        parts[0].append(idx[n_test + n_val:])
    return tuple(np.sort(np.concatenate(p)) for p in parts)


def read_shipped_digits() -> tuple[np.ndarray, np.ndarray]:
    """The (1797, 64) pixels and (1797,) labels from the file scikit-learn ships.

    It is the file `sklearn.datasets.load_digits` reads (64 pixel columns, then the label),
    found without importing scikit-learn: that import pulls in SciPy and pandas, over 100 MB
    in every process, which matters when 04_distributed starts four at once.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("scikit-learn is not installed, and it ships the digits: "
                                  "pip install scikit-learn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.exists():
        raise FileNotFoundError(f"scikit-learn's digits file is missing: {path} (reinstall scikit-learn)")
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)


@cache
def load_digit_splits(seed: int = SPLIT_SEED) -> Digits:
    """The course's running data set: 1797 digits split about 70/15/15, stratified.

    Pixels are scaled to [0, 1]. The same `seed` always gives the same split.
    The returned tensors are shared between calls: copy before changing them in place.
    """
    pixels, labels = read_shipped_digits()
    x = torch.from_numpy((pixels / PIXEL_MAX).astype(np.float32))
    y = torch.from_numpy(labels)
    train, val, test = _stratified_indices(labels, seed)
    pick = lambda idx: Split(x[idx], y[idx])  # noqa: E731
    return Digits(train=pick(train), val=pick(val), test=pick(test))


def epoch_orders(n: int, epochs: int, seed: int) -> list[torch.Tensor]:
    """The sample order of every epoch, from one seeded generator: two loops given the same
    orders see the same batches (taught in 03_profiling's case study)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=generator) for _ in range(epochs)]
