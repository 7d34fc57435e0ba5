"""Federated learning with Flower: partitions, FedAvg, FedProx, dropouts, privacy, and the app.

Taught in 05_federated. The story: cars learn a shared touchpad digit model without sending their
users' handwriting anywhere. Each car is a Flower SuperNode holding one partition of the digits.

`client_app` and `server_app` are the Flower app (`flwr run` and the deployment engine load them by
name, see `course/flower_app/`); `simulate` runs the same kind of app in Flower's simulation engine
from a notebook, with experiment settings and handlers the notebook supplies.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import os
import re
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

# Flower reads these when it is first imported, so they are set before the imports below.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no usage reports from a course run
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # Ray's future default; silences its warning

import numpy as np
import psutil
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedProx,
)
from torch.nn import functional as F

from course import processes
from course.data import load_digit_splits
from course.models import digit_mlp
from course.training import accuracy

HIDDEN = (64,)


# ----------------------------------------------------------------- partitioning

def iid_partition(labels: np.ndarray, n_clients: int, seed: int = 0) -> list[np.ndarray]:
    """Shuffle the indices and deal them out in `n_clients` near-equal parts (sorted)."""
    if n_clients < 1 or n_clients > len(labels):
        raise ValueError(f"n_clients must be between 1 and {len(labels)}, got {n_clients}")
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, n_clients)]


def dirichlet_partition(labels: np.ndarray, n_clients: int, alpha: float, seed: int = 0,
                        min_size: int = 10, max_tries: int = 1000) -> list[np.ndarray]:
    """Label-skewed parts: each class is split over the clients in proportions drawn from
    Dirichlet(alpha, ..., alpha); small alpha gives each client few classes. Redrawn until
    every client has at least `min_size` samples."""
    labels = np.asarray(labels)
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if n_clients < 1 or n_clients * min_size > len(labels):
        raise ValueError(f"cannot give {n_clients} clients {min_size} samples each from {len(labels)}")
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for client, piece in enumerate(np.split(idx, cuts)):
                parts[client].append(piece)
        result = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in result) >= min_size:
            return result
    raise ValueError(f"no Dirichlet({alpha}) partition gave every client {min_size} samples "
                     f"in {max_tries} tries: lower min_size or raise alpha")


def label_histogram(labels: np.ndarray, parts: list[np.ndarray], num_classes: int = 10) -> np.ndarray:
    """(clients, classes) counts: how many samples of each digit each client holds."""
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])


def partition(scheme: str, n_clients: int, alpha: float = 0.5, seed: int = 0) -> list[np.ndarray]:
    """The training digits split by `scheme` ("iid" or "dirichlet")."""
    labels = load_digit_splits().train.y.numpy()
    if scheme == "iid":
        return iid_partition(labels, n_clients, seed)
    if scheme == "dirichlet":
        return dirichlet_partition(labels, n_clients, alpha, seed)
    raise ValueError(f"unknown partition scheme {scheme!r}; expected 'iid' or 'dirichlet'")


# ----------------------------------------------------------------- FedAvg

def fedavg(updates: list[tuple[dict[str, torch.Tensor], int]]) -> dict[str, torch.Tensor]:
    """The average of the clients' weights, each weighted by its number of examples."""
    if not updates:
        raise ValueError("fedavg needs at least one update")
    total = sum(n for _, n in updates)
    if total <= 0:
        raise ValueError("the updates hold no examples")
    return {key: sum(state[key].double() * (n / total) for state, n in updates).to(updates[0][0][key].dtype)
            for key in updates[0][0]}


def train_request(content: RecordDict, node: int = 1) -> Message:
    """A "train" message from the server to `node`, built outside a running app (for tests and
    exercises: inside an app, Flower fills these fields itself)."""
    metadata = Metadata(run_id=0, message_id=f"request-{node}", src_node_id=0, dst_node_id=node,
                        reply_to_message_id="", group_id="", created_at=time.time(), ttl=3600.0,
                        message_type="train")
    return Message(content, metadata=metadata)


def train_replies(updates: list[tuple[dict[str, torch.Tensor], int]]) -> list[Message]:
    """Flower reply messages to "train" requests, as cars send them: node k + 1 replies with the k-th
    (state_dict, num_examples) pair under "arrays" (copied) and "metrics" {"num-examples": n, "num-cars": 1}.
    For feeding a strategy's `aggregate_train` outside a running app (05's and 05b's exercise tests)."""
    replies = []
    for node, (state, n) in enumerate(updates, start=1):
        content = RecordDict({"arrays": ArrayRecord({k: v.detach().clone() for k, v in state.items()}),
                              "metrics": MetricRecord({"num-examples": int(n), "num-cars": 1})})
        replies.append(Message(content, reply_to=train_request(RecordDict(), node)))
    return replies


