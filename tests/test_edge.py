import copy
import io

import pytest
import torch
from torch import nn

from course import edge
from course.data import load_digit_splits
from course.models import digit_mlp
from course.training import accuracy, fit


@pytest.fixture(scope="module")
def digits():
    return load_digit_splits()


@pytest.fixture(scope="module")
def trained(digits):
    model = digit_mlp(hidden=(64, 32), seed=0)
    fit(model, digits.train, epochs=8)
    return model.eval()


def test_budget_admits_only_within_every_limit():
    budget = edge.Budget(max_latency_ms=1.0, max_size_bytes=1000, min_accuracy=0.9)
    assert budget.admits(1.0, 1000, 0.9)
    assert not budget.admits(1.1, 10, 0.99)
    assert not budget.admits(0.1, 1001, 0.99)
    assert not budget.admits(0.1, 10, 0.89)


def test_classes_subset_relabels_in_order(digits):
    sub = edge.classes_subset(digits.val, [5, 6, 7, 8, 9])
    assert set(sub.y.tolist()) == {0, 1, 2, 3, 4}
    assert len(sub) == int((digits.val.y >= 5).sum())
    first = int(torch.nonzero(digits.val.y == 7)[0])
    assert torch.equal(sub.x[int(torch.nonzero(sub.y == 2)[0])], digits.val.x[first])


def test_static_int8_is_smaller_and_as_accurate(digits):
    trained = digit_mlp(hidden=(256, 256), seed=0)
    fit(trained, digits.train, epochs=4)
    trained.eval()
    ranges = edge.calibrate_input_absmax(trained, digits.train.loader(256), num_batches=2)
    assert all(not m._forward_pre_hooks for m in trained.modules())
    quantized = edge.quantize_int8_static(trained, ranges)

    def saved(m):
        buffer = io.BytesIO()
        torch.save(m.state_dict(), buffer)
        return buffer.tell()

    assert saved(quantized) < saved(trained) / 3.5
    assert abs(accuracy(quantized, digits.test) - accuracy(trained, digits.test)) <= 0.02
    with pytest.raises(ValueError, match="no calibration range"):
        edge.quantize_int8_static(trained, {"net.0": 1.0})
    with pytest.raises(ValueError, match="saw no non-zero input"):
        edge.quantize_int8_static(trained, {n: 0.0 for n in ranges})


def test_slice_units_keeps_the_function_of_kept_units():
    torch.manual_seed(0)
    a, b = nn.Linear(4, 6), nn.Linear(6, 3)
    keep = torch.tensor([0, 2, 5])
    a2, b2 = edge.slice_units(a, b, keep)
    x = torch.randn(7, 4)
    hidden = torch.relu(a(x))
    mask = torch.zeros(6)
    mask[keep] = 1
    expected = b(hidden * mask)  # the dropped units contribute nothing
    assert torch.allclose(b2(torch.relu(a2(x))), expected, atol=1e-6)
    assert a2.weight.shape == (3, 4) and b2.weight.shape == (3, 3)


def test_prune_hidden_units_shrinks_every_hidden_layer(trained, digits):
    pruned = edge.prune_hidden_units(trained, 0.5)
    widths = [m.out_features for m in pruned.modules() if isinstance(m, nn.Linear)]
    assert widths == [32, 16, 10]
    assert edge.linear_macs(pruned) < edge.linear_macs(trained) / 2
    assert accuracy(pruned, digits.test) > 0.5
    assert [m.out_features for m in trained.modules() if isinstance(m, nn.Linear)] == [64, 32, 10]
    with pytest.raises(ValueError):
        edge.prune_hidden_units(trained, 0)


