"""Serving a language model, the systems of 07_foundation_models.

Around the course's tiny model (`course.lm`): what the key/value cache costs for published models, a paged
block allocator and a cache that lives in its blocks, a batching simulator driven by measured step costs, a
bounded context window with page-out and recall, and tool calls checked like system calls. The notebook's
exercises are written against these reference versions; its demonstrations fall back on them while an exercise
is unanswered.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from course.bench import measure_time, synchronize
from course.lm import KVCache, LMConfig, TinyLM

# ------------------------------------------------------------------------------- KV-cache arithmetic

#: Published shapes: layers, query heads, key/value heads, head dimension, parameters. Sources: Llama 2 7B's
#: dimensions are Llama 1's (Touvron et al. 2023a, Table 2) and only Llama 2's 34B and 70B use grouped-query
#: attention (Touvron et al. 2023b, Table 1); Llama 2 70B's 8 KV heads are in Meta's released params.json
#: (n_kv_heads 8); Mistral 7B (Jiang et al. 2023, Table 1, and its config.json; a 4,096-token sliding window
#: caps its cache); Llama 3 (Meta, "The Llama 3 Herd of Models", 2024, Table 3); GPT-3 (Brown et al. 2020,
#: Table 2.1: d_model 12288, 96 heads of 128). Parameters: the papers' for GPT-3, Llama 2 7B (6.7B) and Llama 3
#: 405B; the released checkpoints' for Llama 2 70B, Mistral 7B and Llama 3 8B/70B. tests/claims/07_*.md says
#: how each was checked.
MODEL_SHAPES = {
    "Llama 2 7B": {"layers": 32, "q_heads": 32, "kv_heads": 32, "head_dim": 128, "params": 6.7e9},
    "Llama 2 70B": {"layers": 80, "q_heads": 64, "kv_heads": 8, "head_dim": 128, "params": 69e9},
    "Mistral 7B": {"layers": 32, "q_heads": 32, "kv_heads": 8, "head_dim": 128, "params": 7.2e9},
    "Llama 3 8B": {"layers": 32, "q_heads": 32, "kv_heads": 8, "head_dim": 128, "params": 8.0e9},
    "Llama 3 70B": {"layers": 80, "q_heads": 64, "kv_heads": 8, "head_dim": 128, "params": 70.6e9},
    "Llama 3 405B": {"layers": 126, "q_heads": 128, "kv_heads": 8, "head_dim": 128, "params": 405e9},
    "GPT-3 175B": {"layers": 96, "q_heads": 96, "kv_heads": 96, "head_dim": 128, "params": 175e9},
}


def kv_bytes_per_token(n_layers: int, n_kv_heads: int, head_dim: int, bytes_per_value: float = 2) -> float:
    """A key and a value vector per KV head per layer: 2 * layers * kv_heads * head_dim * bytes."""
    for name, value in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim),
                        ("bytes_per_value", bytes_per_value)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    return 2 * n_layers * n_kv_heads * head_dim * bytes_per_value


def concurrent_sequences(memory_bytes: float, weight_bytes: float, tokens_per_sequence: int,
                         bytes_per_token: float) -> int:
    """How many sequences of `tokens_per_sequence` fit in what the weights leave of `memory_bytes` (>= 0)."""
    if memory_bytes <= 0 or weight_bytes < 0 or tokens_per_sequence <= 0 or bytes_per_token <= 0:
        raise ValueError("memory, tokens and bytes per token must be positive, weights non-negative")
    return max(0, int((memory_bytes - weight_bytes) // (tokens_per_sequence * bytes_per_token)))


# ---------------------------------------------------------------------------------- paged allocation


class OutOfBlocks(MemoryError):
    """No free block is left; nothing was allocated."""


class BlockAllocator:
    """The reference paged KV-cache allocator: fixed-size blocks, a free list, a block table per sequence."""

    def __init__(self, n_blocks: int, block_size: int):
        if n_blocks <= 0 or block_size <= 0:
            raise ValueError(f"n_blocks and block_size must be positive, got {n_blocks} and {block_size}")
        self.n_blocks, self.block_size = n_blocks, block_size
        self.free_list = list(range(n_blocks - 1, -1, -1))  # pop() hands out block 0 first
        self.tables: dict[object, list[int]] = {}
        self.lengths: dict[object, int] = {}

    @property
    def free_blocks(self) -> int:
        return len(self.free_list)

    def block_table(self, seq) -> list[int]:
        return list(self.tables[seq])

    def length(self, seq) -> int:
        return self.lengths[seq]

    def append(self, seq, n_tokens: int = 1) -> None:
        if n_tokens < 0:
            raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
        length = self.lengths.get(seq, 0)
        table = self.tables.get(seq, [])
        needed = math.ceil((length + n_tokens) / self.block_size) - len(table)
        if needed > len(self.free_list):
            raise OutOfBlocks(f"{seq!r} needs {needed} more blocks, {len(self.free_list)} are free")
        self.tables[seq] = table + [self.free_list.pop() for _ in range(needed)]
        self.lengths[seq] = length + n_tokens

    def free(self, seq) -> None:
        if seq not in self.tables:
            raise KeyError(f"no sequence {seq!r} holds blocks")
        self.free_list.extend(reversed(self.tables.pop(seq)))
        del self.lengths[seq]


def paged_waste(lengths: Iterable[int], block_size: int) -> int:
    """Token slots allocated but unused when each sequence holds whole blocks."""
    return sum(math.ceil(n / block_size) * block_size - n for n in lengths)


def contiguous_waste(lengths: Iterable[int], reserved: int) -> int:
    """Token slots unused when each sequence reserves `reserved` contiguous slots up front."""
    return sum(reserved - n for n in lengths)


class PagedKVCache:
    """A KV cache for one sequence whose keys and values live in blocks of a shared pool.

    The pool holds, per layer, ``(n_blocks, heads, block_size, head_dim)`` keys and values. Blocks come
    from `allocator`; ``update`` writes the new tokens into this sequence's blocks and gathers all of its
    tokens back, in order, through its block table: what vLLM's PagedAttention kernel does in one step.
    """

    def __init__(self, pool: dict[str, torch.Tensor], allocator: BlockAllocator, seq):
        self.pool, self.allocator, self.seq = pool, allocator, seq
        self.written = 0

    @staticmethod
    def make_pool(config: LMConfig, n_blocks: int, block_size: int, device="cpu") -> dict[str, torch.Tensor]:
        shape = (config.n_layers, n_blocks, config.n_heads, block_size, config.head_dim)
        return {"k": torch.zeros(shape, device=device), "v": torch.zeros(shape, device=device)}

    @property
    def length(self) -> int:
        return self.written

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if k.shape[0] != 1 or k.shape != v.shape:
            raise ValueError("a PagedKVCache holds one sequence: keys and values of shape "
                             f"(1, heads, tokens, head_dim), got {tuple(k.shape)} and {tuple(v.shape)}")
        new = k.shape[2]
        if layer == 0:
            self.allocator.append(self.seq, new)
        table = torch.tensor(self.allocator.block_table(self.seq), device=k.device)
        size = self.allocator.block_size
        positions = torch.arange(self.written, self.written + new, device=k.device)
        blocks, offsets = table[positions // size], positions % size
        self.pool["k"][layer, blocks, :, offsets] = k[0].transpose(0, 1)
        self.pool["v"][layer, blocks, :, offsets] = v[0].transpose(0, 1)
        total = self.written + new
        if layer == len(self.pool["k"]) - 1:
            self.written = total

        def gather(kind):  # (blocks, heads, size, dim) -> (1, heads, tokens, dim)
            pages = self.pool[kind][layer, table]
            return pages.transpose(0, 1).reshape(1, pages.shape[1], -1, pages.shape[3])[:, :, :total]

        return gather("k"), gather("v")


# ------------------------------------------------------------------------------------------ batching


@dataclass(frozen=True)
class Request:
    rid: int
    arrival: float      # seconds
    prompt_len: int     # tokens to prefill
    output_len: int     # tokens to generate (>= 1)


@dataclass(frozen=True)
class StepCost:
    """Seconds per decoding iteration: base + per_sequence * batch + prefill_per_token * new prompt tokens."""

    base: float
    per_sequence: float
    prefill_per_token: float

    def iteration(self, batch: int, prompt_tokens: int = 0) -> float:
        return self.base + self.per_sequence * batch + self.prefill_per_token * prompt_tokens


def request_stream(n: int, rate: float, seed: int = 0, max_len: int = 120) -> list[Request]:
    """`n` requests arriving as a Poisson process of `rate` per second, with long-tailed lengths."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    prompts = np.clip(rng.lognormal(3.0, 0.6, n).astype(int), 4, max_len)
    outputs = np.clip(rng.lognormal(3.0, 0.9, n).astype(int), 1, max_len)
    return [Request(i, float(a), int(p), int(o))
            for i, (a, p, o) in enumerate(zip(arrivals, prompts, outputs, strict=True))]