def paired_verdict(difference, more: str, less: str) -> str:
    """The course's reading of paired differences over seeds (one per seed, same split and initial model):
    `more` when their mean is above two standard errors, `less` when below minus two, else "no difference
    the seeds can resolve" (also for a single seed). Used by 05's and 05b's comparisons."""
    difference = np.asarray(difference, dtype=float)
    sem = difference.std(ddof=1) / np.sqrt(len(difference)) if len(difference) > 1 else float("inf")
    if abs(difference.mean()) <= 2 * sem:
        return "no difference the seeds can resolve"
    return more if difference.mean() > 0 else less


def flower_fedavg(updates: list[tuple[dict[str, torch.Tensor], int]]) -> dict[str, torch.Tensor]:
    """Flower's own FedAvg aggregation (`FedAvg.aggregate_train`) of the same updates."""
    replies = train_replies(updates)
    import logging

    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.WARNING)  # not "aggregate_train: Received 3 results" each time
    try:
        arrays, _ = FedAvg().aggregate_train(1, replies)
    finally:
        import ray

        if ray.is_initialized():  # Flower shuts Ray down after a run, not when the run failed to start
            ray.shutdown()
        flwr_logger.setLevel(level)
    return arrays.to_torch_state_dict()


def fedavg_available(global_state: dict[str, torch.Tensor], replies: list, min_replies: int
                     ) -> tuple[dict[str, torch.Tensor], int]:
    """FedAvg over the replies that arrived (None marks a client that dropped out). With fewer than
    `min_replies`, the round is skipped: the global model stays as it was. Returns (model, replies used)."""
    arrived = [r for r in replies if r is not None]
    if len(arrived) < max(min_replies, 1):
        return global_state, 0
    return fedavg(arrived), len(arrived)


# ----------------------------------------------------------------- privacy

def clip_update(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor],
                clip_norm: float) -> dict[str, torch.Tensor]:
    """The client's weights with its update (state - reference) scaled to an L2 norm of at most
    `clip_norm`, measured over all tensors together."""
    if clip_norm <= 0:
        raise ValueError(f"clip_norm must be positive, got {clip_norm}")
    delta = {k: state[k] - reference[k] for k in reference}
    norm = torch.sqrt(sum((d.double() ** 2).sum() for d in delta.values())).item()
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {k: reference[k] + delta[k] * scale for k in reference}


MODULUS = 2**32  # secure aggregation works on integers modulo R: here R = 2^32


