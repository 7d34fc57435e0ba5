"""course.fl_strategies: the server steps 05_federated states, checked against Flower 1.42's strategies."""

import numpy as np
import pytest
import torch

from course import federated as ref
from course import fl_strategies as fs


def _rounds(start, scales=(0.3, 0.05, 0.2), counts=(10, 30, 60), seed=0):
    generator = torch.Generator().manual_seed(seed)
    def reply(scale, n):
        return {k: v + scale * torch.randn(v.shape, generator=generator) for k, v in start.items()}, n
    return [[reply(s, n) for n in counts] for s in scales]


def _start(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(3, 4, generator=generator), "b": torch.randn(4, generator=generator)}


def _close(a, b, rel=1e-5, abs_=1e-6):
    return all(torch.allclose(a[k].to(b[k].dtype), b[k], rtol=rel, atol=abs_) for k in b)


@pytest.mark.parametrize("settings", [{}, {"eta": 0.05, "beta_1": 0.5, "beta_2": 0.9, "tau": 1e-2}])
def test_fedyogi_step_is_flowers_fedyogi_over_rounds(settings):
    start, rounds = _start(), _rounds(_start())
    flowers = fs.flower_server_steps(fs.make_strategy("FedYogi", **settings), start, rounds)
    weights, state = start, None
    before = {k: v.clone() for k, v in start.items()}
    for updates, flower in zip(rounds, flowers):
        weights, state = fs.fedyogi_step(weights, ref.fedavg(updates), state, **settings)
        assert _close(weights, flower)
    assert _close(start, before, rel=0, abs_=0)  # inputs untouched


def test_flowers_fedadam_is_the_stated_formula_with_bias_correction_at_round_plus_one():
    start, rounds = _start(1), _rounds(_start(1), seed=1)
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    flowers = fs.flower_server_steps(fs.make_strategy("FedAdam"), start, rounds)
    w = start
    m = {k: torch.zeros_like(v) for k, v in start.items()}
    v = {k: torch.zeros_like(x) for k, x in start.items()}
    for t, (updates, flower) in enumerate(zip(rounds, flowers), start=1):
        avg = ref.fedavg(updates)
        eta_t = float(eta * np.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1)))
        delta = {k: avg[k] - w[k] for k in w}
        m = {k: b1 * m[k] + (1 - b1) * delta[k] for k in w}
        v = {k: b2 * v[k] + (1 - b2) * delta[k] ** 2 for k in w}
        w = {k: w[k] + eta_t * m[k] / (torch.sqrt(v[k]) + tau) for k in w}
        assert _close(w, flower)


def test_flowers_fedavgm_is_fedavg_by_default_and_heavy_ball_momentum_when_set():
    start, rounds = _start(2), _rounds(_start(2), seed=2)
    plain = fs.flower_server_steps(fs.make_strategy("FedAvgM"), start, rounds)
    for updates, flower in zip(rounds, plain):
        assert _close(ref.fedavg(updates), flower)
    beta, lr = 0.9, 0.5
    momentum = fs.make_strategy("FedAvgM", server_momentum=beta, server_learning_rate=lr)
    stepped = fs.flower_server_steps(momentum, start, rounds)
    w, mom = start, None
    for updates, flower in zip(rounds, stepped):
        avg = ref.fedavg(updates)
        u = {k: w[k] - avg[k] for k in w}
        mom = u if mom is None else {k: beta * mom[k] + u[k] for k in w}
        w = {k: w[k] - lr * mom[k] for k in w}
        assert _close(w, flower)


def test_fedyogi_first_round_moves_each_weight_by_about_eta():
    start = {"w": torch.zeros(1000)}
    averaged = {"w": torch.randn(1000, generator=torch.Generator().manual_seed(3))}
    new, _ = fs.fedyogi_step(start, averaged, None, eta=0.01)
    big = averaged["w"].abs() > 1.0  # 1000 tau: the step is 0.99 eta
    assert torch.allclose(new["w"][big], 0.01 * torch.sign(averaged["w"][big]), rtol=0.02)


def test_verdict_reads_paired_differences():
    assert fs.verdict(np.array([0.01, -0.01, 0.02, -0.02, 0.0])) == "no difference the seeds can resolve"
    assert fs.verdict(np.array([0.05, 0.06, 0.04, 0.05, 0.07])) == "better than FedAvg"
    assert fs.verdict(-np.array([0.05, 0.06, 0.04, 0.05, 0.07])) == "worse than FedAvg"


def test_chosen_settings_are_the_best_of_the_recorded_search_on_other_seeds():
    assert set(fs.TUNING) == set(fs.GRID) and fs.CHOSEN["FedAvg"] == {}
    for name, rows in fs.TUNING.items():
        assert [s for s, _ in rows] == fs.GRID[name]
        assert fs.CHOSEN[name] == max(rows, key=lambda row: row[1])[0]
    assert not set(fs.TUNING_SEEDS) & set(range(5))  # the notebook compares on seeds 0-4


def test_make_strategy_builds_flowers_classes_without_federated_evaluation():
    for name, cls in fs.STRATEGIES.items():
        strategy = fs.make_strategy(name, **fs.CHOSEN[name])
        assert type(strategy) is cls and strategy.fraction_evaluate == 0.0


@pytest.mark.slow
def test_the_recorded_search_reproduces():
    name = "FedYogi"
    settings = fs.CHOSEN[name]
    recorded = next(acc for s, acc in fs.TUNING[name] if s == settings)
    got = fs.final_accuracies(name, settings, fs.TUNING_SEEDS)[:, -1].mean()
    assert got == pytest.approx(recorded, abs=1e-3)


def test_flowers_fedadam_returns_float64_weights_and_fedyogi_keeps_float32():
    """numpy 2 promotes float32 arrays times FedAdam's float64 step size: the notebook says so."""
    start, rounds = _start(4), _rounds(_start(4), seed=4)[:1]
    assert fs.flower_server_steps(fs.make_strategy("FedAdam"), start, rounds)[0]["w"].dtype == torch.float64
    assert fs.flower_server_steps(fs.make_strategy("FedYogi"), start, rounds)[0]["w"].dtype == torch.float32
