"""course.fl_privacy: the RDP accountant by hand, Opacus's accountants behind Flower's protocol, the
central-DP wrappers run in one process, and DP-SGD on one car (05b_federated_privacy)."""

import math
import warnings

import pytest
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from opacus.accountants import RDPAccountant

from course import federated as ref
from course import fl_privacy as fp


def opacus_rdp(sigma, steps, delta, q=1.0, alphas=None):
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=sigma, sample_rate=q)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return accountant.get_privacy_spent(delta=delta, alphas=alphas)


@pytest.mark.parametrize("sigma,rounds,delta",
                         [(2.0, 10, 1e-5), (0.5, 1, 1e-3), (1.3, 100, 1e-6), (4.0, 3, 0.01)])
def test_rdp_epsilon_is_opacus_rdp_accountant(sigma, rounds, delta):
    eps, order = fp.rdp_epsilon(sigma, rounds, delta)
    want, want_order = opacus_rdp(sigma, rounds, delta)
    assert eps == pytest.approx(want, rel=1e-12) and order == want_order
    assert eps >= ref.gaussian_dp_epsilon(sigma, rounds, delta) - 1e-6  # never below the exact GDP value


def test_rdp_epsilon_on_other_orders_and_errors():
    grid = (2, 4, 8, 16, 32)
    assert fp.rdp_epsilon(1.5, 30, 1e-5, orders=grid)[0] == pytest.approx(
        opacus_rdp(1.5, 30, 1e-5, alphas=list(grid))[0], rel=1e-12)
    assert fp.rdp_epsilon(2.0, 10, 1e-5) == pytest.approx((8.0794, 3.9), abs=1e-4)  # the exercise's EXAMPLE
    for bad in ((0.0, 10, 1e-5), (1.0, 0, 1e-5), (1.0, 10, 0.0), (1.0, 10, 1.0)):
        with pytest.raises(ValueError):
            fp.rdp_epsilon(*bad)


def test_opacus_accountants_bracket_the_exact_value():
    exact = ref.gaussian_dp_epsilon(1.0, 10, 1e-5)
    assert fp.opacus_epsilon(1.0, 10, method="rdp") == pytest.approx(fp.rdp_epsilon(1.0, 10, 1e-5)[0])
    assert exact <= fp.opacus_epsilon(1.0, 10, method="prv") <= exact + 0.02  # eps_error = 0.01
    assert fp.opacus_epsilon(1.0, 1000, sample_rate=0.001) < fp.opacus_epsilon(1.0, 10)  # amplification
    with pytest.raises(ValueError):
        fp.opacus_epsilon(1.0, 10, method="moments")


def config(sampling=SamplingMethod.NO_AMPLIFICATION, max_epsilon=None, population=4):
    return PrivacyConfig(target_delta=1e-5, population_size=population,
                         neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE, sampling_method=sampling,
                         max_epsilon=max_epsilon)


def test_opacus_privacy_accountant_follows_flowers_protocol():
    accountant = fp.OpacusPrivacyAccountant(config(max_epsilon=20.0))
    assert accountant.get_privacy_spent().epsilon == 0.0
    event = GaussianPrivacyEvent(noise_multiplier=1.0, sample_size=4, population_size=4)
    accountant.compose(event, count=9)
    assert not accountant.would_exceed(event)  # 10 rounds: 19.05 <= 20
    accountant.compose(event)
    spent = accountant.get_privacy_spent()
    assert spent.num_releases == 10 and spent.epsilon == pytest.approx(fp.rdp_epsilon(1.0, 10, 1e-5)[0])
    assert accountant.would_exceed(event)  # 11 rounds: above 20
    assert accountant.get_delta(spent.epsilon) == pytest.approx(1e-5, rel=1e-3)
    copy = fp.OpacusPrivacyAccountant(config(max_epsilon=20.0))
    copy.load_state_dict(accountant.state_dict())
    assert copy.get_epsilon(1e-5) == spent.epsilon
    poisson = fp.OpacusPrivacyAccountant(config(SamplingMethod.POISSON, population=1000))
    poisson.compose(GaussianPrivacyEvent(noise_multiplier=1.0, sample_size=10, population_size=1000),
                    count=100)
    assert poisson.get_epsilon(1e-5) == pytest.approx(opacus_rdp(1.0, 100, 1e-5, q=0.01)[0])
    with pytest.raises(ValueError):
        fp.OpacusPrivacyAccountant(PrivacyConfig(1e-5, 4, NeighboringRelation.REPLACE_ONE,
                                                 SamplingMethod.WITHOUT_REPLACEMENT))


def test_central_dp_run_accounts_each_round_and_reruns_the_same():
    first = fp.central_dp_run(1.0, n_clients=4, rounds=3, seed=1)
    assert first == fp.central_dp_run(1.0, n_clients=4, rounds=3, seed=1)
    assert first[1] == pytest.approx(fp.rdp_epsilon(1.0, 3, fp.DELTA)[0])
    # clipping on the car (fixedclipping_mod) instead of the server: the same updates, noise and epsilon
    assert fp.central_dp_run(1.0, n_clients=4, rounds=3, seed=1, client_side=True) == first
    accuracy, epsilon = fp.central_dp_run(0.0, n_clients=4, rounds=2, seed=0)
    assert math.isinf(epsilon) and 0 <= accuracy <= 1


def test_flowers_accounting_refuses_unequal_weights():
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

    with ref.quiet_flower(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # weighted by examples (the default): 315, 315, 315 and 314
        by_examples = FedAvg(fraction_evaluate=0.0, min_available_nodes=4, min_train_nodes=4)
        strategy = DifferentialPrivacyServerSideFixedClipping(
            by_examples, noise_multiplier=1.0, clipping_norm=1.0, num_sampled_clients=4,
            accountant=fp.OpacusPrivacyAccountant(config()))
    with pytest.raises(ValueError, match="equal client weights"):
        ref.run_strategy(strategy, n_clients=4, rounds=1, seed=0, train_config={"local-epochs": 1})


def test_dpsgd_car_is_seeded_and_accounted():
    private = fp.dpsgd_car(2.0, epochs=1, seed=3)
    assert private == fp.dpsgd_car(2.0, epochs=1, seed=3)
    assert 0 < private[1] < math.inf
    assert math.isinf(fp.dpsgd_car(None, epochs=1, seed=3)[1])


def test_seed_summary():
    assert fp.seed_summary([0.5, 0.7]) == "0.600 ± 0.141 (0.500 to 0.700)"
