"""05b_federated_privacy's attacks and robust rules (course/fl_attacks.py), checked against Flower itself."""

import numpy as np
import pytest
import torch
from flwr.serverapp.strategy import FedMedian, FedTrimmedAvg, Krum

from course import federated as fl
from course import fl_attacks as attacks
from course.data import load_digit_splits


def _states(n, seed=0, spread=1.0):
    rng = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (3, 4), "a.bias": (3,), "b.weight": (2, 3)}
    return [{k: torch.randn(s, generator=rng) * spread for k, s in shapes.items()} for _ in range(n)]


def _line(*values):
    return [{"w": torch.tensor([float(v)])} for v in values]


def test_poisoned_data():
    y = torch.tensor([7, 1, 7, 3, 0])
    assert attacks.flip_labels(y).tolist() == [1, 1, 1, 3, 0]
    assert y.tolist() == [7, 1, 7, 3, 0]  # a copy
    x = torch.zeros(5, 64)
    triggered = attacks.add_trigger(x)
    assert triggered[:, list(attacks.TRIGGER_PIXELS)].eq(1).all()
    assert triggered.sum() == 5 * 4 and x.sum() == 0
    xb, yb = attacks.backdoor_data(x, y)
    assert len(xb) == 5 + 4 and yb[5:].eq(attacks.BACKDOOR_TARGET).all() and torch.equal(xb[:5], x)
    # the trigger's corner is blank in most training digits, so it is a signal of its own
    train = load_digit_splits().train
    assert train.x[:, list(attacks.TRIGGER_PIXELS)].mean() < 0.1


@pytest.mark.parametrize("n,f", [(7, 1), (9, 2), (10, 3), (8, 1)])
def test_krum_select_matches_flowers_krum(n, f):
    states = _states(n, seed=n)
    states[0] = {k: v * 30 for k, v in states[0].items()}
    want = attacks.flower_aggregate(Krum(num_malicious_nodes=f), states)
    got = attacks.krum_select(states, f)
    assert got is not states[0]
    for k in want:
        torch.testing.assert_close(got[k], want[k])


def test_krum_counts_n_minus_f_minus_2_squared_distances():
    # chosen so that all n - 1 neighbours, self as neighbour, or plain distances pick another model
    assert attacks.krum_select(_line(0, 2, 5, 6, 11, 13, 15), 1)["w"].item() == 5.0
    assert attacks.krum_select(_line(0, 1, 2, 4, 9, 10, 14), 1)["w"].item() == 4.0
    assert attacks.krum_select(_line(0, 1, 2, 4, 50), 1)["w"].item() == 1.0
    torch.testing.assert_close(attacks.krum_scores(_line(0, 1, 2, 4, 50), 1),
                               torch.tensor([5.0, 2.0, 5.0, 13.0, 46.0**2 + 48.0**2], dtype=torch.float64))
    with pytest.raises(ValueError):
        attacks.krum_select(_line(0, 1, 2, 3), 1)  # n > 2f + 2 fails


@pytest.mark.parametrize("n,beta", [(8, 0.125), (10, 0.2), (5, 0.2), (4, 0.2)])
def test_trimmed_mean_matches_flowers_fedtrimmedavg(n, beta):
    states = _states(n, seed=n)
    want = attacks.flower_aggregate(FedTrimmedAvg(beta=beta), states)
    median = attacks.flower_aggregate(FedMedian(), states)
    torch.testing.assert_close(median["a.bias"], torch.stack([s["a.bias"] for s in states]).median(0).values
                               if n % 2 else torch.stack([s["a.bias"] for s in states]).quantile(0.5, dim=0))
    got = attacks.trimmed_mean(states, beta)
    for k in want:
        torch.testing.assert_close(got[k], want[k])
    if int(beta * n) == 0:  # Flower's beta cuts int(beta * n) from each end: nothing with 4 cars and 0.2
        torch.testing.assert_close(got["a.bias"], torch.stack([s["a.bias"] for s in states]).mean(0))


def test_attacker_boosts_its_update_by_gamma():
    config = {"local-epochs": 1}
    start, plain = attacks.one_round(4, seed=1, train_config=config, attack="backdoor", boost=1.0)
    _, boosted = attacks.one_round(4, seed=1, train_config=config, attack="backdoor", boost=4.0)
    for k in start:
        torch.testing.assert_close(boosted[0][k] - start[k], 4.0 * (plain[0][k] - start[k]),
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(boosted[1][k], plain[1][k])  # honest cars are untouched
    norms = attacks.update_norms(start, boosted)
    assert norms[0] > 3 * norms[1:].max()
    with pytest.raises(ValueError):
        attacks.one_round(4, attack="noise")


def test_rules_refuse_too_few_cars_and_trim_one_each_end():
    with pytest.raises(ValueError):
        attacks.rules(4, f=1)
    made = {name: factory() for name, factory in attacks.rules(8, f=1).items()}
    assert int(made["Trimmed mean"].beta * 8) == 1 and made["Krum"].num_malicious_nodes == 1


def test_attack_metrics_are_shares():
    scores = attacks.attack_metrics(fl.digit_mlp(fl.HIDDEN, seed=0).state_dict())
    assert set(scores) == set(attacks.METRICS) and all(0.0 <= v <= 1.0 for v in scores.values())


def test_paired_verdict():
    assert attacks.paired_verdict(np.array([0.9, 1.0, 0.95]), "up", "down") == "up"
    assert attacks.paired_verdict(np.array([-0.9, -1.0, -0.95]), "up", "down") == "down"
    unresolved = attacks.paired_verdict(np.array([0.1, -0.1, 0.05]), "up", "down")
    assert unresolved == "no difference the seeds can resolve"


@pytest.mark.slow
def test_boosted_backdoor_beats_fedavg_not_the_median():
    rules = attacks.rules(8, f=1)
    config = {"local-epochs": 2}
    fedavg = attacks.run_attack(rules["FedAvg"], "backdoor", boost=8.0, rounds=4, train_config=config)
    median = attacks.run_attack(rules["Median"], "backdoor", boost=8.0, rounds=4, train_config=config)
    assert fedavg["backdoor success"] > 0.8 and median["backdoor success"] < 0.1
    assert median["clean accuracy"] > 0.7
