"""Recorded answers for 00_orientation: mistakes learners really make must lose points; other correct answers keep them."""
from tests.answers import Right, Wrong

ANSWERS = [
    # ------------------------------------------------------------------ median_time
    Wrong("median_time", "skips the warm-up calls", visible=True,
          replace=[("    for _ in range(warmup):\n        fn()\n", "")]),
    Wrong("median_time", "one warm-up call too few (off by one)", visible=True,
          replace=[("for _ in range(warmup):", "for _ in range(warmup - 1):")]),
    Wrong("median_time", "returns the mean, which one slow call drags", visible=True,
          replace=[("float(statistics.median(durations))", "float(statistics.mean(durations))")]),
    Wrong("median_time", "reads time.perf_counter instead of the clock argument", visible=True,
          replace=[("        start = clock()\n        fn()\n        durations.append(clock() - start)\n",
                    "        start = time.perf_counter()\n        fn()\n        durations.append(time.perf_counter() - start)\n")]),
    Wrong("median_time", "times the whole loop once and divides by repeats", visible=True, source='''def median_time(fn, repeats=20, warmup=3, clock=time.perf_counter):
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
    start = clock()
    for _ in range(repeats):
        fn()
    return (clock() - start) / repeats
'''),
    Wrong("median_time", "checks repeats only after the warm-up calls",
          replace=[("    if repeats < 1:\n        raise ValueError(f\"repeats must be at least 1, got {repeats}\")\n"
                    "    for _ in range(warmup):\n        fn()\n",
                    "    for _ in range(warmup):\n        fn()\n"
                    "    if repeats < 1:\n        raise ValueError(f\"repeats must be at least 1, got {repeats}\")\n")]),
    Wrong("median_time", "takes the upper middle value of an even number of timings", visible=True,
          replace=[("float(statistics.median(durations))", "float(sorted(durations)[len(durations) // 2])")]),
    Right("median_time", "sorts the timings and averages the middle ones by hand", source='''def median_time(fn, repeats=20, warmup=3, clock=time.perf_counter):
    if repeats < 1:
        raise ValueError("nothing to time")
    for _ in range(warmup):
        fn()
    durations = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        t1 = clock()
        durations.append(t1 - t0)
    durations.sort()
    middle = len(durations) // 2
    if len(durations) % 2:
        return float(durations[middle])
    return (durations[middle - 1] + durations[middle]) / 2
'''),

    # ------------------------------------------------------------------ model_size
    Wrong("model_size", "counts only trainable parameters (requires_grad), as parameter counters often do",
          visible=True,
          replace=[("    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}\n",
                    "    tensors = {id(t): t for t in [*(p for p in model.parameters() if p.requires_grad),"
                    " *model.buffers()]}\n")]),
    Wrong("model_size", "counts the parameters but not the buffers", visible=True,
          replace=[("[*model.parameters(), *model.buffers()]", "[*model.parameters()]")]),
    Wrong("model_size", "assumes 4 bytes per value, whatever the dtype", visible=True,
          replace=[("t.numel() * t.element_size()", "t.numel() * 4")]),
    Wrong("model_size", "counts values, not bytes", visible=True,
          replace=[("t.numel() * t.element_size()", "t.numel()")]),
    Wrong("model_size", "walks every module's own tensors, so a shared weight counts twice", source='''def model_size_bytes(model):
    total = 0
    for module in model.modules():
        for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            total += t.numel() * t.element_size()
    return total
'''),
    Wrong("model_size", "sums the state_dict, which lists a shared weight under both names", source='''def model_size_bytes(model):
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
'''),
    Right("model_size", "two sums: parameters() and buffers() each list a shared tensor once", source='''def model_size_bytes(model):
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return params + buffers
'''),

    # ------------------------------------------------------------------ train_one_epoch
    Wrong("train_one_epoch", "puts the model in training mode after the loop instead of before", visible=True,
          replace=[("    model.train()\n", ""), ("    return total / count\n", "    model.train()\n    return total / count\n")]),
    Wrong("train_one_epoch", "accumulates the loss tensor instead of loss.item()", visible=True,
          replace=[("total += loss.item() * len(y)", "total += loss * len(y)")]),
    Wrong("train_one_epoch", "never calls optimizer.step(), so nothing learns", visible=True,
          replace=[("        optimizer.step()\n", "")]),
    Wrong("train_one_epoch", "forgets optimizer.zero_grad(), so gradients pile up", visible=True,
          replace=[("        optimizer.zero_grad()\n", "")]),
    Wrong("train_one_epoch", "returns the mean of the batch means, which overweights a short last batch", source='''def train_one_epoch(model, loader, optimizer, device=None):
    device = device or next(model.parameters()).device
    model.train()
    losses = []
    for x, y in tqdm(loader, desc="epoch", leave=False):
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses) / len(losses)
'''),
    Wrong("train_one_epoch", "returns the last batch's loss", replace=[("    return total / count\n", "    return loss.item()\n")]),
    Wrong("train_one_epoch", "forgets model.train()", replace=[("    model.train()\n", "")]),
    Wrong("train_one_epoch", "zeroes the gradients after backward(), so step() sees none", visible=True,
          replace=[("        optimizer.zero_grad()\n        loss = nn.functional.cross_entropy(model(x), y)\n        loss.backward()\n",
                    "        loss = nn.functional.cross_entropy(model(x), y)\n        loss.backward()\n        optimizer.zero_grad()\n")]),
    Right("train_one_epoch", "divides by len(loader.dataset) and zeroes gradients on the model", source='''def train_one_epoch(model, loader, optimizer, device=None):
    if device is None:
        device = next(model.parameters()).device
    model.train()
    total = 0.0
    for x, y in tqdm(loader):
        x = x.to(device)
        y = y.to(device)
        model.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        total += loss.item() * x.shape[0]
    return total / len(loader.dataset)
'''),
]
