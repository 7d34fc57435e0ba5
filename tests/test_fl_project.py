"""The federated project's harness (course.fl_project): fixed split, byte count, epsilon, refusals,
determinism, the leaderboard (also through the course grader), and the starter app on the deployment
engine."""

import csv
import json
import math
from functools import partial

import numpy as np
import pytest
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg, FedAvgM

from course import federated as ref
from course import fl_project as project

MODEL_BYTES = 19_752  # the MLP's four arrays as Flower serialises them


def dp(inner, sigma=2.0, clip=1.0, sampled=10):
    return DifferentialPrivacyServerSideFixedClipping(inner, noise_multiplier=sigma, clipping_norm=clip,
                                                      num_sampled_clients=sampled)


def fedavg(**kwargs):
    settings = {"fraction_evaluate": 0.0, "min_available_nodes": 10, "weighted_by_key": "num-cars"}
    return FedAvg(**{**settings, **kwargs})


def test_the_split_is_the_fixed_dirichlet_one_and_label_skewed():
    labels = ref.load_digit_splits().train.y.numpy()
    parts = ref.partition("dirichlet", project.N_CARS, alpha=project.ALPHA, seed=project.PARTITION_SEED)
    again = ref.dirichlet_partition(labels, 10, 0.3, seed=2026)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
    hist = ref.label_histogram(labels, parts)
    assert (hist.max(axis=1) / hist.sum(axis=1)).mean() > 0.3  # skewed: a car's top digit is a large share


def test_bytes_are_counted_from_the_arrays_sent_each_way():
    score = project.evaluate(project.Submission(project.baseline_strategy, 2, {"lr": 0.2, "local-epochs": 1}),
                             seeds=(0,))
    assert score.bytes_down == score.bytes_up == 2 * 10 * MODEL_BYTES
    half = project.evaluate(project.Submission(partial(project.baseline_strategy, fraction_train=0.5), 2,
                                               {"local-epochs": 1}), seeds=(0,))
    assert half.bytes_total == 2 * 5 * 2 * MODEL_BYTES


def test_epsilon_is_the_gaussian_dp_value_and_below_opacus_rdp_bound():
    from opacus.accountants import RDPAccountant

    strategy = project.baseline_strategy()
    eps = project.run_epsilon(strategy, [10] * 10)
    assert eps == pytest.approx(ref.gaussian_dp_epsilon(2.0, 10, 1e-5))
    accountant = RDPAccountant()
    accountant.history = [(2.0, 1.0, 10)]  # noise multiplier, sample rate 1 (every car), 10 steps
    rdp = accountant.get_epsilon(1e-5)
    assert eps < rdp < 1.5 * eps  # RDP's conversion is an upper bound, a little looser than the exact GDP
    # five cars sampled but ten declared: the noise is sigma*C/10 for a sensitivity of C/5, i.e. sigma 1
    assert project.run_epsilon(strategy, [5] * 10) == pytest.approx(ref.gaussian_dp_epsilon(1.0, 10, 1e-5))
    assert math.isinf(project.run_epsilon(fedavg(), [10] * 10))
    assert math.isinf(project.run_epsilon(dp(fedavg(), sigma=0.0), [10] * 10))


@pytest.mark.parametrize("config, match", [
    ({"partitioning": "iid"}, "the split is fixed"),
    ({"alpha": 100.0}, "the split is fixed"),
    ({"drop-rate": 0.5}, "may set only"),
    ({"local-epochs": 50}, "local-epochs"),
    ({"lr": 0.0}, "lr"),
])
def test_changing_what_is_fixed_is_refused(config, match):
    with pytest.raises(project.ProjectRuleError, match=match):
        project.evaluate(project.Submission(project.baseline_strategy, 2, config), seeds=(0,))


@pytest.mark.parametrize("make, match", [
    (lambda: dp(fedavg(min_available_nodes=11)), "never connect"),
    (lambda: dp(fedavg(fraction_evaluate=0.5)), "fraction_evaluate"),
    (lambda: dp(FedAvg(fraction_evaluate=0.0, min_available_nodes=10)), "uniform average"),
    (lambda: dp(dp(fedavg())), "not several"),
    (lambda: dp(FedAvgM(fraction_evaluate=0.0, min_available_nodes=10, weighted_by_key="num-cars")),
     "un-noised"),
    (lambda: "FedAvg", "Flower strategy"),
])
def test_strategies_the_fleet_cannot_run_or_account_are_refused(make, match):
    with pytest.raises(project.ProjectRuleError, match=match):
        project.evaluate(project.Submission(make, 2, {}), seeds=(0,))


class _IidBehindTheBack(FedAvg):
    def configure_train(self, server_round, arrays, config, grid):
        config["partitioning"] = "iid"
        return super().configure_train(server_round, arrays, config, grid)


class _OwnStart(FedAvg):
    def start(self, *args, **kwargs):
        return None


def test_a_strategy_that_rewrites_the_split_or_the_run_is_refused():
    with pytest.raises(project.ProjectRuleError, match="the split is fixed"):
        project.evaluate(project.Submission(lambda: dp(_IidBehindTheBack(
            fraction_evaluate=0.0, min_available_nodes=10, weighted_by_key="num-cars")), 2, {}), seeds=(0,))
    with pytest.raises(project.ProjectRuleError, match="start"):
        project.evaluate(project.Submission(lambda: dp(_OwnStart(
            fraction_evaluate=0.0, min_available_nodes=10, weighted_by_key="num-cars")), 2, {}), seeds=(0,))


