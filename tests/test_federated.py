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
    assert fl.client_drift(fl.proximal_term, mu=1.0) < fl.client_drift(fl.proximal_term, mu=0.0)


def test_secure_aggregation_masks_are_pairwise_uniform_and_cancel():
    modulus = 2**32

    def seeds_of(u):
        def seeds(a, b):
            assert u in (a, b), f"car {u} asked for the seed of pair ({a}, {b})"
            return fl.pair_seed(5, a, b)
        return seeds

    masks = [fl.client_mask(u, 5, (1000,), seeds_of(u)) for u in range(5)]
    assert all(m.dtype == torch.int64 and int(m.min()) >= 0 and int(m.max()) < modulus for m in masks)
    assert bool((sum(masks) % modulus == 0).all())
    quarters = torch.bincount(masks[0] // (modulus // 4), minlength=4) / 1000
    assert bool(((quarters > 0.18) & (quarters < 0.32)).all()), quarters
    assert fl.pair_seed(5, 1, 3) == fl.pair_seed(5, 3, 1) != fl.pair_seed(6, 1, 3)
    with pytest.raises(ValueError):
        fl.client_mask(5, 5, (2,), seeds_of(5))
    updates = [torch.tensor([-0.5, 0.25, 1e-3]), torch.tensor([0.1, -0.3, 0.0])]
    scale = 2**16
    sent = [(fl.quantize(x, scale) + m) % modulus
            for x, m in zip(updates, [fl.client_mask(u, 2, (3,), seeds_of(u)) for u in range(2)], strict=True)]
    torch.testing.assert_close(fl.dequantize(sum(sent) % modulus, scale), sum(updates).double(), atol=1 / scale,
                               rtol=0)


def test_gaussian_dp_epsilon_inverts_the_gdp_curve_and_composes():
    from scipy.stats import norm

    eps = fl.gaussian_dp_epsilon(1.0, 10, 1e-5)
    mu = np.sqrt(10)
    delta = norm.cdf(-eps / mu + mu / 2) - np.exp(eps) * norm.cdf(-eps / mu - mu / 2)
    assert abs(delta - 1e-5) < 1e-8
    # T rounds at sigma equal one round at sigma / sqrt(T); more noise, smaller epsilon
    assert abs(fl.gaussian_dp_epsilon(2.0, 4, 1e-5) - fl.gaussian_dp_epsilon(1.0, 1, 1e-5)) < 1e-4
    assert fl.gaussian_dp_epsilon(3.0, 10, 1e-5) < eps < fl.gaussian_dp_epsilon(0.3, 10, 1e-5)
    assert fl.gaussian_dp_epsilon(0.0, 10, 1e-5) == float("inf")


def test_in_process_federation_learns_on_iid_data():
    curve, state = fl.federate(n_clients=3, rounds=3, seed=1, local_epochs=3)
    assert len(curve) == 3 and curve[-1] > 0.85 and curve[-1] > curve[0]
    assert set(state) == set(digit_mlp(fl.HIDDEN).state_dict())


def _buggy_handler():
    def client_train(msg, context):  # a learner's typo: "local_epochs" for "local-epochs"
        config = msg.content["config"]
        return int(config["local_epochs"])
    return client_train


def test_an_exception_in_the_client_handler_carries_its_traceback_to_the_server():
    from flwr.app import Error, Message

    request = fl.train_request(RecordDict({"arrays": ArrayRecord(digit_mlp(fl.HIDDEN).state_dict()),
                                           "config": ConfigRecord({"local-epochs": 1})}))
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 4},
                      state=RecordDict(), run_config={})
    with pytest.raises(fl.ClientCodeError) as raised:
        fl.make_client_app(_buggy_handler())(message=request, context=context)
    assert "Traceback" in str(raised.value) and "KeyError: 'local_epochs'" in str(raised.value)
    # Flower turns it into a failed reply with this reason (flwr/supernode/runtime/run_clientapp.py)
    reason = str(type(raised.value)) + ":<'" + str(raised.value) + "'>"

    class Grid:
        def get_node_ids(self):
            return [7]

        def send_and_receive(self, messages, timeout=None):
            return [Message(Error(code=2, reason=reason), reply_to=request)]

    errors = []
    grid = fl._WatchedGrid(Grid(), errors)
    assert grid.get_node_ids() == [7]
    with pytest.raises(fl.ClientCodeError, match="local_epochs"):
        grid.send_and_receive([])
    assert len(errors) == 1 and "KeyError" in errors[0]
    # a planned dropout is an ordinary failed reply: it does not stop the run
    dropped = fl.ClientDroppedOut("client 0 is out of reach in round 1")

    class DropGrid(Grid):
        def send_and_receive(self, messages, timeout=None):
            return [Message(Error(code=2, reason=str(type(dropped)) + ":<'" + str(dropped) + "'>"), reply_to=request)]

    assert len(fl._WatchedGrid(DropGrid(), []).send_and_receive([])) == 1


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


