"""Flower's SecAgg+ on the course's cars (course/fl_secagg.py): its stages, dropouts, the sum, the cost."""

import numpy as np
import pytest

from course import fl_secagg as sa

CARS = 8


@pytest.fixture(scope="module")
def dropped():
    """Round 1 with every car, round 2 with cars 1 and 5 dropping out after sharing their keys."""
    return sa.run_local(CARS, rounds=2, secure=True, drops={2: {1, 5}})


def test_four_stages_per_round_and_the_dropped_cars_fail_only_the_masked_vector_stage(dropped):
    rounds = {r: [(e.stage, e.sent, e.replied, e.failed) for e in dropped.exchanges if e.server_round == r]
              for r in (1, 2)}
    assert [s[0] for s in rounds[1]] == list(sa.STAGES)
    assert rounds[1] == [(s, CARS, CARS, 0) for s in sa.STAGES]
    assert rounds[2] == [("setup", 8, 8, 0), ("share_keys", 8, 8, 0), ("collect_masked_vectors", 8, 6, 2),
                         ("unmask", 6, 6, 0)]
    assert dropped.aggregated(1) and dropped.aggregated(2)
    assert sorted(dropped.masked[2]) == [0, 2, 3, 4, 6, 7]


def test_the_decoded_sum_is_plain_fedavg_of_the_survivors_within_the_quantisation_bound(dropped):
    survivors = sorted(dropped.masked[2])
    plain = sa.plain_fedavg(dropped.before[2], survivors, CARS, 2)
    gap = max(float(np.abs(a - b).max()) for a, b in zip(dropped.after[2], plain, strict=True))
    weights = [sa.car_fit(dropped.before[2], k, CARS, 2)[1] for k in survivors]
    assert gap <= sa.quantisation_bound(weights)
    assert gap > 0  # the fixed point rounds: not bit-exact


def test_each_masked_vector_is_uniform_and_uncorrelated_with_the_cars_weights(dropped):
    for k, arrays in dropped.masked[2].items():
        masked = sa.flat(arrays[1:])
        assert masked.min() >= 0 and masked.max() < 2**32
        assert np.all(np.abs(sa.uniformity(masked) - 0.25) < 0.05)
        own = sa.flat(sa.car_fit(dropped.before[2], k, CARS, 2)[0])
        assert abs(np.corrcoef(masked.astype(float), own)[0, 1]) < 0.1


def test_too_many_dropouts_halt_the_round_and_keep_the_model():
    log = sa.run_local(CARS, rounds=1, secure=True, drops={1: {0, 1, 2, 3, 5}})
    assert [e.stage for e in log.exchanges] == list(sa.STAGES[:3])  # no unmask stage
    assert not log.aggregated(1)


def test_plain_fedavg_is_one_exchange_per_round_and_smaller():
    plain = sa.run_local(CARS, rounds=1, secure=False)
    secure = sa.run_local(CARS, rounds=1, secure=True)
    assert [(e.stage, e.sent, e.replied) for e in plain.exchanges] == [(sa.PLAIN, CARS, CARS)]
    bytes_plain = sum(e.bytes_out + e.bytes_in for e in plain.exchanges)
    bytes_secure = sum(e.bytes_out + e.bytes_in for e in secure.exchanges)
    assert bytes_secure > 1.5 * bytes_plain  # int64 masked weights, keys and shares on top
    assert set(secure.per_stage(1)) == set(sa.STAGES)


def test_car_fit_is_deterministic():
    start = sa.initial_parameters()
    a, n = sa.car_fit(start, 3, CARS, 1)
    b, _ = sa.car_fit(start, 3, CARS, 1)
    assert n > 0 and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_quantisation_bound_and_uniformity():
    step = 16 / 2**22
    assert sa.quantisation_bound([500, 500]) == pytest.approx(1.5 * 2 * step)
    assert np.allclose(sa.uniformity(np.array([0, 2**30, 2**31, 3 * 2**30])), 0.25)
    unmasked = sa.flat(sa.quantised(sa.initial_parameters(), 175))
    assert unmasked.min() >= 0 and unmasked.max() < 2**22  # the lowest 1/1024 of [0, 2^32)


@pytest.mark.slow
def test_secaggplus_on_the_simulation_engine_survives_dropouts():
    log = sa.simulate_secagg(CARS, rounds=2, drops={2: {1, 5}})
    assert log.aggregated(2) and sorted(log.masked[2]) == [0, 2, 3, 4, 6, 7]
    survivors = sorted(log.masked[2])
    plain = sa.plain_fedavg(log.before[2], survivors, CARS, 2)
    weights = [sa.car_fit(log.before[2], k, CARS, 2)[1] for k in survivors]
    gap = max(float(np.abs(a - b).max()) for a, b in zip(log.after[2], plain, strict=True))
    assert gap <= sa.quantisation_bound(weights)
