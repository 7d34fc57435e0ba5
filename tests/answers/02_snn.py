"""Recorded answers for 02_snn: mistakes learners really make must lose points; other correct answers keep them."""
from tests.answers import Right, Wrong

ANSWERS = [
    # ------------------------------------------------------------------ Exercise 1: lif_step
    Wrong("lif", "resets on the new membrane in the same step (snn.Leaky's reset_delay=False), not one step late",
          source='''def lif_step(current, mem, beta, threshold=1.0):
    mem = beta * mem + current
    spike = (mem > threshold).float()
    return spike, mem - spike * threshold
''', visible=True),
    Wrong("lif", "resets to zero instead of subtracting the threshold",
          replace=[("mem = beta * mem + current - reset * threshold\n", "mem = (1 - reset) * beta * mem + current\n")],
          visible=True),
    Wrong("lif", "leaks the input too: beta * (mem + current)",
          replace=[("mem = beta * mem + current - reset * threshold\n", "mem = beta * (mem + current) - reset * threshold\n")],
          visible=True),
    Wrong("lif", "forgets the leak (an integrate-and-fire neuron, not a leaky one)",
          replace=[("mem = beta * mem + current - reset * threshold\n", "mem = mem + current - reset * threshold\n")],
          visible=True),
    Wrong("lif", "fires at mem >= threshold; snn.Leaky fires only above it",
          replace=[("return (mem > threshold).float(), mem", "return (mem >= threshold).float(), mem")]),
    Right("lif", "torch.where and a differently named membrane",
          source='''def lif_step(current, mem, beta, threshold=1.0):
    reset = torch.where(mem > threshold, 1.0, 0.0)
    new_mem = beta * mem + current - threshold * reset
    spike = torch.where(new_mem > threshold, 1.0, 0.0)
    return spike, new_mem
'''),
    Right("lif", "torch.heaviside on mem - threshold",
          source='''def lif_step(current, mem, beta, threshold=1.0):
    zero = torch.tensor(0.0)
    reset = torch.heaviside(mem - threshold, zero)
    mem = beta * mem + current - reset * threshold
    return torch.heaviside(mem - threshold, zero), mem
'''),

    # ------------------------------------------------------------------ Exercise 2: rate_code
    Wrong("rate", "returns the probabilities, not sampled spikes",
          replace=[("return torch.bernoulli(x.expand(num_steps, *x.shape), generator=generator)",
                    "return x.expand(num_steps, *x.shape).clone()")], visible=True),
    Wrong("rate", "puts time last: [*x.shape, num_steps]",
          replace=[("return torch.bernoulli(x.expand(num_steps, *x.shape), generator=generator)",
                    "return torch.bernoulli(x.unsqueeze(-1).expand(*x.shape, num_steps), generator=generator)")],
          visible=True),
    Wrong("rate", "fires when the random number exceeds x: rate 1 - x",
          replace=[("return torch.bernoulli(x.expand(num_steps, *x.shape), generator=generator)",
                    "return (torch.rand(num_steps, *x.shape, generator=generator) > x).float()")], visible=True),
    Wrong("rate", "thresholds the pixel at 0.5 instead of sampling",
          replace=[("return torch.bernoulli(x.expand(num_steps, *x.shape), generator=generator)",
                    "return (x.expand(num_steps, *x.shape) > 0.5).float()")], visible=True),
    Wrong("rate", "ignores the generator: not reproducible",
          replace=[("return torch.bernoulli(x.expand(num_steps, *x.shape), generator=generator)",
                    "return torch.bernoulli(x.expand(num_steps, *x.shape))")]),
    Right("rate", "uniform random numbers below x",
          replace=[("return torch.bernoulli(x.expand(num_steps, *x.shape), generator=generator)",
                    "return (torch.rand(num_steps, *x.shape, generator=generator) < x).float()")]),

    # ------------------------------------------------------------------ Exercise 2: latency_code
    Wrong("latency", "spreads over num_steps instead of num_steps - 1 (a pixel of 0 lands past the end)",
          replace=[("torch.round((1 - x) * (num_steps - 1))", "torch.round((1 - x) * num_steps)")], visible=True),
    Wrong("latency", "brighter pixels fire later",
          replace=[("torch.round((1 - x) * (num_steps - 1))", "torch.round(x * (num_steps - 1))")], visible=True),
    Wrong("latency", "forgets the threshold: dark pixels fire at the last step",
          replace=[("return spikes * (x >= threshold).float()", "return spikes")], visible=True),
    Wrong("latency", "truncates the step instead of rounding it",
          replace=[("torch.round((1 - x) * (num_steps - 1)).long()", "((1 - x) * (num_steps - 1)).long()")]),
    Right("latency", "one_hot over time, moved to the front",
          source='''def latency_code(x, num_steps, threshold=0.01):
    steps = torch.round((1 - x) * (num_steps - 1)).long()
    spikes = F.one_hot(steps, num_steps).float().movedim(-1, 0)
    return spikes * (x >= threshold).float()
'''),
    Right("latency", "a comparison against every time step",
          source='''def latency_code(x, num_steps, threshold=0.01):
    fire_at = torch.round((1 - x) * (num_steps - 1))
    time = torch.arange(num_steps, dtype=x.dtype).reshape(num_steps, *([1] * x.dim()))
    return ((time == fire_at) & (x >= threshold)).float()
'''),

    # ------------------------------------------------------------------ Exercise 3: SpikingNet.forward
    Wrong("snn_forward", "returns the output membrane potentials instead of the spikes",
          replace=[("out.append(spk2)", "out.append(mem2)")], visible=True),
    Wrong("snn_forward", "never resets: the neurons keep their state from the previous call",
          replace=[("        mem1, mem2 = self.lif1.reset_mem(), self.lif2.reset_mem()\n", ""),
                   ("spk1, mem1 = self.lif1(self.fc1(step), mem1)\n", "spk1, _ = self.lif1(self.fc1(step))\n"),
                   ("spk2, mem2 = self.lif2(self.fc2(spk1), mem2)\n", "spk2, _ = self.lif2(self.fc2(spk1))\n")],
          visible=True),
    Wrong("snn_forward", "resets the membranes at every time step: nothing integrates over time",
          replace=[("        mem1, mem2 = self.lif1.reset_mem(), self.lif2.reset_mem()\n", ""),
                   ("        for step in spikes:\n",
                    "        for step in spikes:\n            mem1, mem2 = self.lif1.reset_mem(), self.lif2.reset_mem()\n")],
          visible=True),
    Wrong("snn_forward", "returns the spike counts summed over time, not the spikes of every step",
          replace=[("return torch.stack(out)", "return torch.stack(out).sum(0)")], visible=True),
    Wrong("snn_forward", "feeds the hidden membrane, not its spikes, to fc2",
          replace=[("self.lif2(self.fc2(spk1), mem2)", "self.lif2(self.fc2(mem1), mem2)")], visible=True),
    Wrong("snn_forward", "skips the last time step",
          replace=[("for step in spikes:\n", "for step in spikes[:-1]:\n")], visible=True),
    Right("snn_forward", "resets with reset_mem and lets the neurons keep their own state",
          replace=[("        mem1, mem2 = self.lif1.reset_mem(), self.lif2.reset_mem()\n",
                    "        self.lif1.reset_mem()\n        self.lif2.reset_mem()\n"),
                   ("spk1, mem1 = self.lif1(self.fc1(step), mem1)\n", "spk1, _ = self.lif1(self.fc1(step))\n"),
                   ("spk2, mem2 = self.lif2(self.fc2(spk1), mem2)\n", "spk2, _ = self.lif2(self.fc2(spk1))\n")]),
    Right("snn_forward", "explicit zero membranes and an index loop",
          replace=[("        mem1, mem2 = self.lif1.reset_mem(), self.lif2.reset_mem()\n",
                    "        mem1 = spikes.new_zeros(spikes.shape[1], self.fc1.out_features)\n"
                    "        mem2 = spikes.new_zeros(spikes.shape[1], self.fc2.out_features)\n"),
                   ("        for step in spikes:\n", "        for t in range(spikes.shape[0]):\n            step = spikes[t]\n"),
                   ("return torch.stack(out)", "return torch.stack(out, dim=0)")]),

    # ------------------------------------------------------------------ Exercise 4: balance_weights
    Wrong("balance", "takes the maximum activation, whatever the percentile",
          replace=[("torch.quantile(a[a > 0], percentile / 100).item()", "a.max().item()")], visible=True),
    Wrong("balance", "takes the percentile over all activations, the silent neurons' zeros included",
          replace=[("torch.quantile(a[a > 0], percentile / 100)", "torch.quantile(a.flatten(), percentile / 100)")],
          visible=True),
    Wrong("balance", "passes the percentile to torch.quantile without dividing by 100",
          replace=[("torch.quantile(a[a > 0], percentile / 100)", "torch.quantile(a[a > 0], percentile)")],
          visible=True),
    Wrong("balance", "hard-codes the 99.9th percentile and ignores the argument",
          replace=[("torch.quantile(a[a > 0], percentile / 100)", "torch.quantile(a[a > 0], 0.999)")], visible=True),
    Wrong("balance", "inverts the ratio: lambda_l / lambda_(l-1)",
          replace=[(".detach() * lambdas[l] / lambdas[l + 1]", ".detach() * lambdas[l + 1] / lambdas[l]")], visible=True),
    Wrong("balance", "leaves the output layer unscaled",
          replace=[("weights.append(ann.layers[-1].weight.detach() * lambdas[-1])",
                    "weights.append(ann.layers[-1].weight.detach())")], visible=True),
    Wrong("balance", "wrong layer: divides by lambda_l but forgets the previous layer's lambda_(l-1)",
          replace=[(".detach() * lambdas[l] / lambdas[l + 1]", ".detach() / lambdas[l + 1]")]),
    Right("balance", "NumPy's percentile of the positive values",
          source='''def balance_weights(ann, x, percentile=99.9):
    import numpy as np
    acts = []
    with torch.no_grad():
        ann(x, record=acts)
    lambdas = [1.0]
    for a in acts:
        values = a.numpy().ravel()
        lambdas.append(float(np.percentile(values[values > 0], percentile)))
    weights = []
    for l, layer in enumerate(ann.layers):
        scale = lambdas[l] / lambdas[l + 1] if l + 1 < len(lambdas) else lambdas[l]
        weights.append(layer.weight.detach().clone() * scale)
    return weights
'''),
    Right("balance", "non-zero selected with != 0 and nonzero()",
          replace=[("torch.quantile(a[a > 0], percentile / 100)",
                    "torch.quantile(a.flatten()[a.flatten().nonzero().squeeze(1)], percentile / 100)")]),

    # ------------------------------------------------------------------ Exercise 5: snn_distillation_loss
    Wrong("snn_kd", "averages the spikes over time instead of counting them",
          replace=[("counts = spikes_out.sum(0)\n", "counts = spikes_out.mean(0)\n")], visible=True),
    Wrong("snn_kd", "forgets the temperature squared on the soft term",
          replace=[('reduction="batchmean") * temperature ** 2', 'reduction="batchmean")')], visible=True),
    Wrong("snn_kd", "KL divergence with reduction='mean' (per element) instead of 'batchmean'",
          replace=[('reduction="batchmean") * temperature ** 2', 'reduction="mean") * temperature ** 2')], visible=True),
    Wrong("snn_kd", "swaps the weights: alpha on the hard labels",
          replace=[("return alpha * soft + (1 - alpha) * F.cross_entropy(counts, labels)",
                    "return (1 - alpha) * soft + alpha * F.cross_entropy(counts, labels)")], visible=True),
    Wrong("snn_kd", "does not soften the teacher with the temperature",
          replace=[("soft = F.kl_div(F.log_softmax(counts / temperature, dim=1), F.softmax(teacher_logits / temperature, dim=1)",
                    "soft = F.kl_div(F.log_softmax(counts / temperature, dim=1), F.softmax(teacher_logits, dim=1)")],
          visible=True),
    Wrong("snn_kd", "sums over the batch instead of over time",
          replace=[("counts = spikes_out.sum(0)\n", "counts = spikes_out.sum(1)\n")], visible=True),
    Right("snn_kd", "the KL divergence written out by hand",
          source='''def snn_distillation_loss(spikes_out, teacher_logits, labels, temperature=4.0, alpha=0.5):
    counts = spikes_out.sum(dim=0)
    log_q = torch.log_softmax(counts / temperature, dim=1)
    p = torch.softmax(teacher_logits / temperature, dim=1)
    soft = (p * (p.log() - log_q)).sum(dim=1).mean() * temperature ** 2
    hard = F.nll_loss(torch.log_softmax(counts, dim=1), labels)
    return alpha * soft + (1 - alpha) * hard
'''),

    # ------------------------------------------------------------------ Exercise 6: count_synops
    Wrong("synops", "divides by the number of time steps (dim 0) instead of the batch size",
          replace=[("batch = layer_inputs[0].shape[1]", "batch = layer_inputs[0].shape[0]")], visible=True),
    Wrong("synops", "multiplies by in_features instead of out_features (the fan-out)",
          replace=[("spikes.sum().item() * layer.out_features", "spikes.sum().item() * layer.in_features")],
          visible=True),
    Wrong("synops", "forgets to divide by the batch size",
          replace=[("for spikes, layer in zip(layer_inputs, layers)) / batch)",
                    "for spikes, layer in zip(layer_inputs, layers)))")], visible=True),
    Wrong("synops", "counts only the first layer",
          replace=[("in zip(layer_inputs, layers)) / batch)", "in zip(layer_inputs[:1], layers[:1])) / batch)")], visible=True),
    Wrong("synops", "counts every input, spike or not (that is the MAC count of T dense steps)",
          replace=[("spikes.sum().item() * layer.out_features", "spikes.numel() * layer.out_features")], visible=True),
    Right("synops", "per-sample counts, then the mean over the batch",
          source='''def count_synops(layer_inputs, layers):
    per_sample = sum(spikes.sum(dim=(0, 2)) * layer.out_features for spikes, layer in zip(layer_inputs, layers))
    return per_sample.mean().item()
'''),

    # ------------------------------------------------------------------ Exercise 7: flip_bits
    Wrong("flip", "flips the bits of the caller's tensor: no clone",
          replace=[("flipped = weight.detach().clone().contiguous()", "flipped = weight.detach()")], visible=True),
    Wrong("flip", "builds the bit-31 mask as 1 << 31, which overflows int32",
          replace=[("-(1 << 31) if bit == 31 else 1 << bit", "1 << bit")], visible=True),
    Wrong("flip", "draws positions with randint: repeats, so fewer than count distinct elements",
          replace=[("torch.randperm(as_int.numel(), generator=generator)[:count]",
                    "torch.randint(as_int.numel(), (count,), generator=generator)")], visible=True),
    Wrong("flip", "flips the neighbouring bit: 1 << (bit + 1)",
          replace=[("else 1 << bit", "else 1 << (bit + 1)")], visible=True),
    Wrong("flip", "ignores the generator: the same seed flips different elements",
          replace=[("torch.randperm(as_int.numel(), generator=generator)", "torch.randperm(as_int.numel())")]),
    Wrong("flip", "sets the bit with OR instead of flipping it with XOR",
          replace=[("as_int[chosen] ^= mask", "as_int[chosen] |= mask")]),
    Right("flip", "NumPy's uint32 view",
          source='''def flip_bits(weight, count, bit, generator):
    import numpy as np
    values = weight.detach().cpu().numpy().astype(np.float32).copy()
    bits = values.view(np.uint32).reshape(-1)
    chosen = torch.randperm(bits.size, generator=generator)[:count].numpy()
    bits[chosen] ^= np.uint32(1 << bit)
    return torch.from_numpy(values)
'''),
    # ------------------------------------------------------------------ Exercise 8: delta_encode
    Wrong("delta", "compares every frame with the first frame, not with the previous one",
          replace=[("previous = torch.cat([torch.zeros_like(frames[:1]), frames[:-1]])",
                    "previous = torch.cat([torch.zeros_like(frames[:1]), frames[:1].expand_as(frames[1:])])")],
          visible=True),
    Wrong("delta", "forgets the OFF events: only brightening pixels fire",
          replace=[("return (change >= threshold).float() - (change <= -threshold).float()",
                    "return (change >= threshold).float()")], visible=True),
    Wrong("delta", "uses the size of the change, so falls fire ON events too: the polarity is lost",
          replace=[("return (change >= threshold).float() - (change <= -threshold).float()",
                    "return (change.abs() >= threshold).float()")], visible=True),
    Wrong("delta", "strict comparisons: a change of exactly the threshold makes no event",
          replace=[("return (change >= threshold).float() - (change <= -threshold).float()",
                    "return (change > threshold).float() - (change < -threshold).float()")], visible=True),
    Wrong("delta", "repeats the first frame before it (spikegen.delta's padding=True): no events at switch-on",
          replace=[("previous = torch.cat([torch.zeros_like(frames[:1]), frames[:-1]])",
                    "previous = torch.cat([frames[:1], frames[:-1]])")], visible=True),
    Wrong("delta", "compares with the NEXT frame: the events come one frame early and with the wrong sign",
          replace=[("previous = torch.cat([torch.zeros_like(frames[:1]), frames[:-1]])",
                    "previous = torch.cat([frames[1:], torch.zeros_like(frames[:1])])")], visible=True),
    Right("delta", "a loop over time that keeps the previous frame, and torch.sign",
          source='''def delta_encode(frames, threshold):
    previous = torch.zeros_like(frames[0])
    out = []
    for frame in frames:
        change = frame - previous
        out.append(torch.sign(change) * (change.abs() >= threshold).float())
        previous = frame
    return torch.stack(out)
'''),
    Right("delta", "torch.diff with a zero frame prepended, and torch.where",
          source='''def delta_encode(frames, threshold):
    change = torch.diff(frames, dim=0, prepend=torch.zeros_like(frames[:1]))
    return torch.where(change >= threshold, 1.0, torch.where(change <= -threshold, -1.0, 0.0))
'''),

    # ------------------------------------------------------------------ Exercise 9: fgsm
    Wrong("fgsm", "steps against the gradient (x - eps * sign): that lowers the loss",
          replace=[("x.detach() + eps * grad.sign()", "x.detach() - eps * grad.sign()")], visible=True),
    Wrong("fgsm", "steps by eps times the raw gradient, not its sign",
          replace=[("x.detach() + eps * grad.sign()", "x.detach() + eps * grad")], visible=True),
    Wrong("fgsm", "attacks the model's prediction instead of the true label",
          replace=[("    loss = F.cross_entropy(model(x_adv), y)\n    (grad,)",
                    "    loss = F.cross_entropy(model(x_adv), model(x_adv).argmax(1))\n    (grad,)")], visible=True),
    Wrong("fgsm", "forgets to clamp to the pixel range [0, 1]",
          replace=[("return (x.detach() + eps * grad.sign()).clamp(0, 1)", "return x.detach() + eps * grad.sign()")],
          visible=True),
    Wrong("fgsm", "loss.backward() leaves gradients on the model's parameters",
          source='''def fgsm(model, x, y, eps):
    model.eval()
    x_adv = x.detach().clone().requires_grad_(True)
    F.cross_entropy(model(x_adv), y).backward()
    return (x + eps * x_adv.grad.sign()).clamp(0, 1).detach()
''', visible=True),
    Wrong("fgsm", "F.nll_loss on raw logits: only the true class's logit moves the image (a newcomer's answer)",
          replace=[("    loss = F.cross_entropy(model(x_adv), y)\n", "    loss = F.nll_loss(model(x_adv), y)\n")], visible=True),
    Wrong("fgsm", "attacks the model in whatever mode it is in (dropout still on)",
          replace=[("    model.eval()\n", "")]),
    Right("fgsm", "loss.backward() and then model.zero_grad(), with torch.clip",
          source='''def fgsm(model, x, y, eps):
    model.eval()
    x_adv = x.clone().detach()
    x_adv.requires_grad = True
    loss = F.cross_entropy(model(x_adv), y)
    loss.backward()
    model.zero_grad()
    with torch.no_grad():
        return torch.clip(x + eps * torch.sign(x_adv.grad), 0.0, 1.0)
'''),

    # ------------------------------------------------------------------ Exercise 10: pgd
    Wrong("pgd", "projects around the previous iterate, not the clean image: the image drifts steps * alpha away",
          source='''def pgd(model, x, y, eps, alpha, steps):
    x_adv = x.detach().clone()
    for _ in range(steps):
        previous = x_adv
        x_adv = fgsm(model, x_adv, y, alpha)
        x_adv = torch.minimum(torch.maximum(x_adv, previous - eps), previous + eps)
    return x_adv
''', visible=True),
    Wrong("pgd", "each step has size eps instead of alpha",
          replace=[("        x_adv = fgsm(model, x_adv, y, alpha)\n", "        x_adv = fgsm(model, x_adv, y, eps)\n")], visible=True),
    Wrong("pgd", "restarts every step from the clean image: one FGSM step of alpha, repeated",
          replace=[("        x_adv = fgsm(model, x_adv, y, alpha)\n", "        x_adv = fgsm(model, x, y, alpha)\n")], visible=True),
    Wrong("pgd", "stops one step early: range(steps - 1)",
          replace=[("for _ in range(steps):", "for _ in range(steps - 1):")], visible=True),
    Right("pgd", "gradients by hand, the ball as a clamp of the perturbation",
          source='''def pgd(model, x, y, eps, alpha, steps):
    model.eval()
    delta = torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        grad = torch.autograd.grad(loss, delta)[0]
        delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()
'''),
]
