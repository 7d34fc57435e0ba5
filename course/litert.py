"""LiteRT (formerly TensorFlow Lite): convert, run and look inside `.tflite` models; int8 arithmetic by hand.

Taught in 01_edge ("LiteRT: the runtime the workshop named" and the integer-only inference exercise).
`litert_torch` (0.10.0) converts `torch.export` programs to `.tflite` flatbuffers; `ai_edge_litert` (2.3.0)
runs them. Both are imported inside the functions that need them: `import litert_torch` pulls in jax and
costs about 2 s and 300 MB, so importing this module stays cheap.

The integer functions follow TensorFlow Lite's reference kernels (tensorflow/lite/kernels/internal/common.h,
`QuantizeMultiplier`, `MultiplyByQuantizedMultiplier`) and gemmlowp's fixed-point helpers
(`SaturatingRoundingDoublingHighMul`, `RoundingDivideByPOT`), which implement Jacob et al., "Quantization and
Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference", CVPR 2018, section 2.2.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from course.bench import Timing, measure_time

INT8_MIN, INT8_MAX = -128, 127
INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1


# ----------------------------------------------------------------- conversion

def _quiet() -> None:
    """litert_torch prints a progress line per conversion stage unless told not to."""
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def convert_fp32(model: nn.Module, example: torch.Tensor, path: str | os.PathLike) -> Path:
    """Convert `model` (eval mode, CPU) to a float32 `.tflite` file at `path` for inputs shaped like `example`."""
    _quiet()
    import litert_torch

    litert_torch.convert(model.cpu().eval(), (example.cpu(),)).export(str(path))
    return Path(path)


def convert_int8(model: nn.Module, example: torch.Tensor, representative: torch.Tensor,
                 path: str | os.PathLike) -> Path:
    """Convert `model` to a fully int8 `.tflite` file (int8 input, weights, activations and output).

    `representative`: a (N, features) tensor of typical inputs (training samples), run through the observed
    model in batches to set every activation's scale and zero-point (calibration). Weights are symmetric per
    channel; biases int32 at scale s_w * s_x (the PT2E symmetric configuration of litert_torch). The file takes
    inputs shaped like `example`.
    """
    _quiet()
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval, quantize_pt2e

    model, example, representative = model.cpu().eval(), example.cpu(), representative.cpu()
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    # a dynamic batch dimension lets calibration run in batches (one row at a time is ten times slower)
    exported = torch.export.export(model, (representative[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    observed = quantize_pt2e.prepare_pt2e(exported.module(), quantizer)
    with torch.no_grad():
        for batch in representative.split(128):
            observed(batch)
    quantized = move_exported_model_to_eval(quantize_pt2e.convert_pt2e(observed, fold_quantize=False))
    quantized.training = False   # what litert-torch checks; an exported module's .eval() is not the way to say it
    litert_torch.convert(quantized, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(path))
    return Path(path)


# ----------------------------------------------------------------- running

def interpreter(path: str | os.PathLike, batch: int | None = None, threads: int = 1, reference: bool = False):
    """A LiteRT Interpreter for `path`, tensors allocated, input resized to `batch` rows if given.

    reference=True runs TFLite's reference (builtin, unoptimised) kernels without the XNNPACK delegate and keeps
    every intermediate tensor readable: what `fc_layers` needs. The default uses XNNPACK, as a phone would.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from course.devices import on_cpu

    on_cpu("LiteRT runs on the CPU (XNNPACK or reference kernels), as on the phone 01 deploys to")
    options = {}
    if reference:
        options = dict(experimental_op_resolver_type=OpResolverType.BUILTIN_REF, experimental_preserve_all_tensors=True)
    interp = Interpreter(model_path=str(path), num_threads=threads, **options)
    if batch is not None:
        shape = list(interp.get_input_details()[0]["shape"])
        interp.resize_tensor_input(interp.get_input_details()[0]["index"], [batch] + shape[1:])
    interp.allocate_tensors()
    return interp


def _to_input(interp, x: torch.Tensor) -> np.ndarray:
    detail = interp.get_input_details()[0]
    data = x.detach().cpu().numpy().astype(np.float32)
    if detail["dtype"] == np.int8:     # an integer-only model takes int8: quantize with its input's scale
        scale, zero_point = detail["quantization"]
        data = np.clip(np.round(data / scale) + zero_point, INT8_MIN, INT8_MAX).astype(np.int8)
    return data


