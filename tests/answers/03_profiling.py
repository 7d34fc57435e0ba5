"""Recorded answers for 03_profiling: mistakes learners really make must lose points; other correct answers keep them."""
from tests.answers import Right, Wrong

ANSWERS = [
    # ------------------------------------------------------------------ benchmark
    Wrong("benchmark", "returns the median (a float) instead of the Measurement", visible=True,
          replace=[("return timer.blocked_autorange(min_run_time=min_run_time)",
                    "return timer.blocked_autorange(min_run_time=min_run_time).median")]),
    Wrong("benchmark", "stmt='fn' names the function without calling it", visible=True,
          replace=[('    timer = torch_benchmark.Timer(stmt="fn()"', '    timer = torch_benchmark.Timer(stmt="fn"')]),
    Wrong("benchmark", "does not pass num_threads: the Timer's default of 1 thread fits the visible test only",
          replace=[('{"fn": fn}, num_threads=threads)\n    return', '{"fn": fn})\n    return')]),
    Wrong("benchmark", "sets the thread count globally, never restores it, and the Timer still uses 1",
          source='''def benchmark(fn, threads=1, min_run_time=0.2):
    torch.set_num_threads(threads)
    timer = torch_benchmark.Timer(stmt="fn()", globals={"fn": fn})
    return timer.blocked_autorange(min_run_time=min_run_time)
'''),
    Wrong("benchmark", "times by hand with perf_counter and returns seconds", visible=True,
          source='''def benchmark(fn, threads=1, min_run_time=0.2):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
'''),
    Right("benchmark", "one expression, another variable name in the statement",
          source='''def benchmark(fn, threads=1, min_run_time=0.2):
    return torch_benchmark.Timer("work()", globals={"work": fn}, num_threads=threads).blocked_autorange(
        min_run_time=min_run_time)
'''),

    # ------------------------------------------------------------------ profiler
    Wrong("profiler", "sorts by total CPU time (children included), so aten::matmul outranks aten::mm", visible=True,
          replace=[("events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)",
                    "events = sorted(prof.key_averages(), key=lambda e: e.cpu_time_total, reverse=True)")]),
    Wrong("profiler", "sorts ascending: the smallest operators first", visible=True,
          replace=[("events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)",
                    "events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total)")]),
    Wrong("profiler", "off by one: keeps k - 1 names", visible=True,
          replace=[("return [e.key for e in events[:k]]", "return [e.key for e in events[:k - 1]]")]),
    Wrong("profiler", "self_share returns a percentage", visible=True,
          replace=[("return mine / total if total else 0.0", "return 100 * mine / total if total else 0.0")]),
    Wrong("profiler", "self_share divides by total time, which counts nested operators twice",
          replace=[("total = sum(e.self_cpu_time_total for e in events)", "total = sum(e.cpu_time_total for e in events)")]),
    Right("profiler", "heapq.nlargest and a dict of self times", source='''import heapq


def top_ops(prof, k=5):
    return [e.key for e in heapq.nlargest(k, prof.key_averages(), key=lambda e: e.self_cpu_time_total)]


def self_share(prof, name):
    times = {}
    for e in prof.key_averages():
        times[e.key] = times.get(e.key, 0) + e.self_cpu_time_total
    total = sum(times.values())
    return times.get(name, 0) / total if total else 0.0
'''),

    # ------------------------------------------------------------------ flops
    Wrong("flops", "counts a multiply-add as one FLOP", visible=True,
          replace=[("return 2 * batch * fin * fout", "return batch * fin * fout")]),
    Wrong("flops", "forgets to count the output written", visible=True,
          replace=[("(batch * fin + fin * fout + fout + batch * fout)", "(batch * fin + fin * fout + fout)")]),
    Wrong("flops", "reads the weights once per row, as if nothing were reused", visible=True,
          replace=[("(batch * fin + fin * fout + fout + batch * fout)", "(batch * fin + batch * fin * fout + fout + batch * fout)")]),
    Wrong("flops", "hard-codes 4 bytes per value, ignoring bytes_per_value",
          replace=[("moved = bytes_per_value * (", "moved = 4 * (")]),
    Right("flops", "bytes as a sum of tensor sizes, FLOPs written out", source='''def linear_flops(batch, fin, fout):
    macs = batch * fin * fout
    return macs + macs


def linear_intensity(batch, fin, fout, bytes_per_value=4):
    elements = {"input": batch * fin, "weight": fin * fout, "bias": fout, "output": batch * fout}
    return 2 * batch * fin * fout / (sum(elements.values()) * bytes_per_value)
'''),

    # ------------------------------------------------------------------ roofline
    Wrong("roofline", "max instead of min", visible=True,
          replace=[("    return min(peak_flops, intensity * bandwidth)\n    ###", "    return max(peak_flops, intensity * bandwidth)\n    ###")]),
    Wrong("roofline", "divides intensity by bandwidth", visible=True,
          replace=[("    return min(peak_flops, intensity * bandwidth)\n    ###", "    return min(peak_flops, intensity / bandwidth)\n    ###")]),
    Wrong("roofline", "calls the ridge point itself memory-bound", visible=True,
          replace=[('"memory" if intensity < peak_flops / bandwidth', '"memory" if intensity <= peak_flops / bandwidth')]),
    Wrong("roofline", "inverts the ridge point (bandwidth / peak)", visible=True,
          replace=[('"memory" if intensity < peak_flops / bandwidth', '"memory" if intensity < bandwidth / peak_flops')]),
    Wrong("roofline", "hard-codes the visible example's ridge point of 10 FLOP/byte",
          replace=[('"memory" if intensity < peak_flops / bandwidth', '"memory" if intensity < 10')]),
    Right("roofline", "compares the memory roof with the peak instead of the ridge", source='''def attainable(intensity, peak_flops, bandwidth):
    fed = intensity * bandwidth
    return fed if fed < peak_flops else peak_flops


def bound(intensity, peak_flops, bandwidth):
    return "memory" if intensity * bandwidth < peak_flops else "compute"
'''),

    # ------------------------------------------------------------------ systolic
    Wrong("systolic", "forgets the cycles that load each tile", visible=True,
          replace=[("    cycles = tiles * (rows + m + rows + cols - 2)\n", "    cycles = tiles * (m + rows + cols - 2)\n")]),
    Wrong("systolic", "floor division: a partial tile is dropped", visible=True,
          replace=[("tiles = math.ceil(k / rows) * math.ceil(n / cols)", "tiles = (k // rows) * (n // cols) or 1")]),
    Wrong("systolic", "utilisation per cycle, not per cell and cycle", visible=True,
          replace=[("return cycles, m * k * n / (cycles * rows * cols)", "return cycles, m * k * n / cycles")]),
    Wrong("systolic", "accepts a zero dimension", visible=True,
          replace=[('    if min(m, k, n, rows, cols) < 1:\n        raise ValueError("all dimensions must be at least 1")\n', "")]),
    Wrong("systolic", "tiles only along k, forgetting the columns of the weights",
          replace=[("tiles = math.ceil(k / rows) * math.ceil(n / cols)", "tiles = math.ceil(k / rows)")]),
    Right("systolic", "integer ceiling and a loop over the tiles", source='''def systolic_matmul(m, k, n, rows, cols):
    if m < 1 or k < 1 or n < 1 or rows < 1 or cols < 1:
        raise ValueError(f"dimensions must be positive, got m={m} k={k} n={n} rows={rows} cols={cols}")
    cycles = 0
    for _ in range(-(-k // rows)):
        for _ in range(-(-n // cols)):
            cycles += rows + m + rows + cols - 2
    return cycles, m * k * n / (cycles * rows * cols)
'''),

    # ------------------------------------------------------------------ fast
    Wrong("fast", "keeps the slow pipeline's float64", visible=True,
          replace=[("model = model.float().to(memory_format=torch.channels_last)",
                    "model = model.double().to(memory_format=torch.channels_last)"),
                   ("images = prepare_images(digits.train.x, mean, std).contiguous(",
                    "images = prepare_images(digits.train.x, mean, std).double().contiguous("),
                   ("val_images = prepare_images(digits.val.x, mean, std).contiguous(",
                    "val_images = prepare_images(digits.val.x, mean, std).double().contiguous(")]),
    Wrong("fast", "plain SGD without the baseline's momentum: a different optimisation", visible=True,
          replace=[("    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)\n", "    optimizer = torch.optim.SGD(model.parameters(), lr=lr)\n")]),
    Wrong("fast", "shuffles with its own permutation instead of the baseline's epoch orders", visible=True,
          replace=[("for order in epoch_orders(len(digits.train), epochs, seed):",
                    "for order in [torch.randperm(len(digits.train)) for _ in range(epochs)]:")]),
    Wrong("fast", "still calls .item() after every step (a host sync)",
          replace=[("total += loss.detach()", "total += loss.item()")]),
    Wrong("fast", "still validates one sample at a time",
          replace=[("acc = (model(val_images).argmax(1) == digits.val.y).float().mean().item()",
                    "acc = sum(int(model(val_images[i:i + 1]).argmax(1)[0] == digits.val.y[i])\n"
                    "                      for i in range(len(val_images))) / len(val_images)")]),
    Wrong("fast", "validates in one batch but with autograd recording",
          replace=[("        with torch.inference_mode():\n            acc = (model(val_images)",
                    "        if True:\n            acc = (model(val_images)")]),
    Wrong("fast", "prepares the images again for every batch",
          replace=[("loss = F.cross_entropy(model(images[index]), digits.train.y[index])",
                    "batch = prepare_images(digits.train.x[index], mean, std)\n"
                    "            loss = F.cross_entropy(model(batch), digits.train.y[index])")]),
    Right("fast", "no channels_last, torch.no_grad, losses stacked once per epoch", source='''def fast_pipeline(model, digits, epochs=2, seed=0, batch_size=32, lr=0.05):
    pixels = digits.train.x.double()
    mean, std = pixels.mean().item(), pixels.std(correction=0).item()
    train_images = prepare_images(digits.train.x, mean, std)
    val_images = prepare_images(digits.val.x, mean, std)
    model = model.float()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    history = []
    for order in epoch_orders(len(digits.train), epochs, seed):
        model.train()
        losses = []
        for index in order.split(batch_size):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(train_images[index]), digits.train.y[index])
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        model.eval()
        with torch.no_grad():
            predictions = model(val_images).argmax(dim=1)
        history.append((torch.stack(losses).mean().item(), (predictions == digits.val.y).float().mean().item()))
    return model, history
'''),

    # ------------------------------------------------------------------ accel_latency
    Wrong("accel_latency", "pays the fixed copy cost once, forgetting that the result is copied back", visible=True,
          replace=[("transfers = 2 * copy_fixed + ", "transfers = copy_fixed + ")]),
    Wrong("accel_latency", "one launch for the whole model instead of one per kernel", visible=True,
          replace=[("return transfers + kernels * launch + flops / peak_flops",
                    "return transfers + launch + flops / peak_flops")]),
    Wrong("accel_latency", "takes PCIe's both-directions figure: the bytes cross at twice the one-way bandwidth",
          visible=True,
          replace=[("(bytes_in + bytes_out) / pcie", "(bytes_in + bytes_out) / (2 * pcie)")]),
    Wrong("accel_latency", "moves only the input over PCIe: the output's bytes never come back",
          replace=[("(bytes_in + bytes_out) / pcie", "bytes_in / pcie")]),
    Right("accel_latency", "each term named, keyword arguments in another order", source='''def gpu_latency(bytes_in, bytes_out, kernels, flops, pcie=64e9, copy_fixed=5e-6, launch=5e-6, peak_flops=67e12):
    copy_in = copy_fixed + bytes_in / pcie
    copy_back = copy_fixed + bytes_out / pcie
    launches = launch * kernels
    arithmetic = flops / peak_flops
    return sum([copy_in, launches, arithmetic, copy_back])
'''),

    # ------------------------------------------------------------------ energy
    Wrong("energy", "ignores the wrap-around: a negative energy after the counter restarts", visible=True,
          replace=[("    if delta < 0:\n        delta += max_range_uj\n", "")]),
    Wrong("energy", "returns microjoules, not joules", visible=True,
          replace=[("return delta / 1e6", "return delta")]),
    Wrong("energy", "takes the absolute difference, so a wrap counts the wrong way round", visible=True,
          replace=[("    delta = after_uj - before_uj\n    if delta < 0:\n        delta += max_range_uj\n",
                    "    delta = abs(after_uj - before_uj)\n")]),
    Wrong("energy", "reads the counters into float32 tensors: a 2.6e11 uJ reading loses tens of millijoules",
          replace=[("    delta = after_uj - before_uj\n",
                    "    delta = float(torch.tensor(after_uj, dtype=torch.float32) - torch.tensor(before_uj, dtype=torch.float32))\n")]),
    Right("energy", "the modulo of the range does the wrap", source='''def energy_joules(before_uj, after_uj, max_range_uj):
    return (after_uj - before_uj) % max_range_uj / 1_000_000
'''),
]