def pair_seed(seed: int, u: int, v: int) -> int:
    """The seed that clients u and v share (in Bonawitz et al. 2017, from a Diffie-Hellman key agreement;
    here derived from the round's `seed`). Symmetric: pair_seed(s, u, v) == pair_seed(s, v, u)."""
    u, v = min(u, v), max(u, v)
    digest = hashlib.sha256(f"secagg:{seed}:{u}:{v}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # a non-negative 63-bit seed for torch.Generator


def pair_mask(seed: int, shape: tuple[int, ...], modulus: int = MODULUS) -> torch.Tensor:
    """The mask a pair's shared seed expands to: integers drawn uniformly from [0, modulus), int64."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, modulus, shape, generator=generator, dtype=torch.int64)


def client_mask(u: int, n_clients: int, shape: tuple[int, ...], seeds: Callable[[int, int], int],
                modulus: int = MODULUS) -> torch.Tensor:
    """Client u's secure-aggregation mask, from the seeds it shares with each other client only:
    for every v != u, the pair's mask p_uv = pair_mask(seeds(u, v)) is added when u < v and subtracted
    when u > v, modulo `modulus`. Over all clients the masks sum to 0 modulo `modulus`."""
    if not 0 <= u < n_clients:
        raise ValueError(f"car {u} is not one of the {n_clients} cars")
    mask = torch.zeros(shape, dtype=torch.int64)
    for v in range(n_clients):
        if v != u:
            shared = pair_mask(seeds(u, v), shape, modulus)
            mask = (mask + shared) % modulus if u < v else (mask - shared) % modulus
    return mask


def quantize(update: torch.Tensor, scale: float, modulus: int = MODULUS) -> torch.Tensor:
    """Fixed point: round(update * scale) as an integer modulo `modulus` (negatives wrap around)."""
    return torch.round(update.double() * scale).to(torch.int64) % modulus


def dequantize(total: torch.Tensor, scale: float, modulus: int = MODULUS) -> torch.Tensor:
    """The inverse of `quantize` for a sum: integers >= modulus/2 stand for negatives."""
    signed = torch.where(total >= modulus // 2, total - modulus, total)
    return signed.double() / scale


def gaussian_dp_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """Epsilon of `rounds` releases of the Gaussian mechanism with noise std = noise_multiplier times the
    sensitivity, every client in every round (no subsampling), at the given delta.

    Gaussian differential privacy (Dong, Roth and Su, "Gaussian Differential Privacy", JRSS-B 2022):
    the Gaussian mechanism with noise std sigma * sensitivity is mu-GDP with mu = 1/sigma (their Theorem 1);
    T such releases compose to mu = sqrt(T)/sigma (their composition theorem for GDP); and mu-GDP is
    (epsilon, delta)-DP exactly when delta = Phi(-epsilon/mu + mu/2) - e^epsilon Phi(-epsilon/mu - mu/2)
    (their Corollary 1), solved here for epsilon. Without subsampling this is exact, not a bound.
    """
    from scipy.optimize import brentq
    from scipy.stats import norm

    if noise_multiplier <= 0:
        return float("inf")
    mu = np.sqrt(rounds) / noise_multiplier

    def excess(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - np.exp(eps + norm.logcdf(-eps / mu - mu / 2)) - delta

    if excess(0.0) <= 0:
        return 0.0
    high = 1.0
    while excess(high) > 0:
        high *= 2
    return float(brentq(excess, 0.0, high, xtol=1e-6))


def federate(n_clients: int = 4, rounds: int = 10, partitioning: str = "iid", alpha: float = 0.5,
             mu: float = 0.0, seed: int = 0, local_epochs: int = 5, lr: float = 0.2,
             proximal: Callable | None = None) -> tuple[list[float], dict[str, torch.Tensor]]:
    """FedAvg (FedProx when mu > 0) in this process, every client every round: the loop Flower's strategy
    runs, without Flower, so several seeds are affordable. `seed` picks the partition, the initial model
    and the local shuffles. Returns (test accuracy after each round, the final global state dict)."""
    from course.devices import on_cpu

    on_cpu("05's in-process FedAvg runs on the CPU, one thread: tiny models, many seeds")
    train, test = load_digit_splits().train, load_digit_splits().test
    parts = partition(partitioning, n_clients, alpha=alpha, seed=seed)
    model = digit_mlp(HIDDEN, seed=seed)
    curve = []
    with one_thread():
        _federate_rounds(model, parts, train, test, rounds, mu, seed, local_epochs, lr, proximal, curve)
    return curve, model.state_dict()


@contextlib.contextmanager
def one_thread():
    """Torch on one thread for the block: batches of 32 through 05's 64-unit MLP gain nothing from a second
    thread, only contention (Ray's workers use one too). Used by every in-process federated run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _federate_rounds(model, parts, train, test, rounds, mu, seed, local_epochs, lr, proximal, curve) -> None:
    for server_round in range(1, rounds + 1):
        start = {k: v.clone() for k, v in model.state_dict().items()}
        updates = []
        for part in parts:
            model.load_state_dict(start)
            idx = torch.from_numpy(part)
            local_train(model, train.x[idx], train.y[idx], epochs=local_epochs, lr=lr, mu=mu,
                        seed=seed * 1000 + server_round, proximal=proximal or proximal_term)
            updates.append(({k: v.clone() for k, v in model.state_dict().items()}, len(part)))
        model.load_state_dict(fedavg(updates))
        curve.append(accuracy(model, test))


def client_drift(proximal: Callable, mu: float, client: int = 0, alpha: float = 0.1, n_clients: int = 4,
                 epochs: int = 5, lr: float = 0.2, warmup_rounds: int = 3, seed: int = 0) -> float:
    """How far one round of local training moves a client from the global model, ||w_k - w_g||, where
    w_g is the global model after `warmup_rounds` rounds of FedAvg on the same Dirichlet(alpha) split
    (the drift that matters is from a model the fleet has trained, not from a random one)."""
    train = load_digit_splits().train
    _, start_state = _warm_global(n_clients, alpha, warmup_rounds, seed, epochs, lr)
    idx = torch.from_numpy(partition("dirichlet", n_clients, alpha, seed=seed)[client])
    model = digit_mlp(HIDDEN, seed=seed)
    model.load_state_dict(start_state)
    start = [p.detach().clone() for p in model.parameters()]
    with one_thread():
        local_train(model, train.x[idx], train.y[idx], epochs=epochs, lr=lr, mu=mu, seed=warmup_rounds + 1,
                    proximal=proximal)
    moved = sum(((p - s) ** 2).sum() for p, s in zip(model.parameters(), start, strict=True))
    return torch.sqrt(moved).item()


@functools.lru_cache(maxsize=4)
def _warm_global(n_clients: int, alpha: float, rounds: int, seed: int, epochs: int, lr: float):
    return federate(n_clients, rounds, "dirichlet", alpha, seed=seed, local_epochs=epochs, lr=lr)


def central_baseline(epochs: int, lr: float = 0.2, seed: int = 0) -> float:
    """Test accuracy of the same model trained on all the training digits in one place."""
    train = load_digit_splits().train
    model = digit_mlp(HIDDEN, seed=0)
    with one_thread():
        local_train(model, train.x, train.y, epochs=epochs, lr=lr, seed=seed)
    return accuracy(model, load_digit_splits().test)


# ----------------------------------------------------------------- client training

def proximal_term(model: torch.nn.Module, global_params: list[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's penalty mu/2 * ||w - w_global||^2, which keeps a client near the global model."""
    return mu / 2 * sum(((w - g) ** 2).sum() for w, g in zip(model.parameters(), global_params, strict=True))


def local_train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 1, lr: float = 0.1,
                batch_size: int = 32, mu: float = 0.0, seed: int = 0,
                proximal: Callable = proximal_term) -> float:
    """SGD on one client's data; with mu > 0, FedProx's proximal term. Returns the mean loss."""
    global_params = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=generator).split(batch_size):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            if mu > 0:
                loss = loss + proximal(model, global_params, mu)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            count += len(idx)
    return total / max(count, 1)


def client_data(context: Context, config: ConfigRecord) -> tuple[torch.Tensor, torch.Tensor]:
    """This SuperNode's training data: its partition of the digits under the run's scheme."""
    client = int(context.node_config["partition-id"])
    n_clients = int(context.node_config["num-partitions"])
    parts = partition(str(config.get("partitioning", "iid")), n_clients,
                      alpha=float(config.get("alpha", 0.5)), seed=int(config.get("partition-seed", 0)))
    train = load_digit_splits().train
    idx = torch.from_numpy(parts[client])
    return train.x[idx], train.y[idx]


def drops_out(client: int, server_round: int, rate: float, seed: int = 0) -> bool:
    """Whether `client` is unreachable in `server_round`: a fixed coin flip per (client, round)."""
    digest = hashlib.sha256(f"{seed}:{client}:{server_round}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


class ClientDroppedOut(RuntimeError):
    """Raised by a client that is out of reach this round; Flower reports it as a failed reply."""


def client_train(msg: Message, context: Context, proximal: Callable = proximal_term) -> Message:
    """The ClientApp's train handler: load the global model, train on this car's data, reply."""
    config = msg.content["config"]
    client = int(context.node_config["partition-id"])
    if drops_out(client, int(config.get("server-round", 0)), float(config.get("drop-rate", 0.0))):
        raise ClientDroppedOut(f"client {client} is out of reach in round {config.get('server-round')}")
    model = digit_mlp(HIDDEN, seed=0)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = client_data(context, config)
    loss = local_train(model, x, y, epochs=int(config.get("local-epochs", 5)),
                       lr=float(config.get("lr", 0.2)),
                       mu=float(config.get("proximal-mu", 0.0)), seed=int(config.get("server-round", 0)),
                       proximal=proximal)
    # "num-cars" = 1 lets a strategy average uniformly (weighted_by_key="num-cars"), as central DP needs
    reply = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                        "metrics": MetricRecord({"train_loss": loss, "num-examples": len(y), "num-cars": 1})})
    return Message(reply, reply_to=msg)


class ClientCodeError(RuntimeError):
    """An exception raised by the train handler on a Flower node, carried back with its traceback."""


# Starts the reason of a failed reply that is a bug in the handler (not a car that dropped out);
# the traceback follows, up to END_OF_TRACEBACK (Flower and Ray wrap the reason in text of their own).
CLIENT_CODE_ERROR = "exception in the ClientApp's train handler"
END_OF_TRACEBACK = "[end of the ClientApp's traceback]"


def make_client_app(train_handler: Callable = client_train) -> ClientApp:
    """A ClientApp whose train handler is `train_handler(msg, context) -> Message`.

    Flower turns an exception in a ClientApp into a failed reply and goes on without that node, so a
    bug in the handler would only show as a model that never learns. This wrapper puts the handler's
    formatted traceback into the reply's error reason; `run_experiments` raises it on the server side
    (in the notebook, for `simulate`). A `ClientDroppedOut` passes through as the failure it models.
    """
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        try:
            return train_handler(msg, context)
        except ClientDroppedOut:
            raise
        except Exception as error:
            trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            raise ClientCodeError(f"{CLIENT_CODE_ERROR} on node {context.node_id} "
                                  f"(partition-id {context.node_config.get('partition-id')}):\n"
                                  f"{trace}{END_OF_TRACEBACK}") from error

    return app


class _WatchedGrid:
    """The strategy's Grid, except that a reply carrying a handler's traceback stops the run with it."""

    def __init__(self, grid: Grid, errors: list[str]):
        self._grid, self._errors = grid, errors

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *args, **kwargs):
        replies = list(self._grid.send_and_receive(messages, *args, **kwargs))
        for reply in replies:
            if reply.has_error() and CLIENT_CODE_ERROR in reply.error.reason:
                reason = reply.error.reason
                start = reason.index(CLIENT_CODE_ERROR)
                end = reason.find(END_OF_TRACEBACK, start)
                text = reason[start:end if end >= 0 else None]
                # Ray's error text replaces the traceback's header with the actor's name, in colour
                self._errors.append(re.sub(r"(?:\x1b\[[0-9;]*m)?ray::[^\n]*\n", "Traceback (most recent call last):\n",
                                           text))
        if self._errors:
            raise ClientCodeError(self._errors[0])
        return replies


