"""course.personalise: a driver's style, few-shot draws, which parameters train, training-step memory (01_edge)."""
import pytest
import torch
from torch import nn

from course import personalise
from course.data import load_digit_splits
from course.models import digit_mlp


def test_driver_style_is_deterministic_in_range_and_changes_the_digits():
    x = load_digit_splits().test.x[:20]
    a, b = personalise.driver_style(x), personalise.driver_style(x)
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    assert (a - x).abs().mean() > 0.05
    assert torch.allclose(personalise.driver_style(x, slant=0.0, thicken=0.0), x, atol=1e-5)


def test_few_per_class_draws_that_many_of_each_class():
    split = load_digit_splits().train
    few = personalise.few_per_class(split, 3, seed=0)
    assert sorted(few.y.tolist()) == sorted(list(range(10)) * 3)
    assert not torch.equal(few.x, personalise.few_per_class(split, 3, seed=1).x)


@pytest.mark.parametrize("mode, trainable", [
    ("last layer", ["net.2.bias", "net.2.weight"]),
    ("bias only", ["net.0.bias", "net.2.bias"]),
    ("all", ["net.0.bias", "net.0.weight", "net.2.bias", "net.2.weight"]),
])
def test_trainable_copy_chooses_the_parameters_and_leaves_the_model(mode, trainable):
    model = digit_mlp(hidden=(8,))
    model.requires_grad_(False)
    copy = personalise.trainable_copy(model, mode)
    assert sorted(n for n, p in copy.named_parameters() if p.requires_grad) == trainable
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError):
        personalise.trainable_copy(model, "weights only")


def test_training_step_memory_counts_gradients_optimizer_and_saved_inputs():
    model = nn.Sequential(nn.Linear(4, 3))
    x, y = torch.rand(5, 4), torch.tensor([0, 1, 2, 0, 1])
    memory = personalise.training_step_memory(model, x, y)
    assert memory.weights == (4 * 3 + 3) * 4
    assert memory.gradients == memory.weights and memory.optimizer == 2 * memory.weights
    # the input x (5 x 4) is saved for the weight's gradient, the log-softmax output (5 x 3) for the loss
    assert memory.saved_activations >= 5 * 4 * 4
    frozen_weight = personalise.trainable_copy(nn.Sequential(nn.Linear(4, 3)), "bias only")
    bias_only = personalise.training_step_memory(frozen_weight, x, y)
    assert bias_only.gradients == 3 * 4
    assert bias_only.saved_activations < memory.saved_activations   # x is no longer needed
    assert memory.total == memory.weights + memory.gradients + memory.optimizer + memory.saved_activations


def test_bias_only_unfreezes_biases_and_freezes_the_rest_in_place():
    model = digit_mlp(hidden=(8,)).requires_grad_(False)
    assert personalise.bias_only(model) is model
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == ["net.0.bias", "net.2.bias"]


def test_training_bytes_counts_trainable_parameters_in_their_dtype():
    layer = nn.Linear(3, 2).half()
    assert personalise.training_bytes(layer, optimizer_slots=1) == {"gradients": 8 * 2, "optimizer": 8 * 2}
    layer.weight.requires_grad_(False)
    assert personalise.training_bytes(layer, optimizer_slots=0) == {"gradients": 2 * 2, "optimizer": 0}
