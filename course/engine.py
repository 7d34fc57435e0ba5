"""The course's serving engine: continuous batching over a paged KV cache, as vLLM runs it (07b_serving).

`Engine` holds one model and a pool of KV-cache blocks. Requests come in with `add_request`; every `step()` is
one model iteration over a ragged batch: each scheduled sequence brings its new tokens (one for a decode, a
prompt or a chunk of one for a prefill) at its own positions, writes their keys and values into its blocks of
the pool through its block table, and attends over its own gathered keys. `step()` returns the tokens it
produced as `Output(rid, token, finished, finish_reason)`.

What 07b_serving builds on it:
- policies: ``"continuous"`` (Yu et al., "Orca", OSDI 2022: admit waiting requests before every iteration,
  a request leaves when it finishes) and ``"static"`` with `batch_window_s` (TF Serving's dynamic batching: a
  batch forms when `max_batch` requests wait or the oldest has waited `batch_window_s`, and runs until all of
  its requests finish; nobody joins it);
- preemption: ``"recompute"`` (vLLM's default: Kwon et al., "Efficient Memory Management for Large Language
  Model Serving with PagedAttention", SOSP 2023, Section 4.5): when a running sequence needs a block and none
  is free, the most recently admitted running sequence gives its blocks back and waits at the front of the
  queue with its prompt + the tokens it generated as its new prompt; ``"reserve"``: the baseline without
  preemption, where admission reserves each request's worst case (prompt + max_tokens) up front; ``"none"``:
  admit as "recompute" does but raise `OutOfBlocks` from `step()` when a running sequence cannot grow (what an
  engine without a policy does); ``"swap"``: preempt the same sequence, but copy its blocks' keys and values
  to a CPU buffer and back into fresh blocks when it is admitted again (the paper's other recovery);
- chunked prefill (Agrawal et al., "Taming Throughput-Latency Tradeoff in LLM Inference with Sarathi-Serve",
  OSDI 2024): `max_step_tokens` caps the tokens of one iteration: decodes first (one token each), then
  chunks of prompts fill the rest of the budget;
- prefix caching (``prefix_caching=True``: `course.prefix_cache.PrefixCachingBlockManager`): `allocate` says
  how many leading prompt tokens are already cached, and their prefill is skipped;
- parallel sampling (``n > 1``): samples ``"rid/0" .. "rid/{n-1}"`` forked from one prefilled prompt.

A request decodes the same tokens alone or in any batch (its own `torch.Generator`, `course.lm.sample_next`),
the same as `course.lm.generate_cached` at temperature 0.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from course.kv_blocks import BlockManager, OutOfBlocks
from course.lm import TinyLM, sample_next

__all__ = ["Engine", "Output", "OutOfBlocks", "Replay", "ragged_forward", "replay"]

POLICIES = ("continuous", "static")
PREEMPTION = ("recompute", "swap", "reserve", "none")


@dataclass(frozen=True)
class Output:
    """One generated token of request (or sample) `rid`; `finish_reason` is "length", "stop" or None."""

    rid: Hashable
    token: int
    finished: bool
    finish_reason: str | None


@dataclass(eq=False)
class _Seq:
    """A sequence the engine decodes: `tokens` = prompt + generated; keys/values of tokens[:computed] are in
    the pool (once it holds blocks)."""

    sid: Hashable            # what Output.rid says: the request's rid, or "rid/i" for sample i of n
    rid: Hashable            # the request it belongs to
    prompt_len: int          # the original prompt's length
    tokens: list[int]
    max_tokens: int
    temperature: float
    generator: torch.Generator
    stop: frozenset[int]
    arrival: float
    n_children: int = 0      # parallel samples to fork from it once its prompt is prefilled
    seed: int = 0
    computed: int = 0
    admitted: int = -1       # admission order (larger = more recent)
    prefilled: bool = False  # its first full prefill is done (tokens since are decodes)
    swapped: tuple | None = None  # under "swap": (keys, values) of its computed tokens' blocks, on the CPU

    @property
    def generated(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def pending(self) -> int:
        return len(self.tokens) - self.computed


# --------------------------------------------------------------------------------- one model iteration


@torch.no_grad()
def ragged_forward(model: TinyLM, pool: dict[str, torch.Tensor], block_size: int,
                   items: Sequence[tuple[Sequence[int], int, Sequence[int]]]) -> torch.Tensor:
    """One iteration of `model` over a ragged batch whose keys and values live in a paged pool.

    items: one ``(new_token_ids, start, block_table)`` per sequence: its new tokens sit at positions
    start .. start + len(new) - 1; its keys/values for positions < start are already in the pool; the new
    tokens' keys/values are written into its blocks (``block_table[position // block_size]``, slot
    ``position % block_size``). pool: {"k", "v"} of shape (layers, n_blocks, heads, block_size, head_dim),
    as `course.serving.PagedKVCache.make_pool`. Returns the logits at each sequence's last new position,
    shape (len(items), vocab). Reuses TinyLM's own modules (the model must be in eval mode: no dropout).

    The batch is packed, not padded: the N new tokens of all sequences go through the linear layers as one
    (1, N, d_model) row, and attention sees every sequence's gathered keys side by side with a boolean mask
    that lets a token see only its own sequence's keys at positions <= its own. Padding every sequence to the
    longest would make a step that mixes decodes with one long prompt cost (sequences x longest) tokens.
    """
    if not items:
        raise ValueError("ragged_forward needs at least one sequence")
    config = model.config
    device = pool["k"].device
    n_new = [len(new) for new, _, _ in items]
    if min(n_new) < 1:
        raise ValueError("every sequence brings at least one new token")
    for (_, start, table), n in zip(items, n_new, strict=True):
        if start < 0 or start + n > config.context:
            raise ValueError(f"positions {start} .. {start + n - 1} are outside the model's context of "
                             f"{config.context}")
        if len(table) * block_size < start + n:
            raise ValueError(f"a block table of {len(table)} blocks holds {len(table) * block_size} tokens, "
                             f"not {start + n}")
    width, heads, head_dim = config.d_model, config.n_heads, config.head_dim
    ids, pos, seq_of = [], [], []            # the new tokens, packed
    key_block, key_slot, key_seq, key_pos = [], [], [], []  # every token each sequence attends to
    for i, (new, start, table) in enumerate(items):
        ids += list(new)
        pos += range(start, start + len(new))
        seq_of += [i] * len(new)
        length = start + len(new)
        positions = torch.arange(length)
        key_block.append(torch.as_tensor(list(table), dtype=torch.long)[positions // block_size])
        key_slot.append(positions % block_size)
        key_seq.append(torch.full((length,), i))
        key_pos.append(positions)
    ids_t = torch.tensor(ids, device=device)
    pos_t = torch.tensor(pos)
    seq_t = torch.tensor(seq_of)
    key_block_t, key_slot_t = torch.cat(key_block).to(device), torch.cat(key_slot).to(device)
    key_seq_t, key_pos_t = torch.cat(key_seq), torch.cat(key_pos)
    # where the new tokens' keys/values go: the entries of the gathered keys that hold their positions
    offsets = torch.tensor([0] + [start + n for (_, start, _), n in zip(items, n_new, strict=True)]).cumsum(0)
    dest = torch.cat([offsets[i] + torch.arange(start, start + n)
                      for i, ((_, start, _), n) in enumerate(zip(items, n_new, strict=True))])
    dest_block, dest_slot = key_block_t[dest.to(device)], key_slot_t[dest.to(device)]
    mask = (key_seq_t[None, :] == seq_t[:, None]) & (key_pos_t[None, :] <= pos_t[:, None])  # (N, keys)
    mask = mask.to(device)
    n_tokens = len(ids)

    x = (model.tokens(ids_t) + model.positions(pos_t.to(device)))[None]  # (1, N, d_model)
    for layer, block in enumerate(model.blocks):
        qkv = block.attn.qkv(block.norm1(x))[0].split(width, 1)
        q, k, v = (t.view(n_tokens, heads, head_dim) for t in qkv)
        # views of this layer's pool as (blocks, slots, heads, head_dim): indexing two leading dimensions is
        # several times faster than pool[layer, blocks, :, slots]
        pool_k, pool_v = pool["k"][layer].transpose(1, 2), pool["v"][layer].transpose(1, 2)
        pool_k[dest_block, dest_slot] = k  # the new tokens' (N, heads, head_dim) into their slots
        pool_v[dest_block, dest_slot] = v
        keys = pool_k[key_block_t, key_slot_t].transpose(0, 1)[None]  # (1, heads, keys, head_dim)
        values = pool_v[key_block_t, key_slot_t].transpose(0, 1)[None]
        out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], keys, values, attn_mask=mask)
        x = x + block.drop(block.attn.proj(out[0].transpose(0, 1).reshape(1, n_tokens, width)))
        x = x + block.drop(block.mlp(block.norm2(x)))
    last = torch.tensor(n_new).cumsum(0) - 1
    return model.head(model.norm(x[0, last.to(device)]))


# ------------------------------------------------------------------------------------------ the engine


class Engine:
    """Continuous (or static) batching of many requests over one model and one paged KV-cache pool.

    Engine(model, n_blocks=64, block_size=16, max_batch=8, policy="continuous", batch_window_s=0.0,
    max_step_tokens=None, prefix_caching=False, preemption="recompute", device=None, clock=time.monotonic)

    - ``add_request(rid, prompt_ids, max_tokens, temperature=0.0, seed=0, n=1, stop=())``: queue a request;
      ValueError for an empty prompt, a token outside the vocabulary, max_tokens < 1, n < 1, a negative
      temperature, a duplicate rid, prompt + max_tokens over the model's context or over the whole pool.
    - ``step() -> list[Output]``: one iteration (admission, scheduling, one `ragged_forward`, sampling);
      returns [] without running the model when there is nothing to run (or a static batch still waits for
      its window): it never blocks.
    - ``has_work()``, ``abort(rid)`` (frees its blocks; no further outputs), ``run()`` (steps until done),
      ``stats`` (steps, tokens, prefill_tokens, decode_tokens, preemptions, recomputed_tokens: tokens whose
      keys and values a preemption dropped (a prefix cache may serve some back), prefix_hit_tokens,
      peak_blocks, max_step_tokens_used, finished), ``trace`` (one dict per step that ran: its
      time, tokens, running and waiting sequences, used blocks, the sequences preempted before it).
    `clock` (seconds, monotonic) is injectable so that tests of the static window are deterministic.
    """

    def __init__(self, model: TinyLM, *, n_blocks: int = 64, block_size: int = 16, max_batch: int = 8,
                 policy: str = "continuous", batch_window_s: float = 0.0, max_step_tokens: int | None = None,
                 prefix_caching: bool = False, preemption: str = "recompute", device=None,
                 clock: Callable[[], float] = time.monotonic):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if preemption not in PREEMPTION:
            raise ValueError(f"preemption must be one of {PREEMPTION}, got {preemption!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if batch_window_s < 0:
            raise ValueError(f"batch_window_s must be >= 0 seconds, got {batch_window_s}")
        if max_step_tokens is not None and max_step_tokens < 1:
            raise ValueError(f"max_step_tokens must be >= 1 (or None: whole prompts), got {max_step_tokens}")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.policy, self.batch_window_s = policy, batch_window_s
        self.max_batch, self.max_step_tokens = max_batch, max_step_tokens
        self.preemption, self.prefix_caching = preemption, prefix_caching
        self.block_size, self.n_blocks = block_size, n_blocks
        if prefix_caching:
            from course.prefix_cache import PrefixCachingBlockManager  # the prefix-caching section's manager

            self.blocks = PrefixCachingBlockManager(n_blocks, block_size)
        else:
            self.blocks = BlockManager(n_blocks, block_size)
        shape = (self.config.n_layers, n_blocks, self.config.n_heads, block_size, self.config.head_dim)
        self.pool = {"k": torch.zeros(shape, device=self.device), "v": torch.zeros(shape, device=self.device)}
        self.clock = clock
        self.waiting: deque[_Seq] = deque()
        self.running: list[_Seq] = []
        self.static_batch: set[Hashable] = set()  # under "static": the sequences of the batch now running
        self.requests: dict[Hashable, list[Hashable]] = {}  # rid -> its sequences' sids still alive
        self._admissions = 0
        self.stats: dict[str, int] = {"steps": 0, "tokens": 0, "prefill_tokens": 0, "decode_tokens": 0,
                                      "preemptions": 0, "recomputed_tokens": 0, "swapped_blocks": 0,
                                      "prefix_hit_tokens": 0,
                                      "peak_blocks": 0, "max_step_tokens_used": 0, "finished": 0}
        self.trace: list[dict] = []
        self._preempted_now: list[Hashable] = []

    # ------------------------------------------------------------------------------ requests
    def add_request(self, rid: Hashable, prompt_ids: Sequence[int], max_tokens: int, temperature: float = 0.0,
                    seed: int = 0, n: int = 1, stop: Sequence[int] = ()) -> None:
        prompt = [int(t) for t in prompt_ids]
        if rid in self.requests:
            raise ValueError(f"a request {rid!r} is already in the engine")
        if not prompt:
            raise ValueError("the prompt is empty: give at least one token")
        if not all(0 <= t < self.config.vocab_size for t in prompt):
            raise ValueError(f"prompt tokens must be in 0 .. {self.config.vocab_size - 1}")
        if int(max_tokens) != max_tokens or max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens}")
        if int(n) != n or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n}")
        if n > self.max_batch:
            raise ValueError(f"n = {n} parallel samples run together, but max_batch is {self.max_batch}")
        if temperature < 0 or not math.isfinite(temperature):
            raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
        if len(prompt) + max_tokens > self.config.context:
            raise ValueError(f"{len(prompt)} prompt + {max_tokens} new tokens exceed the model's context of "
                             f"{self.config.context}")
        need = self._group_blocks(len(prompt), len(prompt) + max_tokens, n)
        if need > self.n_blocks:
            raise ValueError(f"{n} x ({len(prompt)} prompt + {max_tokens} new tokens) need {need} blocks of "
                             f"{self.block_size}; the whole pool has {self.n_blocks}")
        first = _Seq(rid if n == 1 else f"{rid}/0", rid, len(prompt), prompt, int(max_tokens),
                     float(temperature), torch.Generator().manual_seed(seed), frozenset(int(s) for s in stop),
                     self.clock(), n_children=n - 1, seed=seed)
        self.requests[rid] = [first.sid]
        self.waiting.append(first)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def abort(self, rid: Hashable) -> None:
        """Drop request `rid` (all its samples), waiting or running; its blocks go back to the pool."""
        if rid not in self.requests:
            raise KeyError(f"no request {rid!r} in the engine")
        sids = set(self.requests.pop(rid))
        self.waiting = deque(s for s in self.waiting if s.sid not in sids)
        for seq in [s for s in self.running if s.sid in sids]:
            self.running.remove(seq)
            self.blocks.free(seq.sid)
        self.static_batch -= sids

    def run(self) -> list[Output]:
        """Step until every request is done; all outputs in order."""
        out: list[Output] = []
        while self.has_work():
            out += self.step()
        return out

    # ------------------------------------------------------------------------------ blocks
    def _blocks_for(self, n_tokens: int) -> int:
        return math.ceil(n_tokens / self.block_size)

    def _group_blocks(self, prompt_len: int, n_tokens: int, n: int) -> int:
        """Blocks that n samples of n_tokens each, forked after a prompt of prompt_len, hold at most (their
        full prompt blocks are shared under prefix caching, copied otherwise)."""
        if self.prefix_caching:
            return n * self._blocks_for(n_tokens) - (n - 1) * (prompt_len // self.block_size)
        return n * self._blocks_for(n_tokens)

    def _reserved(self) -> int:
        """Under "reserve": blocks promised to running sequences beyond those they hold (their worst case)."""
        total = 0
        for seq in self.running:
            final = seq.prompt_len + seq.max_tokens - 1  # the last token's keys/values are never needed
            promised = self._group_blocks(seq.prompt_len, final, 1 + seq.n_children)  # with samples to fork
            total += max(0, promised - len(self.blocks.block_table(seq.sid)))
        return total

    def _copy_blocks(self, copies) -> None:
        for src, dst in copies:
            self.pool["k"][:, dst] = self.pool["k"][:, src]
            self.pool["v"][:, dst] = self.pool["v"][:, src]

    def _preempt(self, seq: _Seq) -> None:
        """Give back the blocks and wait at the front of the queue. Recompute: prompt + generated is prefilled
        again; swap: the computed tokens' keys and values wait in CPU memory and come back on admission."""
        self.running.remove(seq)
        if self.preemption == "swap" and seq.computed:
            table = self.blocks.block_table(seq.sid)[:self._blocks_for(seq.computed)]
            seq.swapped = (self.pool["k"][:, table].to("cpu", copy=True),
                           self.pool["v"][:, table].to("cpu", copy=True))
            self.stats["swapped_blocks"] += len(table)
        else:
            self.stats["recomputed_tokens"] += seq.computed
            seq.computed = 0
        self.blocks.free(seq.sid)
        self.stats["preemptions"] += 1
        self._preempted_now.append(seq.sid)
        self.waiting.appendleft(seq)

    def _swap_in(self, seq: _Seq, cached: int) -> None:
        """Copy a swapped-out sequence's keys and values into its new blocks (those a prefix cache did not
        already fill)."""
        keys, values = seq.swapped
        table = self.blocks.block_table(seq.sid)[:keys.shape[1]]
        first = cached // self.block_size
        self.pool["k"][:, table[first:]] = keys[:, first:].to(self.device)
        self.pool["v"][:, table[first:]] = values[:, first:].to(self.device)
        seq.swapped = None
        seq.computed = max(seq.computed, min(cached, len(seq.tokens) - 1))
        mark = getattr(self.blocks, "mark_computed", None)
        if mark is not None:
            mark(seq.sid, seq.computed)

    # ------------------------------------------------------------------------------ scheduling
    def _may_admit(self, now: float) -> bool:
        if self.policy == "continuous":
            return True
        if self.static_batch:  # a static batch runs until all of its sequences finish; only they may rejoin
            return False
        ready = len(self.waiting) >= self.max_batch or (
            self.waiting and now - self.waiting[0].arrival >= self.batch_window_s)
        return bool(ready)

    def _admit(self, now: float) -> None:
        static_rejoin = self.policy == "static" and bool(self.static_batch)
        forming = self._may_admit(now)
        if not (forming or static_rejoin):
            return
        skipped: list[_Seq] = []
        while self.waiting:
            seq = self.waiting[0]
            if static_rejoin and seq.sid not in self.static_batch:
                skipped.append(self.waiting.popleft())  # not of this batch: it waits for the next one
                continue
            slots = 1 + seq.n_children
            if len(self.running) + slots > self.max_batch:
                break
            if self.preemption == "reserve":
                final = seq.prompt_len + seq.max_tokens - 1
                need = self._group_blocks(len(seq.tokens), final, slots)
                if need > self.blocks.free_blocks - self._reserved():
                    break
            elif slots > 1 and self._group_blocks(len(seq.tokens), len(seq.tokens), slots) > \
                    self.blocks.free_blocks:
                break
            try:
                cached = self.blocks.allocate(seq.sid, seq.tokens)
            except OutOfBlocks:
                break
            self.waiting.popleft()
            if seq.swapped is not None:  # its keys and values come back from CPU memory
                self._swap_in(seq, cached)
                self.stats["prefix_hit_tokens"] += min(cached, seq.computed)
            else:  # at least the last token is computed again: its logits give the next token
                seq.computed = min(cached, len(seq.tokens) - 1)
                self.stats["prefix_hit_tokens"] += seq.computed
            self._admissions += 1
            seq.admitted = self._admissions
            self.running.append(seq)
            if self.policy == "static" and forming:
                self.static_batch.add(seq.sid)
        self.waiting.extendleft(reversed(skipped))

    def _grow(self) -> None:
        """Give every running sequence a slot for its newest token; preempt when the pool is out of blocks."""
        for seq in sorted(self.running, key=lambda s: s.admitted):
            while seq in self.running and self.blocks.length(seq.sid) < len(seq.tokens):
                try:
                    self._copy_blocks([c for c in [self.blocks.append_slot(
                        seq.sid, seq.tokens[self.blocks.length(seq.sid)])] if c is not None])
                except OutOfBlocks:
                    if self.preemption not in ("recompute", "swap"):
                        raise
                    self._preempt(max(self.running, key=lambda s: s.admitted))

    def _schedule(self) -> list[tuple[_Seq, int]]:
        """(sequence, tokens to process now) pairs: decodes first, then prefills (chunked to the budget)."""
        budget = self.max_step_tokens if self.max_step_tokens is not None else math.inf
        order = sorted(self.running, key=lambda s: (s.pending > 1 or not s.prefilled, s.admitted))
        plan = []
        for seq in order:
            if budget <= 0:
                break
            take = int(min(seq.pending, budget))
            plan.append((seq, take))
            budget -= take
        return plan

    def _fork(self, parent: _Seq) -> list[_Seq]:
        """Parallel sampling: the parent's prompt is prefilled; n - 1 siblings share (or copy) its blocks."""
        children = []
        for i in range(1, parent.n_children + 1):
            child = _Seq(f"{parent.rid}/{i}", parent.rid, parent.prompt_len, list(parent.tokens),
                         parent.max_tokens, parent.temperature,
                         torch.Generator().manual_seed(parent.seed + i), parent.stop, parent.arrival,
                         computed=parent.computed, prefilled=True)
            while True:
                try:
                    self._copy_blocks(self.blocks.fork(parent.sid, child.sid))
                    break
                except OutOfBlocks:
                    others = [s for s in self.running if s is not parent and s not in children]
                    if self.preemption not in ("recompute", "swap") or not others:
                        raise
                    self._preempt(max(others, key=lambda s: s.admitted))
            self._admissions += 1
            child.admitted = self._admissions
            children.append(child)
            self.requests[parent.rid].append(child.sid)
            if self.policy == "static":
                self.static_batch.add(child.sid)
        parent.n_children = 0
        self.running += children
        return children

    # ------------------------------------------------------------------------------ one iteration
    @torch.no_grad()
    def step(self) -> list[Output]:
        now = self.clock()
        self._preempted_now = []
        self._grow()  # running sequences first (vLLM's order); no admission in an iteration that preempted
        if not self._preempted_now:
            self._admit(now)
        plan = self._schedule()
        if not plan:
            return []
        items = [(seq.tokens[seq.computed:seq.computed + take], seq.computed,
                  self.blocks.block_table(seq.sid)) for seq, take in plan]
        logits = ragged_forward(self.model, self.pool, self.block_size, items)
        n_tokens = sum(take for _, take in plan)
        self.stats["steps"] += 1
        self.stats["tokens"] += n_tokens
        self.stats["decode_tokens"] += sum(1 for seq, take in plan if seq.prefilled and take == 1)
        self.stats["prefill_tokens"] += sum(take for seq, take in plan if not (seq.prefilled and take == 1))
        self.stats["max_step_tokens_used"] = max(self.stats["max_step_tokens_used"], n_tokens)
        self.stats["peak_blocks"] = max(self.stats["peak_blocks"], self.blocks.used_blocks)
        self.trace.append({"time": now, "tokens": n_tokens, "running": len(self.running),
                           "waiting": len(self.waiting), "used_blocks": self.blocks.used_blocks,
                           "reserved_blocks": self._reserved() if self.preemption == "reserve" else 0,
                           "preempted": list(self._preempted_now),
                           "sids": [seq.sid for seq, _ in plan]})
        outputs: list[Output] = []
        mark = getattr(self.blocks, "mark_computed", None)  # a prefix cache registers computed blocks at once
        for (seq, take), row in zip(plan, logits, strict=True):
            if seq.sid in self._preempted_now:
                continue  # a fork earlier in this loop took its blocks: its work this iteration is lost
            seq.computed += take
            if mark is not None:
                mark(seq.sid, seq.computed)
            if seq.computed < len(seq.tokens):
                continue  # a chunk of a prompt: no token yet
            seq.prefilled = True
            group = [seq] + (self._fork(seq) if seq.n_children else [])
            for member in group:
                token = sample_next(row, member.temperature, member.generator)
                member.tokens.append(token)
                reason = ("stop" if token in member.stop else
                          "length" if member.generated >= member.max_tokens else None)
                outputs.append(Output(member.sid, token, reason is not None, reason))
                if reason is not None:
                    self._finish(member)
        return outputs

    def _finish(self, seq: _Seq) -> None:
        self.running.remove(seq)
        self.blocks.free(seq.sid)
        self.static_batch.discard(seq.sid)
        self.stats["finished"] += 1
        sids = self.requests.get(seq.rid)
        if sids is not None:
            sids.remove(seq.sid)
            if not sids:
                del self.requests[seq.rid]