# ----------------------------------------------------------------- Flower's strategies in one process

class LocalGrid(Grid):
    """A Flower `Grid` that delivers each message by calling the node's `ClientApp` in this process.

    Flower's strategies (`FedAvg`, `FedAdam`, `Krum`, the DP wrappers, ...) and the legacy workflows
    (SecAgg+) talk to the fleet only through a `Grid`: `get_node_ids`, `send_and_receive`. The simulation
    engine's grid hands messages to Ray workers; this one calls `client_apps[node](message, context)`
    directly, one node after another, so a strategy runs unchanged at a fraction of the cost (no Ray, no
    processes: about 0.1 s per round for 4 cars of 05's MLP, against Ray's start-up of 5-15 s). Use it to
    afford several seeds; `simulate` (the simulation engine) and `course.flower_deploy` (the deployment
    engine) run the same apps on Flower's own engines.

    Node `k + 1` is partition `k` of `n_clients` (`node_config` "partition-id", "num-partitions") and keeps
    one `Context` (its `state` persists across rounds, as on a SuperNode). `client_app` serves every node
    unless `node_apps[k]` gives partition k another (a malicious car, say). As on Flower's engines, an
    exception in a ClientApp becomes a failed reply (`Message.has_error()`); with `raise_errors` (the
    default) any exception other than `ClientDroppedOut` is raised here instead, with its traceback, so a
    bug cannot pass as a car that never learns. Taught in 05_federated and 05b_federated_privacy.
    """

    def __init__(self, client_app: ClientApp, n_clients: int, node_apps: dict[int, ClientApp] | None = None,
                 run_config: dict | None = None, raise_errors: bool = True):
        if n_clients < 1:
            raise ValueError(f"n_clients must be at least 1, got {n_clients}")
        self.apps = {k + 1: (node_apps or {}).get(k, client_app) for k in range(n_clients)}
        self.contexts = {k + 1: Context(run_id=1, node_id=k + 1,
                                        node_config={"partition-id": k, "num-partitions": n_clients},
                                        state=RecordDict(), run_config=dict(run_config or {}))
                         for k in range(n_clients)}
        self.raise_errors = raise_errors
        self.messages_sent = 0  # instructions delivered to nodes: a strategy's communication, counted
        self._replies: dict[str, Message] = {}
        from types import SimpleNamespace

        self._run = SimpleNamespace(run_id=1)  # Flower's legacy client manager reads grid.run.run_id

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> list[int]:
        return list(self.apps)

    def push_messages(self, messages) -> list[str]:
        from flwr.app import Error

        ids = []
        for message in messages:
            node = message.metadata.dst_node_id
            if node not in self.apps:
                raise ValueError(f"no node {node} on this grid (nodes: {sorted(self.apps)})")
            message_id = f"m{self.messages_sent}"
            message.metadata.__dict__["_message_id"] = message_id  # what the SuperLink does on a push
            self.messages_sent += 1
            delivered = copy.deepcopy(message)  # each node gets its own copy, as over the wire (mods edit it)
            try:
                reply = self.apps[node](delivered, self.contexts[node])
            except Exception as error:
                if self.raise_errors and not isinstance(error, ClientDroppedOut) and \
                        not isinstance(error.__cause__, ClientDroppedOut):
                    raise
                reply = Message(Error(code=0, reason=f"{type(error).__name__}: {error}"), reply_to=delivered)
            self._replies[message_id] = reply
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids) -> list[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages, *, timeout: float | None = None) -> list[Message]:
        return self.pull_messages(self.push_messages(messages))


