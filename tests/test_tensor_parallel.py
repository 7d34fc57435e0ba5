"""course/tensor_parallel.py: Megatron's split of an MLP, checked in one process and on real gloo ranks."""

import pytest
import torch
from torch.nn import functional as F

from course import tensor_parallel as tp
from course.launch import launch


def test_shards_cover_the_weights_and_keep_b2_whole():
    w1, b1, w2, b2 = tp.mlp_weights(d=6, hidden=12, seed=0)
    shards = [tp.shard_mlp(w1, b1, w2, b2, rank, 3) for rank in range(3)]
    assert torch.equal(torch.cat([s["w1"] for s in shards], dim=0), w1)
    assert torch.equal(torch.cat([s["b1"] for s in shards]), b1)
    assert torch.equal(torch.cat([s["w2"] for s in shards], dim=1), w2)
    assert all(torch.equal(s["b2"], b2) for s in shards)


def test_an_uneven_split_is_refused():
    w1, b1, w2, b2 = tp.mlp_weights(d=4, hidden=10, seed=0)
    with pytest.raises(ValueError, match="does not divide"):
        tp.shard_mlp(w1, b1, w2, b2, 0, 4)


def test_the_partial_outputs_sum_to_the_whole_mlp():
    """Megatron's algebra without ranks: the sum over shards of gelu(x w1_r^T + b1_r) w2_r^T, plus b2 once."""
    w1, b1, w2, b2 = tp.mlp_weights(d=5, hidden=8, seed=1)
    x = torch.randn(3, 5)
    partials = [F.linear(F.gelu(F.linear(x, s["w1"], s["b1"])), s["w2"])
                for s in (tp.shard_mlp(w1, b1, w2, b2, r, 4) for r in range(4))]
    torch.testing.assert_close(sum(partials) + b2, tp.mlp_forward(x, w1, b1, w2, b2))


def test_mlp_module_holds_the_same_weights():
    x = torch.randn(2, 6)
    torch.testing.assert_close(tp.mlp_module(6, 8, seed=2)(x), tp.mlp_forward(x, *tp.mlp_weights(6, 8, seed=2)))


def test_tp_bytes_per_layer_is_four_ring_all_reduces_of_the_activations():
    tokens, width = 2048, 4096
    ring = 2 * (8 - 1) / 8 * tokens * width * 2  # one all-reduce of b s h 16-bit values on 8 ranks, per device
    assert tp.tp_bytes_per_layer(tokens, width, ranks=8) == pytest.approx(4 * ring)
    assert tp.tp_bytes_per_layer(tokens, width, ranks=1) == 0  # one rank sends nothing
    with pytest.raises(ValueError):
        tp.tp_bytes_per_layer(tokens, width, ranks=0)


def _bias_on_every_rank(x, shards):
    hidden = F.gelu(F.linear(tp.f(x), shards["w1"], shards["b1"]))
    return tp.g(F.linear(hidden, shards["w2"], shards["b2"]))


@pytest.mark.slow
def test_the_reference_matches_one_device_on_real_ranks_and_a_classic_bug_does_not():
    right = launch(tp.tp_check, 2, tp.shard_mlp, tp.tp_mlp_forward, batch=(2, 3), quiet=True).results
    for r in right:
        torch.testing.assert_close(r["y"], r["expected_y"])
        torch.testing.assert_close(r["x_grad"], r["expected_x_grad"])
        for name in tp.SHARD_NAMES:
            torch.testing.assert_close(r["grads"][name], r["expected_grads"][name])
        assert r["forward_collectives"] == ["all_reduce"]  # g
        assert r["backward_collectives"] == ["all_reduce"]  # f
    wrong = launch(tp.tp_check, 2, tp.shard_mlp, _bias_on_every_rank, quiet=True).results
    assert not torch.allclose(wrong[0]["y"], wrong[0]["expected_y"])


@pytest.mark.slow
def test_parallelize_module_runs_on_gloo_and_agrees():
    r = launch(tp.compare_with_pytorch, 2, tp.shard_mlp, tp.tp_mlp_forward, d=8, hidden=16, batch=4,
               quiet=True).results[1]
    assert max(r["hand_vs_single"], r["torch_vs_single"], r["hand_vs_torch"]) < 1e-5
    assert max(r["w1_grad_hand_vs_single"], r["w1_grad_torch_vs_single"], r["x_grad_torch_vs_single"]) < 1e-5
    assert r["placements"]["0.weight"] == {"placement": "Shard(dim=0)", "local": (8, 8), "global": (16, 8)}
    assert r["placements"]["2.weight"]["placement"] == "Shard(dim=1)"
    assert r["placements"]["2.bias"]["placement"] == "Replicate()"
    assert r["torch_forward"] == {"all_reduce": 1} and r["torch_backward"] == {"all_reduce": 1}
    assert r["hand_forward_bytes"] == r["hand_backward_bytes"] == [4 * 8 * 4]  # batch x d floats
    assert r["ddp_bytes"] == r["param_bytes"] == 4 * (16 * 8 + 16 + 8 * 16 + 8)


@pytest.mark.parametrize("rank, world", [(2, 2), (-1, 2), (0, 0), (0, -1)])
def test_shard_mlp_refuses_ranks_outside_the_world(rank, world):
    with pytest.raises(ValueError, match="rank|world"):
        tp.shard_mlp(*tp.mlp_weights(d=6, hidden=8), rank, world)


def test_shard_mlp_refuses_a_transposed_w2():
    w1, b1, w2, b2 = tp.mlp_weights(d=6, hidden=8)
    with pytest.raises(ValueError, match=r"w2 \(8, 6\)"):
        tp.shard_mlp(w1, b1, w2.T, b2, 0, 2)


def test_tp_bytes_per_layer_refuses_negative_sizes():
    with pytest.raises(ValueError, match="negative"):
        tp.tp_bytes_per_layer(-5, 1024, 2)


def test_grad_hint_names_the_cause_that_fits_the_measurement():
    expected = torch.tensor([0.5, -1.0, 2.0])
    assert "is 0" in tp.grad_hint("b2", torch.zeros(3), expected, 2)
    assert "2x the right gradient" in tp.grad_hint("b2", 2 * expected, expected, 2)
    assert "differs" in tp.grad_hint("w1", expected + 1, expected, 2)
