"""Fitting a model into an in-cabin budget: quantize, prune, export, count energy.

Taught in 01_edge. Each framework call sits in one function here (torchao's int8
quantization, the ONNX exporter, ONNX Runtime), so a version change is fixed in one place.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from course.data import Split
from course.training import accuracy


def _quiet_known_noise() -> None:
    """The ONNX exporter, torchao and ORT's quantizer print warnings that never apply to this
    course's models: no torchvision operators to register, a deprecated pytree check, GPU
    kernels torchao cannot load on a CPU, ORT's pre-processing tip (silenced where it is called)."""
    for name in ("torch.onnx", "torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning)


_quiet_known_noise()

# Energy per operation at 45 nm, 0.9 V, from M. Horowitz, "Computing's energy problem (and
# what we can do about it)", ISSCC 2014 keynote, Figure 1.1.9 (also Han et al. 2016, EIE, Table I). In pJ.
# An int8 multiply-accumulate multiplies in int8 but accumulates in int32 (x86 VNNI, Arm dot-product
# instructions, ONNX Runtime's MatMulInteger all return int32), so it costs int8_mult + int32_add.
ENERGY_PJ = {
    "int8_add": 0.03, "int8_mult": 0.2,
    "int32_add": 0.1, "int32_mult": 3.1,
    "fp32_add": 0.9, "fp32_mult": 3.7,
}

# Energy of one 64-bit read, by where the weights live (Horowitz, ISSCC 2014, same figure): a small
# SRAM next to the core, a large on-chip SRAM, or off-chip DRAM (1.3-2.6 nJ: we take the low end).
# Each row: (largest weight footprint in bytes it holds, name, pJ per 64-bit access).
WEIGHT_MEMORY = (
    (8 * 1024, "8 KB SRAM", 10.0),
    (1024 * 1024, "1 MB SRAM", 100.0),
    (float("inf"), "DRAM", 1300.0),
)


@dataclass(frozen=True)
class Budget:
    """What the in-cabin touchpad chip allows one digit classifier.

    Flash holds the weights (the deployed artifact), RAM the activations while a sample runs through the
    model (peak, batch of one): the two memories MCUNet budgets separately (Lin et al., NeurIPS 2020).
    max_ram_bytes None means no RAM limit; admits() without ram_bytes does not check RAM.
    """

    max_latency_ms: float   # batch of one, median
    max_size_bytes: int     # the deployed artifact (flash)
    min_accuracy: float     # on the test split
    max_ram_bytes: int | None = None   # peak activation memory, batch of one (RAM)

    def admits(self, latency_ms: float, size_bytes: int, acc: float, ram_bytes: int | None = None) -> bool:
        fits_ram = self.max_ram_bytes is None or ram_bytes is None or ram_bytes <= self.max_ram_bytes
        return (latency_ms <= self.max_latency_ms and size_bytes <= self.max_size_bytes
                and acc >= self.min_accuracy and fits_ram)


# ----------------------------------------------------------------- transfer learning

def classes_subset(split: Split, classes: Iterable[int]) -> Split:
    """Only the samples of `classes`, relabelled 0..len(classes)-1 in the given order."""
    classes = list(classes)
    mask = torch.isin(split.y, torch.tensor(classes))
    relabel = torch.full((int(split.y.max()) + 1,), -1, dtype=torch.int64)
    relabel[torch.tensor(classes)] = torch.arange(len(classes))
    return Split(split.x[mask], relabel[split.y[mask]])


def new_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Freeze `model` and give it a new trainable last layer (`model.net[-1]`) for `num_classes`."""
    model.requires_grad_(False)
    old = model.net[-1]
    model.net[-1] = nn.Linear(old.in_features, num_classes).to(old.weight.device)
    return model


# ----------------------------------------------------------------- quantization

def calibrate_input_absmax(model: nn.Module, batches: Iterable, num_batches: int) -> dict[str, float]:
    """Largest |input| of every nn.Linear over the first `num_batches` (x, y) batches."""
    ranges: dict[str, float] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            def record(_module, inputs, name=name):
                ranges[name] = max(ranges.get(name, 0.0), inputs[0].detach().abs().max().item())
            handles.append(module.register_forward_pre_hook(record))
    model.eval()
    try:
        with torch.no_grad():
            for index, (x, _) in enumerate(batches):
                if index >= num_batches:
                    break
                model(x)
    finally:
        for handle in handles:
            handle.remove()
    return ranges


def quantize_int8_static(model: nn.Module, input_absmax: dict[str, float]) -> nn.Module:
    """A copy of `model` with every calibrated Linear in int8 (weights per row, inputs per tensor).

    `input_absmax` maps a Linear's name to the largest |input| seen in calibration; the
    activation scale is that over 127 (symmetric int8). Uses torchao, PyTorch's maintained
    quantization library (torch.ao.quantization is deprecated).
    """
    from torchao.quantization import Int8StaticActivationInt8WeightConfig, quantize_
    from torchao.quantization.granularity import PerRow, PerTensor
    from torchao.quantization.quant_primitives import MappingType

    linears = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    missing = linears - set(input_absmax)
    if missing:
        raise ValueError(f"no calibration range for Linear layer(s) {sorted(missing)}: "
                         "calibrate on every Linear before quantizing")
    quantized = copy.deepcopy(model).eval()
    for name, absmax in input_absmax.items():
        if absmax <= 0:
            raise ValueError(f"calibration range of {name!r} is {absmax}: it saw no non-zero input")
        scale = torch.tensor([[absmax / 127.0]])  # one scale for the (batch, features) input
        config = Int8StaticActivationInt8WeightConfig(
            act_quant_scale=scale, granularity=[PerTensor(), PerRow()],
            act_mapping_type=MappingType.SYMMETRIC)
        quantize_(quantized, config, filter_fn=lambda _m, fqn, target=name: fqn == target)
    return quantized


# ----------------------------------------------------------------- pruning

def slice_units(layer_in: nn.Linear, layer_out: nn.Linear, keep: torch.Tensor) -> tuple[nn.Linear, nn.Linear]:
    """Keep only hidden units `keep` between two Linear layers: fewer rows in, fewer columns out."""
    keep = torch.as_tensor(keep, dtype=torch.long)
    new_in = nn.Linear(layer_in.in_features, len(keep), bias=layer_in.bias is not None)
    new_out = nn.Linear(len(keep), layer_out.out_features, bias=layer_out.bias is not None)
    with torch.no_grad():
        new_in.weight.copy_(layer_in.weight[keep])
        if layer_in.bias is not None:
            new_in.bias.copy_(layer_in.bias[keep])
        new_out.weight.copy_(layer_out.weight[:, keep])
        if layer_out.bias is not None:
            new_out.bias.copy_(layer_out.bias)
    return new_in, new_out


def prune_hidden_units(model: nn.Module, keep_fraction: float) -> nn.Module:
    """Structured pruning of a Linear/ReLU stack: keep the hidden units with the largest
    incoming weight norms. The result is a smaller dense network, so it runs faster."""
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    pruned = copy.deepcopy(model)
    layers = [m for m in pruned.modules() if isinstance(m, nn.Linear)]
    replacements: dict[int, nn.Linear] = {}
    for i in range(len(layers) - 1):
        layer_in = replacements.get(id(layers[i]), layers[i])
        norms = layer_in.weight.detach().norm(dim=1)
        count = max(1, round(keep_fraction * len(norms)))
        keep = norms.topk(count).indices.sort().values
        new_in, new_out = slice_units(layer_in, layers[i + 1], keep)
        replacements[id(layers[i])] = new_in
        replacements[id(layers[i + 1])] = new_out
    for parent in pruned.modules():
        for child_name, child in parent.named_children():
            if id(child) in replacements:
                setattr(parent, child_name, replacements[id(child)])
    return pruned


def _zero_smallest(weights: list[torch.Tensor], amount: float) -> None:
    """Zero, in place, the fraction `amount` of these tensors' values smallest in magnitude,
    ranked together."""
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights])
    count = int(amount * len(magnitudes))
    if count:
        threshold = magnitudes.kthvalue(count).values
        with torch.no_grad():
            for w in weights:
                w[w.abs() <= threshold] = 0.0


def global_magnitude_prune(model: nn.Module, amount: float) -> nn.Module:
    """A copy with the smallest `amount` of all Linear weights (by magnitude) set to zero."""
    pruned = copy.deepcopy(model)
    _zero_smallest([m.weight for m in pruned.modules() if isinstance(m, nn.Linear)], amount)
    return pruned


def sparsity(model: nn.Module) -> float:
    """Fraction of Linear weights that are exactly zero."""
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total


def sensitivity_scan(model: nn.Module, split: Split, amounts: Iterable[float]) -> dict[str, list[float]]:
    """Accuracy on `split` when one Linear layer at a time loses `amount` of its smallest weights."""
    results: dict[str, list[float]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        scores = []
        for amount in amounts:
            probe = copy.deepcopy(model)
            _zero_smallest([dict(probe.named_modules())[name].weight], amount)
            scores.append(accuracy(probe, split))
        results[name] = scores
    return results


# ----------------------------------------------------------------- distillation

def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      T: float = 4.0, alpha: float = 0.7) -> torch.Tensor:
    """Hinton et al. (2015): alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE."""
    soft = nn.functional.kl_div(nn.functional.log_softmax(student_logits / T, dim=1),
                                nn.functional.softmax(teacher_logits / T, dim=1), reduction="batchmean")
    return alpha * soft * T * T + (1 - alpha) * nn.functional.cross_entropy(student_logits, labels)


# ----------------------------------------------------------------- export and deployment

def export_onnx(model: nn.Module, path: str | os.PathLike, example: torch.Tensor) -> Path:
    """torch.export, then ONNX, with a symbolic batch dimension; returns the file's path."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(model.eval(), (example,), dynamic_shapes=({0: batch},),
                                dynamo=True, verbose=False)
    program.save(str(path))
    return Path(path)


