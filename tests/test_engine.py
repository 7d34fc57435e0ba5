"""course/engine.py and course/kv_blocks.py: the serving engine of 07b_serving."""

import pytest
import torch

from course import lm
from course.engine import Engine, Output, ragged_forward
from course.kv_blocks import BlockManager, OutOfBlocks

PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 1, 2], [9], [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]]


def tokens_by_rid(outputs):
    out = {}
    for o in outputs:
        out.setdefault(o.rid, []).append(o.token)
    return out


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_ragged_forward_gives_each_sequence_what_the_model_gives_it_alone(small_lm):
    model = small_lm(1)
    block = 4
    pool = {kind: torch.zeros(2, 16, 2, block, 8) for kind in ("k", "v")}
    manager = BlockManager(16, block)
    items = []
    for i, prompt in enumerate(PROMPTS):
        manager.allocate(i, prompt)
        items.append((prompt, 0, manager.block_table(i)))
    logits = ragged_forward(model, pool, block, items)
    for row, prompt in zip(logits, PROMPTS, strict=True):
        torch.testing.assert_close(row, model(torch.tensor([prompt]))[0, -1], atol=1e-5, rtol=1e-4)
    # a decode step over the pool: one new token each, at its own position, against the cached keys
    new = [[2], [3], [4], [5]]
    for i, prompt in enumerate(PROMPTS):
        manager.append_slot(i, new[i][0])
    logits = ragged_forward(model, pool, block, [(n, len(p), manager.block_table(i))
                                                 for i, (n, p) in enumerate(zip(new, PROMPTS, strict=True))])
    for row, prompt, n in zip(logits, PROMPTS, new, strict=True):
        torch.testing.assert_close(row, model(torch.tensor([prompt + n]))[0, -1], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="context"):
        ragged_forward(model, pool, block, [([1], 32, [0] * 9)])


def test_the_engine_decodes_as_generate_cached_alone_and_in_a_ragged_batch(small_lm):
    model = small_lm(2)
    expected = [lm.generate_cached(model, p, 10) for p in PROMPTS]
    for max_batch in (1, 4):
        engine = Engine(model, n_blocks=32, block_size=4, max_batch=max_batch)
        for rid, prompt in enumerate(PROMPTS):
            engine.add_request(rid, prompt, 10)
        outputs = engine.run()
        assert tokens_by_rid(outputs) == dict(enumerate(expected))
        assert all(isinstance(o, Output) for o in outputs)
        assert [o.finish_reason for o in outputs if o.finished] == ["length"] * 4
        assert engine.blocks.free_blocks == 32 and not engine.has_work()
    assert engine.stats["steps"] == 10  # all four together: one prefill iteration, then nine decodes


def test_sampled_requests_decode_the_same_alone_or_batched_and_parallel_samples_are_forked(small_lm):
    model = small_lm(3)
    engine = Engine(model, n_blocks=32, block_size=4, max_batch=8)
    for rid, prompt in enumerate(PROMPTS):
        engine.add_request(rid, prompt, 8, temperature=1.0, seed=rid)
    engine.add_request("p", PROMPTS[1], 6, temperature=1.0, seed=7, n=3)
    got = tokens_by_rid(engine.run())
    for rid, prompt in enumerate(PROMPTS):
        assert got[rid] == lm.generate_cached(model, prompt, 8, 1.0, seed=rid)
    for i in range(3):
        assert got[f"p/{i}"] == lm.generate_cached(model, PROMPTS[1], 6, 1.0, seed=7 + i)
    assert engine.blocks.free_blocks == 32


def test_continuous_admits_every_iteration_static_waits_for_its_window_and_runs_to_completion(small_lm):
    model = small_lm(0)
    clock = FakeClock()
    static = Engine(model, n_blocks=32, block_size=4, max_batch=2, policy="static", batch_window_s=0.5,
                    clock=clock)
    static.add_request("a", [1, 2], 2)
    assert static.step() == [] and static.has_work()  # one request, window not over: nothing runs
    clock.now = 0.5
    assert [o.rid for o in static.step()] == ["a"]  # the window is over: a batch of one
    static.add_request("b", [3], 3)
    static.add_request("c", [4], 1)  # two wait: a full batch, but the running one must finish first
    assert [o.rid for o in static.step()] == ["a"]
    assert [o.rid for o in static.step()] == ["b", "c"]  # full batch: no window wait
    static.add_request("d", [5], 1)
    assert [o.rid for o in static.step()] == ["b"]  # c left; d does not join the running batch
    assert [o.rid for o in static.step()] == ["b"]
    assert static.step() == []  # d alone again waits for its window
    clock.now = 1.0
    assert [o.rid for o in static.step()] == ["d"]

    cont = Engine(model, n_blocks=32, block_size=4, max_batch=2, clock=clock)
    cont.add_request("a", [1, 2], 3)
    assert [o.rid for o in cont.step()] == ["a"]
    cont.add_request("b", [3], 1)
    cont.add_request("c", [4], 2)
    assert [o.rid for o in cont.step()] == ["a", "b"]  # b joins at once; c waits for a free slot
    assert [o.rid for o in cont.step()] == ["a", "c"]  # b left after one token: c takes its place
    assert [(o.rid, o.finished) for o in cont.step()] == [("c", True)]
    assert not cont.has_work()


