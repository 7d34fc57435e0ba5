"""Recorded answers for 01_edge: mistakes learners really make must lose points; other correct answers keep them."""
from tests.answers import Right, Wrong

ANSWERS = [
    # ------------------------------------------------------------------ transfer
    Wrong("transfer", "does not freeze the backbone", visible=True,
          replace=[("    model.requires_grad_(False)\n", "")]),
    Wrong("transfer", "freezes after making the new head, so the head is frozen too", visible=True,
          replace=[("    model.requires_grad_(False)\n    old_head = model.net[-1]\n"
                    "    model.net[-1] = nn.Linear(old_head.in_features, num_classes).to(old_head.weight.device)\n",
                    "    old_head = model.net[-1]\n"
                    "    model.net[-1] = nn.Linear(old_head.in_features, num_classes).to(old_head.weight.device)\n"
                    "    model.requires_grad_(False)\n")]),
    Wrong("transfer", "appends a layer after the old head instead of replacing it", visible=True,
          replace=[("    model.net[-1] = nn.Linear(old_head.in_features, num_classes).to(old_head.weight.device)\n",
                    "    model.net.append(nn.Linear(old_head.out_features, num_classes))\n")]),
    Wrong("transfer", "sizes the new head by the old head's out_features", visible=True,
          replace=[("nn.Linear(old_head.in_features, num_classes)", "nn.Linear(old_head.out_features, num_classes)")]),
    Wrong("transfer", "freezes only the first layer", visible=True,
          replace=[("    model.requires_grad_(False)\n", "    model.net[0].requires_grad_(False)\n")]),
    Right("transfer", "a loop over parameters and a head built from net[-1] directly", source='''def transfer(model, num_classes):
    for parameter in model.parameters():
        parameter.requires_grad = False
    model.net[-1] = nn.Linear(model.net[-1].in_features, num_classes)
    return model
'''),

    # ------------------------------------------------------------------ affine
    Wrong("affine", "does not widen the range to include 0", visible=True,
          replace=[("    x_min, x_max = min(float(x_min), 0.0), max(float(x_max), 0.0)\n", "")]),
    Wrong("affine", "truncates instead of rounding", visible=True,
          replace=[("torch.round(x / scale)", "(x / scale).trunc()")]),
    Wrong("affine", "does not clamp, so int8 wraps around", visible=True,
          replace=[("torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)", "(torch.round(x / scale) + zero_point)")]),
    Wrong("affine", "dequantize forgets the zero-point", visible=True,
          replace=[("scale * (q.float() - zero_point)", "scale * q.float()")]),
    Wrong("affine", "divides by 256 levels instead of 255 steps", visible=True,
          replace=[("(x_max - x_min) / (qmax - qmin) or 1.0", "(x_max - x_min) / (qmax - qmin + 1) or 1.0")]),
    Wrong("affine", "dequantizes in int8 arithmetic, which overflows", visible=True,
          replace=[("scale * (q.float() - zero_point)", "scale * (q - zero_point)")]),
    Wrong("affine", "divides by zero when the range is empty",
          replace=[("(x_max - x_min) / (qmax - qmin) or 1.0", "(x_max - x_min) / (qmax - qmin)")]),
    Right("affine", "clamps with Python max/min and chains tensor methods", replace=[
        ("zero_point = int(min(max(round(qmin - x_min / scale), qmin), qmax))",
         "zero_point = max(qmin, min(qmax, int(round(qmin - x_min / scale))))"),
        ("torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax).to(torch.int8)",
         "(x / scale).round().add(zero_point).clamp(qmin, qmax).to(torch.int8)"),
        ("scale * (q.float() - zero_point)", "(q.to(torch.float32) - zero_point) * scale")]),

    # ------------------------------------------------------------------ per_channel
    Wrong("per_channel", "uses the whole tensor's range for every row", visible=True,
          replace=[("affine_qparams(row.min().item(), row.max().item())", "affine_qparams(w.min().item(), w.max().item())")]),
    Wrong("per_channel", "quantizes columns instead of rows", visible=True,
          replace=[("for row in w:", "for row in w.T:")]),
    Wrong("per_channel", "returns the dequantized floats instead of int8", visible=True,
          replace=[("rows.append(quantize(row, scale, zero_point))",
                    "rows.append(dequantize(quantize(row, scale, zero_point), scale, zero_point))")]),
    Wrong("per_channel", "returns int32 zero-points",
          replace=[("torch.tensor(zero_points, dtype=torch.int64)", "torch.tensor(zero_points, dtype=torch.int32)")]),
    Right("per_channel", "list comprehensions over the rows", source='''def quantize_per_channel(w):
    params = [affine_qparams(row.min().item(), row.max().item()) for row in w]
    q = torch.stack([quantize(row, s, z) for row, (s, z) in zip(w, params)])
    return q, torch.tensor([s for s, _ in params]), torch.tensor([z for _, z in params], dtype=torch.int64)
'''),

    # ------------------------------------------------------------------ calibrate
    Wrong("calibrate", "forgets torch.no_grad(): every batch builds an autograd graph", visible=True,
          replace=[("        with torch.no_grad():\n            for index, (x, _) in enumerate(batches):\n"
                    "                if index >= num_batches:\n                    break\n                model(x)\n",
                    "        for index, (x, _) in enumerate(batches):\n            if index >= num_batches:\n"
                    "                break\n            model(x)\n")]),
    Wrong("calibrate", "forgets model.eval()", visible=True, replace=[("    model.eval()\n", "")]),
    Wrong("calibrate", "freezes the parameters instead of using no_grad", visible=True,
          replace=[("        with torch.no_grad():\n", "        model.requires_grad_(False)\n        if True:\n")]),
    Wrong("calibrate", "records each layer's output instead of its input", visible=True,
          replace=[("            def record(_module, inputs, name=name):\n"
                    "                ranges[name] = max(ranges.get(name, 0.0), inputs[0].detach().abs().max().item())\n"
                    "            handles.append(module.register_forward_pre_hook(record))\n",
                    "            def record(_module, inputs, output, name=name):\n"
                    "                ranges[name] = max(ranges.get(name, 0.0), output.detach().abs().max().item())\n"
                    "            handles.append(module.register_forward_hook(record))\n")]),
    Wrong("calibrate", "keeps the last batch's range instead of the running maximum", visible=True,
          replace=[("ranges[name] = max(ranges.get(name, 0.0), inputs[0].detach().abs().max().item())",
                    "ranges[name] = inputs[0].detach().abs().max().item()")]),
    Wrong("calibrate", "ignores num_batches", visible=True,
          replace=[("                if index >= num_batches:\n                    break\n", "")]),
    Wrong("calibrate", "binds the layer name late, so every hook writes the last name", visible=True,
          replace=[("def record(_module, inputs, name=name):", "def record(_module, inputs):")]),
    Wrong("calibrate", "removes the hooks only when nothing fails (no try/finally)",
          replace=[("    try:\n        with torch.no_grad():\n            for index, (x, _) in enumerate(batches):\n"
                    "                if index >= num_batches:\n                    break\n                model(x)\n"
                    "    finally:\n        for handle in handles:\n            handle.remove()\n",
                    "    with torch.no_grad():\n        for index, (x, _) in enumerate(batches):\n"
                    "            if index >= num_batches:\n                break\n            model(x)\n"
                    "    for handle in handles:\n        handle.remove()\n")]),
    Right("calibrate", "torch.inference_mode() and itertools.islice", source='''def calibrate(model, batches, num_batches):
    import itertools
    ranges, handles = {}, []

    def hook_for(name):
        def record(_module, inputs):
            ranges[name] = max(ranges.get(name, 0.0), float(inputs[0].abs().max()))
        return record

    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_pre_hook(hook_for(name)))
    model.eval()
    try:
        with torch.inference_mode():
            for x, _ in itertools.islice(batches, num_batches):
                model(x)
    finally:
        for handle in handles:
            handle.remove()
    return ranges
'''),

    # ------------------------------------------------------------------ fake_quant (QAT, issue 19 item 3)
    Wrong("fake_quant", "the plain straight-through trick: the gradient also flows through clipped values",
          visible=True,
          replace=[("    return x_hat.detach() + (x - x.detach()) * inside\n", "    return x + (x_hat - x).detach()\n")]),
    Wrong("fake_quant", "returns the rounded values, so torch.round's zero gradient stops all learning", visible=True,
          replace=[("    return x_hat.detach() + (x - x.detach()) * inside\n", "    return x_hat\n")]),
    Wrong("fake_quant", "detaches the whole output, so no gradient reaches x", visible=True,
          replace=[("    return x_hat.detach() + (x - x.detach()) * inside\n", "    return x_hat.detach()\n")]),
    Wrong("fake_quant", "forgets the clamp: values outside the range are not saturated", visible=True,
          replace=[("(torch.clamp(q, qmin, qmax) - zero_point) * scale", "(q - zero_point) * scale")]),
    Wrong("fake_quant", "dequantizes without subtracting the zero-point", visible=True,
          replace=[("(torch.clamp(q, qmin, qmax) - zero_point) * scale", "torch.clamp(q, qmin, qmax) * scale")]),
    Wrong("fake_quant", "truncates instead of rounding", visible=True,
          replace=[("q = torch.round(x / scale) + zero_point", "q = torch.trunc(x / scale) + zero_point")]),
    Wrong("fake_quant", "returns the integers q instead of the dequantized floats", visible=True,
          replace=[("    return x_hat.detach() + (x - x.detach()) * inside\n",
                    "    return torch.clamp(q, qmin, qmax).detach() + (x - x.detach()) * inside\n")]),
    Wrong("fake_quant", "computes the mask after clamping, so every value counts as inside", visible=True,
          replace=[("    q = torch.round(x / scale) + zero_point\n    inside = (q >= qmin) & (q <= qmax)\n"
                    "    x_hat = (torch.clamp(q, qmin, qmax) - zero_point) * scale\n",
                    "    q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)\n"
                    "    inside = (q >= qmin) & (q <= qmax)\n    x_hat = (q - zero_point) * scale\n")]),
    Wrong("fake_quant", "decides the mask from the scaled value before adding the zero-point",
          replace=[("    inside = (q >= qmin) & (q <= qmax)\n",
                    "    inside = (torch.round(x / scale) >= qmin) & (torch.round(x / scale) <= qmax)\n")]),
    Right("fake_quant", "a torch.autograd.Function with the mask saved for backward", source='''def fake_quantize(x, scale, zero_point, qmin, qmax):
    class FakeQuant(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            q = torch.round(x / scale) + zero_point
            ctx.save_for_backward((q >= qmin) & (q <= qmax))
            return (q.clamp(qmin, qmax) - zero_point) * scale

        @staticmethod
        def backward(ctx, grad_output):
            (inside,) = ctx.saved_tensors
            return grad_output * inside

    return FakeQuant.apply(x)
'''),
    Right("fake_quant", "clamps x to the representable range and detaches the rounding error", source='''def fake_quantize(x, scale, zero_point, qmin, qmax):
    low, high = (qmin - zero_point) * scale, (qmax - zero_point) * scale
    clipped = torch.minimum(torch.maximum(x, torch.as_tensor(low)), torch.as_tensor(high))
    x_hat = (torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale
    return clipped + (x_hat - clipped).detach()
'''),

    # ------------------------------------------------------------------ personal_memory (issue 19 item 6)
    Wrong("personal_memory", "freezes the weights but leaves frozen biases frozen", visible=True,
          replace=[("        parameter.requires_grad_(name.endswith(\"bias\"))\n",
                    "        if not name.endswith(\"bias\"):\n            parameter.requires_grad_(False)\n")]),
    Wrong("personal_memory", "trains the weights and freezes the biases (the test inverted)", visible=True,
          replace=[("parameter.requires_grad_(name.endswith(\"bias\"))", "parameter.requires_grad_(name.endswith(\"weight\"))")]),
    Wrong("personal_memory", "counts the frozen parameters too", visible=True,
          replace=[("for p in model.parameters() if p.requires_grad)", "for p in model.parameters())")]),
    Wrong("personal_memory", "counts numbers instead of bytes", visible=True,
          replace=[("sum(p.numel() * p.element_size() for p", "sum(p.numel() for p")]),
    Wrong("personal_memory", "assumes 4 bytes per number whatever the dtype",
          replace=[("sum(p.numel() * p.element_size() for p", "sum(p.numel() * 4 for p")]),
    Wrong("personal_memory", "always counts Adam's two slots", visible=True,
          replace=[("\"optimizer\": optimizer_slots * trainable", "\"optimizer\": 2 * trainable")]),
    Wrong("personal_memory", "counts the biases by name instead of what requires a gradient", visible=True,
          replace=[("sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)",
                    "sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n.endswith(\"bias\"))")]),
    Right("personal_memory", "freezes everything first, then unfreezes the biases; counts with nbytes", source='''def bias_only(model):
    model.requires_grad_(False)
    for module in model.modules():
        if getattr(module, "bias", None) is not None:
            module.bias.requires_grad_(True)
    return model


def training_bytes(model, optimizer_slots=2):
    grads = sum(p.nbytes for p in model.parameters() if p.requires_grad)
    return dict(gradients=grads, optimizer=grads * optimizer_slots)
'''),

    # ------------------------------------------------------------------ prune
    Wrong("prune", "prunes the model in place instead of a copy", visible=True,
          replace=[("pruned = copy.deepcopy(model)", "pruned = model")]),
    Wrong("prune", "prunes biases along with weights", visible=True,
          replace=[("weights = [m.weight for m in pruned.modules() if isinstance(m, nn.Linear)]",
                    "weights = list(pruned.parameters())")]),
    Wrong("prune", "keeps the fraction `amount` instead of removing it", visible=True,
          replace=[("k = int(amount * flat.numel())", "k = int((1 - amount) * flat.numel())")]),
    Wrong("prune", "prunes each layer by its own threshold (not global)", source='''def magnitude_prune(model, amount):
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for m in pruned.modules():
            if isinstance(m, nn.Linear):
                flat = m.weight.abs().flatten()
                k = int(amount * flat.numel())
                if k > 0:
                    m.weight[m.weight.abs() <= torch.kthvalue(flat, k).values] = 0.0
    return pruned
'''),
    Wrong("prune", "ranks signed values instead of magnitudes", replace=[
        ("flat = torch.cat([w.detach().abs().flatten() for w in weights])",
         "flat = torch.cat([w.detach().flatten() for w in weights])"),
        ("w[w.abs() <= threshold] = 0.0", "w[w <= threshold] = 0.0")]),
    Right("prune", "sorts the magnitudes instead of kthvalue", replace=[
        ("threshold = torch.kthvalue(flat, k).values", "threshold = flat.sort().values[k - 1]")]),

    # ------------------------------------------------------------------ slice_units
    Wrong("slice_units", "selects columns of layer_in instead of rows", visible=True,
          replace=[("new_in.weight.copy_(layer_in.weight[keep])", "new_in.weight.copy_(layer_in.weight[:, keep])")]),
    Wrong("slice_units", "selects rows of layer_out instead of columns", visible=True,
          replace=[("new_out.weight.copy_(layer_out.weight[:, keep])", "new_out.weight.copy_(layer_out.weight[keep])")]),
    Wrong("slice_units", "slices layer_out's bias too", visible=True,
          replace=[("new_out.bias.copy_(layer_out.bias)", "new_out.bias.copy_(layer_out.bias[keep])")]),
    Wrong("slice_units", "forgets to copy new_in's bias", visible=True,
          replace=[("        new_in.bias.copy_(layer_in.bias[keep])\n", "")]),
    Right("slice_units", "index_select and fresh layers filled from data", replace=[
        ("new_in.weight.copy_(layer_in.weight[keep])", "new_in.weight.copy_(layer_in.weight.index_select(0, keep))"),
        ("new_out.weight.copy_(layer_out.weight[:, keep])", "new_out.weight.copy_(layer_out.weight.index_select(1, keep))")]),

    # ------------------------------------------------------------------ distill
    Wrong("distill", "swaps the teacher and student in F.kl_div", visible=True,
          replace=[("F.kl_div(F.log_softmax(student_logits / T, dim=1), F.softmax(teacher_logits / T, dim=1),",
                    "F.kl_div(F.log_softmax(teacher_logits / T, dim=1), F.softmax(student_logits / T, dim=1),")]),
    Wrong("distill", "forgets the T^2 factor", visible=True,
          replace=[('reduction="batchmean") * T * T', 'reduction="batchmean")')]),
    Wrong("distill", "uses reduction='mean', which also averages over classes", visible=True,
          replace=[('reduction="batchmean") * T * T', 'reduction="mean") * T * T')]),
    Wrong("distill", "swaps alpha and 1 - alpha", visible=True,
          replace=[("return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)",
                    "return (1 - alpha) * soft + alpha * F.cross_entropy(student_logits, labels)")]),
    Wrong("distill", "passes the student's probabilities, not log-probabilities", visible=True,
          replace=[("F.kl_div(F.log_softmax(student_logits / T, dim=1)", "F.kl_div(F.softmax(student_logits / T, dim=1)")]),
    Right("distill", "the KL divergence written out", source='''def distillation_loss(student_logits, teacher_logits, labels, T=4.0, alpha=0.7):
    p = F.softmax(teacher_logits / T, dim=1)
    log_q = F.log_softmax(student_logits / T, dim=1)
    soft = (p * (torch.log(p) - log_q)).sum(dim=1).mean() * T ** 2
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)
'''),

    # ------------------------------------------------------------------ export
    Wrong("export", "no dynamic_shapes: the batch size is fixed", visible=True,
          replace=[("dynamic_shapes=({0: batch},), ", "")]),
    Wrong("export", "returns the ONNX program instead of the path", visible=True,
          replace=[("    return path\n", "    return program\n")]),
    Wrong("export", "never saves the file", visible=True, replace=[("    program.save(str(path))\n", "")]),
    Wrong("export", "marks the feature dimension as dynamic instead of the batch", visible=True,
          replace=[("dynamic_shapes=({0: batch},)", "dynamic_shapes=({1: batch},)")]),
    Right("export", "an unbounded Dim and a Path returned", replace=[
        ('torch.export.Dim("batch", min=1, max=4096)', 'torch.export.Dim("batch")'),
        ("    return path\n", "    return Path(path)\n")]),

    # ------------------------------------------------------------------ fixed_point (integer-only inference)
    Wrong("fixed_point", "rounds with torch.round in floating point (halves to even, not up)", visible=True,
          replace=[("    return (acc * m0 + (torch.ones_like(n) << (n - 1))) >> n\n",
                    "    return torch.round(acc.double() * m0.double() / 2.0 ** n.double()).to(torch.int64)\n")]),
    Wrong("fixed_point", "shifts without adding the rounding term (floors)", visible=True,
          replace=[("(acc * m0 + (torch.ones_like(n) << (n - 1))) >> n", "(acc * m0) >> n")]),
    Wrong("fixed_point", "divides toward zero instead of shifting (negatives round up)", visible=True,
          replace=[("    return (acc * m0 + (torch.ones_like(n) << (n - 1))) >> n\n",
                    "    return torch.div(acc * m0 + (torch.ones_like(n) << (n - 1)), 2 ** n, rounding_mode='trunc')\n")]),
    Wrong("fixed_point", "multiplies in int32, which overflows for large accumulators", visible=True,
          replace=[("    acc, m0, n = (torch.as_tensor(v, dtype=torch.int64) for v in (acc, m0, n))\n",
                    "    acc, m0, n = (torch.as_tensor(v, dtype=torch.int32) for v in (acc, m0, n))\n")]),
    Wrong("fixed_point", "m0 from the multiplier itself, not the frexp mantissa", visible=True,
          replace=[("    m0 = round(q * (1 << 31))\n", "    m0 = round(real_multiplier * (1 << 31))\n")]),
    Wrong("fixed_point", "n = 31 + e instead of 31 - e", visible=True,
          replace=[("    return int(m0), 31 - exponent\n", "    return int(m0), 31 + exponent\n")]),
    Wrong("fixed_point", "forgets the case where m0 rounds up to 2**31",
          replace=[("    if m0 == 1 << 31:\n        m0, exponent = m0 // 2, exponent + 1\n", "")]),
    Right("fixed_point", "m0 and n by a loop that doubles M, and a rounding helper in integer arithmetic",
          source='''def quantize_multiplier(real_multiplier):
    if not 0.0 < real_multiplier < 1.0:
        raise ValueError("the multiplier must lie in (0, 1)")
    n = 31
    while real_multiplier < 0.5:
        real_multiplier *= 2.0
        n += 1
    m0 = int(round(real_multiplier * 2 ** 31))
    if m0 == 2 ** 31:
        m0 //= 2
        n -= 1
    return m0, n


def requantize(acc, m0, n):
    acc = torch.as_tensor(acc).long()
    m0 = torch.as_tensor(m0).long()
    n = torch.as_tensor(n).long()
    half = torch.pow(torch.tensor(2, dtype=torch.int64), n - 1)
    return torch.floor_divide(acc * m0 + half, torch.pow(torch.tensor(2, dtype=torch.int64), n))
'''),

    # ------------------------------------------------------------------ int8_linear
    Wrong("int8_linear", "multiplies in int8, so the sums wrap around", visible=True,
          replace=[("    acc = (x_q.to(torch.int64) - x_zero_point) @ w_q.to(torch.int64).T + bias_q.to(torch.int64)\n",
                    "    acc = ((x_q - x_zero_point) @ w_q.T).to(torch.int64) + bias_q.to(torch.int64)\n")]),
    Wrong("int8_linear", "forgets the input zero-point", visible=True,
          replace=[("(x_q.to(torch.int64) - x_zero_point) @", "x_q.to(torch.int64) @")]),
    Wrong("int8_linear", "adds the zero-point to the input instead of subtracting it", visible=True,
          replace=[("(x_q.to(torch.int64) - x_zero_point) @", "(x_q.to(torch.int64) + x_zero_point) @")]),
    Wrong("int8_linear", "the fused ReLU clamps at 0 instead of the output zero-point", visible=True,
          replace=[("    low = max(-128, y_zero_point) if relu else -128\n", "    low = 0 if relu else -128\n")]),
    Wrong("int8_linear", "adds the output zero-point before requantizing", visible=True,
          replace=[("(requantize(acc, m0, n) + y_zero_point)", "requantize(acc + y_zero_point, m0, n)")]),
    Wrong("int8_linear", "adds the float-scale bias after requantizing (bias on the output's scale)", visible=True,
          replace=[("    acc = (x_q.to(torch.int64) - x_zero_point) @ w_q.to(torch.int64).T + bias_q.to(torch.int64)\n",
                    "    acc = (x_q.to(torch.int64) - x_zero_point) @ w_q.to(torch.int64).T\n"),
                   ("(requantize(acc, m0, n) + y_zero_point)", "(requantize(acc, m0, n) + bias_q.to(torch.int64) + y_zero_point)")]),
    Wrong("int8_linear", "quantize_bias divides by the weight scale only",
          replace=[("    scales = w_scales.to(torch.float64) * float(x_scale)\n", "    scales = w_scales.to(torch.float64)\n")]),
    Wrong("int8_linear", "requantizes in floating point (s_x * s_w / s_y as a float) instead of the runtime's integers",
          replace=[("(requantize(acc, m0, n) + y_zero_point)",
                    "(torch.round(acc.double() * m0.double() / 2.0 ** n.double()).long() + y_zero_point)")]),
    Right("int8_linear", "int32 accumulation with torch.matmul and torch.clamp with a computed floor", source='''def quantize_bias(bias, w_scales, x_scale):
    q = (bias.double() / (w_scales.double() * x_scale)).round()
    return torch.clamp(q, -2147483648, 2147483647).int()


def int8_linear(x_q, x_zero_point, w_q, bias_q, m0, n, y_zero_point, relu=False):
    acc = torch.matmul(x_q.int() - x_zero_point, w_q.int().t()) + bias_q.int()
    y = requantize(acc, m0, n) + y_zero_point
    floor = y_zero_point if relu and y_zero_point > -128 else -128
    return torch.clamp(y, floor, 127).to(torch.int8)
'''),

    # ------------------------------------------------------------------ budget
    Wrong("budget", "adds int8 products in int8 (they accumulate in int32)", visible=True,
          replace=[('8: ("int8_mult", "int32_add")', '8: ("int8_mult", "int8_add")')]),
    Wrong("budget", "picks the memory by the number of weights, not their bytes", visible=True,
          replace=[("size_bytes = num_weights * bits / 8", "size_bytes = num_weights")]),
    Wrong("budget", "prices 32-bit words at the 64-bit read energy", visible=True,
          replace=[("memory = num_weights * bits / 64 * pj_per_read", "memory = num_weights * bits / 32 * pj_per_read")]),
    Wrong("budget", "prices every weight read as a small-SRAM access, wherever the weights live", visible=True,
          replace=[("pj_per_read = next(pj for capacity, _name, pj in WEIGHT_MEMORY if size_bytes <= capacity)",
                    "pj_per_read = WEIGHT_MEMORY[0][2]")]),
    Wrong("budget", "a strict < at the capacity: exactly 8 KB goes to the large SRAM",
          replace=[("if size_bytes <= capacity)", "if size_bytes < capacity)")]),
    Wrong("budget", "forgets to convert pJ to nJ", visible=True,
          replace=[("return (compute + memory) / 1000.0", "return compute + memory")]),
    Wrong("budget", "choose_variant filters on latency alone", visible=True,
          replace=[('budget.admits(r["latency_ms"], r["size_bytes"], r["accuracy"], r["ram_bytes"])',
                    'r["latency_ms"] <= budget.max_latency_ms')]),
    Wrong("budget", "choose_variant ignores the budget", visible=True,
          replace=[('fitting = [r for r in rows if budget.admits(r["latency_ms"], r["size_bytes"], r["accuracy"], r["ram_bytes"])]',
                    "fitting = list(rows)")]),
    Wrong("budget", "choose_variant ignores the RAM limit (the weights fit flash, so it must fit)", visible=True,
          replace=[('budget.admits(r["latency_ms"], r["size_bytes"], r["accuracy"], r["ram_bytes"])',
                    'budget.admits(r["latency_ms"], r["size_bytes"], r["accuracy"])')]),
    Wrong("budget", "choose_variant compares the RAM peak with the flash limit", visible=True,
          replace=[('budget.admits(r["latency_ms"], r["size_bytes"], r["accuracy"], r["ram_bytes"])',
                    'budget.admits(r["latency_ms"], max(r["size_bytes"], r["ram_bytes"]), r["accuracy"])')]),
    Wrong("budget", "choose_variant takes the most energy", visible=True,
          replace=[('min(fitting, key=lambda r: r["energy_nj"])', 'max(fitting, key=lambda r: r["energy_nj"])')]),
    Right("budget", "an explicit loop over the memories and a sort", replace=[
        ("    pj_per_read = next(pj for capacity, _name, pj in WEIGHT_MEMORY if size_bytes <= capacity)\n",
         "    for capacity, _name, pj_per_read in WEIGHT_MEMORY:\n        if size_bytes <= capacity:\n            break\n"),
        ('return min(fitting, key=lambda r: r["energy_nj"])["name"] if fitting else None',
         'return sorted(fitting, key=lambda r: r["energy_nj"])[0]["name"] if fitting else None')]),
]
