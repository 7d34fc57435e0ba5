"""course.prefix_cache: reference counts, copy-on-write and prefix caching keep the BlockManager contract."""

import random

import pytest

from course.kv_blocks import BlockManager
from course.prefix_cache import OutOfBlocks, PrefixCachingBlockManager, SharedBlocks


def held(manager, seqs):
    """{block: how many tables list it} over `seqs`."""
    count = {}
    for seq in seqs:
        for block in manager.block_table(seq):
            count[block] = count.get(block, 0) + 1
    return count


def check_counts(manager, seqs):
    counts = held(manager, seqs)
    for block in range(manager.n_blocks):
        assert manager.refcount(block) == counts.get(block, 0) >= 0
    return counts


def test_shared_blocks_fork_append_free():
    blocks = SharedBlocks(8, 4)
    blocks.allocate("p", 6)                      # blocks 0, 1 (the second half full)
    blocks.fork("p", "c")
    assert blocks.block_table("c") == blocks.block_table("p") == [0, 1]
    assert [blocks.refcount(b) for b in (0, 1)] == [2, 2] and blocks.free_blocks == 6
    assert blocks.append("c") == (1, 2)          # copy-on-write of the shared partial block
    assert blocks.block_table("c") == [0, 2] and blocks.refcount(1) == 1 and blocks.refcount(2) == 1
    assert blocks.append("p") is None            # p holds block 1 alone now: writes in place
    assert blocks.append("p") is None and blocks.block_table("p") == [0, 1]  # 8 tokens: still 2 blocks
    assert blocks.append("p") is None and blocks.block_table("p") == [0, 1, 3]
    blocks.free("p")
    assert blocks.refcount(0) == 1 and blocks.free_blocks == 6  # block 0 is still c's
    blocks.free("c")
    assert blocks.free_blocks == 8 and all(blocks.refcount(b) == 0 for b in range(8))
    with pytest.raises(KeyError):
        blocks.free("c")


def test_shared_blocks_out_of_blocks_changes_nothing():
    blocks = SharedBlocks(3, 4)
    blocks.allocate("a", 6)
    blocks.fork("a", "b")
    blocks.allocate("x", 1)
    before = (blocks.free_blocks, blocks.block_table("a"), blocks.block_table("b"), blocks.refs[:])
    with pytest.raises(OutOfBlocks):
        blocks.append("b")                       # copy-on-write needs a block; none is free
    assert (blocks.free_blocks, blocks.block_table("a"), blocks.block_table("b"), blocks.refs) == before
    assert blocks.length("b") == 6
    with pytest.raises(OutOfBlocks):
        blocks.allocate("y", 2)
    assert "y" not in blocks
    with pytest.raises(ValueError):
        blocks.allocate("a", 1)
    with pytest.raises(ValueError):
        blocks.allocate("z", 0)
    with pytest.raises(ValueError):
        SharedBlocks(0, 4)


@pytest.mark.parametrize("seed", range(5))
def test_random_operations_keep_counts_and_blocks(seed):
    rng = random.Random(seed)
    manager = PrefixCachingBlockManager(24, 4)
    live, name = {}, 0
    prompts = [[rng.randrange(5) for _ in range(rng.randint(1, 14))] for _ in range(4)]
    for _ in range(600):
        action = rng.random()
        try:
            if action < 0.25 or not live:
                tokens = list(rng.choice(prompts)) + [rng.randrange(5) for _ in range(rng.randint(0, 3))]
                manager.allocate(name, tokens)
                live[name], name = tokens, name + 1
            elif action < 0.35:
                parent = rng.choice(list(live))
                assert manager.fork(parent, name) == []
                live[name], name = list(live[parent]), name + 1
            elif action < 0.85:
                seq = rng.choice(list(live))
                token = rng.randrange(5)
                manager.append_slot(seq, token)
                live[seq].append(token)
            else:
                seq = rng.choice(list(live))
                manager.free(seq)
                del live[seq]
        except OutOfBlocks:
            pass
        counts = check_counts(manager, live)
        assert len(counts) + manager.free_blocks == manager.n_blocks  # no block lost, none counted twice
        for seq, tokens in live.items():
            assert manager.length(seq) == len(tokens)
            assert len(manager.block_table(seq)) == manager.blocks_for(len(tokens))
    for seq in list(live):
        manager.free(seq)
    assert manager.free_blocks == manager.n_blocks and not any(manager.refs)