# ------------------------------------------------------------------------------------- driving the engine


@dataclass
class Replay:
    """What `replay` saw: per request its tokens, and the iteration and time (seconds from the start, at the
    end of the iteration that produced it) of each; when each request arrived; how long each iteration
    took."""

    tokens: dict
    token_steps: dict
    token_times: dict
    arrival_steps: dict
    arrival_times: dict
    step_seconds: list
    wall_s: float

    def ttft(self, rid) -> float:
        """Seconds from the request's arrival to its first token."""
        return self.token_times[rid][0] - self.arrival_times[rid]

    def itl(self, rid) -> list[float]:
        """Seconds between the request's consecutive tokens (its inter-token latencies)."""
        times = self.token_times[rid]
        return [b - a for a, b in zip(times, times[1:])]


def replay(engine: Engine, arrivals: Sequence[tuple[int, Hashable, Sequence[int], int]],
           clock: Callable[[], float] = time.perf_counter) -> Replay:
    """Drive `engine` until it is done, adding each request when the iteration count reaches its arrival.

    arrivals: (iteration, rid, prompt_ids, max_tokens) tuples, optionally with a fifth item, a dict of further
    `Engine.add_request` arguments (such as ``{"stop": [token]}``); greedy by default. Arrivals are counted in
    iterations, not seconds, so that which requests meet in which iteration does not depend on how fast the
    machine is; the times are measured (`clock`, seconds). When nothing runs and the next arrival is later,
    the count jumps to it. Used by 07b_serving's preemption and chunked-prefill sections.
    """
    pending = sorted(arrivals, key=lambda a: a[0])
    if any(a[0] < 0 for a in pending):
        raise ValueError("arrival iterations must be >= 0")
    out = Replay({}, {}, {}, {}, {}, [], 0.0)
    start = clock()
    iteration = 0
    while pending or engine.has_work():
        if not engine.has_work() and pending[0][0] > iteration:
            iteration = pending[0][0]
        while pending and pending[0][0] <= iteration:
            _, rid, prompt, max_tokens, *options = pending.pop(0)
            engine.add_request(rid, prompt, max_tokens, **(options[0] if options else {}))
            out.arrival_steps[rid], out.arrival_times[rid] = iteration, clock() - start
        before = clock()
        outputs = engine.step()
        now = clock()
        out.step_seconds.append(now - before)
        for o in outputs:
            out.tokens.setdefault(o.rid, []).append(o.token)
            out.token_steps.setdefault(o.rid, []).append(iteration)
            out.token_times.setdefault(o.rid, []).append(now - start)
        iteration += 1
    out.wall_s = clock() - start
    return out
