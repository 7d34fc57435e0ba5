"""course.qat: fake quantization with a straight-through estimator, PTQ and QAT of weights (01_edge)."""
import pytest
import torch
from torch import nn

from course import qat
from course.data import load_digit_splits
from course.models import digit_mlp
from course.training import accuracy, fit


def test_fake_quantize_matches_torch_per_tensor_in_value_and_gradient():
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(200, generator=gen) * 1.5).requires_grad_(True)
    ref = x.detach().clone().requires_grad_(True)
    ours = qat.fake_quantize(x, 0.1, -3, -8, 7)
    theirs = torch.fake_quantize_per_tensor_affine(ref, 0.1, -3, -8, 7)
    assert torch.allclose(ours, theirs, atol=1e-6)
    upstream = torch.randn(200, generator=gen)
    ours.backward(upstream), theirs.backward(upstream)
    assert torch.allclose(x.grad, ref.grad)
    assert (x.grad == 0).any() and (x.grad != 0).any()


def test_fake_quantize_per_channel_scales_broadcast():
    w = torch.tensor([[0.1, -0.3, 5.0], [2.0, -9.0, 0.0]], requires_grad=True)
    scales = torch.tensor([[0.1], [1.0]])
    out = qat.fake_quantize(w, scales, 0, -4, 3)
    assert torch.allclose(out, torch.tensor([[0.1, -0.3, 0.3], [2.0, -4.0, 0.0]]))
    out.sum().backward()
    assert torch.equal(w.grad, torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]]))


def test_symmetric_qrange_and_weight_scale():
    assert qat.symmetric_qrange(4) == (-8, 7)
    assert qat.symmetric_qrange(2) == (-2, 1)
    with pytest.raises(ValueError):
        qat.symmetric_qrange(1)
    w = torch.tensor([[1.5, -0.5], [0.0, 0.0]])
    scale = qat.weight_scale(w, 4)
    assert scale.shape == (2, 1)
    assert scale[0, 0].item() == pytest.approx(1.5 / 7.5)
    assert scale[1, 0].item() > 0          # an all-zero row must not divide by zero


def test_quantize_weights_leaves_at_most_2_to_the_bits_values_per_row_and_keeps_the_original():
    model = digit_mlp(hidden=(16,), seed=0)
    before = model.net[0].weight.detach().clone()
    quantized = qat.quantize_weights(model, 3)
    assert torch.equal(model.net[0].weight, before)
    for row in quantized.net[0].weight:
        assert len(torch.unique(row)) <= 8
    assert torch.equal(quantized.net[0].bias, model.net[0].bias)


def test_with_fake_quant_swaps_linears_and_to_plain_linear_returns_quantized_weights():
    model = digit_mlp(hidden=(16,), seed=1)
    fake = qat.with_fake_quant(model, 4)
    assert all(type(m) is not nn.Linear for m in fake.modules())
    x = torch.rand(5, 64)
    plain = qat.to_plain_linear(fake)
    assert all(not isinstance(m, qat.FakeQuantLinear) for m in plain.modules())
    assert torch.allclose(plain(x), fake(x), atol=1e-5)
    assert torch.allclose(plain(x), qat.quantize_weights(model, 4)(x), atol=1e-5)


@pytest.mark.slow
def test_qat_recovers_accuracy_that_2_bit_ptq_loses():
    digits = load_digit_splits()
    model = digit_mlp(hidden=(64,), seed=0)
    fit(model, digits.train, epochs=10, lr=1e-3)
    ptq = accuracy(qat.quantize_weights(model, 2), digits.val)
    trained = qat.qat_finetune(model, 2, digits.train, epochs=3, lr=1e-3, seed=0)
    assert accuracy(trained, digits.val) > ptq