def test_prefix_hit_and_last_token_recomputed():
    manager = PrefixCachingBlockManager(16, 4)
    prompt = list(range(10))
    assert manager.allocate("a", prompt) == 0
    manager.append_slot("a", 50)                 # the prompt was computed: its 2 full blocks are findable
    assert manager.allocate("b", prompt + [7, 7]) == 8
    assert manager.block_table("b")[:2] == manager.block_table("a")[:2]
    assert manager.refcount(manager.block_table("a")[0]) == 2
    assert manager.allocate("c", prompt[:8]) == 4, "8 tokens = 2 full blocks, but the last is recomputed"
    assert manager.allocate("d", [0, 1, 2]) == 0
    assert manager.stats["hit_tokens"] == 12 and manager.stats["shared_blocks"] == 2


def test_hash_chain_same_block_after_another_prefix_is_no_hit():
    manager = PrefixCachingBlockManager(16, 4)
    manager.allocate("a", [1, 1, 1, 1, 2, 2, 2, 2, 9])
    manager.mark_computed("a", 9)
    assert manager.allocate("b", [3, 3, 3, 3, 2, 2, 2, 2, 9]) == 0  # block [2,2,2,2] follows another block
    assert manager.allocate("c", [1, 1, 1, 1, 2, 2, 2, 2, 5]) == 8


def test_uncomputed_blocks_are_not_hits():
    manager = PrefixCachingBlockManager(16, 4)
    manager.allocate("a", list(range(9)))          # admitted, not prefilled yet
    assert manager.allocate("b", list(range(9))) == 0
    manager.mark_computed("a", 9)
    assert manager.allocate("c", list(range(9))) == 8
    with pytest.raises(ValueError):
        manager.mark_computed("a", 10)


def test_freed_blocks_stay_cached_and_evict_least_recent_first():
    manager = PrefixCachingBlockManager(5, 2)
    manager.allocate("a", [1, 2, 3])
    manager.append_slot("a", 4)                   # a: [1,2][3,4]; [1,2] registered
    manager.mark_computed("a", 4)
    manager.free("a")
    assert manager.free_blocks == 5 and manager.stats["cached_blocks"] == 2
    manager.allocate("b", [5, 6, 7])
    manager.mark_computed("b", 2)
    manager.free("b")                             # b's [5,6] cached after a's blocks
    assert manager.stats["cached_blocks"] == 3
    manager.allocate("c", list(range(8, 15)))     # 4 blocks: 2 never cached, then evict the oldest two
    assert manager.stats["evictions"] == 2 and manager.stats["cached_blocks"] == 1
    manager.free("c")
    assert manager.allocate("d", [5, 6, 0]) == 2, "b's block was freed last: it must survive"
    assert manager.allocate("e", [1, 2, 3]) == 0, "a's blocks were evicted"


def test_hit_on_an_evictable_block_is_counted_once():
    manager = PrefixCachingBlockManager(3, 2)
    manager.allocate("a", [1, 2, 3])
    manager.mark_computed("a", 3)
    manager.free("a")                             # [1,2] cached, evictable; 3 blocks count as free
    with pytest.raises(OutOfBlocks):
        manager.allocate("b", [1, 2, 3, 4, 5, 6, 7])  # 1 hit + 3 more: 4 > 3
    assert manager.stats["cached_blocks"] == 1 and manager.free_blocks == 3
    assert manager.allocate("b", [1, 2, 3, 4, 5]) == 2
    assert manager.free_blocks == 0


def test_copy_on_write_keeps_the_other_sequence_intact():
    manager = PrefixCachingBlockManager(8, 4)
    manager.allocate("p", [1, 2, 3, 4, 5, 6])
    assert manager.fork("p", "c") == []
    src = manager.block_table("p")[1]
    copy = manager.append_slot("c", 7)
    assert copy == (src, manager.block_table("c")[1]) and manager.block_table("p")[1] == src
    assert manager.append_slot("p", 8) is None and manager.stats["copies"] == 1
    assert manager.tokens["p"][-1] == 8 and manager.tokens["c"][-1] == 7