def test_simulation_raises_a_handlers_exception_in_the_calling_process():
    with pytest.raises(fl.ClientCodeError, match=r"(?s)Traceback.*KeyError: 'local_epochs'"):
        fl.simulate({"buggy": fl.Experiment(rounds=2)}, train_handler=_buggy_handler(), progress=False)
    assert not lasting_children()


def test_deployment_engine_runs_the_app_and_stops_everything():
    from course.flower_deploy import deploy

    output = deploy(rounds=2)
    assert "test accuracy per round" in output
    assert not lasting_children()
    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if any("flower-super" in part for part in (p.info["cmdline"] or []))]
    assert not leftovers, leftovers


def test_local_grid_runs_flowers_strategy_as_one_fedavg_round_by_hand():
    """run_strategy's one round of Flower's FedAvg equals fedavg() of the course client's replies."""
    from flwr.app import Message
    from flwr.serverapp.strategy import FedAvg

    with fl.quiet_flower():
        run = fl.run_strategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=3), n_clients=3, rounds=1, seed=2,
                              train_config={"partitioning": "dirichlet", "alpha": 0.5, "local-epochs": 1})
    assert run.grid.messages_sent == 3 and len(run.accuracy) == 1
    start = digit_mlp(fl.HIDDEN, seed=2).state_dict()
    config = ConfigRecord({"partitioning": "dirichlet", "alpha": 0.5, "lr": 0.2, "local-epochs": 1,
                           "partition-seed": 2, "server-round": 1})
    updates = []
    for car in range(3):
        context = Context(run_id=1, node_id=car + 1, node_config={"partition-id": car, "num-partitions": 3},
                          state=RecordDict(), run_config={})
        request = fl.train_request(RecordDict({"arrays": ArrayRecord(start), "config": config}), car + 1)
        reply: Message = fl.client_train(request, context)
        updates.append((reply.content["arrays"].to_torch_state_dict(), int(reply.content["metrics"]["num-examples"])))
    by_hand = fl.fedavg(updates)
    for key, value in by_hand.items():
        torch.testing.assert_close(run.state[key], value, rtol=1e-5, atol=1e-6)


def test_local_grid_raises_a_clients_bug_and_reports_a_dropout_as_a_failed_reply():
    from flwr.serverapp.strategy import FedAvg

    def broken(msg, context):
        raise ZeroDivisionError("a bug in the handler")

    with pytest.raises(fl.ClientCodeError, match="ZeroDivisionError"):
        fl.run_strategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=2), n_clients=2, rounds=1,
                        node_apps={1: fl.make_client_app(broken)})
    # every car drops out in every round: Flower keeps the initial model, the grid counts the failed replies
    run = fl.run_strategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=2), n_clients=2, rounds=2,
                          train_config={"drop-rate": 1.0})
    start = digit_mlp(fl.HIDDEN, seed=0).state_dict()
    assert all(torch.equal(run.state[k], start[k]) for k in start)
    assert run.grid.messages_sent == 4
    with pytest.raises(ValueError):
        fl.LocalGrid(fl.make_client_app(), 0)


def test_starting_ray_again_does_not_grow_pythonpath(monkeypatch):
    """Each simulation hands Ray this kernel's path; several in one kernel must not append it again and again
    (every process started later inherits PYTHONPATH)."""
    import os
    import sys
    import types

    from course import federated

    seen = []
    fake = types.SimpleNamespace(init=lambda runtime_env, **kw: seen.append(runtime_env["env_vars"]["PYTHONPATH"]),
                                 shutdown=lambda: None)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    for _ in range(3):
        federated._start_ray({}, exclude=set())
    assert seen[0] == seen[1] == seen[2]
    entries = seen[0].split(os.pathsep)
    assert len(entries) == len(set(entries)) and "/somewhere/else" in entries