def run(interp, x: torch.Tensor) -> torch.Tensor:
    """Float outputs of `interp` for the float inputs `x` (its batch must match the interpreter's input).

    An int8 model's input is quantized and its output dequantized here, with the scales stored in the file.
    """
    interp.set_tensor(interp.get_input_details()[0]["index"], _to_input(interp, x))
    interp.invoke()
    detail = interp.get_output_details()[0]
    out = interp.get_tensor(detail["index"]).astype(np.float32)
    if detail["dtype"] == np.int8:
        scale, zero_point = detail["quantization"]
        out = scale * (out - zero_point)
    return torch.from_numpy(out)


def predict(path: str | os.PathLike, x: torch.Tensor) -> torch.Tensor:
    """Float outputs of the `.tflite` model at `path` for all rows of `x` at once (one thread)."""
    return run(interpreter(path, batch=len(x)), x)


def latency(path: str | os.PathLike, x: torch.Tensor, repeats: int = 100, warmup: int = 10) -> Timing:
    """Time of one whole call for the input `x` (batch len(x)) on one thread, XNNPACK as deployed.

    Timed as 01_edge times ONNX Runtime's `session.run`: float input in, float output out, so an int8 model's
    input quantization and output dequantization count (ONNX Runtime's int8 graph does them inside).
    Timing `invoke` alone would flatter LiteRT by leaving out the copies in and out.
    """
    interp = interpreter(path, batch=len(x))
    x = x.detach().cpu().float()
    return measure_time(lambda: run(interp, x), repeats=repeats, warmup=warmup)


# ----------------------------------------------------------------- looking inside