@contextlib.contextmanager
def server_identity():
    """Messages a strategy builds take their run and sender from Flower's TaskIdentity, which a
    ServerApp process sets on start; set it for the time of a local run, then restore it."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    saved = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SUPERLINK_NODE_ID, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@contextlib.contextmanager
def quiet_flower(level: int = 40):
    """Flower's log shows only records at `level` or above for the block (default 40, logging.ERROR).

    Flower logs every round and stage at INFO, and at WARNING that federated evaluation is off
    (fraction_evaluate=0, which the course's runs choose); logging.CRITICAL also hides the ERROR
    Flower logs for a failed car or a halted SecAgg+ round, where the caller reports it itself."""
    import logging

    logger = logging.getLogger("flwr")
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


@dataclass
class LocalRun:
    """One `run_strategy` run: test accuracy after each round, the final weights, Flower's `Result`,
    the grid it ran on (its `messages_sent`, its nodes' contexts)."""

    accuracy: list[float]
    state: dict[str, torch.Tensor]
    result: object
    grid: LocalGrid


def run_strategy(strategy, n_clients: int = 4, rounds: int = 10, seed: int = 0,
                 train_config: dict | None = None, client_app: ClientApp | None = None,
                 node_apps: dict[int, ClientApp] | None = None, evaluate: Callable | None = None) -> LocalRun:
    """Run Flower's `strategy.start` for `rounds` on a `LocalGrid` of `n_clients` cars, in this process.

    `seed` picks the initial model (`digit_mlp(HIDDEN, seed)`) and the partition ("partition-seed" in the
    train config, which `client_data` reads); `train_config` adds to the defaults {"partitioning": "iid",
    "lr": 0.2, "local-epochs": 5}. `client_app` defaults to the course's (`make_client_app()`);
    `node_apps` replaces it for some partitions. `evaluate(arrays) -> float` scores the global model after
    each round (default: test accuracy, `central_accuracy`). Runs on one thread, Flower's logs quiet.
    Returns a `LocalRun`. Taught in 05_federated (strategies) and 05b_federated_privacy.
    """
    config = {"partitioning": "iid", "lr": 0.2, "local-epochs": 5, "partition-seed": seed, **(train_config or {})}
    grid = LocalGrid(client_app or make_client_app(), n_clients, node_apps=node_apps)
    score = evaluate or central_accuracy
    curve: list[float] = []
    latest: list[ArrayRecord] = []  # the global model after the last round (Result.arrays is empty if no
    # round aggregated anything, e.g. every car dropped out)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        latest[:] = [arrays]
        if server_round > 0:
            curve.append(float(score(arrays)))
        return MetricRecord({"accuracy": curve[-1] if curve else 0.0})

    with server_identity(), quiet_flower(), one_thread(), warnings_hidden():
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(digit_mlp(HIDDEN, seed=seed).state_dict()),
                                num_rounds=rounds, train_config=ConfigRecord(config), evaluate_fn=evaluate_fn)
    return LocalRun(curve, latest[0].to_torch_state_dict(), result, grid)


@contextlib.contextmanager
def warnings_hidden():
    """Flower warns once per strategy that federated evaluation is off (fraction_evaluate=0)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ----------------------------------------------------------------- the server side

def central_accuracy(arrays: ArrayRecord) -> float:
    model = digit_mlp(HIDDEN, seed=0)
    model.load_state_dict(arrays.to_torch_state_dict())
    return accuracy(model, load_digit_splits().test)


@dataclass
class Experiment:
    """One federated training run: its strategy settings and the clients' configuration."""

    rounds: int = 10
    partitioning: str = "iid"
    alpha: float = 0.5
    lr: float = 0.2
    local_epochs: int = 5
    proximal_mu: float = 0.0
    fraction_train: float = 1.0
    min_train_nodes: int = 2
    drop_rate: float = 0.0
    noise_multiplier: float | None = None  # server-side DP when set
    clipping_norm: float = 1.0
    accuracy: list[float] = field(default_factory=list)  # test accuracy after each round

    def strategy(self, n_clients: int):
        # min_train_nodes: the fewest nodes sampled per round; min_available_nodes: how many must be
        # connected before a round starts (the strategy waits). Neither is a quorum of replies: a round
        # averages whatever replies arrive, and keeps the model only when none does.
        common = {"fraction_train": self.fraction_train, "fraction_evaluate": 0.0,
                  "min_train_nodes": self.min_train_nodes, "min_available_nodes": n_clients}
        if self.noise_multiplier is not None:  # central DP's noise sigma*C/n assumes a uniform average
            common["weighted_by_key"] = "num-cars"
        if self.proximal_mu > 0:
            strategy = FedProx(proximal_mu=self.proximal_mu, **common)
        else:
            strategy = FedAvg(**common)
        if self.noise_multiplier is not None:
            sampled = max(int(n_clients * self.fraction_train), self.min_train_nodes)
            strategy = DifferentialPrivacyServerSideFixedClipping(
                strategy, noise_multiplier=self.noise_multiplier, clipping_norm=self.clipping_norm,
                num_sampled_clients=sampled)
        return strategy

    def train_config(self) -> ConfigRecord:
        return ConfigRecord({"partitioning": self.partitioning, "alpha": self.alpha, "lr": self.lr,
                             "local-epochs": self.local_epochs, "drop-rate": self.drop_rate})


def run_experiments(grid: Grid, experiments: dict[str, Experiment], n_clients: int,
                    progress: bool = False, errors: list[str] | None = None) -> None:
    """Run each experiment with Flower's strategy on `grid`, recording test accuracy per round.

    With `progress`, one bar counts the rounds of all the experiments. A node whose train handler
    raised stops the run with `ClientCodeError` carrying its traceback (also appended to `errors`).
    """
    grid = _WatchedGrid(grid, [] if errors is None else errors)
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(e.rounds for e in experiments.values()), desc="federated rounds", leave=False,
               disable=not progress)
    for name, experiment in experiments.items():
        experiment.accuracy.clear()  # a rerun starts afresh
        bar.set_postfix_str(name)

        def evaluate(server_round: int, arrays: ArrayRecord, experiment=experiment) -> MetricRecord:
            if server_round > 0:
                experiment.accuracy.append(central_accuracy(arrays))
                bar.update(1)
            return MetricRecord({"accuracy": experiment.accuracy[-1] if experiment.accuracy else 0.0})

        experiment.strategy(n_clients).start(
            grid=grid, initial_arrays=ArrayRecord(digit_mlp(HIDDEN, seed=0).state_dict()),
            num_rounds=experiment.rounds, train_config=experiment.train_config(), evaluate_fn=evaluate)
    bar.close()


