"""course.adversarial: attacks, the spiking networks as attack targets, the input squeeze, events (02_snn)."""

import pytest
import torch
from snntorch import spikegen
from torch import nn

from course import adversarial as adv
from course import snn as csnn


def linear_model():
    model = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]]))
    return model


def test_fgsm_steps_along_the_sign_uses_the_label_and_clamps():
    model = linear_model()
    x = torch.tensor([[0.5, 0.5, 0.5], [0.02, 0.99, 0.5], [0.2, 0.8, 0.5]])
    out = adv.fgsm(model, x, torch.tensor([0, 0, 0]), 0.1)
    expected = torch.tensor([[0.4, 0.6, 0.5], [0.0, 1.0, 0.5], [0.1, 0.9, 0.5]])
    assert torch.allclose(out, expected, atol=1e-6)
    assert not out.requires_grad and all(p.grad is None for p in model.parameters())


def test_fgsm_runs_the_model_in_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)).train()
    x, y = torch.rand(5, 8), torch.randint(0, 3, (5,))
    first = adv.fgsm(model, x, y, 0.05)
    model.train()
    assert torch.equal(first, adv.fgsm(model, x, y, 0.05)) and not model.training


def test_pgd_stays_in_the_ball_around_the_clean_image():
    model = linear_model()
    x, y = torch.tensor([[0.5, 0.5, 0.5]]), torch.tensor([0])
    assert torch.allclose(adv.pgd(model, x, y, 0.1, 0.03, 10), torch.tensor([[0.4, 0.6, 0.5]]), atol=1e-6)
    assert torch.allclose(adv.pgd(model, x, y, 0.1, 0.03, 2), torch.tensor([[0.44, 0.56, 0.5]]), atol=1e-6)
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4))
    xs, ys = torch.rand(20, 6), torch.randint(0, 4, (20,))
    out = adv.pgd(net, xs, ys, 0.07, 0.02, 8)
    assert (out - xs).abs().max() <= 0.07 + 1e-6 and out.min() >= 0 and out.max() <= 1


def test_converted_snn_true_gradient_is_zero_and_bpda_is_the_clipped_relu_gradient():
    torch.manual_seed(2)
    weights = [torch.rand(16, 8) * 0.3, torch.randn(3, 16)]
    x = torch.rand(4, 8).requires_grad_(True)
    true = adv.ConvertedSNN(weights, 20, gradient="true")
    assert torch.allclose(true(x), csnn.run_if_network(weights, x.detach(), 20))
    (grad,) = torch.autograd.grad(true(x).sum(), x)
    assert torch.count_nonzero(grad) == 0
    bpda = adv.ConvertedSNN(weights, 20, gradient="bpda")
    assert torch.allclose(bpda(x), true(x))
    (grad,) = torch.autograd.grad(bpda(x).sum(), x)
    (expected,) = torch.autograd.grad(csnn.relu_network(weights, x, clip=1.0).sum(), x)
    assert torch.allclose(grad, expected)
    with pytest.raises(ValueError):
        adv.ConvertedSNN(weights, 20, gradient="surrogate")


def test_rate_coded_snn_is_deterministic_and_differentiable():
    torch.manual_seed(3)
    wrapped = adv.RateCodedSNN(csnn.DigitSNN(hidden=16), num_steps=6, seed=4)
    x = torch.rand(3, 64).requires_grad_(True)
    first = wrapped(x)
    assert first.shape == (3, 10) and torch.equal(first, wrapped(x))
    (grad,) = torch.autograd.grad(first.sum() + 0.0 * x.sum(), x)
    assert grad.shape == x.shape


