"""course/sharding.py (04b_model_parallel, sections 1-2): activation arithmetic, activation checkpointing
measured, FSDP2 on real gloo ranks, and a DCP checkpoint saved on 2 ranks and loaded on 1 and on 4."""

import pytest
import torch
import torch.distributed as dist
from torch import nn

from course import distributed as D
from course import sharding as S
from course.launch import launch


# ----------------------------------------------------------------- arithmetic

def test_activation_memory_follows_korthikanti_table_2():
    s, b, h, a, layers = 2048, 1, 4096, 32, 32
    assert S.activation_memory(layers, h, a, s, b) == layers * s * b * h * (34 + 5 * a * s / h)
    assert S.activation_memory(layers, h, a, s, b, recompute="selective") == 34 * s * b * h * layers
    assert S.activation_memory(layers, h, a, s, b, recompute="full") == 2 * s * b * h * layers
    # GPT-3 (a = 96, s = 2048, h = 12288): the paper's 5as/h = 80 (Section 5)
    per_layer = S.activation_memory(1, 12288, 96, 2048)
    assert per_layer / (2048 * 12288) == pytest.approx(34 + 80)
    assert S.activation_memory(layers, h, a, s, micro_batch=4) == 4 * S.activation_memory(layers, h, a, s)


@pytest.mark.parametrize("bad", [dict(recompute="some"), dict(micro_batch=0), dict(seq=0)])
def test_activation_memory_rejects_nonsense(bad):
    args = dict(layers=2, hidden=64, heads=4, seq=16, micro_batch=1, recompute="none") | bad
    with pytest.raises(ValueError):
        S.activation_memory(**args)


def test_state_bytes_per_rank_matches_memory_per_rank_with_mixed_precision_bytes():
    mixed = {"weights": 2, "gradients": 2, "optimizer": 12}
    for stage in range(4):
        for world in (1, 2, 8, 64):
            assert S.state_bytes_per_rank(7.5e9, world, stage, mixed) == pytest.approx(
                D.memory_per_rank(7.5e9, world, stage))
    # fp32 Adam: 4 + 4 + 8 = 16 bytes, the same totals at stages 0 and 3, split differently
    assert S.state_bytes_per_rank(1e6, 4, 0) == 16e6
    assert S.state_bytes_per_rank(1e6, 4, 3) == 4e6
    assert S.state_bytes_per_rank(1e6, 4, 1) == 8e6 + 8e6 / 4
    with pytest.raises(ValueError):
        S.state_bytes_per_rank(1e6, 4, 4)
    with pytest.raises(ValueError):
        S.state_bytes_per_rank(1e6, 0, 1)


# ----------------------------------------------------------------- activation checkpointing

def test_checkpointing_keeps_only_block_inputs_and_changes_no_number():
    batch, width, layers = 64, 32, 3
    blocks = S.mlp_blocks(layers, width)
    x, y = torch.randn(batch, width), torch.randint(0, 10, (batch,))
    stored, loss = S.saved_activation_bytes(blocks, x, y, recompute=False)
    grads = [p.grad.clone() for p in blocks.parameters()]
    blocks.zero_grad()
    kept, loss2 = S.saved_activation_bytes(blocks, x, y, recompute=True)
    # each block keeps its input and its 4x hidden layer, or with a checkpoint its input only; the head's
    # input, the softmax and the targets are kept either way
    assert stored - kept == layers * batch * 4 * width * 4
    head = batch * width * 4 + batch * 10 * 4 + batch * 8
    assert layers * batch * width * 4 + head <= kept < layers * batch * width * 4 + head + 64
    assert torch.equal(loss, loss2)
    assert all(torch.allclose(g, p.grad) for g, p in zip(grads, blocks.parameters()))


def test_checkpointing_cost_reports_both_and_restores_threads():
    threads = torch.get_num_threads()
    cost = S.checkpointing_cost(layers=2, width=32, batch=32, steps=1, repeats=2)
    assert torch.get_num_threads() == threads
    assert set(cost) == {"stored", "recomputed"}
    assert cost["recomputed"]["saved_bytes"] < cost["stored"]["saved_bytes"]
    assert all(len(r["seconds"]) == 2 and min(r["seconds"]) >= 0 for r in cost.values())


# ----------------------------------------------------------------- FSDP2 on ranks

def _reference_train_fsdp(model, batches, lr=1e-2):
    from torch.nn import functional as F

    S.shard_per_layer(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for x, y in batches:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(S.rank_slice(x)), S.rank_slice(y))
        loss.backward()
        optimizer.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean, op=dist.ReduceOp.AVG)
        losses.append(mean.item())
    return losses


