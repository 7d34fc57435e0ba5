"""The serving engine's KV-cache blocks: which pool blocks hold a sequence's keys and values (07b_serving).

`BlockManager` is the interface `course.engine.Engine` allocates through, and a plain implementation of it:
every sequence owns its blocks, nothing is shared. `course.prefix_cache.PrefixCachingBlockManager` implements
the same interface with shared blocks (reference counts, a hash of each full block's tokens, copy-on-write);
the engine cannot tell them apart except by what `allocate` reports as already cached and by the copies that
`append_slot` and `fork` ask it to make.

Blocks hold `block_size` tokens; a sequence of n tokens holds ceil(n / block_size) blocks, listed in order in
its block table (vLLM's design: Kwon et al., "Efficient Memory Management for Large Language Model Serving
with PagedAttention", SOSP 2023, Section 4).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

from course.serving import OutOfBlocks

__all__ = ["BlockManager", "BlockTables", "OutOfBlocks"]


class BlockTables:
    """What every block manager keeps and answers (07b_serving): blocks 0 .. n_blocks - 1 (rows of the
    engine's pool) of `block_size` tokens each, a free list (block 0 handed out first), a block table and a
    length in tokens per sequence. `BlockManager` and `course.prefix_cache.SharedBlocks` build on it."""

    def __init__(self, n_blocks: int, block_size: int):
        if n_blocks <= 0 or block_size <= 0:
            raise ValueError(f"n_blocks and block_size must be positive, got {n_blocks} and {block_size}")
        self.n_blocks, self.block_size = n_blocks, block_size
        self.free_list: list[int] = list(range(n_blocks - 1, -1, -1))  # pop() hands out block 0 first
        self.tables: dict[Hashable, list[int]] = {}
        self.lengths: dict[Hashable, int] = {}

    # ------------------------------------------------------------------ queries
    @property
    def free_blocks(self) -> int:
        return len(self.free_list)

    @property
    def used_blocks(self) -> int:
        return self.n_blocks - self.free_blocks

    def blocks_for(self, n_tokens: int) -> int:
        return math.ceil(n_tokens / self.block_size)

    def can_allocate(self, n_tokens: int) -> bool:
        return self.blocks_for(n_tokens) <= self.free_blocks

    def block_table(self, seq: Hashable) -> list[int]:
        return list(self.tables[seq])

    def length(self, seq: Hashable) -> int:
        return self.lengths[seq]

    def __contains__(self, seq: Hashable) -> bool:
        return seq in self.tables


class BlockManager(BlockTables):
    """Blocks for many sequences, none shared. Block ids are 0 .. n_blocks - 1 (rows of the engine's pool).

    - ``allocate(seq, token_ids) -> int``: a new sequence holding `token_ids`; returns how many of its leading
      tokens are already in the cache (their keys and values need no prefill): always 0 here.
    - ``append_slot(seq, token_id) -> (src, dst) | None``: room for one more token; a copy to make (src's
      contents into dst) when the last block was shared, else None: never here.
    - ``fork(parent, child) -> list[(src, dst)]``: `child` starts as a copy of `parent` (parallel sampling);
      the block copies the engine must make (here: every block, into fresh ones).
    - ``free(seq)``; ``block_table(seq)``; ``length(seq)``; ``free_blocks``; ``can_allocate(n_tokens)``.
    Every method that needs blocks raises `OutOfBlocks` when too few are free and then changes nothing.
    """

    # ------------------------------------------------------------------ changes
    def _take(self, n: int, why: str) -> list[int]:
        if n > len(self.free_list):
            raise OutOfBlocks(f"{why} needs {n} block{'s' * (n != 1)}, {len(self.free_list)} are free")
        return [self.free_list.pop() for _ in range(n)]

    def allocate(self, seq: Hashable, token_ids: Sequence[int]) -> int:
        if seq in self.tables:
            raise ValueError(f"sequence {seq!r} already holds blocks")
        if len(token_ids) == 0:
            raise ValueError("a sequence starts with at least one token")
        self.tables[seq] = self._take(self.blocks_for(len(token_ids)), f"a prompt of {len(token_ids)} tokens")
        self.lengths[seq] = len(token_ids)
        return 0

    def append_slot(self, seq: Hashable, token_id: int) -> tuple[int, int] | None:
        length, table = self.lengths[seq], self.tables[seq]
        if self.blocks_for(length + 1) > len(table):
            table += self._take(1, f"token {length} of sequence {seq!r}")
        self.lengths[seq] = length + 1
        return None

    def fork(self, parent: Hashable, child: Hashable) -> list[tuple[int, int]]:
        if child in self.tables:
            raise ValueError(f"sequence {child!r} already holds blocks")
        source = self.tables[parent]
        fresh = self._take(len(source), f"a copy of {parent!r}")
        self.tables[child], self.lengths[child] = fresh, self.lengths[parent]
        return list(zip(source, fresh, strict=True))

    def free(self, seq: Hashable) -> None:
        if seq not in self.tables:
            raise KeyError(f"no sequence {seq!r} holds blocks")
        self.free_list.extend(reversed(self.tables.pop(seq)))
        del self.lengths[seq]