def _reap_children(exclude: set[int], grace: float = 15.0) -> None:
    """Wait until this process's descendants (other than `exclude`) are gone; kill stragglers (and what they
    started) with `course.processes.stop_tree`. The waiting also reaps them: Ray's shutdown signals its
    workers but does not wait for them."""
    deadline = time.monotonic() + grace
    while procs := [p for p in psutil.Process().children(recursive=True) if p.pid not in exclude]:
        _, alive = psutil.wait_procs(procs, timeout=max(0.1, deadline - time.monotonic()))
        if alive and time.monotonic() >= deadline:
            processes.stop_tree(*alive, grace_s=0)
            return


def ray_temp_dir() -> str:
    """A new folder for one Ray session (``ray.init(_temp_dir=...)``), short enough for Ray's Unix sockets:
    under $RAY_TMPDIR if set, else the temporary folder if it fits, else /tmp
    (`course.processes.short_temp_dir`). Raises `course.processes.SocketFolderError`, saying what to do,
    when none fits. Course infrastructure (05's simulations); the caller removes it after `ray.shutdown()`.

    Why: Ray puts session_<date>_<pid>/sockets/plasma_store under it, and a socket's path may have at most
    107 bytes on Linux, 103 on macOS. Under macOS's TMPDIR (~49 characters) it has ~125, and `ray.init`
    fails (ray/_private/utils.py `validate_socket_filepath`); Ray itself uses /tmp on macOS for this reason
    (ray-project/ray#17161). The same TMPDIR on Linux: tests/test_long_tmpdir.py."""
    return processes.short_temp_dir("ray-", processes.RAY_SOCKET_TAIL, program="Ray", env_var="RAY_TMPDIR")