def test_global_magnitude_prune_and_sparsity(trained):
    pruned = edge.global_magnitude_prune(trained, 0.7)
    assert 0.69 <= edge.sparsity(pruned) <= 0.71
    assert edge.sparsity(trained) < 0.01
    kept = torch.cat([m.weight.abs().flatten() for m in pruned.modules() if isinstance(m, nn.Linear)])
    dropped_max = max((orig.weight.abs() * (new.weight == 0)).max().item()
                      for orig, new in zip([m for m in trained.modules() if isinstance(m, nn.Linear)],
                                           [m for m in pruned.modules() if isinstance(m, nn.Linear)],
                                           strict=True))
    assert dropped_max <= kept[kept > 0].min().item()


def test_sensitivity_scan_reports_each_layer(trained, digits):
    scan = edge.sensitivity_scan(trained, digits.val, [0.0, 0.9])
    assert set(scan) == {"net.0", "net.2", "net.4"}
    for name, (full, heavy) in scan.items():
        assert full == pytest.approx(accuracy(trained, digits.val))
        assert heavy <= full + 1e-9, name


def test_onnx_export_runs_any_batch_and_int8_is_smaller(trained, digits, tmp_path):
    path = edge.export_onnx(trained, tmp_path / "m.onnx", digits.test.x[:8])
    session = edge.onnx_session(path)
    assert isinstance(session.get_inputs()[0].shape[0], str)
    for n in (1, 5, 64):
        x = digits.test.x[:n]
        assert torch.allclose(edge.onnx_run(session, x), trained(x).detach(), atol=1e-4)
    big = digit_mlp(hidden=(256, 256), seed=1)
    fp32 = edge.export_onnx(big, tmp_path / "big.onnx", digits.test.x[:8])
    int8 = edge.onnx_quantize_int8(fp32, tmp_path / "big_int8.onnx")
    assert int8.stat().st_size < fp32.stat().st_size / 3.5
    assert not (tmp_path / "big_int8.fp32-clean.onnx").exists()
    logits = edge.onnx_run(edge.onnx_session(int8), digits.test.x)
    assert logits.shape == (len(digits.test), 10)


def test_linear_macs_and_energy_constants():
    assert edge.linear_macs(digit_mlp(hidden=(64,))) == 64 * 64 + 64 * 10
    assert edge.ENERGY_PJ["fp32_mult"] > edge.ENERGY_PJ["int8_mult"] * 10


def test_pareto_front_drops_dominated_rows():
    rows = [{"name": "a", "latency_ms": 1.0, "size_bytes": 10, "accuracy": 0.9},
            {"name": "b", "latency_ms": 2.0, "size_bytes": 10, "accuracy": 0.95},
            {"name": "c", "latency_ms": 2.5, "size_bytes": 10, "accuracy": 0.93},   # worse than b
            {"name": "d", "latency_ms": 1.0, "size_bytes": 10, "accuracy": 0.85},   # worse than a
            {"name": "e", "latency_ms": 3.0, "size_bytes": 1, "accuracy": 0.85}]    # smallest: kept
    assert [r["name"] for r in edge.pareto_front(rows)] == ["a", "b", "e"]
    assert [r["name"] for r in edge.pareto_front(rows, minimize=("latency_ms",))] == ["a", "b"]
    twins = [dict(rows[0]), dict(rows[0], name="a2")]
    assert len(edge.pareto_front(twins)) == 2  # equal rows do not dominate each other
    assert copy.deepcopy(rows) == rows


def test_new_head_freezes_the_backbone():
    model = edge.new_head(digit_mlp(hidden=(16,)), 3)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["net.2.weight", "net.2.bias"]
    assert model(torch.zeros(2, 64)).shape == (2, 3)


def test_calibration_respects_num_batches():
    model = nn.Sequential(nn.Linear(2, 2))
    batches = [(torch.ones(1, 2), None), (torch.full((1, 2), -5.0), None), (torch.full((1, 2), 50.0), None)]
    assert edge.calibrate_input_absmax(model, batches, 2) == {"0": 5.0}