def _check_requests(requests: list[Request], max_batch: int) -> list[Request]:
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    for r in requests:
        if r.output_len < 1 or r.prompt_len < 0 or r.arrival < 0:
            raise ValueError(f"request {r.rid} needs output_len >= 1, prompt_len >= 0, arrival >= 0: {r}")
    return sorted(requests, key=lambda r: (r.arrival, r.rid))


def simulate_static(requests: list[Request], max_batch: int, cost: StepCost) -> dict[int, float]:
    """Static batching: take up to `max_batch` waiting requests, run them until the *longest* is done (the
    finished ones keep their slot, as padding), then take the next batch. Returns finish time per request."""
    waiting = _check_requests(requests, max_batch)
    finish: dict[int, float] = {}
    now = 0.0
    while waiting:
        now = max(now, waiting[0].arrival)
        batch = [r for r in waiting if r.arrival <= now][:max_batch]
        waiting = [r for r in waiting if r not in batch]
        for step in range(max(r.output_len for r in batch)):
            now += cost.iteration(len(batch), sum(r.prompt_len for r in batch) if step == 0 else 0)
            for r in batch:
                if r.output_len == step + 1:
                    finish[r.rid] = now
    return finish


def simulate_continuous(requests: list[Request], max_batch: int, cost: StepCost) -> dict[int, float]:
    """Continuous batching: before every iteration, admit arrived requests while there is room; a request
    leaves as soon as its last token is out. Returns finish time per request."""
    waiting = _check_requests(requests, max_batch)
    running: dict[int, int] = {}  # rid -> tokens still to generate
    finish: dict[int, float] = {}
    now = 0.0
    while waiting or running:
        admitted = []
        while waiting and waiting[0].arrival <= now and len(running) < max_batch:
            request = waiting.pop(0)
            running[request.rid] = request.output_len
            admitted.append(request)
        if not running:
            now = waiting[0].arrival
            continue
        now += cost.iteration(len(running), sum(r.prompt_len for r in admitted))
        for rid in list(running):
            running[rid] -= 1
            if running[rid] == 0:
                finish[rid] = now
                del running[rid]
    return finish