def _start_ray(init_args: dict, exclude: set[int], attempts: int = 3) -> None:
    """Start Ray as Flower's Ray backend would (Flower reuses a running Ray and shuts it down after the run).

    Ray gives its raylet a fixed 30 s to register; on a loaded machine that can fail, so try again. A socket
    path too long for this system (a `_temp_dir` not made by `ray_temp_dir`) fails at once, as
    `course.processes.SocketFolderError`, saying what to do.
    """
    import sys

    import ray

    # What Flower's backend hands its workers: this kernel's sys.path, then PYTHONPATH, each entry once (several
    # simulations in one kernel must not grow it: every process started later inherits it).
    entries = [*sys.path, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    pythonpath = os.pathsep.join(dict.fromkeys(entry for entry in entries if entry))
    os.environ["PYTHONPATH"] = pythonpath
    for attempt in range(1, attempts + 1):
        try:
            ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **init_args)
            return
        except Exception as exc:
            ray.shutdown()
            _reap_children(exclude=exclude)
            if "AF_UNIX path length" in str(exc):  # no retry can help
                raise processes.SocketFolderError(
                    f"Ray cannot start: {exc}.\nSet RAY_TMPDIR to a short folder you can write to: "
                    "`export RAY_TMPDIR=/tmp/r` in the terminal before starting Jupyter, or "
                    "os.environ[\"RAY_TMPDIR\"] = \"/tmp/r\" in the notebook; then run the cell again."
                ) from None
            if attempt == attempts:
                raise


