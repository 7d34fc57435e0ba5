"""Recorded answers for 07_foundation_models: mistakes learners really make must lose points; other correct answers keep them."""
from tests.answers import Right, Wrong

ANSWERS = [
    # ------------------------------------------------------------------ decode
    Wrong("decode", "forgets to divide the logits by the temperature", visible=True,
          replace=[("return int(torch.multinomial(torch.softmax(logits / temperature, dim=0)",
                    "return int(torch.multinomial(torch.softmax(logits, dim=0)")]),
    Wrong("decode", "multiplies the logits by the temperature", visible=True,
          replace=[("return int(torch.multinomial(torch.softmax(logits / temperature, dim=0)",
                    "return int(torch.multinomial(torch.softmax(logits * temperature, dim=0)")]),
    Wrong("decode", "takes the logits at the first position, not the last", visible=True,
          replace=[("model(torch.tensor([ids], device=device))[0, -1]", "model(torch.tensor([ids], device=device))[0, 0]")]),
    Wrong("decode", "seeds a fresh generator at every step", visible=True,
          replace=[("ids.append(sample_next(logits, temperature, generator))",
                    "ids.append(sample_next(logits, temperature, torch.Generator().manual_seed(seed)))")]),
    Wrong("decode", "draws without the generator (the global random state)", visible=True,
          replace=[("return int(torch.multinomial(torch.softmax(logits / temperature, dim=0), 1, generator=generator))",
                    "return int(torch.multinomial(torch.softmax(logits / temperature, dim=0), 1))")]),
    Wrong("decode", "returns the prompt with the new tokens", visible=True,
          replace=[("    return ids[len(prompt_ids):]\n", "    return ids\n")]),
    Wrong("decode", "accepts an infinite temperature",
          replace=[("if temperature < 0 or not math.isfinite(temperature):", "if temperature < 0:")]),
    Right("decode", "tensor methods and .item() instead of functions and int()", replace=[
        ("    logits = logits.detach().float().cpu()\n    if temperature == 0:\n        return int(logits.argmax())\n"
         "    return int(torch.multinomial(torch.softmax(logits / temperature, dim=0), 1, generator=generator))\n",
         "    logits = logits.detach().to(device='cpu', dtype=torch.float32)\n    if temperature == 0:\n"
         "        return logits.argmax().item()\n    probs = (logits / temperature).softmax(-1)\n"
         "    return torch.multinomial(probs, num_samples=1, generator=generator).item()\n")]),

    # ------------------------------------------------------------------ kv_cache
    Wrong("kv_cache", "concatenates along the heads (dim 1), not the tokens", visible=True,
          replace=[("k = torch.cat([self.keys[layer], k], dim=2)", "k = torch.cat([self.keys[layer], k], dim=1)"),
                   ("v = torch.cat([self.values[layer], v], dim=2)", "v = torch.cat([self.values[layer], v], dim=1)")]),
    Wrong("kv_cache", "puts the new tokens before the cached ones", visible=True,
          replace=[("k = torch.cat([self.keys[layer], k], dim=2)", "k = torch.cat([k, self.keys[layer]], dim=2)"),
                   ("v = torch.cat([self.values[layer], v], dim=2)", "v = torch.cat([v, self.values[layer]], dim=2)")]),
    Wrong("kv_cache", "length counts the filled layers, not the tokens", visible=True,
          replace=[("return 0 if self.keys[0] is None else self.keys[0].shape[2]",
                    "return sum(k is not None for k in self.keys)")]),
    Wrong("kv_cache", "generate_cached feeds the whole sequence every step, without the cache", visible=True,
          replace=[("logits = model(torch.tensor([[out[-1]]], device=device), cache)[0, -1]",
                    "logits = model(torch.tensor([list(prompt_ids) + out], device=device))[0, -1]")]),
    Wrong("kv_cache", "one model call too many, after the last token", visible=True,
          replace=[("        if step < n_new - 1:\n            logits = model(", "        logits = model(")]),
    Wrong("kv_cache", "update does not check that k and v match", visible=True,
          replace=[("        if k.shape != v.shape or k.dim() != 4:\n"
                    "            raise ValueError(f\"k and v must share one 4-d shape, got {tuple(k.shape)} and {tuple(v.shape)}\")\n",
                    "")]),
    Right("kv_cache", "keeps a list of chunks per layer and concatenates on demand", source='''class KVCache:
    def __init__(self, n_layers):
        self.chunks = [([], []) for _ in range(n_layers)]

    @property
    def length(self):
        return sum(k.shape[2] for k in self.chunks[0][0])

    def update(self, layer, k, v):
        if k.dim() != 4 or v.shape != k.shape:
            raise ValueError("k and v must be 4-d and alike")
        keys, values = self.chunks[layer]
        keys.append(k)
        values.append(v)
        return torch.cat(keys, dim=2), torch.cat(values, dim=2)


@torch.no_grad()
def generate_cached(model, prompt_ids, n_new, temperature=0.0, seed=0):
    if not prompt_ids or n_new < 0 or len(prompt_ids) + n_new > model.config.context:
        raise ValueError("bad prompt or length")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    cache = KVCache(model.config.n_layers)
    next_input = torch.tensor([list(prompt_ids)], device=device)
    out = []
    while len(out) < n_new:
        logits = model(next_input, cache)[0, -1]
        out.append(sample_next(logits, temperature, generator))
        next_input = torch.tensor([[out[-1]]], device=device)
        if len(out) == n_new:
            break
    return out
'''),

    # ------------------------------------------------------------------ kv_memory
    Wrong("kv_memory", "forgets the factor 2 (keys and values)", visible=True,
          replace=[("return 2 * n_layers * n_kv_heads * head_dim * bytes_per_value", "return n_layers * n_kv_heads * head_dim * bytes_per_value")]),
    Wrong("kv_memory", "leaves no room for the weights", visible=True,
          replace=[("int((memory_bytes - weight_bytes) // (tokens_per_sequence * bytes_per_token))",
                    "int(memory_bytes // (tokens_per_sequence * bytes_per_token))")]),
    Wrong("kv_memory", "rounds to the nearest sequence instead of down", visible=True,
          replace=[("int((memory_bytes - weight_bytes) // (tokens_per_sequence * bytes_per_token))",
                    "round((memory_bytes - weight_bytes) / (tokens_per_sequence * bytes_per_token))")]),
    Wrong("kv_memory", "a negative count when the weights do not fit", visible=True,
          replace=[("return max(0, int((memory_bytes - weight_bytes) // (tokens_per_sequence * bytes_per_token)))",
                    "return int((memory_bytes - weight_bytes) // (tokens_per_sequence * bytes_per_token))")]),
    Wrong("kv_memory", "truncates bytes per value to an int, so 4-bit values count as 0",
          replace=[("return 2 * n_layers * n_kv_heads * head_dim * bytes_per_value", "return 2 * n_layers * n_kv_heads * head_dim * int(bytes_per_value)")]),
    Wrong("kv_memory", "accepts zero or negative sizes", visible=True,
          replace=[("    if min(n_layers, n_kv_heads, head_dim, bytes_per_value) <= 0:\n"
                    "        raise ValueError(\"layers, heads, head_dim and bytes_per_value must all be positive\")\n", "")]),
    Right("kv_memory", "math.floor and one check per argument", source='''def kv_bytes_per_token(n_layers, n_kv_heads, head_dim, bytes_per_value=2):
    for value in (n_layers, n_kv_heads, head_dim, bytes_per_value):
        if not value > 0:
            raise ValueError(f"{value} is not positive")
    keys = n_layers * n_kv_heads * head_dim * bytes_per_value
    return keys + keys


def concurrent_sequences(memory_bytes, weight_bytes, tokens_per_sequence, bytes_per_token):
    if memory_bytes <= 0 or tokens_per_sequence <= 0 or bytes_per_token <= 0 or weight_bytes < 0:
        raise ValueError("bad sizes")
    free = memory_bytes - weight_bytes
    if free <= 0:
        return 0
    return math.floor(free / (tokens_per_sequence * bytes_per_token))
'''),

    # ------------------------------------------------------------------ paging
    Wrong("paging", "sizes each append's blocks alone, not the sequence's new length", visible=True,
          replace=[("needed = math.ceil(length / self.block_size) - len(table)", "needed = math.ceil(n_tokens / self.block_size)")]),
    Wrong("paging", "floor instead of ceil: the last partial block is never allocated", visible=True,
          replace=[("needed = math.ceil(length / self.block_size) - len(table)", "needed = length // self.block_size - len(table)")]),
    Wrong("paging", "takes blocks one by one and raises halfway, keeping what it took", visible=True,
          replace=[("        if needed > len(self.free_list):\n"
                    "            raise ref.OutOfBlocks(f\"{seq!r} needs {needed} more blocks; {len(self.free_list)} are free\")\n"
                    "        self.tables[seq] = table + [self.free_list.pop() for _ in range(needed)]\n",
                    "        self.tables[seq] = table\n"
                    "        for _ in range(needed):\n"
                    "            if not self.free_list:\n"
                    "                raise ref.OutOfBlocks(f\"{seq!r} needs more blocks\")\n"
                    "            table.append(self.free_list.pop())\n")]),
    Wrong("paging", "free forgets the sequence but not its blocks", visible=True,
          replace=[("        self.free_list.extend(self.tables.pop(seq))\n", "        self.tables.pop(seq)\n")]),
    Wrong("paging", "paged_waste counts a whole block for lengths that fill their blocks exactly", visible=True,
          replace=[("math.ceil(n / block_size) * block_size - n", "(n // block_size + 1) * block_size - n")]),
    Wrong("paging", "accepts a negative n_tokens",
          replace=[("        if n_tokens < 0:\n            raise ValueError(f\"n_tokens must be >= 0, got {n_tokens}\")\n", "")]),
    Right("paging", "a set of free blocks, lowest first, and ceiling division by hand", replace=[
        ("        self.free_list = list(range(n_blocks - 1, -1, -1))\n", "        self.free_set = set(range(n_blocks))\n"),
        ("        return len(self.free_list)\n", "        return len(self.free_set)\n"),
        ("        needed = math.ceil(length / self.block_size) - len(table)\n"
         "        if needed > len(self.free_list):\n"
         "            raise ref.OutOfBlocks(f\"{seq!r} needs {needed} more blocks; {len(self.free_list)} are free\")\n"
         "        self.tables[seq] = table + [self.free_list.pop() for _ in range(needed)]\n",
         "        needed = -(-length // self.block_size) - len(table)\n"
         "        if needed > len(self.free_set):\n"
         "            raise ref.OutOfBlocks(f\"{seq!r} needs {needed} more blocks\")\n"
         "        taken = sorted(self.free_set)[:needed]\n"
         "        self.free_set -= set(taken)\n"
         "        self.tables[seq] = table + taken\n"),
        ("        self.free_list.extend(self.tables.pop(seq))\n", "        self.free_set |= set(self.tables.pop(seq))\n"),
        ("    return sum(math.ceil(n / block_size) * block_size - n for n in lengths)\n",
         "    return sum(-n % block_size for n in lengths)\n")]),

    # ------------------------------------------------------------------ batching
    Wrong("batching", "admits requests that have not arrived yet", visible=True,
          replace=[("while waiting and waiting[0].arrival <= now and len(running) < max_batch:",
                    "while waiting and len(running) < max_batch:")]),
    Wrong("batching", "admits past max_batch", visible=True,
          replace=[("while waiting and waiting[0].arrival <= now and len(running) < max_batch:",
                    "while waiting and waiting[0].arrival <= now:")]),
    Wrong("batching", "never charges the prefill", visible=True,
          replace=[("now += cost.iteration(len(running), sum(r.prompt_len for r in admitted))",
                    "now += cost.iteration(len(running))")]),
    Wrong("batching", "idles in empty iterations instead of jumping to the next arrival", visible=True,
          replace=[("            now = waiting[0].arrival\n", "            now += cost.iteration(0)\n")]),
    Wrong("batching", "latency counted from time 0, not from the arrival", visible=True,
          replace=[("latency = np.array([finish[r.rid] - r.arrival for r in requests])",
                    "latency = np.array([finish[r.rid] for r in requests])")]),
    Wrong("batching", "throughput over the time since 0, not since the first arrival",
          replace=[("span = max(finish.values()) - min(r.arrival for r in requests)", "span = max(finish.values())")]),
    Wrong("batching", "takes requests in list order, not by arrival",
          replace=[("waiting = sorted(requests, key=lambda r: (r.arrival, r.rid))", "waiting = list(requests)")]),
    Right("batching", "a deque of waiting requests and a list of running ones", source='''from collections import deque


def simulate_continuous(requests, max_batch, cost):
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1")
    for r in requests:
        if r.output_len < 1:
            raise ValueError(f"request {r.rid} generates nothing")
    waiting = deque(sorted(requests, key=lambda r: (r.arrival, r.rid)))
    running = []  # [rid, tokens left]
    finish = {}
    now = 0.0
    while waiting or running:
        prefill = 0
        while waiting and len(running) < max_batch and waiting[0].arrival <= now:
            r = waiting.popleft()
            running.append([r.rid, r.output_len])
            prefill += r.prompt_len
        if not running:
            now = waiting[0].arrival
            continue
        now += cost.iteration(len(running), prefill)
        for entry in running:
            entry[1] -= 1
            if entry[1] == 0:
                finish[entry[0]] = now
        running = [entry for entry in running if entry[1] > 0]
    return finish


def serving_stats(requests, finish):
    if len(requests) == 0 or sorted(finish) != sorted(r.rid for r in requests):
        raise ValueError("finish times do not match the requests")
    latency = [finish[r.rid] - r.arrival for r in requests]
    start = min(r.arrival for r in requests)
    end = max(finish.values())
    tokens = sum(r.output_len for r in requests)
    return {"throughput": tokens / (end - start), "p50": float(np.median(latency)),
            "p99": float(np.percentile(latency, 99))}
'''),

    # ------------------------------------------------------------------ context
    Wrong("context", "evicts the newest unpinned turn instead of the oldest", visible=True,
          replace=[("oldest = min(victims, key=lambda t: t.tid)", "oldest = max(victims, key=lambda t: t.tid)")]),
    Wrong("context", "may page out the pinned system prompt", visible=True,
          replace=[("victims = [t for t in self.resident if t.tid >= self.pinned and t.tid not in keep]",
                    "victims = [t for t in self.resident if t.tid not in keep]")]),
    Wrong("context", "recall matches case-sensitively", visible=True,
          replace=[("if keyword.lower() in t.text.lower()", "if keyword in t.text")]),
    Wrong("context", "a failed recall leaves the window changed", visible=True,
          replace=[("        try:\n            self._evict(keep=set(found))\n        except MemoryError:\n"
                    "            self.resident, self.archive = saved\n            raise\n",
                    "        self._evict(keep=set(found))\n")]),
    Wrong("context", "a refused turn still takes an id", visible=True,
          replace=[("        if self.count(text) > self.budget:\n", "        self.next_id += 1\n        if self.count(text) > self.budget:\n"),
                   ("        turn = ref.Turn(self.next_id, role, text)\n        self.next_id += 1\n",
                    "        turn = ref.Turn(self.next_id - 1, role, text)\n")]),
    Wrong("context", "recalled turns go to the end instead of back in id order",
          replace=[("self.resident = sorted(self.resident + [self.archive.pop(tid) for tid in found], key=lambda t: t.tid)",
                    "self.resident = self.resident + [self.archive.pop(tid) for tid in found]")]),
    Right("context", "the resident list is in id order, so the first eligible turn is the oldest", replace=[
        ("            victims = [t for t in self.resident if t.tid >= self.pinned and t.tid not in keep]\n"
         "            if not victims:\n"
         "                raise MemoryError(\"the pinned and kept turns alone exceed the budget\")\n"
         "            oldest = min(victims, key=lambda t: t.tid)\n",
         "            oldest = next((t for t in self.resident if t.tid >= self.pinned and t.tid not in keep), None)\n"
         "            if oldest is None:\n"
         "                raise MemoryError(\"nothing left to page out\")\n")]),

    # ------------------------------------------------------------------ syscall
    Wrong("syscall", "runs the tool before checking the capability", visible=True, source='''def syscall(process, tools, name, audit, **args):
    if name not in tools:
        audit.append((process.name, name, "unknown"))
        raise LookupError(name)
    tool = tools[name]
    try:
        result = tool.fn(**args)
    except Exception:
        audit.append((process.name, name, "failed"))
        raise
    if tool.capability not in process.capabilities:
        audit.append((process.name, name, "denied"))
        raise PermissionError(name)
    audit.append((process.name, name, "allowed"))
    return result
'''),
    Wrong("syscall", "does not log denied calls", visible=True,
          replace=[("        audit.append((process.name, name, \"denied\"))\n", "")]),
    Wrong("syscall", "swallows the tool's exception and returns None", visible=True,
          replace=[("        audit.append((process.name, name, \"failed\"))\n        raise\n",
                    "        audit.append((process.name, name, \"failed\"))\n        return None\n")]),
    Wrong("syscall", "lets tools[name] raise KeyError without logging the unknown call", visible=True,
          replace=[("    if name not in tools:\n        audit.append((process.name, name, \"unknown\"))\n"
                    "        raise LookupError(f\"no tool named {name!r}\")\n", "")]),
    Wrong("syscall", "logs 'allowed' before the call, so a failing call is logged twice", visible=True,
          replace=[("    try:\n        result = tool.fn(**args)\n", "    audit.append((process.name, name, \"allowed\"))\n    try:\n        result = tool.fn(**args)\n"),
                   ("    audit.append((process.name, name, \"allowed\"))\n    return result\n", "    return result\n")]),
    Right("syscall", "dict.get and an else clause", source='''def syscall(process, tools, name, audit, **args):
    tool = tools.get(name)
    if tool is None:
        audit.append((process.name, name, "unknown"))
        raise LookupError(f"unknown tool {name}")
    if tool.capability not in process.capabilities:
        audit.append((process.name, name, "denied"))
        raise PermissionError(f"{process.name} may not call {name}")
    try:
        result = tool.fn(**args)
    except Exception:
        audit.append((process.name, name, "failed"))
        raise
    else:
        audit.append((process.name, name, "allowed"))
        return result
'''),
]
