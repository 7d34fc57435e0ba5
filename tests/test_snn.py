import pytest
import snntorch as snn
import torch
from snntorch import spikegen
from torch import nn

from course import snn as csnn
from course.data import load_digit_splits
from course.training import accuracy, fit


def test_lif_step_matches_snntorch_leaky():
    torch.manual_seed(0)
    for beta, threshold in [(0.8, 1.0), (0.95, 0.5)]:
        lif = snn.Leaky(beta=beta, threshold=threshold)
        current = torch.rand(30, 5) * threshold
        mem_ref, mem = torch.zeros(5), torch.zeros(5)
        for step in current:
            spk_ref, mem_ref = lif(step, mem_ref)
            spk, mem = csnn.lif_step(step, mem, beta, threshold)
            assert torch.equal(spk, spk_ref) and torch.allclose(mem, mem_ref, atol=1e-6)


def test_rate_code_fires_at_the_intensity():
    x = torch.tensor([[0.0, 0.25, 1.0]])
    spikes = csnn.rate_code(x, 2000, torch.Generator().manual_seed(0))
    assert spikes.shape == (2000, 1, 3)
    rates = spikes.mean(0)[0]
    assert rates[0] == 0 and rates[2] == 1 and abs(rates[1] - 0.25) < 0.03
    try:
        csnn.rate_code(torch.tensor([1.5]), 3)
    except ValueError as err:
        assert "[0, 1]" in str(err)
    else:
        raise AssertionError("intensities above 1 must be refused")


def test_latency_code_equals_snntorch():
    torch.manual_seed(1)
    x = torch.rand(3, 64)
    x[0, :4] = 0.0
    mine = csnn.latency_code(x, 12)
    ref = spikegen.latency(x, num_steps=12, linear=True, normalize=True, clip=True, threshold=0.01)
    assert torch.equal(mine, ref)
    assert mine.sum(0).max() == 1 and mine[:, 0, :4].sum() == 0


def test_digit_snn_resets_state_and_learns():
    digits = load_digit_splits()
    net = csnn.DigitSNN(hidden=64)
    spikes = csnn.rate_code(digits.val.x[:16], 10, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(net(spikes), net(spikes))  # no state leaks between calls
    before = csnn.spike_count_accuracy(net, digits.val, 10)
    csnn.train_snn(net, digits.train, num_steps=10, epochs=3)
    assert csnn.spike_count_accuracy(net, digits.val, 10) > max(0.8, before)


def test_conversion_tracks_the_ann():
    digits = load_digit_splits()
    ann = csnn.ReluMLP((64, 64, 10))
    fit(ann, digits.train, epochs=6, lr=1e-3)
    ann.eval()
    weights = csnn.balance_weights(ann, digits.train.x)
    acts = []
    with torch.no_grad():
        ann(digits.train.x, record=acts)
    lam = torch.quantile(acts[0][acts[0] > 0], 0.999).item()  # the toolbox's percentile: non-zero values
    assert torch.allclose(weights[0], ann.layers[0].weight / lam)
    assert torch.allclose(weights[1], ann.layers[1].weight * lam)
    out = csnn.run_if_network(weights, digits.test.x, 32)
    assert csnn.label_accuracy(out, digits.test.y) >= accuracy(ann, digits.test) - 0.03
    # balanced weights still compute the ANN: ReLU commutes with positive scaling
    with torch.no_grad():
        assert torch.allclose(csnn.relu_network(weights, digits.test.x), ann(digits.test.x), atol=1e-4)


def test_balance_weights_takes_the_percentile_of_nonzero_activations_and_refuses_silence():
    probe = csnn.ReluMLP((2, 4, 2))
    with torch.no_grad():
        probe.layers[0].weight.copy_(torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 4.0]]))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])       # activations 1, 2, 3, 4 and four zeros
    assert torch.allclose(csnn.balance_weights(probe, x, 50)[0], probe.layers[0].weight / 2.5)
    assert torch.allclose(csnn.balance_weights(probe, x, 100)[0], probe.layers[0].weight / 4.0)
    with pytest.raises(ValueError, match="never activates"):
        csnn.balance_weights(probe, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="percent"):
        csnn.balance_weights(probe, x, 0.999 - 1)


def test_clipped_relu_network_is_what_integrate_and_fire_converges_to():
    torch.manual_seed(0)
    weights = [torch.randn(6, 4), torch.randn(3, 6)]
    x = torch.rand(5, 4)
    hidden = (x @ weights[0].T).clamp(0, 1)
    assert torch.allclose(csnn.relu_network(weights, x, clip=1.0), hidden @ weights[1].T)
    assert torch.allclose(csnn.run_if_network(weights, x, 4000), hidden @ weights[1].T, atol=5e-3)


def test_compare_paired_reports_from_the_numbers():
    assert csnn.mean_std([1.0, 3.0]) == (2.0, pytest.approx(2 ** 0.5))
    assert csnn.mean_std([0.5]) == (0.5, 0.0)
    same = csnn.compare_paired([0.90, 0.91, 0.92], [0.91, 0.90, 0.92], "A", "B")
    assert same.startswith("no clear difference") and "3 seeds" in same
    better = csnn.compare_paired([0.90, 0.91, 0.92], [0.95, 0.97, 0.96], "A", "B", unit="runs")
    assert better.startswith("B is higher than A") and "3 runs" in better
    assert "lower" in csnn.compare_paired([0.9, 0.8], [0.5, 0.41], "A", "B")
    small = csnn.compare_paired([0.90, 0.91, 0.92], [0.905, 0.914, 0.926], "A", "B", negligible=0.01)
    assert small.startswith("a consistent but small difference") and "below 0.01" in small
    assert csnn.compare_paired([0.9], [0.8], "A", "B").startswith("one run only")
    with pytest.raises(ValueError):
        csnn.compare_paired([0.9], [0.8, 0.7], "A", "B")


def test_synops_count_input_spikes_times_fan_out():
    layers = [nn.Linear(3, 4), nn.Linear(4, 2)]
    first = torch.zeros(5, 2, 3)
    first[0, 0, :] = 1          # 3 spikes in sample 0
    second = torch.zeros(5, 2, 4)
    second[:, 1, 0] = 1         # 5 spikes in sample 1
    assert csnn.count_synops([first, second], layers) == (3 * 4 + 5 * 2) / 2
    assert csnn.MAC_PJ == pytest.approx(4.6) and csnn.AC_PJ == 0.9


def test_flip_bits_and_dead_neuron_masks():
    w = torch.ones(10, 10)
    sign = csnn.flip_bits(w, 5, 31, torch.Generator().manual_seed(0))
    assert (sign == -1).sum() == 5 and torch.equal(w, torch.ones(10, 10))
    huge = csnn.flip_bits(w, 3, 30, torch.Generator().manual_seed(0))
    assert (huge > 1e30).sum() == 3
    mask = csnn.dead_neuron_mask(100, 0.3, torch.Generator().manual_seed(0))
    assert mask.sum() == 70
    incoming = torch.randn(100, 4) * mask.unsqueeze(1)
    hidden = torch.relu(torch.rand(8, 4) @ incoming.T)
    assert (hidden[:, mask == 0] == 0).all()    # a dead neuron's zeroed incoming weights keep it silent
