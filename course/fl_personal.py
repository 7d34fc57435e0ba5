"""Federated evaluation on the cars' own digits, and a personal head per car.

Taught in 05_federated ("Federated evaluation and personalisation"). The fleet is 05's: 4 cars, each holding
a partition of the training digits (`course.federated.partition`). Here each car also holds **its share of the
test digits under the same label skew**: the test digits of class c are cut between the cars in proportion to
how many training digits of class c each car holds (`test_shares`). A car's held-out digits then follow its
own label mix, the training sets stay exactly those of the rest of 05, and the cars' held-out sets split the
test set: Flower's example-weighted average of the cars' accuracies is the central test accuracy, exactly.

`make_eval_client_app` is a Flower `ClientApp` with a train handler (05's `client_train`) and an evaluate
handler (`client_evaluate`); `fleet_metrics` is an `evaluate_metrics_aggr_fn` for Flower's strategies that
reports, next to Flower's example-weighted accuracy, the unweighted mean over cars and the worst car.
`personalise_head` fine-tunes only the model's last layer on one car's data (the section's exercise);
`fleet_run` runs one federated training with Flower's FedAvg on `course.federated.LocalGrid`, and
`personal_scores` scores its global and personalised models per car.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from torch.nn import functional as F

from course import federated as fl
from course.data import NUM_CLASSES, Split, load_digit_splits
from course.models import digit_mlp
from course.training import accuracy

DATA_KEY = "car-data"  # where the train handler leaves its data settings in the node's context.state


# ----------------------------------------------------------------- each car's held-out digits

def test_shares(train_labels: np.ndarray, parts: list[np.ndarray], test_labels: np.ndarray,
                seed: int = 0) -> list[np.ndarray]:
    """Split the test indices over the cars with each car's own label mix.

    For each class c, the test digits of class c are shuffled (seeded) and cut in the proportions
    n_kc / n_c, where n_kc is how many training digits of class c car k holds (`parts[k]` indexes
    `train_labels`). Returns one sorted index array into `test_labels` per car: a disjoint cover of the test
    set. A car with no training digit of a class gets none of its test digits.
    """
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    counts = fl.label_histogram(train_labels, parts, NUM_CLASSES).astype(float)  # (cars, classes)
    rng = np.random.default_rng(seed)
    shares: list[list[np.ndarray]] = [[] for _ in parts]
    for cls in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(test_labels == cls))
        total = counts[:, cls].sum()
        if total == 0:
            raise ValueError(f"no car holds a training digit {cls}: its test digits have no owner")
        cuts = np.round(np.cumsum(counts[:, cls] / total)[:-1] * len(idx)).astype(int)
        for car, piece in enumerate(np.split(idx, cuts)):
            shares[car].append(piece)
    return [np.sort(np.concatenate(s)) for s in shares]


@functools.lru_cache(maxsize=16)
def fleet_data(partitioning: str, n_clients: int, alpha: float = 0.5, seed: int = 0
               ) -> tuple[tuple[Split, Split], ...]:
    """((train, held-out) for each car): the car's training partition (as in 05's `client_data`) and its share
    of the test digits (`test_shares`, seeded by `seed` too). Cached: every handler call reuses it."""
    digits = load_digit_splits()
    parts = fl.partition(partitioning, n_clients, alpha=alpha, seed=seed)
    shares = test_shares(digits.train.y.numpy(), parts, digits.test.y.numpy(), seed=seed)
    out = []
    for part, share in zip(parts, shares, strict=True):
        tr, te = torch.from_numpy(part), torch.from_numpy(share)
        out.append((Split(digits.train.x[tr], digits.train.y[tr]),
                    Split(digits.test.x[te], digits.test.y[te])))
    return tuple(out)


def _data_settings(config) -> tuple[str, float, int]:
    return (str(config.get("partitioning", "iid")), float(config.get("alpha", 0.5)),
            int(config.get("partition-seed", 0)))


# ----------------------------------------------------------------- the ClientApp: train and evaluate

def client_evaluate(msg: Message, context: Context) -> Message:
    """The evaluate handler: score the global model on this car's held-out digits.

    Replies with one MetricRecord: "accuracy" and "loss" (mean cross-entropy) on the car's held-out share,
    "num-examples" (its size: what Flower's FedAvg weights by) and "partition-id" (which car). The data
    settings come from the evaluate config if it has them, else from what the train handler left in
    `context.state` (Flower's FedAvg sends no train config with an evaluate message).
    """
    config = msg.content["config"] if "config" in msg.content else ConfigRecord()
    if "partitioning" not in config:
        if DATA_KEY not in context.state:
            raise RuntimeError("this car has not trained yet, so it does not know its data settings: "
                               "send 'partitioning', 'alpha', 'partition-seed' in the evaluate config")
        config = context.state[DATA_KEY]
    car = int(context.node_config["partition-id"])
    partitioning, alpha, seed = _data_settings(config)
    _, held_out = fleet_data(partitioning, int(context.node_config["num-partitions"]), alpha, seed)[car]
    model = digit_mlp(fl.HIDDEN, seed=0)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    model.eval()
    with torch.no_grad():
        loss = F.cross_entropy(model(held_out.x), held_out.y).item()
    metrics = MetricRecord({"accuracy": accuracy(model, held_out), "loss": loss,
                            "num-examples": len(held_out), "partition-id": car})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def make_eval_client_app(train_handler: Callable = fl.client_train) -> ClientApp:
    """A ClientApp with 05's train handler (or `train_handler`) and `client_evaluate`.

    The train handler also records the run's data settings in `context.state[DATA_KEY]`, as a SuperNode
    knows its own data, so that evaluate messages (which carry only "server-round") find the car's digits.
    A bug in either handler raises with its traceback on `LocalGrid` (`raise_errors`).
    """
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config = msg.content["config"]
        partitioning, alpha, seed = _data_settings(config)
        context.state[DATA_KEY] = ConfigRecord({"partitioning": partitioning, "alpha": alpha,
                                                "partition-seed": seed})
        return train_handler(msg, context)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return client_evaluate(msg, context)

    return app


def fleet_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """An `evaluate_metrics_aggr_fn` for Flower's strategies: Flower's default and three more views.

    "accuracy", "loss": Flower's default (`aggregate_metricrecords`: each car weighted by `weighted_by_key`,
    "num-examples"); "accuracy-mean": the unweighted mean over the cars that replied; "accuracy-worst": the
    lowest car; "accuracy-per-car": the cars' accuracies ordered by partition-id.
    """
    weighted = aggregate_metricrecords(records, weighted_by_key)
    per_car = sorted((int(m["partition-id"]), float(m["accuracy"]))
                     for m in (next(iter(r.metric_records.values())) for r in records))
    accs = [a for _, a in per_car]
    return MetricRecord({"accuracy": float(weighted["accuracy"]), "loss": float(weighted["loss"]),
                         "accuracy-mean": float(np.mean(accs)), "accuracy-worst": float(min(accs)),
                         "accuracy-per-car": accs})


# ----------------------------------------------------------------- personalisation: a local head

def head_keys(state: dict[str, torch.Tensor]) -> list[str]:
    """The state-dict keys of the model's last layer (its weight and bias): the classifier head."""
    keys = list(state)
    if len(keys) < 2 or not (keys[-2].endswith("weight") and keys[-1].endswith("bias")):
        raise ValueError(f"expected the last two keys to be a Linear layer's weight and bias, "
                         f"got {keys[-2:]}")
    return keys[-2:]


def personalise_head(model_state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                     epochs: int = 5, lr: float = 0.1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Fine-tune only the last Linear layer of a 05 `digit_mlp` on one car's digits.

    `model_state`: the global model's state dict (not modified); `x` (N, 64) float, `y` (N,) int64 labels;
    SGD with `lr` for `epochs` passes in batches of 32, shuffled by a generator seeded with `seed`
    (`course.federated.local_train`). Every other tensor is returned bit-identical. Returns a new state dict.
    The idea of a shared body with a personal head: Arivazhagan et al. 2019, "Federated Learning with
    Personalization Layers" (FedPer), which keeps the head local during training; here the head is fitted
    after federated training ends.
    """
    model = digit_mlp(fl.HIDDEN, seed=0)
    model.load_state_dict(model_state)
    head = set(head_keys(model_state))
    for name, param in model.named_parameters():
        param.requires_grad_(name in head)
    fl.local_train(model, x, y, epochs=epochs, lr=lr, seed=seed)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------- one run, scored per car

@dataclass
class FleetRun:
    """One federated training with federated evaluation (`fleet_run`).

    Per round (1..rounds): `central` (test accuracy, on the server), `weighted` (Flower's aggregate of the
    cars' evaluate replies, weighted by num-examples), `mean` (unweighted over cars), `worst` (lowest car).
    Per car (after the last round): `per_car` (accuracy on its held-out digits, from its evaluate reply),
    `held_out` (how many digits it holds out), `classes` (the digits it holds at least 5 of in training).
    `state` is the final global model; `partitioning`, `alpha`, `seed` say which fleet (`fleet_data`).
    """

    partitioning: str
    alpha: float
    seed: int
    state: dict[str, torch.Tensor]
    central: np.ndarray
    weighted: np.ndarray
    mean: np.ndarray
    worst: np.ndarray
    per_car: np.ndarray
    held_out: np.ndarray
    classes: list[list[int]]


def fleet_run(partitioning: str = "iid", alpha: float = 0.1, seed: int = 0, rounds: int = 10,
              n_clients: int = 4) -> FleetRun:
    """Flower's FedAvg with federated evaluation of every car every round (fraction_evaluate=1.0, evaluate
    metrics aggregated by `fleet_metrics`), `rounds` rounds on `LocalGrid` with `make_eval_client_app()`
    (05's defaults otherwise: lr 0.2, 5 local epochs). About 1 s for 4 cars and 10 rounds on one core."""
    with fl.quiet_flower():
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=n_clients,
                          evaluate_metrics_aggr_fn=fleet_metrics)
    run = fl.run_strategy(strategy, n_clients=n_clients, rounds=rounds, seed=seed,
                          train_config={"partitioning": partitioning, "alpha": alpha},
                          client_app=make_eval_client_app())
    fed = run.result.evaluate_metrics_clientapp
    series = {key: np.array([fed[r][key] for r in range(1, rounds + 1)])
              for key in ("accuracy", "accuracy-mean", "accuracy-worst")}
    data = fleet_data(partitioning, n_clients, alpha, seed)  # what the cars' handlers used
    return FleetRun(partitioning, alpha, seed, run.state, central=np.array(run.accuracy),
                    weighted=series["accuracy"], mean=series["accuracy-mean"], worst=series["accuracy-worst"],
                    per_car=np.array(fed[rounds]["accuracy-per-car"]),
                    held_out=np.array([len(h) for _, h in data]),
                    classes=[np.flatnonzero(np.bincount(t.y.numpy(), minlength=NUM_CLASSES) >= 5).tolist()
                             for t, _ in data])


def personal_scores(run: FleetRun, personalise: Callable = personalise_head, epochs: int = 5,
                    lr: float = 0.1) -> dict[str, np.ndarray]:
    """Personalise `run`'s global model for each car (`personalise(state, x, y, epochs, lr, seed)` on the
    car's training digits, seed = the run's) and score both models per car: accuracy on the car's own held-out
    digits ("global_own", "personal_own") and on the other cars' held-out digits ("global_others",
    "personal_others"). Each value is a (cars,) array."""
    data = fleet_data(run.partitioning, len(run.held_out), run.alpha, run.seed)
    scores: dict[str, list[float]] = {k: [] for k in ("global_own", "personal_own", "global_others",
                                                       "personal_others")}
    model = digit_mlp(fl.HIDDEN, seed=0)
    with fl.one_thread():
        for car, (train, held_out) in enumerate(data):
            rest = [h for k, (_, h) in enumerate(data) if k != car]
            others = Split(torch.cat([h.x for h in rest]), torch.cat([h.y for h in rest]))
            personal = personalise(run.state, train.x, train.y, epochs, lr, run.seed)
            for name, state in (("global", run.state), ("personal", personal)):
                model.load_state_dict(state)
                scores[f"{name}_own"].append(accuracy(model, held_out))
                scores[f"{name}_others"].append(accuracy(model, others))
    return {k: np.array(v) for k, v in scores.items()}