def _activations(path: str | os.PathLike) -> dict[int, str]:
    """{operator index: its fused activation name} read from the flatbuffer (the Interpreter does not say)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(Path(path).read_bytes(), 0)
    names = {v: k for k, v in vars(schema.ActivationFunctionType).items() if not k.startswith("_")}
    found = {}
    for index, op in enumerate(model.subgraphs[0].operators):
        activation = getattr(op.builtinOptions, "fusedActivationFunction", None)
        if activation is not None:
            found[index] = names.get(activation, str(activation))
    return found


def operators(path: str | os.PathLike) -> list[dict]:
    """The operators of the `.tflite` model, in execution order: name, input and output tensor indices and the
    fused activation ("NONE", "RELU", ...), as the file stores them (reference kernels: no delegate node)."""
    interp = interpreter(path, reference=True)
    activations = _activations(path)
    return [{"op": op["op_name"], "inputs": [int(i) for i in op["inputs"] if i >= 0],
             "outputs": [int(i) for i in op["outputs"]], "activation": activations.get(op["index"], "")}
            for op in interp._get_ops_details()]


def tensors(path: str | os.PathLike) -> list[dict]:
    """Every tensor of the `.tflite` model: index, name, dtype name, shape, bytes, scales and zero-points
    (one per channel for per-channel tensors, empty for float ones) and the quantized axis."""
    interp = interpreter(path, reference=True)
    rows = []
    for t in interp.get_tensor_details():
        q = t["quantization_parameters"]
        rows.append({"index": int(t["index"]), "name": t["name"], "dtype": np.dtype(t["dtype"]).name,
                     "shape": tuple(int(s) for s in t["shape"]),
                     "bytes": int(np.prod(t["shape"])) * np.dtype(t["dtype"]).itemsize,
                     "scales": q["scales"].astype(np.float64), "zero_points": q["zero_points"].astype(np.int64),
                     "axis": int(q["quantized_dimension"])})
    return rows


def fc_layers(path: str | os.PathLike, x: torch.Tensor) -> list[dict]:
    """Run the int8 model at `path` on `x` with TFLite's reference kernels and return, for every
    FULLY_CONNECTED operator, the runtime's own numbers as torch tensors:

    x_q (B, in) int8 input, x_scale, x_zero_point; w_q (out, in) int8 weights, w_scales (out,) float64;
    bias_q (out,) int32; y_q (B, out) int8 output as computed by LiteRT, y_scale, y_zero_point; relu (bool).
    """
    interp = interpreter(path, batch=len(x), reference=True)
    interp.set_tensor(interp.get_input_details()[0]["index"], _to_input(interp, x))
    interp.invoke()
    details = {t["index"]: t for t in interp.get_tensor_details()}
    activations = _activations(path)

    def scale_zero(index):
        q = details[index]["quantization_parameters"]
        return q["scales"].astype(np.float64), q["zero_points"].astype(np.int64)

    layers = []
    for op in interp._get_ops_details():
        if op["op_name"] != "FULLY_CONNECTED":
            continue
        x_i, w_i, b_i = (int(i) for i in op["inputs"][:3])
        y_i = int(op["outputs"][0])
        (x_s, x_z), (w_s, _), (y_s, y_z) = scale_zero(x_i), scale_zero(w_i), scale_zero(y_i)
        layers.append({"x_q": torch.from_numpy(interp.get_tensor(x_i).copy()), "x_scale": float(x_s[0]),
                       "x_zero_point": int(x_z[0]), "w_q": torch.from_numpy(interp.get_tensor(w_i).copy()),
                       "w_scales": torch.from_numpy(w_s), "bias_q": torch.from_numpy(interp.get_tensor(b_i).copy()),
                       "y_q": torch.from_numpy(interp.get_tensor(y_i).copy()), "y_scale": float(y_s[0]),
                       "y_zero_point": int(y_z[0]), "relu": activations.get(op["index"]) == "RELU"})
    return layers


# ----------------------------------------------------------------- integer-only arithmetic (reference)

def quantize_multiplier(real_multiplier: float) -> tuple[int, int]:
    """(m0, n) with real_multiplier ~= m0 / 2**n, m0 an integer in [2**30, 2**31), for 0 < real_multiplier < 1.

    As TFLite's QuantizeMultiplier: frexp gives real = q * 2**e, q in [0.5, 1); m0 = round(q * 2**31)
    (if that rounds up to 2**31, halve it and add one to e); n = 31 - e. Raises ValueError outside (0, 1).
    """
    if not 0.0 < real_multiplier < 1.0:
        raise ValueError(f"the multiplier s_w * s_x / s_y must lie in (0, 1), got {real_multiplier}")
    q, exponent = math.frexp(real_multiplier)
    m0 = round(q * (1 << 31))
    if m0 == 1 << 31:
        m0, exponent = m0 // 2, exponent + 1
    return int(m0), 31 - exponent


def requantize(acc: torch.Tensor, m0, n) -> torch.Tensor:
    """round(acc * m0 / 2**n) in integers only, rounded as LiteRT 2.3's kernels round (single rounding).

    acc: an integer tensor (int32 values, any shape); m0, n: ints or integer tensors broadcastable to acc (one
    per output channel), n >= 1. (acc * m0 + 2**(n - 1)) >> n in 64-bit integers, with an arithmetic shift
    (floor), so halves round up: TFLite's MultiplyByQuantizedMultiplier when built with TFLITE_SINGLE_ROUNDING
    (tensorflow/lite/kernels/internal/common.cc), which LiteRT 2.3.0 is. Returns int64.
    Raises TypeError for floating-point inputs and ValueError for a shift below 1.
    """
    for name, value in (("acc", acc), ("m0", m0), ("n", n)):
        if torch.as_tensor(value).is_floating_point():
            raise TypeError(f"requantize takes integers only; {name} is {torch.as_tensor(value).dtype}")
    acc, m0, n = (torch.as_tensor(v, dtype=torch.int64) for v in (acc, m0, n))
    if bool((n < 1).any()):
        raise ValueError(f"every shift n must be at least 1 (M = m0 / 2**n < 1), got {n.min().item()}")
    return (acc * m0 + (torch.ones_like(n) << (n - 1))) >> n


def requantize_double_rounding(acc: torch.Tensor, m0, n) -> torch.Tensor:
    """The same product rounded twice, as gemmlowp and older TFLite builds do (n >= 31): for comparison only.

    1. SaturatingRoundingDoublingHighMul: p = acc * m0; (p + nudge) / 2**31 truncated toward zero, nudge 2**30
       if p >= 0 else 1 - 2**30; 2. RoundingDivideByPOT by n - 31, halves away from zero. Returns int64.
    """
    acc, m0, n = (torch.as_tensor(v, dtype=torch.int64) for v in (acc, m0, n))
    product = acc * m0
    nudge = torch.where(product >= 0, torch.tensor(1 << 30), torch.tensor(1 - (1 << 30)))
    high = torch.div(product + nudge, 1 << 31, rounding_mode="trunc")
    shift = n - 31
    mask = (torch.ones_like(shift) << shift) - 1
    remainder, threshold = high & mask, (mask >> 1) + (high < 0).to(torch.int64)
    return (high >> shift) + (remainder > threshold).to(torch.int64)


def multipliers(x_scale: float, w_scales: torch.Tensor, y_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output channel (m0, n) of M = x_scale * w_scale / y_scale (computed in float64, as TFLite does)."""
    pairs = [quantize_multiplier(float(x_scale) * float(s) / float(y_scale)) for s in w_scales]
    return (torch.tensor([m for m, _ in pairs], dtype=torch.int64),
            torch.tensor([k for _, k in pairs], dtype=torch.int64))


