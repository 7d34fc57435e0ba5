"""Differential privacy for the federated fleet, with an epsilon: central DP with Flower's fixed-clipping
wrappers and an Opacus accountant, the RDP accountant by hand, and DP-SGD on one car with Opacus.

Taught in 05b_federated_privacy ("Differential privacy with an accountant").

Two guarantees that are easy to mix up:
- client-level (central DP in federated learning, McMahan et al. 2018): neighbouring fleets differ in one
  car's whole data; the mechanism is the noisy average of clipped updates; one step = one round;
- sample-level (DP-SGD, Abadi et al. 2016): neighbouring datasets differ in one example of one car; the
  mechanism is the noisy sum of clipped per-example gradients; one step = one batch.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import torch
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
)
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    PrivacySpent,
    SamplingMethod,
)
from torch.nn import functional as F

from course import federated as ref
from course.data import load_digit_splits
from course.models import digit_mlp
from course.training import accuracy

DELTA = 1e-5  # the course's delta: well below 1 / (number of cars or examples)
# Opacus 1.6's RDP orders (opacus/accountants/rdp.py, RDPAccountant.DEFAULT_ALPHAS): 1.1, ..., 10.9, 12..63
OPACUS_ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))


@contextlib.contextmanager
def _quiet():
    """Opacus warns about secure RNG being off, experimental GDP accounting, backward hooks and the optimal
    RDP order at the edge of the grid; none of it changes the numbers reported here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ----------------------------------------------------------------- accountants

def rdp_epsilon(noise_multiplier: float, rounds: int, delta: float,
                orders: tuple[float, ...] = OPACUS_ORDERS) -> tuple[float, float]:
    """(epsilon, best order) of `rounds` Gaussian releases with noise std = noise_multiplier x sensitivity,
    every participant in every release (no sampling), by the Renyi-DP accountant.

    RDP of one release at order alpha: alpha / (2 sigma^2) (Mironov 2017, "Renyi Differential Privacy", the
    Gaussian mechanism; Opacus's `_compute_rdp` at q = 1); releases compose by adding RDP;
    RDP -> (epsilon, delta)-DP with Balle et al. 2020, "Hypothesis Testing Interpretations and Renyi
    Differential Privacy", Theorem 21 of arXiv 1905.09982:
    epsilon(alpha) = RDP(alpha) + log((alpha - 1) / alpha) - (log(delta) + log(alpha)) / (alpha - 1),
    minimised over `orders`, as Opacus 1.6 does (opacus/accountants/analysis/rdp.py, get_privacy_spent).
    Mironov's own conversion (his Proposition 3) is RDP(alpha) + log(1/delta) / (alpha - 1): valid, larger.
    Raises ValueError for noise_multiplier <= 0, rounds < 1 or delta outside (0, 1).
    """
    if noise_multiplier <= 0 or rounds < 1 or not 0 < delta < 1:
        raise ValueError(f"need noise_multiplier > 0, rounds >= 1, 0 < delta < 1; got {noise_multiplier}, "
                         f"{rounds}, {delta}")
    alpha = np.asarray(orders, dtype=float)
    rdp = rounds * alpha / (2 * noise_multiplier**2)
    eps = rdp + np.log((alpha - 1) / alpha) - (np.log(delta) + np.log(alpha)) / (alpha - 1)
    best = int(np.argmin(eps))
    return float(eps[best]), float(alpha[best])


def opacus_epsilon(noise_multiplier: float, steps: int, delta: float = DELTA, sample_rate: float = 1.0,
                   method: str = "rdp") -> float:
    """Epsilon from Opacus 1.6's accountant `method` ("rdp", "prv" or "gdp") after `steps` releases of the
    Gaussian mechanism, each participant included independently with probability `sample_rate` (Poisson
    sampling; 1.0: everyone, every time, no amplification).

    "rdp": Renyi DP (Mironov 2017; sampled Gaussian of Mironov, Talwar, Zhang 2019), an upper bound, loose by
    the RDP -> (epsilon, delta) conversion. "prv": privacy loss random variables composed numerically
    (Gopi, Lee, Wutschitz 2021), an upper bound within eps_error = 0.01. "gdp": Gaussian DP's central limit
    approximation for subsampling (Dong, Roth, Su 2022; Bu et al. 2020), mu = sqrt(T (e^{1/sigma^2} - 1)) q:
    made for small q, and Opacus warns it can underestimate.
    """
    from opacus.accountants import GaussianAccountant, PRVAccountant, RDPAccountant

    kinds = {"rdp": RDPAccountant, "prv": PRVAccountant, "gdp": GaussianAccountant}
    if method not in kinds:
        raise ValueError(f"method must be one of {sorted(kinds)}, got {method!r}")
    with _quiet():
        accountant = kinds[method]()
        for _ in range(steps):
            accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
        return float(accountant.get_epsilon(delta=delta))


