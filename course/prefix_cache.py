"""Shared KV-cache blocks: reference counts, copy-on-write and automatic prefix caching (07b_serving).

Two classes, the second built on the first:

- `SharedBlocks`, the reference answer of 07b's Exercise 2: paged blocks (part 1's `BlockAllocator`) that
  several sequences may hold at once. Each block has a reference count, the number of block tables that list
  it. `fork` lets a child share all of its parent's blocks (parallel sampling: n continuations of one prompt);
  `append` copies a shared, partly filled last block before writing into it (*copy-on-write*) and reports the
  copy to make; `free` drops one reference per block, and a block is free again only when its count reaches 0.
  This is the design of Kwon et al., "Efficient Memory Management for Large Language Model Serving with
  PagedAttention", SOSP 2023, Section 4.4 (parallel sampling: shared prompt blocks, reference counts,
  copy-on-write).
- `PrefixCachingBlockManager`, the `course.kv_blocks.BlockManager` interface that `course.engine.Engine` uses
  when ``prefix_caching=True``. It adds vLLM's *automatic prefix caching*: every full block of tokens gets a
  hash of its tokens chained with the hash of the block before it, so equal hashes mean equal whole prefixes
  (vLLM's design document "Automatic Prefix Caching"). A new prompt reuses the cached blocks of its longest
  matching prefix and skips their prefill; a block whose count falls to 0 keeps its contents and its hash
  (evictable, least recently freed first) until a new block is needed. SGLang's RadixAttention (Zheng et al.,
  "SGLang: Efficient Execution of Structured Language Model Programs", NeurIPS 2024, Section 3) keeps the same
  information as a radix tree over token sequences instead of a hash table.

Units: tokens and blocks (a block holds `block_size` tokens of keys and values for every layer). Errors:
`course.serving.OutOfBlocks` (a MemoryError) when too few blocks are free, after which nothing has changed;
KeyError for an unknown sequence; ValueError for a sequence that already exists, an empty one, or bad sizes.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable, Sequence

from course.kv_blocks import BlockTables
from course.serving import OutOfBlocks

__all__ = ["OutOfBlocks", "PrefixCachingBlockManager", "SharedBlocks", "block_hash"]


class SharedBlocks(BlockTables):
    """Paged KV-cache blocks with reference counts and copy-on-write (07b_serving, Exercise 2's reference).

    - ``allocate(seq, n_tokens)``: a new sequence of `n_tokens` (>= 1) tokens in fresh blocks (count 1 each).
    - ``fork(parent, child)``: `child` holds the very blocks of `parent` (each count + 1); nothing is copied.
    - ``append(seq) -> (src, dst) | None``: room for one more token. If the last block is full, a fresh block
      is added (None). If it is partly filled and shared (count > 1), copy-on-write: a fresh block `dst`
      replaces it in this table, one reference to `src` is dropped, and ``(src, dst)`` is returned: the caller
      copies src's keys and values into dst before writing the token. Otherwise None.
    - ``free(seq)``: one reference less on each of its blocks; a block at count 0 is free again.
    - ``refcount(block)``, ``free_blocks``, ``block_table(seq)`` (a copy), ``length(seq)``.
    Blocks are numbered 0 .. n_blocks - 1 and handed out from block 0 up. Every method that needs blocks
    raises `OutOfBlocks` before changing anything.
    """

    def __init__(self, n_blocks: int, block_size: int):
        super().__init__(n_blocks, block_size)  # the free list, block tables and lengths
        self.refs = [0] * n_blocks

    def refcount(self, block: int) -> int:
        if not 0 <= block < self.n_blocks:
            raise ValueError(f"block {block} is not in 0..{self.n_blocks - 1}")
        return self.refs[block]

    # ------------------------------------------------------------------ where blocks come from and go to
    def _take(self, n: int, why: str) -> list[int]:
        """`n` fresh blocks, each with count 1; OutOfBlocks (nothing taken) when too few are free."""
        if n > len(self.free_list):
            raise OutOfBlocks(f"{why} needs {n} blocks, {len(self.free_list)} are free")
        blocks = [self.free_list.pop() for _ in range(n)]
        for block in blocks:
            self.refs[block] = 1
        return blocks

    def _release(self, block: int) -> None:
        """A block whose count reached 0."""
        self.free_list.append(block)

    # ------------------------------------------------------------------ changes
    def allocate(self, seq: Hashable, n_tokens: int) -> None:
        if seq in self.tables:
            raise ValueError(f"sequence {seq!r} already holds blocks")
        if n_tokens < 1:
            raise ValueError(f"a sequence starts with at least one token, got {n_tokens}")
        self.tables[seq] = self._take(self.blocks_for(n_tokens), f"a sequence of {n_tokens} tokens")
        self.lengths[seq] = n_tokens

    def fork(self, parent: Hashable, child: Hashable) -> None:
        if child in self.tables:
            raise ValueError(f"sequence {child!r} already holds blocks")
        table = self.tables[parent]
        for block in table:
            self.refs[block] += 1
        self.tables[child], self.lengths[child] = list(table), self.lengths[parent]

    def append(self, seq: Hashable) -> tuple[int, int] | None:
        length, table = self.lengths[seq], self.tables[seq]
        copy = None
        if length % self.block_size == 0:  # the last block is full: the new token starts a block
            table.append(self._take(1, f"token {length} of {seq!r}")[0])
        elif self.refs[table[-1]] > 1:  # shared and partly filled: write into a copy, not into the shared one
            src, dst = table[-1], self._take(1, f"a copy-on-write of {seq!r}'s last block")[0]
            self.refs[src] -= 1  # still >= 1: the others hold it
            table[-1] = dst
            copy = (src, dst)
        self.lengths[seq] = length + 1
        return copy

    def free(self, seq: Hashable) -> None:
        if seq not in self.tables:
            raise KeyError(f"no sequence {seq!r} holds blocks")
        table = self.tables.pop(seq)
        del self.lengths[seq]
        for block in reversed(table):  # the tail first: reused (or evicted) before the shared head
            self.refs[block] -= 1
            if self.refs[block] == 0:
                self._release(block)


def block_hash(parent: bytes | None, tokens: Sequence[int]) -> bytes:
    """The hash of a full block: SHA-256 over the previous block's hash and this block's token ids.

    Chaining makes the hash name the whole prefix, not just these tokens: the same block of tokens after a
    different beginning gets a different hash (vLLM hashes ``(parent_block_hash, block_tokens, extra_keys)``;
    its "Automatic Prefix Caching" design document). SHA-256 makes an accidental collision, which would serve
    another prompt's keys and values, practically impossible.
    """
    digest = hashlib.sha256(parent or b"")
    digest.update(",".join(map(str, tokens)).encode())
    return digest.digest()


class PrefixCachingBlockManager(SharedBlocks):
    """`course.kv_blocks.BlockManager`'s interface with shared blocks and automatic prefix caching (07b).

    - ``allocate(seq, token_ids) -> n_cached``: reuses the cached blocks of the longest prefix of `token_ids`
      whose full blocks are cached (count + 1 each), allocates the rest, and returns how many leading tokens
      need no prefill. A hit covers whole blocks within the first ``len(token_ids) - 1`` tokens: the last
      token is always computed, for its logits (vLLM does the same), and is never written into a shared block.
    - ``append_slot(seq, token_id) -> (src, dst) | None``: `SharedBlocks.append` (copy-on-write of a shared
      partly filled last block), remembering the token.
    - ``fork(parent, child) -> []``: the child shares every block; no copy now (copy-on-write later).
    - ``free(seq)``: one reference less per block; a block at 0 that holds a registered full block keeps its
      contents as a cached block (evictable, least recently freed first); it counts in `free_blocks`.
    - ``mark_computed(seq, n_tokens)``: the engine may say that the first n_tokens of seq have their keys and
      values written; those full blocks become findable at once. Without it a block becomes findable when a
      later token is appended (the tokens before a sampled token were all computed).
    - ``stats``: hit_tokens (prompt tokens served from cache), query_tokens (prompt tokens looked up),
      shared_blocks (blocks held by more than one sequence now), cached_blocks, evictions, copies
      (copy-on-write).

    Only blocks whose keys and values have been computed are registered, so a prompt never hits a block that
    is still waiting for its prefill (a chunked prefill, or a sequence admitted in the same step). Equal
    blocks computed twice (two equal prompts admitted together) keep the first one registered; the second is
    plain.
    """

    def __init__(self, n_blocks: int, block_size: int):
        super().__init__(n_blocks, block_size)
        self.tokens: dict[Hashable, list[int]] = {}
        self.chains: dict[Hashable, list[bytes]] = {}   # hashes of each sequence's leading full blocks
        self.computed: dict[Hashable, int] = {}        # leading tokens whose keys and values are written
        self.cached: dict[bytes, int] = {}             # hash -> block holding that prefix's block
        self.hash_of: dict[int, bytes] = {}            # block -> its registered hash
        self.evictable: OrderedDict[int, None] = OrderedDict()  # cached blocks at count 0, oldest first
        self.counters = {"hit_tokens": 0, "query_tokens": 0, "evictions": 0, "copies": 0}

    # ------------------------------------------------------------------ queries
    @property
    def free_blocks(self) -> int:
        return len(self.free_list) + len(self.evictable)

    @property
    def stats(self) -> dict[str, int]:
        shared = sum(1 for r in self.refs if r > 1)
        return {**self.counters, "shared_blocks": shared, "cached_blocks": len(self.cached)}

    def hit_rate(self) -> float:
        """Prompt tokens served from the cache, as a share of all prompt tokens looked up (0 before any)."""
        queried = self.counters["query_tokens"]
        return self.counters["hit_tokens"] / queried if queried else 0.0

    # ------------------------------------------------------------------ blocks: reuse the never-used first
    def _take(self, n: int, why: str) -> list[int]:
        if n > self.free_blocks:
            raise OutOfBlocks(f"{why} needs {n} blocks, {self.free_blocks} are free "
                              f"({len(self.evictable)} of them cached)")
        while len(self.free_list) < n:  # evict the least recently freed cached block
            block, _ = self.evictable.popitem(last=False)
            del self.cached[self.hash_of.pop(block)]
            self.free_list.append(block)
            self.counters["evictions"] += 1
        return super()._take(n, why)

    def _release(self, block: int) -> None:
        if block in self.hash_of:
            self.evictable[block] = None  # keeps its contents until a fresh block is needed
        else:
            self.free_list.append(block)

    def _register(self, seq: Hashable, n_tokens: int) -> None:
        """Make seq's full blocks among its first n_tokens (computed) tokens findable by their hash."""
        tokens, chain, table, size = self.tokens[seq], self.chains[seq], self.tables[seq], self.block_size
        self.computed[seq] = max(self.computed[seq], n_tokens)
        for index in range(len(chain), min(n_tokens, len(tokens)) // size):
            digest = block_hash(chain[-1] if chain else None, tokens[index * size:(index + 1) * size])
            chain.append(digest)
            block = table[index]
            if block not in self.hash_of and digest not in self.cached:
                self.cached[digest], self.hash_of[block] = block, digest

    # ------------------------------------------------------------------ the BlockManager interface
    def allocate(self, seq: Hashable, token_ids: Sequence[int]) -> int:  # the tokens, not their count
        if seq in self.tables:
            raise ValueError(f"sequence {seq!r} already holds blocks")
        if len(token_ids) == 0:
            raise ValueError("a sequence starts with at least one token")
        size, hits, chain = self.block_size, [], []
        for index in range((len(token_ids) - 1) // size):  # whole blocks before the last token
            digest = block_hash(chain[-1] if chain else None, token_ids[index * size:(index + 1) * size])
            if digest not in self.cached:
                break
            chain.append(digest)
            hits.append(self.cached[digest])
        need = self.blocks_for(len(token_ids)) - len(hits)
        available = self.free_blocks - sum(1 for block in hits if block in self.evictable)
        if need > available:
            raise OutOfBlocks(f"a prompt of {len(token_ids)} tokens ({len(hits)} blocks cached) needs {need} "
                              f"more blocks, {available} are free")
        for block in hits:
            self.evictable.pop(block, None)
            self.refs[block] += 1
        self.tables[seq] = hits + self._take(need, f"a prompt of {len(token_ids)} tokens")
        self.lengths[seq] = len(token_ids)
        self.tokens[seq], self.chains[seq] = list(token_ids), chain
        n_cached = len(hits) * size
        self.computed[seq] = n_cached
        self.counters["hit_tokens"] += n_cached
        self.counters["query_tokens"] += len(token_ids)
        return n_cached

    def append_slot(self, seq: Hashable, token_id: int) -> tuple[int, int] | None:
        computed = self.lengths[seq]  # the token appended now was sampled after all of these were computed
        copy = super().append(seq)
        self.tokens[seq].append(int(token_id))
        if copy is not None:
            self.counters["copies"] += 1
        self._register(seq, computed)
        return copy

    def mark_computed(self, seq: Hashable, n_tokens: int) -> None:
        if not 0 <= n_tokens <= self.lengths[seq]:
            raise ValueError(f"{seq!r} holds {self.lengths[seq]} tokens; cannot mark {n_tokens} computed")
        self._register(seq, n_tokens)

    def fork(self, parent: Hashable, child: Hashable) -> list[tuple[int, int]]:
        super().fork(parent, child)
        self.tokens[child], self.chains[child] = list(self.tokens[parent]), list(self.chains[parent])
        self.computed[child] = self.computed[parent]
        return []

    def free(self, seq: Hashable) -> None:
        super().free(seq)
        del self.tokens[seq], self.chains[seq], self.computed[seq]
