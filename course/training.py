"""A plain training loop and accuracy, used by every module after the orientation.

Taught in 00_orientation ("Train for one epoch"), where learners write the loop themselves.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from course.data import Split


def train_epoch(model: nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer,
                loss_fn=nn.functional.cross_entropy, device: torch.device | str | None = None,
                progress: bool = False) -> float:
    """One pass over `batches` of (x, y); returns the mean loss per sample."""
    device = device or next(model.parameters()).device
    model.train()
    total, count = 0.0, 0
    for x, y in tqdm(batches, desc="train", leave=False, disable=not progress):
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(y)
        count += len(y)
    if count == 0:
        raise ValueError("train_epoch got no batches: is the loader empty?")
    return total / count


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, batch_size: int = 512) -> float:
    """Fraction of `split` the model classifies correctly (evaluated in eval mode)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(split), batch_size):
        x = split.x[start:start + batch_size].to(device)
        y = split.y[start:start + batch_size].to(device)
        correct += (model(x).argmax(dim=1) == y).sum().item()
    model.train(was_training)
    return correct / len(split)


def fit(model: nn.Module, train: Split, epochs: int, lr: float = 1e-2, batch_size: int = 64,
        seed: int = 0, val: Split | None = None, progress: bool = False) -> list[dict]:
    """Adam for `epochs` epochs; returns one record per epoch (loss, and val accuracy if given).

    With `progress`, one bar counts the epochs and shows the latest loss and accuracy.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    bar = tqdm(range(epochs), desc="fit", disable=not progress)
    for epoch in bar:
        loader = train.loader(batch_size=batch_size, shuffle=True, seed=seed + epoch)
        record = {"epoch": epoch + 1, "loss": train_epoch(model, loader, optimizer)}
        if val is not None:
            record["val_accuracy"] = accuracy(model, val)
        bar.set_postfix({k: round(v, 3) for k, v in record.items() if k != "epoch"})
        history.append(record)
    return history