class OpacusPrivacyAccountant:
    """Flower's `PrivacyAccountant` protocol (flwr 1.42 `supercore/privacy_accounting`), computed by Opacus's
    RDP accountant, so that `DifferentialPrivacy...FixedClipping(accountant=...)` accounts each round.

    Flower's own `RdpAccountant` needs Google's dp-accounting (`flwr[dp]`), which the course does not
    install; Opacus's RDP accountant computes the same quantity. Each composed `GaussianPrivacyEvent` is one
    release: sample rate 1 without amplification, sample_size / population_size with Poisson sampling.
    """

    def __init__(self, config: PrivacyConfig):
        if config.sampling_method is SamplingMethod.WITHOUT_REPLACEMENT:
            raise ValueError("Opacus's RDP accountant covers Poisson sampling or none, not sampling "
                             "without replacement")
        self._config = config
        self._events: list[tuple[GaussianPrivacyEvent, int]] = []

    @property
    def config(self) -> PrivacyConfig:
        return self._config

    @property
    def num_releases(self) -> int:
        return sum(count for _, count in self._events)

    def _rate(self, event: GaussianPrivacyEvent) -> float:
        if self._config.sampling_method is SamplingMethod.NO_AMPLIFICATION:
            return 1.0
        return event.sample_size / event.population_size

    def _spent(self, events, delta: float) -> tuple[float, float]:
        from opacus.accountants import RDPAccountant

        accountant = RDPAccountant()
        for event, count in events:
            accountant.history.append((event.noise_multiplier, self._rate(event), count))
        if not accountant.history:
            return 0.0, float("nan")
        with _quiet():
            return accountant.get_privacy_spent(delta=delta)

    def compose(self, event: GaussianPrivacyEvent, count: int = 1) -> None:
        if event.population_size != self._config.population_size:
            raise ValueError(f"event population {event.population_size} != {self._config.population_size}")
        self._events.append((event, count))

    def get_epsilon(self, delta: float) -> float:
        return float(self._spent(self._events, delta)[0])

    def get_delta(self, epsilon: float) -> float:
        low, high = 1e-300, 1.0 - 1e-12  # epsilon falls as delta grows: bisect on log(delta)
        if self.get_epsilon(high) > epsilon:
            return 1.0
        for _ in range(200):
            mid = math.sqrt(low * high)
            low, high = (mid, high) if self.get_epsilon(mid) > epsilon else (low, mid)
        return high

    def get_privacy_spent(self, delta: float | None = None) -> PrivacySpent:
        delta = self._config.target_delta if delta is None else delta
        epsilon, order = self._spent(self._events, delta)
        return PrivacySpent(epsilon=float(epsilon), delta=delta, num_releases=self.num_releases,
                            accounting_method="rdp (opacus)", optimal_order=float(order))

    def would_exceed(self, event: GaussianPrivacyEvent, max_epsilon: float | None = None,
                     count: int = 1) -> bool:
        limit = self._config.max_epsilon if max_epsilon is None else max_epsilon
        if limit is None:
            raise ValueError("max_epsilon must be set in PrivacyConfig or passed")
        return self._spent(self._events + [(event, count)], self._config.target_delta)[0] > limit

    def state_dict(self) -> dict[str, object]:
        return {"events": [(e.noise_multiplier, e.sample_size, e.population_size, c)
                           for e, c in self._events]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self._events = [(GaussianPrivacyEvent(s, n, p), c) for s, n, p, c in state["events"]]


# ----------------------------------------------------------------- central DP with Flower's wrappers

def central_dp_strategy(noise_multiplier: float, n_clients: int, clipping_norm: float = 1.0,
                        delta: float | None = DELTA, client_side: bool = False):
    """FedAvg over every car, averaged uniformly (`weighted_by_key="num-cars"`: each course client reports 1),
    wrapped in Flower's fixed-clipping central DP; with `delta` (and noise_multiplier > 0) an accountant
    (`OpacusPrivacyAccountant`, no amplification) that Flower's wrapper feeds one event per round.

    Flower 1.42's accounted mode requires FedAvg's aggregation with equal client weights and no amplification
    (`serverapp/strategy/dp_fixed_clipping.py`: `_validate_uniform_weights`,
    `SamplingMethod.NO_AMPLIFICATION`).
    `client_side`: the clipping happens on the car (`DifferentialPrivacyClientSideFixedClipping`; the car's
    ClientApp needs `flwr.clientapp.mod.fixedclipping_mod`), so the server never sees an unclipped update.
    """
    accountant = None
    if delta is not None and noise_multiplier > 0:
        accountant = OpacusPrivacyAccountant(PrivacyConfig(
            target_delta=delta, population_size=n_clients,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION))
    wrapper = (DifferentialPrivacyClientSideFixedClipping if client_side
               else DifferentialPrivacyServerSideFixedClipping)
    with ref.quiet_flower(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fedavg = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n_clients,
                        min_available_nodes=n_clients, weighted_by_key="num-cars")
        return wrapper(fedavg, noise_multiplier=noise_multiplier, clipping_norm=clipping_norm,
                       num_sampled_clients=n_clients, accountant=accountant)


def central_dp_run(noise_multiplier: float, n_clients: int = 4, rounds: int = 10, seed: int = 0,
                   clipping_norm: float = 1.0, local_epochs: int = 2, delta: float = DELTA,
                   client_side: bool = False) -> tuple[float, float]:
    """(test accuracy after `rounds`, epsilon Flower's wrapper accounted at `delta`) of one central-DP run on
    `course.federated.run_strategy` (in-process LocalGrid, IID split). epsilon is inf for noise_multiplier 0.

    `seed` picks the initial model, the partition and the noise: Flower's wrapper draws its noise from
    NumPy's global generator (`supercore/differential_privacy.py`, `add_gaussian_noise_inplace`), which is
    seeded here and restored afterwards.
    """
    strategy = central_dp_strategy(noise_multiplier, n_clients, clipping_norm, delta, client_side)
    client_app = None
    if client_side:
        from flwr.clientapp import ClientApp
        from flwr.clientapp.mod import fixedclipping_mod

        inner = ref.make_client_app()
        client_app = ClientApp(mods=[fixedclipping_mod])
        client_app.train()(lambda msg, context: inner(msg, context))
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        run = ref.run_strategy(strategy, n_clients=n_clients, rounds=rounds, seed=seed,
                               train_config={"local-epochs": local_epochs}, client_app=client_app)
    finally:
        np.random.set_state(saved)
    spent = strategy.privacy_spent()
    return run.accuracy[-1], (float("inf") if spent is None else spent.epsilon)


# ----------------------------------------------------------------- DP-SGD on one car (Opacus)

def dpsgd_car(noise_multiplier: float | None, car: int = 0, n_clients: int = 4, epochs: int = 10,
              max_grad_norm: float = 1.0, lr: float = 0.5, batch_size: int = 32, seed: int = 0,
              delta: float = DELTA) -> tuple[float, float]:
    """(test accuracy, epsilon) of DP-SGD (Abadi et al. 2016) on car `car`'s own data only (its IID share of
    the digits), with Opacus 1.6: `PrivacyEngine().make_private(noise_multiplier, max_grad_norm)` clips each
    example's gradient to `max_grad_norm`, adds noise of std noise_multiplier x max_grad_norm to the batch's
    sum, and samples batches by Poisson sampling (rate 1 / number of batches); its RDP accountant gives
    epsilon.

    This is sample-level privacy for that car's examples, not client-level privacy for the car.
    `noise_multiplier=None`: plain SGD, shuffled batches of `batch_size` (epsilon inf). Seeded: reruns give
    the same numbers.
    """
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    idx = torch.from_numpy(ref.partition("iid", n_clients, seed=0)[car])
    train = load_digit_splits().train
    dataset = TensorDataset(train.x[idx], train.y[idx])
    with torch.random.fork_rng(), _quiet(), ref.one_thread():
        torch.manual_seed(seed)  # Opacus's Poisson batches use torch's global generator (secure_mode off)
        model = digit_mlp(ref.HIDDEN, seed=seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
        engine = None
        if noise_multiplier is not None:
            engine = PrivacyEngine(accountant="rdp")
            model, optimizer, loader = engine.make_private(
                module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm, noise_generator=torch.Generator().manual_seed(seed))
        model.train()
        for _ in range(epochs):
            for x, y in loader:
                if len(y) == 0:  # Poisson sampling can draw an empty batch
                    continue
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
        epsilon = float("inf") if engine is None else float(engine.get_epsilon(delta))
        plain = getattr(model, "_module", model)  # Opacus wraps the model in a GradSampleModule
        return accuracy(plain, load_digit_splits().test), epsilon


def seed_summary(values) -> str:
    """'mean ± std (min to max)' of a sequence of numbers over seeds."""
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f} ({v.min():.3f} to {v.max():.3f})"