def simulate(experiments: dict[str, Experiment], n_clients: int = 4,
             train_handler: Callable = client_train, verbose: bool = False,
             progress: bool = True) -> dict[str, Experiment]:
    """Run `experiments` in one Flower simulation of `n_clients` cars (one Ray worker, 1 CPU).

    A progress bar counts the rounds (`progress=False` hides it).

    The ServerApp runs here, in this process, so it fills each experiment's `accuracy`. Flower
    deprecates `run_simulation` in favour of `flwr run`; this is the one place that calls it.
    """
    import logging
    import warnings

    from flwr.simulation import run_simulation

    server = ServerApp()

    errors: list[str] = []

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_experiments(grid, experiments, n_clients, progress=progress, errors=errors)

    from course.devices import on_cpu

    on_cpu("Flower's simulated cars are Ray workers given no GPU (num_gpus=0): small models, one CPU each")
    ray_dir = ray_temp_dir()  # before anything starts: fails at once where Ray's sockets cannot fit
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": 1, "num_gpus": 0, "include_dashboard": False,
                             "_temp_dir": ray_dir, "logging_level": logging.ERROR,
                             "log_to_driver": False}}
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not verbose:  # Flower logs every round and every failed client's traceback
        flwr_logger.setLevel(logging.CRITICAL)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    try:
        _start_ray(backend["init_args"], exclude=before)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            run_simulation(server_app=server, client_app=make_client_app(train_handler),
                           num_supernodes=n_clients, backend_config=backend)
    except Exception:
        if not errors:
            raise  # else: the handler's own traceback, raised below, says more than Flower's wrapper
    finally:
        import ray

        if ray.is_initialized():  # Flower shuts Ray down after a run, not when the run failed to start
            ray.shutdown()
        flwr_logger.setLevel(level)
        # Ray's shutdown signals its workers but does not wait for them: wait (and reap) here,
        # so the notebook's kernel holds no half-dead Ray process after the call returns.
        _reap_children(exclude=before)
        shutil.rmtree(ray_dir, ignore_errors=True)  # Ray's session logs and sockets: one folder per call
    if errors:  # Flower logged it (silenced here) and went on: the notebook must see it
        raise ClientCodeError(f"a car's ClientApp raised an exception, so the run stopped. "
                              f"Its traceback, from the Flower node:\n\n{errors[0]}") from None
    missing = [name for name, e in experiments.items() if len(e.accuracy) != e.rounds]
    if missing:
        raise RuntimeError(f"the simulation stopped early for {missing}; rerun with verbose=True to see "
                           "Flower's log")
    return experiments


# ----------------------------------------------------------------- the app `flwr run` loads

client_app = make_client_app()
server_app = ServerApp()


@server_app.main()
def _deployed_main(grid: Grid, context: Context) -> None:
    config = context.run_config
    experiment = Experiment(rounds=int(config.get("num-server-rounds", 3)),
                            partitioning=str(config.get("partitioning", "iid")),
                            min_train_nodes=int(config.get("min-nodes", 2)))
    run_experiments(grid, {"deployed": experiment}, int(config.get("min-nodes", 2)))
    print("test accuracy per round:", [round(a, 4) for a in experiment.accuracy], flush=True)