def serving_stats(requests: list[Request], finish: dict[int, float]) -> dict[str, float]:
    """Throughput (generated tokens per second, first arrival to last finish) and latency percentiles."""
    if not requests or set(finish) != {r.rid for r in requests}:
        raise ValueError("need a finish time for every request, and at least one request")
    latency = np.array([finish[r.rid] - r.arrival for r in requests])
    span = max(finish.values()) - min(r.arrival for r in requests)
    return {"throughput": sum(r.output_len for r in requests) / span,
            "p50": float(np.percentile(latency, 50)), "p99": float(np.percentile(latency, 99))}


@torch.no_grad()
def measure_step_cost(model: TinyLM, batch_sizes=(1, 2, 4, 8, 16), cached_tokens: int = 48,
                      repeats: int = 7) -> tuple[StepCost, dict[int, float]]:
    """Time one cached decoding step for each batch size and a prefill, and fit a StepCost to them.

    Each time is the fastest of `repeats`: what the step costs when nothing else interferes, which a busy or
    shared CPU (Binder) disturbs far less than a median; the line is fitted so that one bad timing cannot tilt it."""
    device = next(model.parameters()).device
    times = {}
    for batch in batch_sizes:
        ids = torch.randint(0, model.config.vocab_size, (batch, cached_tokens + 1), device=device)
        samples = []
        for _ in range(repeats):
            cache = KVCache(model.config.n_layers)
            model(ids[:, :-1], cache)
            synchronize(device)
            start = time.perf_counter()
            model(ids[:, -1:], cache)
            synchronize(device)
            samples.append(time.perf_counter() - start)
        times[batch] = min(samples)
    # A line through the timings that one disturbed timing cannot drag (Theil-Sen: the median of the slopes
    # between every pair of points, then the median intercept), unlike a least-squares fit.
    points = list(times.items())
    slope = float(np.median([(t2 - t1) / (b2 - b1) for i, (b1, t1) in enumerate(points) for b2, t2 in points[i + 1:]]))
    intercept = float(np.median([t - slope * b for b, t in points]))
    prompt = torch.randint(0, model.config.vocab_size, (1, cached_tokens), device=device)
    prefill = measure_time(lambda: model(prompt), repeats=repeats, warmup=1, device=device).min
    per_token = max(prefill - times[batch_sizes[0]], 0.0) / cached_tokens
    return StepCost(max(float(intercept), 0.0), max(float(slope), 0.0), per_token), times