def test_preemption_under_a_tiny_pool_completes_every_request_with_the_same_tokens(small_lm):
    model = small_lm(4)
    prompts = [[i % 11, (3 * i) % 11, 5] for i in range(6)]
    expected = {rid: lm.generate_cached(model, p, 12) for rid, p in enumerate(prompts)}
    engine = Engine(model, n_blocks=8, block_size=4, max_batch=6)  # 6 x 15 tokens need 24 blocks
    for rid, prompt in enumerate(prompts):
        engine.add_request(rid, prompt, 12)
    assert tokens_by_rid(engine.run()) == expected
    assert engine.stats["preemptions"] > 0 and engine.stats["recomputed_tokens"] > 0
    assert engine.stats["peak_blocks"] <= 8 and engine.blocks.free_blocks == 8

    swap = Engine(model, n_blocks=8, block_size=4, max_batch=6, preemption="swap")
    for rid, prompt in enumerate(prompts):
        swap.add_request(rid, prompt, 12)
    assert tokens_by_rid(swap.run()) == expected
    assert swap.stats["preemptions"] > 0 and swap.stats["swapped_blocks"] > 0
    assert swap.stats["recomputed_tokens"] == 0 and swap.blocks.free_blocks == 8

    reserve = Engine(model, n_blocks=8, block_size=4, max_batch=6, preemption="reserve")
    for rid, prompt in enumerate(prompts):
        reserve.add_request(rid, prompt, 12)
    trace_running = []
    outputs = []
    while reserve.has_work():
        outputs += reserve.step()
        trace_running.append(len(reserve.running))
    assert tokens_by_rid(outputs) == expected and reserve.stats["preemptions"] == 0
    assert max(trace_running) <= 2  # each reserves ceil(14 / 4) = 4 blocks up front: two fit

    careless = Engine(model, n_blocks=8, block_size=4, max_batch=6, preemption="none")
    for rid, prompt in enumerate(prompts):
        careless.add_request(rid, prompt, 12)
    with pytest.raises(OutOfBlocks):
        careless.run()


def test_chunked_prefill_gives_the_same_tokens_and_caps_each_iteration(small_lm):
    model = small_lm(5)
    long = [(7 * i) % 11 for i in range(20)]
    engine = Engine(model, n_blocks=32, block_size=4, max_batch=4, max_step_tokens=6)
    engine.add_request("short", [1, 2], 10)
    engine.step()
    engine.add_request("long", long, 4)
    steps = []
    outputs = []
    while engine.has_work():
        outs = engine.step()
        outputs += outs
        steps.append([o.rid for o in outs])
    assert steps[:4] == [["short"]] * 3 + [["short", "long"]]  # 1 decode + 5 prompt tokens a step
    assert engine.stats["max_step_tokens_used"] == 6
    got = tokens_by_rid(outputs)
    assert got["long"] == lm.generate_cached(model, long, 4)
    assert got["short"] == lm.generate_cached(model, [1, 2], 10)[1:]


def test_add_request_rejects_what_cannot_run_and_abort_frees_blocks(small_lm):
    model = small_lm(0)
    engine = Engine(model, n_blocks=6, block_size=4, max_batch=4)
    with pytest.raises(ValueError, match="context"):
        engine.add_request("x", [1] * 30, 5)
    with pytest.raises(ValueError, match="pool"):
        engine.add_request("x", [1] * 20, 8)  # 28 tokens need 7 blocks of 4; the pool has 6
    with pytest.raises(ValueError, match="empty"):
        engine.add_request("x", [], 5)
    with pytest.raises(ValueError, match="max_tokens"):
        engine.add_request("x", [1], 0)
    with pytest.raises(ValueError, match="vocabulary|0 \\.\\. 10"):
        engine.add_request("x", [11], 1)
    with pytest.raises(ValueError, match="max_batch"):
        engine.add_request("x", [1], 1, n=5)  # five samples run together; the batch holds four
    with pytest.raises(ValueError, match="policy"):
        Engine(model, policy="fifo")
    engine.add_request("a", [1, 2, 3, 4, 5], 10)
    with pytest.raises(ValueError, match="already"):
        engine.add_request("a", [1], 1)
    engine.add_request("b", [1], 3)
    engine.step()
    assert engine.blocks.free_blocks == 6 - 3
    engine.abort("a")
    assert engine.blocks.free_blocks == 6 - 1
    assert tokens_by_rid(engine.run()).keys() == {"b"}
    assert engine.blocks.free_blocks == 6
    with pytest.raises(KeyError):
        engine.abort("a")


