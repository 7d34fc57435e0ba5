"""course.fl_personal: the cars' held-out digits, the evaluate handler, Flower's aggregation, the head."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict

from course import federated as fl
from course import fl_personal as fp
from course.data import load_digit_splits
from course.models import digit_mlp


def test_test_shares_cover_the_test_set_once_with_each_cars_label_mix():
    digits = load_digit_splits()
    train_labels, test_labels = digits.train.y.numpy(), digits.test.y.numpy()
    parts = fl.dirichlet_partition(train_labels, 4, alpha=0.1, seed=3)
    shares = fp.test_shares(train_labels, parts, test_labels, seed=3)
    joined = np.concatenate(shares)
    assert sorted(joined.tolist()) == list(range(len(test_labels)))  # a disjoint cover
    train_mix = fl.label_histogram(train_labels, parts)
    test_mix = fl.label_histogram(test_labels, shares)
    # a car gets about its training share of each class's test digits (cuts round to whole digits)
    expected = train_mix / train_mix.sum(axis=0) * np.bincount(test_labels)
    assert np.abs(test_mix - expected).max() <= 1.0
    assert all(np.array_equal(a, b) for a, b in
               zip(shares, fp.test_shares(train_labels, parts, test_labels, seed=3), strict=True))


def _context(car: int, n: int = 4) -> Context:
    return Context(run_id=1, node_id=car + 1, node_config={"partition-id": car, "num-partitions": n},
                   state=RecordDict(), run_config={})


def test_evaluate_handler_scores_the_cars_held_out_digits_and_needs_its_data_settings():
    state = digit_mlp(fl.HIDDEN, seed=1).state_dict()
    config = ConfigRecord({"partitioning": "dirichlet", "alpha": 0.1, "partition-seed": 2})
    reply = fp.client_evaluate(fl.train_request(RecordDict({"arrays": ArrayRecord(state), "config": config})),
                               _context(1))
    metrics = reply.content["metrics"]
    _, held_out = fp.fleet_data("dirichlet", 4, 0.1, 2)[1]
    model = digit_mlp(fl.HIDDEN, seed=1)
    assert metrics["num-examples"] == len(held_out) and metrics["partition-id"] == 1
    right = (model(held_out.x).argmax(1) == held_out.y).float().mean().item()
    assert metrics["accuracy"] == pytest.approx(right)
    no_settings = RecordDict({"arrays": ArrayRecord(state), "config": ConfigRecord({"server-round": 1})})
    with pytest.raises(RuntimeError, match="data settings"):
        fp.client_evaluate(fl.train_request(no_settings), _context(1))


def test_fleet_metrics_reports_flowers_weighted_mean_the_plain_mean_and_the_worst_car():
    records = [RecordDict({"metrics": MetricRecord({"accuracy": a, "loss": 1.0, "num-examples": n,
                                                    "partition-id": car})})
               for car, (a, n) in enumerate([(1.0, 30), (0.5, 10), (0.0, 10)])]
    out = fp.fleet_metrics(records[::-1], "num-examples")
    assert out["accuracy"] == pytest.approx(35 / 50)
    assert out["accuracy-mean"] == pytest.approx(0.5) and out["accuracy-worst"] == 0.0
    assert list(out["accuracy-per-car"]) == [1.0, 0.5, 0.0]  # ordered by partition-id, not by reply


def test_flowers_weighted_federated_accuracy_is_the_central_test_accuracy():
    run = fp.fleet_run("dirichlet", alpha=0.1, seed=0, rounds=2)
    np.testing.assert_allclose(run.weighted, run.central, atol=1e-9)
    assert run.held_out.sum() == len(load_digit_splits().test)
    assert np.all(run.worst <= run.mean + 1e-12)
    np.testing.assert_allclose(np.average(run.per_car, weights=run.held_out), run.central[-1], atol=1e-9)


def test_personalise_head_trains_only_the_last_layer_and_leaves_its_input_alone():
    digits = load_digit_splits()
    x, y = digits.train.x[:120], digits.train.y[:120]
    state = digit_mlp(fl.HIDDEN, seed=4).state_dict()
    before = {k: v.clone() for k, v in state.items()}
    out = fp.personalise_head(state, x, y, epochs=3, lr=0.1, seed=1)
    head = fp.head_keys(state)
    assert head == ["net.2.weight", "net.2.bias"]
    assert all(torch.equal(state[k], before[k]) for k in state)
    assert all(torch.equal(out[k], state[k]) for k in state if k not in head)
    assert all(not torch.equal(out[k], state[k]) for k in head)
    again = fp.personalise_head(state, x, y, epochs=3, lr=0.1, seed=1)
    assert all(torch.equal(out[k], again[k]) for k in out)


def test_personalisation_helps_a_car_on_skewed_data_and_costs_it_the_others_digits():
    run = fp.fleet_run("dirichlet", alpha=0.1, seed=0, rounds=3)
    scores = fp.personal_scores(run)
    assert scores["personal_own"].mean() > scores["global_own"].mean()
    assert scores["personal_others"].mean() < scores["global_others"].mean()
