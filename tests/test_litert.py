"""course.litert: the fixed-point arithmetic against hand-worked cases, and (slow) against LiteRT itself."""
import math

import pytest
import torch
from torch import nn

from course import litert


def test_quantize_multiplier_hand_cases_and_precision():
    assert litert.quantize_multiplier(0.75) == (1610612736, 31)
    assert litert.quantize_multiplier(0.1) == (1717986918, 34)
    assert litert.quantize_multiplier(0.5) == (1 << 30, 31)
    assert litert.quantize_multiplier(1 - 2 ** -40) == (1 << 30, 30)    # m0 rounded up to 2**31: halved
    for m in (0.3, 1e-4, 2.5e-6):
        m0, n = litert.quantize_multiplier(m)
        assert 2 ** 30 <= m0 < 2 ** 31 and math.isclose(m0 / 2 ** n, m, rel_tol=2 ** -30)
    for bad in (0.0, 1.0, -0.5, 2.0):
        with pytest.raises(ValueError):
            litert.quantize_multiplier(bad)


def test_requantize_rounds_halves_up_and_broadcasts_per_column():
    got = litert.requantize(torch.tensor([100, -100, 5, -5, 2, -2]), 3 << 29, 31)
    assert got.tolist() == [75, -75, 4, -4, 2, -1] and got.dtype == torch.int64
    assert litert.requantize(torch.tensor([2_000_000, -2_000_000]), 2 ** 31 - 1, 40).tolist() == [3906, -3906]
    cols = litert.requantize(torch.tensor([[1000, 1000], [-7, 300]]), torch.tensor([3 << 29, 1 << 30]),
                             torch.tensor([31, 33]))
    assert cols.tolist() == [[750, 125], [-5, 38]]


def test_double_rounding_differs_only_at_ties_and_by_one():
    acc = torch.arange(-5000, 5000)
    single, double = litert.requantize(acc, 1 << 30, 40), litert.requantize_double_rounding(acc, 1 << 30, 40)
    assert (single - double).abs().max() == 1          # they disagree, rarely, and by one step
    assert (single != double).float().mean() < 0.01
    assert single[acc == -512].item() == 0 and double[acc == -512].item() == -1   # -0.5: up vs away from zero


def test_int8_linear_hand_case_relu_and_saturation():
    i8 = lambda rows: torch.tensor(rows, dtype=torch.int8)   # noqa: E731
    one, half = torch.tensor([1 << 30]), torch.tensor([31])
    bias = torch.tensor([10], dtype=torch.int32)
    assert litert.int8_linear(i8([[3, -1]]), 1, i8([[2, 4]]), bias, one, half, -5).tolist() == [[-2]]
    assert litert.int8_linear(i8([[3, -1]]), 1, i8([[-20, 4]]), bias, one, half, -50, relu=True).tolist() == [[-50]]
    assert litert.int8_linear(i8([[3, -1]]), 1, i8([[-20, 4]]), bias, one, half, -50).tolist() == [[-69]]
    wide = litert.int8_linear(torch.full((1, 64), 100, dtype=torch.int8), 0, torch.full((2, 64), 100, dtype=torch.int8),
                              torch.zeros(2, dtype=torch.int32), torch.tensor([1 << 30] * 2), torch.tensor([44, 31]), 3)
    assert wide.tolist() == [[42, 127]] and wide.dtype == torch.int8


def test_quantize_bias_at_the_product_of_scales():
    got = litert.quantize_bias(torch.tensor([0.5, -0.25]), torch.tensor([0.01, 0.02]), 0.5)
    assert got.tolist() == [100, -25] and got.dtype == torch.int32


@pytest.mark.slow
def test_int8_tflite_matches_the_integer_reference_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(64, 8)
    path = litert.convert_int8(model, x[:1], x, tmp_path / "m.tflite")
    ops = litert.operators(path)
    assert [op["op"] for op in ops] == ["FULLY_CONNECTED"] * 2 and [op["activation"] for op in ops] == ["RELU", "NONE"]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for layer, linear in zip(litert.fc_layers(path, x[:20]), linears, strict=True):
        m0, n = litert.multipliers(layer["x_scale"], layer["w_scales"], layer["y_scale"])
        mine = litert.int8_linear(layer["x_q"], layer["x_zero_point"], layer["w_q"], layer["bias_q"], m0, n,
                                  layer["y_zero_point"], layer["relu"])
        assert torch.equal(mine, layer["y_q"])
        assert torch.equal(litert.quantize_bias(linear.bias.detach(), layer["w_scales"], layer["x_scale"]),
                           layer["bias_q"])
    assert litert.peak_activation_bytes(path) == 8 + 16     # int8: the first layer's input and output
    tensors = {t["dtype"] for t in litert.tensors(path)}
    assert tensors == {"int8", "int32"}
    logits = litert.predict(path, x)
    assert logits.shape == (64, 3) and (logits.argmax(1) == model(x).argmax(1)).float().mean() > 0.8
