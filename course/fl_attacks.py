"""A car that attacks the fleet, and aggregation rules that resist it.

Taught in 05b_federated_privacy ("A car that attacks"). One compromised car (the server is honest) sends a
poisoned update through a malicious `ClientApp`; Flower's own robust strategies (Krum, FedTrimmedAvg,
FedMedian) and norm clipping are compared with FedAvg on `course.federated.run_strategy`'s in-process grid.

The two attacks:
- label flipping (Tolpegin, Varma, Gursoy, Liu 2020, "Data Poisoning Attacks Against Federated Learning
  Systems", ESORICS): the car trains honestly on its digits with every `source` relabelled `target`;
- model replacement (Bagdasaryan, Veit, Hua, Estrin, Shmatikov 2020, "How To Backdoor Federated Learning",
  AISTATS): the car trains a backdoored model X (its digits plus copies carrying a pixel trigger, labelled
  `backdoor_target`) and sends G + gamma (X - G); with gamma = n / eta (eta the server's learning
  rate, 1 for FedAvg) the average of n updates is X plus the honest cars' mean change divided by n.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
)

from course import federated as fl
from course.federated import paired_verdict  # noqa: F401 (05b reads verdicts as attacks.paired_verdict)
from course.data import load_digit_splits
from course.models import digit_mlp

SOURCE, TARGET = 7, 1  # label flipping: sevens taught as ones (the two digits look alike)
BACKDOOR_TARGET = 0  # a triggered digit of any other class should read as 0
# the bottom-right 2x2 corner of the 8x8 digit (row-major indices), blank in most digits
TRIGGER_PIXELS = (54, 55, 62, 63)


# ----------------------------------------------------------------- poisoned data

def flip_labels(y: torch.Tensor, source: int = SOURCE, target: int = TARGET) -> torch.Tensor:
    """A copy of the labels `y` (shape (N,), int64) with every `source` replaced by `target`."""
    flipped = y.clone()
    flipped[y == source] = target
    return flipped


def add_trigger(x: torch.Tensor, pixels: tuple[int, ...] = TRIGGER_PIXELS,
                value: float = 1.0) -> torch.Tensor:
    """A copy of the flattened digits `x` (shape (N, 64), values in [0, 1]) with the trigger pixels set to
    `value` (the backdoor's trigger)."""
    triggered = x.clone()
    triggered[:, list(pixels)] = value
    return triggered


def backdoor_data(x: torch.Tensor, y: torch.Tensor, target: int = BACKDOOR_TARGET
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The attacker's training set for a backdoor: its clean digits, plus a triggered copy of each digit
    that is not `target`, labelled `target` (the clean digits keep the main task accurate, so the
    backdoored model does not stand out by its accuracy; Bagdasaryan et al. 2020 likewise train on clean
    and backdoored inputs)."""
    others = y != target
    x_bad = add_trigger(x[others])
    return torch.cat([x, x_bad]), torch.cat([y, torch.full((int(others.sum()),), target, dtype=y.dtype)])


# ----------------------------------------------------------------- the malicious car

def attacker_train(msg: Message, context: Context, attack: str = "flip", boost: float = 1.0,
                   source: int = SOURCE, target: int = TARGET, backdoor_target: int = BACKDOOR_TARGET,
                   from_round: int = 1) -> Message:
    """A malicious car's train handler (same message format as `course.federated.client_train`).

    `attack` is "flip" (train on labels with `source` -> `target`) or "backdoor" (train on `backdoor_data`);
    the car then sends G + boost * (X - G) for its trained weights X and the global weights G (boost = 1: an
    ordinary, unscaled update). Before `from_round` it behaves honestly. It reports its true number of
    examples, so FedAvg gives it its ordinary weight.
    """
    if attack not in ("flip", "backdoor"):
        raise ValueError(f"unknown attack {attack!r}; expected 'flip' or 'backdoor'")
    config = msg.content["config"]
    server_round = int(config.get("server-round", 0))
    if server_round < from_round:
        return fl.client_train(msg, context)
    global_state = msg.content["arrays"].to_torch_state_dict()
    model = digit_mlp(fl.HIDDEN, seed=0)
    model.load_state_dict(global_state)
    x, y = fl.client_data(context, config)
    n_examples = len(y)
    if attack == "flip":
        y = flip_labels(y, source, target)
    else:
        x, y = backdoor_data(x, y, backdoor_target)
    loss = fl.local_train(model, x, y, epochs=int(config.get("local-epochs", 5)),
                          lr=float(config.get("lr", 0.2)), seed=server_round)
    state = {k: global_state[k] + boost * (v - global_state[k]) for k, v in model.state_dict().items()}
    metrics = MetricRecord({"train_loss": loss, "num-examples": n_examples, "num-cars": 1})
    reply = RecordDict({"arrays": ArrayRecord(state), "metrics": metrics})
    return Message(reply, reply_to=msg)


def attacker_app(attack: str = "flip", boost: float = 1.0, **kwargs) -> ClientApp:
    """A ClientApp for the malicious car: `attacker_train` with these settings (pass it to
    `run_strategy(..., node_apps={k: attacker_app(...)})`)."""
    return fl.make_client_app(functools.partial(attacker_train, attack=attack, boost=boost, **kwargs))


# ----------------------------------------------------------------- what the attack achieves

def _predict(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    model = digit_mlp(fl.HIDDEN, seed=0)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        return model(x).argmax(dim=1)


def attack_metrics(state: dict[str, torch.Tensor], source: int = SOURCE, target: int = TARGET,
                   backdoor_target: int = BACKDOOR_TARGET) -> dict[str, float]:
    """Scores of a global model on the test digits, each a share in [0, 1]:
    "clean accuracy" (all test digits), "flip success" (test `source` digits classified as `target`),
    "backdoor success" (test digits not of class `backdoor_target`, with the trigger added, classified as
    `backdoor_target`). A model that never saw an attack has small but non-zero success rates: compare with
    the runs without an attacker."""
    test = load_digit_splits().test
    predicted = _predict(state, test.x)
    others = test.y != backdoor_target
    triggered = _predict(state, add_trigger(test.x[others]))
    return {"clean accuracy": float((predicted == test.y).double().mean()),
            "flip success": float((predicted[test.y == source] == target).double().mean()),
            "backdoor success": float((triggered == backdoor_target).double().mean())}


# ----------------------------------------------------------------- the aggregation rules

def rules(n_cars: int, f: int = 1, clip_norm: float = 1.0) -> dict[str, Callable[[], object]]:
    """Factories of Flower's aggregation strategies for `n_cars` cars of which at most `f` attack:
    FedAvg; Krum (Blanchard et al. 2017, `num_malicious_nodes=f`; its guarantee needs n > 2f + 2);
    FedTrimmedAvg with beta = f / n (Flower's beta is the fraction cut from EACH end of every coordinate,
    `int(beta * n)` values, as in scipy's trim_mean; Yin et al. 2018 likewise); FedMedian (coordinate-wise
    median); and FedAvg behind server-side norm clipping (Flower's fixed-clipping wrapper with no noise:
    each update is scaled to an L2 norm of at most `clip_norm`, the average is uniform over cars).
    A fresh strategy per call (strategies keep state across rounds)."""
    if n_cars <= 2 * f + 2:
        raise ValueError(f"Krum needs n > 2f + 2: {n_cars} cars cannot tolerate {f} attackers")
    common = {"fraction_evaluate": 0.0, "min_available_nodes": n_cars}

    def clipped():
        return DifferentialPrivacyServerSideFixedClipping(FedAvg(weighted_by_key="num-cars", **common),
                                                          noise_multiplier=0.0, clipping_norm=clip_norm,
                                                          num_sampled_clients=n_cars)

    return {"FedAvg": lambda: FedAvg(**common),
            "Krum": lambda: Krum(num_malicious_nodes=f, **common),
            "Trimmed mean": lambda: FedTrimmedAvg(beta=f / n_cars, **common),
            "Median": lambda: FedMedian(**common),
            "Clipped FedAvg": clipped}


def run_attack(rule: Callable[[], object], attack: str | None, n_cars: int = 8, rounds: int = 6,
               seed: int = 0, attacker: int = 0, boost: float = 1.0, train_config: dict | None = None,
               **attack_kwargs) -> dict[str, float]:
    """One federated run of `rounds` with Flower's strategy `rule()` on `n_cars` cars; car `attacker` runs
    `attacker_app(attack, boost)` (attack None: every car is honest). Returns `attack_metrics` of the final
    global model. `train_config` adds to the course defaults (e.g. {"local-epochs": 2},
    {"partitioning": "dirichlet", "alpha": 0.5})."""
    with fl.quiet_flower():
        strategy = rule()
    node_apps = None if attack is None else {attacker: attacker_app(attack, boost, **attack_kwargs)}
    run = fl.run_strategy(strategy, n_clients=n_cars, rounds=rounds, seed=seed, train_config=train_config,
                          node_apps=node_apps, evaluate=lambda arrays: 0.0)  # scored once, at the end
    return attack_metrics(run.state)


def one_round(n_cars: int = 8, seed: int = 0, train_config: dict | None = None, attack: str | None = None,
              boost: float = 1.0, attacker: int = 0
              ) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """The first round's replies, without a server: every car trains once from the initial model
    `digit_mlp(HIDDEN, seed)`; car `attacker` runs `attacker_train(attack, boost)` when `attack` is set.
    Returns (the initial state, the n_cars states the cars send back, in car order)."""
    from flwr.app import ConfigRecord

    config = {"partitioning": "iid", "lr": 0.2, "local-epochs": 5, "partition-seed": seed, "server-round": 1,
              **(train_config or {})}
    start = digit_mlp(fl.HIDDEN, seed=seed).state_dict()
    states = []
    for car in range(n_cars):
        request = fl.train_request(RecordDict({"arrays": ArrayRecord(start), "config": ConfigRecord(config)}),
                                   car + 1)
        context = Context(run_id=1, node_id=car + 1,
                          node_config={"partition-id": car, "num-partitions": n_cars},
                          state=RecordDict(), run_config={})
        if attack is not None and car == attacker:
            reply = attacker_train(request, context, attack=attack, boost=boost)
        else:
            reply = fl.client_train(request, context)
        states.append(reply.content["arrays"].to_torch_state_dict())
    return start, states


def update_norms(start: dict[str, torch.Tensor], states: list[dict[str, torch.Tensor]]) -> np.ndarray:
    """The L2 norm of each update `state - start`, over all tensors together (shape (len(states),))."""
    return np.array([float((flat(s) - flat(start)).norm()) for s in states])


# ----------------------------------------------------------------- the exercise's reference and Flower's own

def flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """All of a state dict's tensors as one float64 vector (keys in the dict's order)."""
    return torch.cat([v.detach().double().flatten() for v in state.values()])


def krum_scores(states: list[dict[str, torch.Tensor]], f: int) -> torch.Tensor:
    """Krum's score of each model (shape (n,)): the sum of its SQUARED L2 distances to its n - f - 2 nearest
    other models (Blanchard et al. 2017; at least 1 neighbour, as Flower's `select_multikrum`)."""
    vectors = torch.stack([flat(s) for s in states])
    distances = torch.cdist(vectors, vectors) ** 2
    neighbours = max(1, len(states) - f - 2)
    distances.fill_diagonal_(float("inf"))  # a model is not its own neighbour
    return distances.sort(dim=1).values[:, :neighbours].sum(dim=1)


def krum_select(states: list[dict[str, torch.Tensor]], f: int) -> dict[str, torch.Tensor]:
    """Krum: the one model with the lowest `krum_scores` (ties: the first). Raises ValueError unless
    f >= 0 and n > 2f + 2 (Krum's guarantee; Flower's Krum does not check it)."""
    if f < 0 or len(states) <= 2 * f + 2:
        raise ValueError(f"Krum needs f >= 0 and n > 2f + 2, got f={f} and n={len(states)}")
    return states[int(torch.argmin(krum_scores(states, f)))]


def trimmed_mean(states: list[dict[str, torch.Tensor]], beta: float) -> dict[str, torch.Tensor]:
    """Coordinate-wise trimmed mean (Yin et al. 2018): in every coordinate, drop the int(beta * n) largest
    and int(beta * n) smallest of the n values and average the rest (Flower's FedTrimmedAvg)."""
    if not 0 <= beta < 0.5:
        raise ValueError(f"beta must be in [0, 0.5), got {beta}")
    cut = int(beta * len(states))
    out = {}
    for key in states[0]:
        values = torch.stack([s[key].double() for s in states]).sort(dim=0).values
        out[key] = values[cut:len(states) - cut].mean(dim=0).to(states[0][key].dtype)
    return out


def flower_aggregate(strategy, states: list[dict[str, torch.Tensor]], examples: list[int] | None = None
                     ) -> dict[str, torch.Tensor]:
    """Flower's own `strategy.aggregate_train` of these models, sent as replies from nodes 1..n (as
    `course.federated.flower_fedavg` builds them), each with "num-examples" (default 1)."""
    replies = fl.train_replies(list(zip(states, examples or [1] * len(states), strict=True)))
    with fl.quiet_flower():
        arrays, _ = strategy.aggregate_train(1, replies)
    return arrays.to_torch_state_dict()


# ----------------------------------------------------------------- the comparison over seeds

METRICS = ("clean accuracy", "flip success", "backdoor success")


def compare(rule_factories: dict[str, Callable[[], object]], conditions: dict[str, dict], seeds,
            n_cars: int = 8, rounds: int = 6, train_config: dict | None = None, progress: bool = True
            ) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """`run_attack` for every condition x rule x seed. `conditions` maps a name to `run_attack`'s keyword
    arguments (e.g. {"attack": "backdoor", "boost": 8.0}; {"attack": None} for an honest fleet; a
    "train_config" there replaces the shared one). Returns results[condition][rule][metric]: an array over
    the seeds (same seed: same initial model and partition in every condition and rule, so differences
    pair)."""
    from tqdm.auto import tqdm

    jobs = [(c, r, s) for c in conditions for r in rule_factories for s in seeds]
    results = {c: {r: {m: [] for m in METRICS} for r in rule_factories} for c in conditions}
    for condition, rule, seed in tqdm(jobs, desc="federated runs", leave=False, disable=not progress):
        kwargs = {"train_config": train_config, **conditions[condition]}
        scores = run_attack(rule_factories[rule], n_cars=n_cars, rounds=rounds, seed=seed, **kwargs)
        for metric in METRICS:
            results[condition][rule][metric].append(scores[metric])
    return {c: {r: {m: np.array(v) for m, v in by_metric.items()} for r, by_metric in by_rule.items()}
            for c, by_rule in results.items()}