def test_distillation_loss_reduces_to_cross_entropy_and_to_zero():
    torch.manual_seed(0)
    s, t, y = torch.randn(4, 10), torch.randn(4, 10), torch.randint(0, 10, (4,))
    assert torch.isclose(edge.distillation_loss(s, t, y, alpha=0.0), nn.functional.cross_entropy(s, y))
    assert edge.distillation_loss(t, t, y, alpha=1.0).abs() < 1e-6


def test_energy_prices_memory_by_where_the_weights_live():
    # 1000 fp32 weights = 4000 bytes: an 8 KB SRAM; 500 64-bit reads at 10 pJ
    assert edge.energy_per_inference_nj(1000, 1000, 32) == pytest.approx((1000 * 4.6 + 500 * 10.0) / 1000)
    # int8 multiplies accumulate in int32: 0.2 + 0.1 pJ per MAC; 1000 bytes, 125 reads
    assert edge.energy_per_inference_nj(1000, 1000, 8) == pytest.approx((1000 * 0.3 + 125 * 10.0) / 1000)
    # 300 000 fp32 weights = 1.2 MB: DRAM; as int8, 300 KB: the 1 MB SRAM
    assert edge.weight_memory(1.2e6) == ("DRAM", 1300.0)
    assert edge.weight_memory(300_000) == ("1 MB SRAM", 100.0)
    assert edge.weight_memory(8 * 1024) == ("8 KB SRAM", 10.0)
    dram = edge.energy_per_inference_nj(300_000, 300_000, 32)
    assert dram == pytest.approx((300_000 * 4.6 + 150_000 * 1300.0) / 1000)
    assert dram > 30 * edge.energy_per_inference_nj(300_000, 300_000, 8)   # memory dominates
    with pytest.raises(ValueError):
        edge.energy_per_inference_nj(1, 1, 4)


def test_choose_variant_checks_every_limit():
    budget = edge.Budget(1.0, 1000, 0.9)
    rows = [{"name": "a", "latency_ms": 0.5, "size_bytes": 900, "accuracy": 0.95, "energy_nj": 2.0},
            {"name": "b", "latency_ms": 0.5, "size_bytes": 900, "accuracy": 0.95, "energy_nj": 1.0},
            {"name": "c", "latency_ms": 5.0, "size_bytes": 9, "accuracy": 0.99, "energy_nj": 0.1},
            {"name": "d", "latency_ms": 0.1, "size_bytes": 5000, "accuracy": 0.99, "energy_nj": 0.1},
            {"name": "e", "latency_ms": 0.1, "size_bytes": 9, "accuracy": 0.5, "energy_nj": 0.1}]
    assert edge.choose_variant(rows, budget) == "b"
    assert edge.choose_variant(rows[2:], budget) is None


def test_budget_ram_limit_is_checked_only_when_both_sides_give_one():
    budget = edge.Budget(1.0, 1000, 0.9, max_ram_bytes=2048)
    assert budget.admits(1.0, 1000, 0.9, 2048)
    assert not budget.admits(1.0, 1000, 0.9, 2049)
    assert budget.admits(1.0, 1000, 0.9)                      # no RAM figure: not checked
    assert edge.Budget(1.0, 1000, 0.9).admits(1.0, 1000, 0.9, 10 ** 9)   # no RAM limit
    rows = [{"name": "hungry", "latency_ms": 0.1, "size_bytes": 10, "accuracy": 0.95, "ram_bytes": 4096,
             "energy_nj": 0.1},
            {"name": "lean", "latency_ms": 0.1, "size_bytes": 10, "accuracy": 0.95, "ram_bytes": 96, "energy_nj": 1.0}]
    assert edge.choose_variant(rows, budget) == "lean"


def test_peak_activation_bytes_is_the_largest_input_plus_output():
    model = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    x = torch.zeros(1, 64)
    assert edge.peak_activation_bytes(model, x) == (512 + 512) * 4
    assert edge.peak_activation_bytes(model, x, bits=8) == 1024
    assert edge.peak_activation_bytes(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)), x) == 96 * 4
    with pytest.raises(ValueError):
        edge.peak_activation_bytes(nn.ReLU(), x)
