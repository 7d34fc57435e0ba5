import pytest
import torch

from course.bench import param_count
from course.data import load_digit_splits
from course.models import digit_mlp
from course.training import accuracy, fit, train_epoch


def test_digit_mlp_shapes_and_seeded_init():
    model = digit_mlp(hidden=(32, 16), seed=1)
    assert model(torch.zeros(5, 64)).shape == (5, 10)
    assert model(torch.zeros(5, 1, 8, 8)).shape == (5, 10)
    assert param_count(model) == 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    same = digit_mlp(hidden=(32, 16), seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters(), strict=True))


def test_digit_mlp_does_not_disturb_the_global_generator():
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    digit_mlp(seed=3)
    assert torch.equal(torch.rand(1), expected)


def test_digit_mlp_rejects_wrong_width_clearly():
    with pytest.raises(ValueError, match="expects 64 pixels"):
        digit_mlp()(torch.zeros(2, 63))


def test_train_epoch_returns_per_sample_mean_with_uneven_batches():
    digits = load_digit_splits()
    model = digit_mlp(seed=0)
    loss = train_epoch(model, digits.val.loader(batch_size=7), torch.optim.SGD(model.parameters(), lr=0.0))
    with torch.no_grad():
        whole = torch.nn.functional.cross_entropy(model(digits.val.x), digits.val.y).item()
    assert loss == pytest.approx(whole, rel=1e-5)


def test_train_epoch_rejects_empty_loader():
    model = digit_mlp()
    with pytest.raises(ValueError, match="no batches"):
        train_epoch(model, [], torch.optim.SGD(model.parameters(), lr=0.1))


def test_fit_learns_digits_and_accuracy_restores_mode():
    digits = load_digit_splits()
    model = digit_mlp(seed=0)
    before = accuracy(model, digits.val)
    history = fit(model, digits.train, epochs=3, val=digits.val)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["val_accuracy"] > max(0.9, before)
    assert model.training  # accuracy() switched to eval and back