def _optimizer_first(model, batches, lr=1e-2):
    from torch.nn import functional as F

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)  # holds the parameters fully_shard replaces
    S.shard_per_layer(model)
    losses = []
    for x, y in batches:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(S.rank_slice(x)), S.rank_slice(y))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_fsdp_exercise_reference_equals_one_process_on_uneven_shards():
    hidden, steps, batch, lr = (20, 10), 3, 30, 1e-2
    ranks = launch(S.fsdp_exercise, 3, _reference_train_fsdp, hidden=hidden, steps=steps, batch=batch, lr=lr,
                   quiet=True).results
    single = S.single_process_adam(hidden, steps, batch, lr)
    assert all(r["losses"] == ranks[0]["losses"] for r in ranks)
    assert ranks[0]["losses"] == pytest.approx(single["losses"], abs=1e-5)
    for name, w in single["weights"].items():
        assert torch.allclose(ranks[0]["weights"][name], w, atol=1e-4)
        assert sum(r["local_shapes"][name][0] for r in ranks) == w.shape[0]  # 20 rows: 7 + 7 + 6
    assert ranks[0]["root_sharded"] and all(ranks[0]["layers_sharded"])
    assert all(r["rows_seen"] == [batch // 3] * steps for r in ranks)


def test_an_optimizer_built_before_sharding_never_steps():
    ranks = launch(S.fsdp_exercise, 2, _optimizer_first, hidden=(16,), steps=3, batch=16, quiet=True).results
    single = S.single_process_adam((16,), steps=3, batch=16)
    drift = max((ranks[0]["weights"][k] - w).abs().max().item() for k, w in single["weights"].items())
    assert drift > 1e-2


def _measure_then_load_on_four(folder):
    return S.fsdp_measurements(folder, hidden=(32, 32), steps=2, batch=16)


@pytest.mark.slow
def test_fsdp_measurements_and_a_checkpoint_saved_on_two_loaded_on_one_and_four(tmp_path):
    hidden = (32, 32)
    measured = launch(_measure_then_load_on_four, 2, str(tmp_path), quiet=True).results
    m = measured[0]
    n = m["n_params"]
    assert n == sum(p.numel() for p in nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 32), nn.Linear(32, 10))
                    .parameters())
    for part, per_param in S.FP32_ADAM_BYTES.items():
        assert m["state"]["DDP"][part] == n * per_param
        assert m["state"]["FSDP"][part] == n * per_param / 2  # every dim here is even: no padding
    full = m["full_bytes"]
    assert m["reshard"][True]["held_bytes"] == full / 2
    assert m["reshard"][False]["held_bytes"] == full / 2 + full
    assert m["gathered"]["the root only"] == full / 2 + full
    assert full / 2 < m["gathered"]["each Linear, then the root"] < full / 2 + full
    files = S.checkpoint_files(str(tmp_path))
    assert set(files) == {".metadata", "__0_0.distcp", "__1_0.distcp"}
    assert torch.equal(S.load_checkpoint(str(tmp_path), hidden=hidden), m["outputs"])
    on_four = launch(S.load_checkpoint, 4, str(tmp_path), hidden=hidden, fsdp=True, quiet=True).results
    assert all(torch.equal(out, m["outputs"]) for out in on_four)


def test_state_bytes_per_rank_refuses_unknown_parts():
    with pytest.raises(ValueError, match="weight"):
        S.state_bytes_per_rank(1e6, 2, 3, {"weight": 4})


def test_load_checkpoint_on_a_missing_folder_names_it(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        S.load_checkpoint(missing)


def test_loss_mismatch_hint_fits_what_was_measured():
    assert "never move" in S.loss_mismatch_hint([2.3, 2.3, 2.3], [2.3, 2.0, 1.8])
    assert "first loss differs" in S.loss_mismatch_hint([2.5, 2.2, 2.0], [2.3, 2.0, 1.8])
    assert "zero_grad" in S.loss_mismatch_hint([2.3, 1.9, 1.9], [2.3, 2.0, 1.8])


def _extra_forward_under_no_grad(model, batches, lr):
    with torch.no_grad():
        model(batches[0][0])  # a whole-batch forward for logging: not counted as training rows
    return _reference_train_fsdp(model, batches, lr)


def test_fsdp_exercise_counts_training_rows_only_and_refuses_an_uneven_batch():
    ranks = launch(S.fsdp_exercise, 2, _extra_forward_under_no_grad, hidden=(16,), steps=2, batch=16,
                   quiet=True).results
    assert all(r["rows_seen"] == [8, 8] for r in ranks)
    assert ranks[0]["root_sharded"] and ranks[0]["root_covers_all"]
    with pytest.raises(Exception, match="must divide by the 3 ranks"):
        launch(S.fsdp_exercise, 3, _reference_train_fsdp, hidden=(16,), steps=1, batch=16, quiet=True)
