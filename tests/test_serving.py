"""course/serving.py: the systems that serve the course's language model."""

import pytest
import torch

from course import lm
from course import serving as s


def test_a_paged_cache_interleaving_sequences_decodes_like_a_contiguous_one(small_lm):
    model = small_lm(2)
    alloc = s.BlockAllocator(n_blocks=12, block_size=4)
    pool = s.PagedKVCache.make_pool(model.config, 12, 4)
    prompts = {0: [1, 2, 3], 1: [4, 5, 6, 7, 8], 2: [9]}
    caches = {seq: s.PagedKVCache(pool, alloc, seq) for seq in prompts}
    logits = {seq: model(torch.tensor([p]), caches[seq])[0, -1] for seq, p in prompts.items()}
    out = {seq: [] for seq in prompts}
    for _ in range(6):  # round robin: the three sequences' blocks interleave in the pool
        for seq in prompts:
            out[seq].append(int(logits[seq].argmax()))
            logits[seq] = model(torch.tensor([[out[seq][-1]]]), caches[seq])[0, -1]
    for seq, prompt in prompts.items():
        assert out[seq] == lm.generate_cached(model, prompt, 6)
        assert alloc.length(seq) == len(prompt) + 6
    tables = [alloc.block_table(seq) for seq in prompts]
    assert len(set(sum(tables, []))) == sum(map(len, tables))  # no block shared
    assert any(t != list(range(t[0], t[0] + len(t))) for t in tables), "round robin should interleave blocks"