# ------------------------------------------------------------------------------------ context, tools


def word_count(text: str) -> int:
    return len(text.split())


@dataclass
class Turn:
    tid: int
    role: str
    text: str


class ContextWindow:
    """The reference bounded context: turns in order; the oldest unpinned ones page out to an archive."""

    def __init__(self, budget: int, count: Callable[[str], int] = word_count, pinned: int = 1):
        if budget <= 0:
            raise ValueError(f"budget must be positive, got {budget}")
        self.budget, self.count, self.pinned = budget, count, pinned
        self.resident: list[Turn] = []
        self.archive: dict[int, Turn] = {}
        self.next_id = 0

    @property
    def tokens(self) -> int:
        return sum(self.count(t.text) for t in self.resident)

    def turns(self) -> list[Turn]:
        return list(self.resident)

    def _evict(self, keep: set[int]) -> None:
        while self.tokens > self.budget:
            victims = [t for t in self.resident if t.tid >= self.pinned and t.tid not in keep]
            if not victims:
                raise MemoryError("the pinned and requested turns alone exceed the budget")
            oldest = min(victims, key=lambda t: t.tid)
            self.resident.remove(oldest)
            self.archive[oldest.tid] = oldest

    def add(self, role: str, text: str) -> int:
        if self.count(text) > self.budget:
            raise ValueError(f"one turn of {self.count(text)} tokens exceeds the budget of {self.budget}")
        turn = Turn(self.next_id, role, text)
        self.next_id += 1
        self.resident.append(turn)
        self._evict(keep={turn.tid})
        return turn.tid

    def recall(self, keyword: str) -> list[int]:
        """Page archived turns that mention `keyword` back in, in order; older turns page out to make room."""
        found = sorted(tid for tid, t in self.archive.items() if keyword.lower() in t.text.lower())
        saved = (list(self.resident), dict(self.archive))
        for tid in found:
            self.resident.append(self.archive.pop(tid))
        self.resident.sort(key=lambda t: t.tid)
        try:
            self._evict(keep=set(found))
        except MemoryError:  # too much to bring back: as it was, nothing lost
            self.resident, self.archive = saved
            raise
        return found


@dataclass(frozen=True)
class Tool:
    name: str
    fn: Callable[..., object]
    capability: str  # what a caller must hold, e.g. "read", "net", "write"


@dataclass
class Process:
    name: str
    capabilities: frozenset = field(default_factory=frozenset)


def syscall(process: Process, tools: dict[str, Tool], name: str, audit: list, **args):
    """Call tool `name` for `process` only if it holds the tool's capability; log every attempt."""
    if name not in tools:
        audit.append((process.name, name, "unknown"))
        raise LookupError(f"no tool named {name!r}; known: {sorted(tools)}")
    tool = tools[name]
    if tool.capability not in process.capabilities:
        audit.append((process.name, name, "denied"))
        raise PermissionError(f"{process.name} lacks the {tool.capability!r} capability that {name} needs")
    try:
        result = tool.fn(**args)
    except Exception:
        audit.append((process.name, name, "failed"))
        raise
    audit.append((process.name, name, "allowed"))
    return result


def conversation(seed: int = 0, turns: int = 40) -> list[tuple[str, str]]:
    """A long scripted chat in which a few facts are stated early and asked about late."""
    rng = random.Random(seed)
    facts = [("user", "My project codename is HERON and it ships in May."),
             ("user", "The cluster has 64 GPUs with 80 GB each."),
             ("user", "Our budget limit is 12000 euros per month.")]
    filler = ["Can you explain {0} again in simpler words?", "What does {0} cost on a CPU?",
              "Show me how {0} changes with the batch size.", "Is {0} deterministic across runs?",
              "Summarise what we said about {0} so far, with the main numbers."]
    topics = ["the KV cache", "paged attention", "continuous batching", "quantization", "checkpointing",
              "pipeline parallelism", "federated averaging", "spiking neurons", "profiling traces"]
    chat = [("system", "You are a helpful assistant for a systems course.")] + facts
    while len(chat) < turns:
        topic = rng.choice(topics)
        chat.append(("user", rng.choice(filler).format(topic)))
        chat.append(("assistant", f"About {topic}: " + " ".join(rng.choice(topics).split()[-1]
                                                                  for _ in range(rng.randint(12, 30))) + "."))
    return chat[:turns]