def quantize_bias(bias: torch.Tensor, w_scales: torch.Tensor, x_scale: float) -> torch.Tensor:
    """The int32 bias of an int8 linear layer: round(bias / (w_scale * x_scale)), one scale per output channel
    (TFLite's quantization spec: bias scale = input scale * weight scale, zero-point 0)."""
    scales = w_scales.to(torch.float64) * float(x_scale)
    return torch.round(bias.to(torch.float64) / scales).clamp(INT32_MIN, INT32_MAX).to(torch.int32)


def int8_linear(x_q: torch.Tensor, x_zero_point: int, w_q: torch.Tensor, bias_q: torch.Tensor,
                m0: torch.Tensor, n: torch.Tensor, y_zero_point: int, relu: bool = False) -> torch.Tensor:
    """An int8 fully connected layer in integer arithmetic only, as LiteRT's FULLY_CONNECTED computes it.

    x_q (B, in) int8 with zero-point x_zero_point; w_q (out, in) int8, symmetric per channel (zero-point 0);
    bias_q (out,) int32 at scale w_scale * x_scale; m0, n (out,) the fixed-point form of each channel's
    M = x_scale * w_scale / y_scale (`multipliers`). acc = (x_q - x_zero_point) @ w_q.T + bias_q (int32 values);
    y = requantize(acc, m0, n) + y_zero_point, clamped to [-128, 127], or to [y_zero_point, 127] when a ReLU is
    fused (real 0 is the integer y_zero_point). Returns (B, out) int8. Raises TypeError for other dtypes.
    """
    for name, tensor, dtype in (("x_q", x_q, torch.int8), ("w_q", w_q, torch.int8), ("bias_q", bias_q, torch.int32)):
        if tensor.dtype != dtype:
            raise TypeError(f"int8_linear: {name} must be {dtype}, got {tensor.dtype}")
    acc = (x_q.to(torch.int64) - x_zero_point) @ w_q.to(torch.int64).T + bias_q.to(torch.int64)
    low = max(INT8_MIN, y_zero_point) if relu else INT8_MIN
    return (requantize(acc, m0, n) + y_zero_point).clamp(low, INT8_MAX).to(torch.int8)


# ----------------------------------------------------------------- the memory budget and the cost of the tools

def peak_activation_bytes(path: str | os.PathLike) -> int:
    """Peak activation memory (bytes) of the `.tflite` model at `path`, batch as stored, counted as MCUNet does
    (and as `course.edge.peak_activation_bytes` counts a PyTorch model): the largest sum, over operators, of
    the bytes of its input and output activations at the dtype the file stores them in. Constant tensors
    (weights, biases) live in flash and are not counted."""
    ops, details = operators(path), {t["index"]: t for t in tensors(path)}
    graph_inputs = {int(d["index"]) for d in interpreter(path, reference=True).get_input_details()}
    produced = {i for op in ops for i in op["outputs"]} | graph_inputs
    return max(sum(details[i]["bytes"] for i in op["inputs"] if i in produced)
               + sum(details[i]["bytes"] for i in op["outputs"]) for op in ops)


def import_cost() -> tuple[float, int | None]:
    """Seconds and resident memory (bytes; None where /proc is absent) that `import litert_torch` adds to this
    process. Meaningful only the first time: a module already imported costs nothing."""
    import time

    def rss():
        status = Path("/proc/self/status")
        if not status.exists():
            return None
        line = next(ln for ln in status.read_text().splitlines() if ln.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    _quiet()
    before, start = rss(), time.perf_counter()
    import litert_torch  # noqa: F401

    seconds, after = time.perf_counter() - start, rss()
    return seconds, (after - before) if before is not None else None


# The distributions the litert-torch 0.10.0 pin added to the environment (constraints.txt, commit 8311a0b), by
# import name; the notebook prints how much disk they take in the learner's own environment.
LITERT_PACKAGES = ("litert_torch", "ai_edge_litert", "litert_converter", "ai_edge_quantizer", "litert_lm_builder",
                   "jax", "jaxlib", "jaxtyping", "transformers", "tokenizers", "safetensors", "huggingface_hub",
                   "hf_xet", "kagglehub", "kagglesdk", "sentencepiece", "xdsl", "absl", "regex", "opt_einsum",
                   "fire", "immutabledict", "multipledispatch", "ordered_set", "tabulate", "termcolor",
                   "truststore", "wadler_lindig", "httpx2", "httpcore2", "nest_asyncio")


def installed_bytes(names: tuple[str, ...] = LITERT_PACKAGES) -> dict[str, int]:
    """{import name: bytes its package folder takes on disk} for those of `names` installed here."""
    import importlib.util

    sizes = {}
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = Path(list(spec.submodule_search_locations)[0])
        sizes[name] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
    return sizes