def test_the_block_manager_keeps_its_interface():
    manager = BlockManager(4, 2)
    assert manager.allocate("a", [1, 2, 3]) == 0 and manager.block_table("a") == [0, 1]
    assert manager.append_slot("a", 4) is None and manager.length("a") == 4 and manager.used_blocks == 2
    assert manager.fork("a", "b") == [(0, 2), (1, 3)]
    with pytest.raises(OutOfBlocks):
        manager.append_slot("a", 5)
    assert manager.length("a") == 4 and manager.free_blocks == 0  # a failed call changes nothing
    manager.free("a")
    manager.free("b")
    assert manager.free_blocks == 4 and manager.can_allocate(8) and not manager.can_allocate(9)


def test_replay_adds_requests_at_their_iterations_and_times_their_tokens(small_lm):
    from course.engine import replay

    model = small_lm(6)
    ticks = iter(range(10_000))
    engine = Engine(model, n_blocks=16, block_size=4, max_batch=4)
    seen = replay(engine, [(0, "a", [1, 2], 4), (2, "b", [3, 4, 5], 2), (9, "c", [6], 1)],
                  clock=lambda: float(next(ticks)))
    assert seen.tokens["a"] == lm.generate_cached(model, [1, 2], 4)
    assert seen.token_steps == {"a": [0, 1, 2, 3], "b": [2, 3], "c": [9]}  # c's arrival: the count jumps
    assert seen.arrival_steps == {"a": 0, "b": 2, "c": 9}
    assert seen.ttft("b") > 0 and all(gap > 0 for gap in seen.itl("a")) and len(seen.itl("a")) == 3
    assert len(seen.step_seconds) == 5 and engine.blocks.free_blocks == 16


def test_prefix_caching_with_chunks_and_preemption_gives_the_same_tokens(small_lm):
    pytest.importorskip("course.prefix_cache")  # the prefix-caching section's block manager
    model = small_lm(7)
    system = [(5 * i) % 11 for i in range(9)]  # a shared "system prompt" of two blocks and a bit
    prompts = [system + [i % 11, (i * 3) % 11] for i in range(6)]
    expected = {rid: lm.generate_cached(model, p, 10) for rid, p in enumerate(prompts)}
    for budget in (None, 5):
        engine = Engine(model, n_blocks=12, block_size=4, max_batch=6, prefix_caching=True,
                        max_step_tokens=budget)
        for rid, prompt in enumerate(prompts):
            engine.add_request(rid, prompt, 10)
        assert tokens_by_rid(engine.run()) == expected
        assert engine.stats["prefix_hit_tokens"] > 0 and engine.blocks.free_blocks == 12


@pytest.mark.parametrize("prefix_caching", [False, True])
def test_random_workloads_decode_as_generate_cached_and_leak_no_block(small_lm, prefix_caching):
    """Random pools, block sizes, budgets, policies, samples and temperatures: every request gets the tokens
    it gets alone, and every block comes back (found bugs: a fork preempting a sequence later in the same
    iteration; reservations that forgot the samples still to fork)."""
    import random

    if prefix_caching:
        pytest.importorskip("course.prefix_cache")
    model = small_lm(0)
    for trial in range(40):
        rng = random.Random(trial)
        n_blocks = rng.randint(8, 20)
        engine = Engine(model, n_blocks=n_blocks, block_size=rng.choice([2, 4, 8]),
                        max_batch=rng.randint(1, 6), max_step_tokens=rng.choice([None, 3, 7, 16]),
                        policy=rng.choice(["continuous", "static"]), prefix_caching=prefix_caching,
                        preemption=rng.choice(["recompute", "swap", "reserve"]))
        expected = {}
        for rid in range(rng.randint(1, 8)):
            prompt = [rng.randrange(11) for _ in range(rng.randint(1, 12))]
            max_tokens, n, temperature = rng.randint(1, 14), rng.choice([1, 1, 2, 3]), rng.choice([0.0, 1.0])
            try:
                engine.add_request(rid, prompt, max_tokens, temperature=temperature, seed=rid, n=n)
            except ValueError:
                continue  # too long for this pool, or more samples than max_batch
            for i in range(n):
                expected[rid if n == 1 else f"{rid}/{i}"] = lm.generate_cached(model, prompt, max_tokens,
                                                                               temperature, seed=rid + i)
        assert tokens_by_rid(engine.run()) == expected, f"trial {trial}"
        assert engine.blocks.free_blocks == n_blocks, f"trial {trial}"
