"""05_federated's references, checked against Flower itself, and the app on both Flower engines."""

import numpy as np
import psutil
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from course import federated as fl
from course.models import digit_mlp

LABELS = np.repeat(np.arange(10), 50)


def _entropy(parts):
    hist = fl.label_histogram(LABELS, parts).astype(float)
    p = hist / hist.sum(axis=1, keepdims=True)
    return float(np.mean([-(row[row > 0] * np.log(row[row > 0])).sum() for row in p]))


def test_partitions_are_disjoint_complete_and_follow_alpha():
    for parts in (fl.iid_partition(LABELS, 7, seed=1), fl.dirichlet_partition(LABELS, 5, 0.3, seed=1)):
        everything = np.concatenate(parts)
        assert len(everything) == len(LABELS) and set(everything) == set(range(len(LABELS)))
    sizes = [len(p) for p in fl.iid_partition(LABELS, 7)]
    assert max(sizes) - min(sizes) <= 1
    assert min(len(p) for p in fl.dirichlet_partition(LABELS, 5, 0.05, min_size=20)) >= 20
    skewed, even = fl.dirichlet_partition(LABELS, 5, 0.1), fl.dirichlet_partition(LABELS, 5, 100.0)
    assert _entropy(skewed) < _entropy(even)
    assert all((a == b).all() for a, b in zip(fl.dirichlet_partition(LABELS, 4, 0.5, seed=3),
                                              fl.dirichlet_partition(LABELS, 4, 0.5, seed=3), strict=True))
    with pytest.raises(ValueError):
        fl.dirichlet_partition(LABELS, 4, 0.0)


def test_fedavg_agrees_with_flowers_fedavg():
    torch.manual_seed(0)
    updates = [({"w": torch.randn(3, 4), "b": torch.randn(4)}, n) for n in (10, 30, 60)]
    ours, flowers = fl.fedavg(updates), fl.flower_fedavg(updates)
    for key in ours:
        torch.testing.assert_close(ours[key], flowers[key], rtol=1e-6, atol=1e-6)
    model, kept = fl.fedavg_available({"w": torch.zeros(1)}, [None, ({"w": torch.ones(1)}, 5)], min_replies=2)
    assert kept == 0 and model["w"].item() == 0.0


def test_proximal_gradient_and_privacy_pieces():
    model = digit_mlp(fl.HIDDEN, seed=0)
    anchor = [p.detach() + 0.5 for p in model.parameters()]
    fl.proximal_term(model, anchor, mu=0.3).backward()
    for p, g in zip(model.parameters(), anchor, strict=True):
        torch.testing.assert_close(p.grad, 0.3 * (p.detach() - g))
    reference = {"w": torch.zeros(4)}
    clipped = fl.clip_update({"w": torch.tensor([3.0, 4.0, 0.0, 0.0])}, reference, clip_norm=1.0)
    torch.testing.assert_close(clipped["w"], torch.tensor([0.6, 0.8, 0.0, 0.0]))
    masks = fl.pairwise_masks(5, (3,), seed=2)
    torch.testing.assert_close(sum(masks), torch.zeros(3, dtype=torch.float64))
    assert all(m.abs().sum() > 0 for m in masks)
    assert fl.client_drift(fl.proximal_term, mu=1.0) < fl.client_drift(fl.proximal_term, mu=0.0)


def test_client_handler_replies_with_its_partition_and_weights():
    config = ConfigRecord({"partitioning": "iid", "lr": 0.2, "local-epochs": 1, "server-round": 1})
    request = fl.train_request(RecordDict({"arrays": ArrayRecord(digit_mlp(fl.HIDDEN, seed=0).state_dict()),
                                           "config": config}))
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 2, "num-partitions": 4},
                      state=RecordDict(), run_config={})
    reply = fl.client_train(request, context)
    assert reply.content["metrics"]["num-examples"] == len(fl.partition("iid", 4)[2])
    trained = reply.content["arrays"].to_torch_state_dict()
    assert not torch.equal(trained["net.0.weight"], digit_mlp(fl.HIDDEN, seed=0).state_dict()["net.0.weight"])


def lasting_children(grace: float = 5.0) -> list[psutil.Process]:
    """Our descendants still alive after `grace` seconds.

    Flower's event thread runs `platform.architecture()`, which starts a short-lived `file`
    process at any moment; only a process that outlives the grace period is a leak.
    """
    return psutil.wait_procs(psutil.Process().children(recursive=True), timeout=grace)[1]


def test_simulation_learns_and_leaves_no_process():
    runs = fl.simulate({"iid": fl.Experiment(rounds=3), "dropouts": fl.Experiment(rounds=3, drop_rate=0.5)})
    assert runs["iid"].accuracy[-1] > 0.85
    assert len(runs["dropouts"].accuracy) == 3
    assert not lasting_children()


def test_deployment_engine_runs_the_app_and_stops_everything():
    from course.flower_deploy import deploy

    output = deploy(rounds=2)
    assert "test accuracy per round" in output
    assert not lasting_children()
    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if any("flower-super" in part for part in (p.info["cmdline"] or []))]
    assert not leftovers, leftovers