def test_kv_cache_arithmetic_for_published_shapes():
    llama2 = s.MODEL_SHAPES["Llama 2 7B"]
    assert s.kv_bytes_per_token(llama2["layers"], llama2["kv_heads"], llama2["head_dim"]) == 512 * 1024
    llama3 = s.MODEL_SHAPES["Llama 3 8B"]
    assert s.kv_bytes_per_token(llama3["layers"], llama3["kv_heads"], llama3["head_dim"]) == 128 * 1024
    # 80 GB, 16 GB of weights, 4096-token sequences at 128 KiB a token: 64 GiB-ish / 0.5 GiB
    assert s.concurrent_sequences(80e9, 16e9, 4096, 128 * 1024) == int(64e9 // (4096 * 128 * 1024))
    assert s.concurrent_sequences(10e9, 16e9, 4096, 1024) == 0
    with pytest.raises(ValueError):
        s.kv_bytes_per_token(0, 8, 128)


def test_published_shapes_match_their_audited_sources():
    # (layers, query heads, KV heads, head dim) as checked for tests/claims/07_foundation_models.md
    audited = {"GPT-3 175B": (96, 96, 96, 128), "Llama 2 7B": (32, 32, 32, 128), "Llama 2 70B": (80, 64, 8, 128),
               "Mistral 7B": (32, 32, 8, 128), "Llama 3 8B": (32, 32, 8, 128), "Llama 3 70B": (80, 64, 8, 128),
               "Llama 3 405B": (126, 128, 8, 128)}
    assert set(s.MODEL_SHAPES) == set(audited)
    for name, (layers, q_heads, kv_heads, head_dim) in audited.items():
        shape = s.MODEL_SHAPES[name]
        assert (shape["layers"], shape["q_heads"], shape["kv_heads"], shape["head_dim"]) == (
            layers, q_heads, kv_heads, head_dim), name
    assert s.kv_bytes_per_token(126, 8, 128) / 1024 == 504  # the notebook's "128 to 504 KiB" for GQA
    assert s.kv_bytes_per_token(96, 96, 128) / 1024 == 4608


def test_the_allocator_hands_out_whole_blocks_and_loses_nothing_when_full():
    alloc = s.BlockAllocator(n_blocks=4, block_size=4)
    alloc.append("a", 5)
    assert alloc.length("a") == 5 and len(alloc.block_table("a")) == 2 and alloc.free_blocks == 2
    alloc.append("b", 4)
    before = (alloc.block_table("a"), alloc.block_table("b"), alloc.free_blocks)
    with pytest.raises(s.OutOfBlocks):
        alloc.append("a", 8)  # would need 2 more blocks, 1 is free
    assert (alloc.block_table("a"), alloc.block_table("b"), alloc.free_blocks) == before
    alloc.append("a", 4)  # fills the second block, then one token into a third
    assert len(alloc.block_table("a")) == 3 and alloc.free_blocks == 0
    alloc.free("b")
    assert alloc.free_blocks == 1
    with pytest.raises(KeyError):
        alloc.free("b")
    assert s.paged_waste([5, 8, 1], 4) == 3 + 0 + 3
    assert s.contiguous_waste([5, 8, 1], 16) == 11 + 8 + 15


def test_static_and_continuous_batching_on_a_hand_worked_case():
    cost = s.StepCost(base=1.0, per_sequence=0.0, prefill_per_token=0.0)
    reqs = [s.Request(0, 0.0, 4, 3), s.Request(1, 0.0, 4, 1), s.Request(2, 0.5, 4, 1)]
    assert s.simulate_static(reqs, 2, cost) == {0: 3.0, 1: 1.0, 2: 4.0}
    assert s.simulate_continuous(reqs, 2, cost) == {0: 3.0, 1: 1.0, 2: 2.0}
    stats = s.serving_stats(reqs, {0: 3.0, 1: 1.0, 2: 2.0})
    assert stats["throughput"] == pytest.approx(5 / 3.0) and stats["p50"] == pytest.approx(1.5)
    with pytest.raises(ValueError):
        s.simulate_continuous([s.Request(0, 0.0, 1, 0)], 2, cost)
    with pytest.raises(ValueError, match="every request"):
        s.serving_stats(reqs, {0: 1.0})


def test_continuous_batching_beats_static_on_a_long_tailed_stream():
    reqs = s.request_stream(200, rate=40.0, seed=0)
    cost = s.StepCost(base=0.004, per_sequence=0.0005, prefill_per_token=0.00002)
    static = s.serving_stats(reqs, s.simulate_static(reqs, 8, cost))
    cont = s.serving_stats(reqs, s.simulate_continuous(reqs, 8, cost))
    assert cont["throughput"] > 1.2 * static["throughput"] and cont["p50"] < static["p50"]


def test_measured_step_cost_covers_each_batch_size_and_is_positive(small_lm):
    cost, times = s.measure_step_cost(small_lm(), batch_sizes=(1, 8), cached_tokens=8, repeats=3)
    assert set(times) == {1, 8} and all(t > 0 for t in times.values())
    assert cost.iteration(1) > 0 and cost.prefill_per_token >= 0


def test_the_context_window_pages_out_the_oldest_turns_and_recalls_them():
    window = s.ContextWindow(budget=10)
    window.add("system", "be brief")          # 2 words, pinned
    window.add("user", "my code is HERON")    # 4
    window.add("user", "one two three")       # 3
    assert window.tokens == 9 and not window.archive
    window.add("user", "four five six")       # 3: the HERON turn pages out
    assert [t.tid for t in window.turns()] == [0, 2, 3] and 1 in window.archive
    assert window.recall("heron") == [1]      # comes back; turn 2, now the oldest, pages out for it
    assert [t.tid for t in window.turns()] == [0, 1, 3] and window.tokens <= 10
    with pytest.raises(ValueError, match="exceeds"):
        window.add("user", "a " * 11)
    small = s.ContextWindow(budget=5)
    small.add("system", "x y")
    small.add("user", "p q r")
    small.add("user", "s t u")                # pages out "p q r"
    small.add("user", "v w x")                # pages out "s t u"
    with pytest.raises(MemoryError):
        small.recall(" ")                     # both archived turns match: they cannot both fit
    assert sorted(small.archive) == [1, 2] and [t.tid for t in small.turns()] == [0, 3]


def test_a_tool_call_is_checked_like_a_system_call():
    ran = []
    tools = {"read": s.Tool("read", lambda path: ran.append(path) or "data", "fs.read"),
             "boom": s.Tool("boom", lambda: 1 / 0, "fs.read")}
    audit = []
    user = s.Process("agent", frozenset({"fs.read"}))
    guest = s.Process("guest")
    assert s.syscall(user, tools, "read", audit, path="a.txt") == "data"
    with pytest.raises(PermissionError):
        s.syscall(guest, tools, "read", audit, path="secret")
    with pytest.raises(LookupError):
        s.syscall(user, tools, "rm", audit)
    with pytest.raises(ZeroDivisionError):
        s.syscall(user, tools, "boom", audit)
    assert ran == ["a.txt"]
    assert [a[2] for a in audit] == ["allowed", "denied", "unknown", "failed"]


def test_the_scripted_conversation_is_deterministic():
    assert s.conversation(0) == s.conversation(0) and len(s.conversation(0, 30)) == 30


def test_a_paged_cache_refuses_a_batch(small_lm):
    model = small_lm()
    cache = s.PagedKVCache(s.PagedKVCache.make_pool(model.config, 4, 4), s.BlockAllocator(4, 4), "a")
    with pytest.raises(ValueError, match="one sequence"):
        model(torch.zeros(2, 3, dtype=torch.long), cache)


def test_the_step_cost_fit_ignores_one_disturbed_timing(small_lm, monkeypatch):
    # On a busy machine one batch size's timing can come out 50x too slow; the fitted line must not follow it.
    fake = iter([0.0010, 0.0011, 0.0500, 0.0017, 0.0025])  # 0.9 ms + 0.1 ms a sequence; batch 4 disturbed
    monkeypatch.setattr(s, "min", lambda samples: next(fake), raising=False)
    cost, times = s.measure_step_cost(small_lm(), batch_sizes=(1, 2, 4, 8, 16), cached_tokens=8, repeats=1)
    assert cost.per_sequence > 0 and abs(cost.base - 0.0009) < 2e-4 and abs(cost.per_sequence - 0.0001) < 5e-5