def test_same_interface_as_block_manager():
    for cls in (BlockManager, PrefixCachingBlockManager):
        manager = cls(4, 4)
        assert manager.allocate("a", [1, 2, 3]) == 0
        assert manager.can_allocate(12) and not manager.can_allocate(13)
        assert manager.append_slot("a", 4) is None and manager.length("a") == 4
        manager.fork("a", "b")
        manager.free("a")
        manager.free("b")
        assert manager.free_blocks == 4 and manager.used_blocks == 0
        with pytest.raises(ValueError):
            manager.allocate("x", [])


# ---------------------------------------------------------------------------------- through the engine
@pytest.fixture(scope="module")
def tiny():
    from course import lm

    model, tokenizer, _ = lm.load_model(device="cpu")
    return model, tokenizer


def run_staggered(engine, prompts, max_tokens):
    """One new request per step, then to the end: {rid: tokens}."""
    out = {}
    for rid, ids in enumerate(prompts):
        engine.add_request(rid, ids, max_tokens=max_tokens)
        for o in engine.step():
            out.setdefault(o.rid, []).append(o.token)
    for o in engine.run():
        out.setdefault(o.rid, []).append(o.token)
    return out


def test_engine_same_greedy_tokens_with_prefix_caching(tiny):
    from course import lm
    from course.engine import Engine

    model, tokenizer = tiny
    system = "You are the course assistant. Answer in one line.\n"
    prompts = [tokenizer.encode(system + q) for q in ("Q: KV cache?\nA:", "Q: paging?\nA:", "Q: goodput?\nA:",
                                                      system[:20], "Q: KV cache?\nA:")]
    engines = {c: Engine(model, n_blocks=40, block_size=8, prefix_caching=c) for c in (False, True)}
    outs = {c: run_staggered(e, prompts, 12) for c, e in engines.items()}
    assert outs[True] == outs[False]
    for rid, ids in enumerate(prompts):
        assert outs[True][rid] == lm.generate_cached(model, ids, 12)
    cached = engines[True]
    assert cached.stats["prefix_hit_tokens"] > 0 and cached.blocks.counters["hit_tokens"] >= 3 * 48
    assert cached.stats["peak_blocks"] < engines[False].stats["peak_blocks"]
    assert cached.blocks.used_blocks == 0 and not any(cached.blocks.refs)  # nothing leaked


def test_engine_parallel_samples_share_and_match_separate_requests(tiny):
    from course.engine import Engine

    model, tokenizer = tiny
    prompt = tokenizer.encode("Paged attention shares the blocks of one prompt between samples, ")
    outs, peaks = {}, {}
    for caching in (False, True):
        engine = Engine(model, n_blocks=40, block_size=16, prefix_caching=caching)
        engine.add_request("q", prompt, max_tokens=20, temperature=0.8, seed=3, n=4)
        got = {}
        for o in engine.run():
            got.setdefault(o.rid, []).append(o.token)
        outs[caching], peaks[caching] = got, engine.stats["peak_blocks"]
        if caching:
            assert engine.blocks.counters["copies"] == 3  # the shared partial last block, once per writer
            assert engine.blocks.used_blocks == 0
    alone = Engine(model, n_blocks=40, block_size=16)
    for i in range(4):
        alone.add_request(i, prompt, max_tokens=20, temperature=0.8, seed=3 + i)
    single = {}
    for o in alone.run():
        single.setdefault(o.rid, []).append(o.token)
    assert all(outs[True][f"q/{i}"] == outs[False][f"q/{i}"] == single[i] for i in range(4))
    assert peaks[True] == peaks[False] - 3 * (len(prompt) // 16)


def test_engine_preemption_with_prefix_caching_keeps_tokens(tiny):
    from course.engine import Engine

    model, tokenizer = tiny
    system = "Shared words at the start of every request. "
    prompts = [tokenizer.encode(system + str(i)) for i in range(6)]
    roomy = run_staggered(Engine(model, n_blocks=64, block_size=8, prefix_caching=True), prompts, 30)
    tight_engine = Engine(model, n_blocks=24, block_size=8, prefix_caching=True)
    tight = run_staggered(tight_engine, prompts, 30)
    assert tight == roomy
    assert tight_engine.stats["preemptions"] > 0 and tight_engine.blocks.used_blocks == 0