def test_over_budget_stops_early_and_no_noise_is_refused_before_running():
    with pytest.raises(project.OverBudget, match="communication budget"):  # 16th round passes 6 MB
        project.evaluate(project.Submission(partial(project.baseline_strategy, noise_multiplier=5.0), 50,
                                            {"local-epochs": 1}), seeds=(0,))
    with pytest.raises(project.OverBudget, match="epsilon is infinite"):
        project.evaluate(project.Submission(fedavg, 2, {}), seeds=(0,))
    # 5 cars sampled, 10 declared: half the noise the declared multiplier promises
    with pytest.raises(project.OverBudget, match="epsilon 17.86"):
        project.evaluate(project.Submission(lambda: dp(fedavg(fraction_train=0.5)), 10, {"local-epochs": 1}),
                         seeds=(0,))
    loose = project.evaluate(project.Submission(fedavg, 2, {"local-epochs": 1}), seeds=(0,), strict=False)
    assert not loose.within_budget and math.isinf(loose.epsilon) and "epsilon" in loose.problems[0]


def test_evaluate_is_deterministic_and_seeds_differ():
    sub = project.Submission(project.baseline_strategy, 3, {"local-epochs": 1})
    a, b = project.evaluate(sub, seeds=(0, 1)), project.evaluate(sub, seeds=(0, 1))
    assert a == b
    assert a.accuracies[0] != a.accuracies[1]
    merged = project.merge_scores([project.evaluate(sub, seeds=(0,)), project.evaluate(sub, seeds=(1,))])
    assert merged.accuracies == a.accuracies and merged.accuracy_std == a.accuracy_std


def test_score_line_round_trips_and_an_infinite_epsilon_is_null():
    sub = project.Submission(fedavg, 1, {"local-epochs": 1})
    score = project.evaluate(sub, seeds=(0,), strict=False)
    line = project.score_line(score, who="ann")
    assert line.startswith(project.SCORE_PREFIX) and "\n" not in line
    data = project.parse_score_line(line)
    assert data["name"] == "ann" and data["epsilon"] is None and data["bytes_total"] == score.bytes_total
    assert project.parse_score_line("FL-PROJECT-SCORE {broken") is None


def _fake_run(folder, students):
    """A grading folder as autograders.grade writes it: grades.csv and autograded notebooks."""
    with open(folder / "grades.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "status", project.GRADED_CELL])
        for student, status, points, lines in students:
            writer.writerow([student, status, points])
            nb = {"cells": [{"cell_type": "code", "metadata": {"nbgrader": {"grade_id": project.GRADED_CELL}},
                             "outputs": [{"output_type": "stream", "name": "stdout",
                                          "text": "\n".join(lines)}],
                             "source": ""}]}
            path = folder / "autograded" / student / project.MODULE / f"{project.MODULE}.ipynb"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(nb))


def _line(acc, total=3_950_400, eps=7.5, within=True):
    return project.SCORE_PREFIX + json.dumps({"accuracy_mean": acc, "accuracy_std": 0.01, "seeds": [0, 1],
                                              "bytes_total": total, "epsilon": eps, "within_budget": within})


def test_leaderboard_ranks_graded_entries_by_the_last_line_of_the_test_cell(tmp_path):
    _fake_run(tmp_path, [
        ("ann", "graded", "3", [_line(0.9), _line(0.40)]),          # the last line (both seeds) counts
        ("bob", "graded", "3", [_line(0.45)]),
        ("cat", "graded", "3", [_line(0.40, total=2_000_000)]),     # ties ann on accuracy, fewer bytes
        ("dan", "held for review", "", [_line(0.99)]),            # not released: not ranked
        ("eve", "graded", "0", [_line(0.98)]),                     # test cell failed
        ("fay", "graded", "3", ["no score line"]),
    ])
    entries = project.leaderboard(tmp_path)
    assert [e.student for e in entries] == ["bob", "cat", "ann"]
    table = project.format_leaderboard(entries)
    assert table.splitlines()[1].split()[:2] == ["1", "bob"]


# The leaderboard over a real course grading run is checked in tests/test_grading_modules.py, on the grading
# run of 05b's reference, blank, wrong and right submissions (one grading run instead of two).


@pytest.mark.slow
def test_the_starter_app_runs_on_the_deployment_engine():
    """Two of the ten cars as SuperNodes (partition-id 0 and 1 of 10), a SuperLink, and `flwr run`."""
    from course import flower_deploy

    output = flower_deploy.deploy(app=flower_deploy.APP.parent / "fl_project" / "flower_app", nodes=2,
                                  node_config=lambda car: f"partition-id={car} num-partitions=10",
                                  run_config="num-server-rounds=2 min-cars=2")
    assert "test accuracy per round" in output
    assert f"total {2 * 2 * 2 * MODEL_BYTES}" in output and "cars per round [2, 2]" in output
    assert f"epsilon {project.run_epsilon(project.baseline_strategy(cars=2), [2, 2]):.2f}" in output