def onnx_session(path: str | os.PathLike, threads: int = 1):
    """An ONNX Runtime CPU session; one thread by default, like a small in-cabin core."""
    import onnxruntime as ort

    from course.devices import on_cpu

    on_cpu("ONNX Runtime runs with its CPU execution provider: 01 deploys to an in-cabin CPU")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_run(session, x: torch.Tensor) -> torch.Tensor:
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])


def onnx_quantize_int8(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """ONNX Runtime's dynamic int8 quantization (int8 weights, activations quantized per batch)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    # The dynamo exporter records shapes of initializers in value_info, which ORT's
    # quantizer then contradicts ("Inferred shape and existing shape differ"): drop them.
    del model.graph.value_info[:]
    cleaned = Path(dst).with_suffix(".fp32-clean.onnx")
    onnx.save(model, str(cleaned))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs a pre-processing tip on the root logger
    try:
        quantize_dynamic(str(cleaned), str(dst), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
        cleaned.unlink(missing_ok=True)
    return Path(dst)


# ----------------------------------------------------------------- cost model

def linear_macs(model: nn.Module) -> int:
    """Multiply-accumulates of one sample through every Linear layer."""
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))


def weight_memory(size_bytes: float) -> tuple[str, float]:
    """The smallest memory of `WEIGHT_MEMORY` that holds `size_bytes` of weights: (name, pJ per 64 bits)."""
    for capacity, name, pj_per_64_bits in WEIGHT_MEMORY:
        if size_bytes <= capacity:
            return name, pj_per_64_bits
    raise ValueError(f"no memory holds {size_bytes} bytes")


def energy_per_inference_nj(macs: int, num_weights: int, bits: int) -> float:
    """Compute (a multiply and an add per MAC) plus reading every weight once from the memory that
    holds all of them (priced per 64 bits moved), in nJ. int8 products accumulate in int32."""
    ops = {32: ("fp32_mult", "fp32_add"), 8: ("int8_mult", "int32_add")}
    if bits not in ops:
        raise ValueError(f"bits must be 32 or 8, got {bits}")
    mult, add = ops[bits]
    compute = macs * (ENERGY_PJ[mult] + ENERGY_PJ[add])
    _, pj_per_64_bits = weight_memory(num_weights * bits / 8)
    memory = num_weights * bits / 64 * pj_per_64_bits
    return (compute + memory) / 1000.0


def choose_variant(rows: list[dict], budget: Budget) -> str | None:
    """Name of the row inside every limit of `budget` (latency, flash, accuracy and RAM: each row's
    "ram_bytes") with the least energy; None if none fits."""
    fitting = [r for r in rows
               if budget.admits(r["latency_ms"], r["size_bytes"], r["accuracy"], r.get("ram_bytes"))]
    return min(fitting, key=lambda r: r["energy_nj"])["name"] if fitting else None


def peak_activation_bytes(model: nn.Module, example: torch.Tensor, bits: int = 32) -> int:
    """Peak activation memory (bytes) of one forward pass of `example`, counted as MCUNet counts it: the
    largest sum of one layer's input and output activations, each element stored at `bits` bits.

    Layers are the weight layers (nn.Linear, nn.Conv1d/2d); the activation functions after them are fused into
    them by the runtimes (LiteRT's FULLY_CONNECTED with RELU, ONNX Runtime's fusions), so they add no buffer.
    Taught in 01_edge ("The whole memory budget"); the int8 version of a .tflite file is
    `course.litert.peak_activation_bytes`.
    """
    sizes: list[int] = []

    def record(_module, inputs, output):
        sizes.append(inputs[0].numel() + output.numel())

    handles = [m.register_forward_hook(record) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    if not sizes:
        raise ValueError("the model has no nn.Linear or nn.Conv layer to count")
    return max(sizes) * bits // 8


def pareto_front(rows: list[dict], minimize: tuple[str, ...] = ("latency_ms", "size_bytes"),
                 maximize: tuple[str, ...] = ("accuracy",)) -> list[dict]:
    """Rows that no other row dominates: at least as good on every objective, better on one."""
    def as_costs(row):
        return [row[k] for k in minimize] + [-row[k] for k in maximize]

    front = []
    for row in rows:
        mine = as_costs(row)
        dominated = any(all(o <= m for o, m in zip(as_costs(other), mine, strict=True))
                        and as_costs(other) != mine for other in rows)
        if not dominated:
            front.append(row)
    return front