def test_rate_coded_snn_feeds_the_net_on_its_own_device():
    """02's attacks wrap SNNs trained on ctx.device (CUDA on a GPU) and attack CPU images. The "meta" device
    stands in for CUDA here: the net must receive its spikes there, and x's device must get the counts back."""

    class OnMeta(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.empty(10, 64, device="meta"))
            self.seen = []

        def forward(self, spikes):
            self.seen.append(spikes.device.type)
            return torch.ones(spikes.shape[0], spikes.shape[1], 10)

    net = OnMeta()
    out = adv.RateCodedSNN(net, num_steps=4, seed=0)(torch.rand(3, 64))
    assert net.seen == ["meta"] and out.device.type == "cpu" and out.shape == (3, 10)


def test_bit_depth_reduction_and_its_gradients():
    x = torch.tensor([[0.1, 0.4, 0.6, 0.95]])
    assert torch.equal(adv.reduce_bit_depth(x, 1), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    assert torch.allclose(adv.reduce_bit_depth(x, 2), torch.tensor([[0.0, 1 / 3, 2 / 3, 1.0]]))
    with pytest.raises(ValueError):
        adv.reduce_bit_depth(x, 0)
    model = nn.Linear(4, 2)
    masked, adaptive = adv.Squeezed(model, 1), adv.Squeezed(model, 1, bpda=True)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(masked(xg).sum(), xg)
    assert torch.count_nonzero(grad) == 0                      # rounding: zero gradient, a masked attack
    (grad,) = torch.autograd.grad(adaptive(xg).sum(), xg)
    assert torch.allclose(grad, model.weight.sum(0, keepdim=True))
    assert torch.equal(masked(x), adaptive(x))


def test_delta_encode_equals_snntorch_delta():
    torch.manual_seed(5)
    frames = torch.rand(10, 2, 7)
    for threshold in [0.05, 0.3]:
        assert torch.equal(adv.delta_encode(frames, threshold),
                           spikegen.delta(frames, threshold=threshold, off_spike=True))
    assert torch.equal(adv.delta_encode(torch.tensor([1.0, 2.0, 0.0, 2.0, 2.9]), 1.0),
                       torch.tensor([1.0, 1.0, -1.0, 1.0, 0.0]))


def test_drawn_and_moved_scene():
    image = torch.rand(64)
    scene = adv.drawn_and_moved(image)
    assert scene.shape == (24, 8, 12)
    assert torch.equal(scene[7, :, :8], image.reshape(8, 8)) and torch.equal(scene[8], scene[15])
    assert torch.equal(scene[-1][:, 4:], image.reshape(8, 8))
    assert adv.delta_encode(scene, 0.01)[8:16].abs().sum() == 0


def test_bad_input_gets_a_clear_error():
    from course import contention, litert, personalise, qat

    model, x, y = nn.Linear(3, 2), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="negative"):
        adv.fgsm(model, x, y, -0.1)
    with pytest.raises(ValueError, match="one label per input"):
        adv.fgsm(model, x, torch.zeros(3, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match="negative"):
        adv.pgd(model, x, y, -0.1, 0.01, 3)
    with pytest.raises(ValueError, match="whole number"):
        adv.reduce_bit_depth(x, 1.5)
    with pytest.raises(ValueError, match="qmin"):
        qat.fake_quantize(x, 0.1, 0, 7, -8)
    with pytest.raises(ValueError, match="positive"):
        qat.fake_quantize(x, 0.0, 0, -8, 7)
    with pytest.raises(ValueError, match="negative"):
        personalise.training_bytes(model, -1)
    with pytest.raises(ValueError, match="no latency samples"):
        contention.tail_summary([], 1e-3)
    with pytest.raises(TypeError, match="integers only"):
        litert.requantize(torch.tensor([1.7]), 1 << 30, 31)
    with pytest.raises(ValueError, match="at least 1"):
        litert.requantize(torch.tensor([3]), 1 << 30, 0)
    with pytest.raises(TypeError, match="x_q must be torch.int8"):
        litert.int8_linear(torch.zeros(1, 2), 0, torch.zeros(1, 2, dtype=torch.int8), torch.zeros(1, dtype=torch.int32),
                           torch.tensor([1 << 30]), torch.tensor([31]), 0)
