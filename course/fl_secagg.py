"""Flower's SecAgg+ protocol on the course's cars: the apps, a grid that watches the protocol, and its cost.

Taught in 05b_federated_privacy ("## Secure aggregation"). The learner's exercise builds Bonawitz et al.'s
pairwise masks by hand (`course.federated.client_mask`); this module runs the real protocol as Flower 1.42
ships it: SecAgg+ (Bell, Bonawitz, Gascon, Lepoint, Raykova 2020, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS), `flwr.server.workflow.SecAggPlusWorkflow` on the server inside the legacy
`DefaultWorkflow(fit_workflow=...)` with a `LegacyContext`, and `flwr.client.mod.secaggplus_mod` in front of a
`NumPyClient` on each car. Its four stages, per round (read in flwr 1.42's `secaggplus_workflow.py` and
`secaggplus_mod.py`):

- setup: the server sends the protocol's settings; each car makes two key pairs and replies with its public
  keys;
- share keys: the server forwards each car its neighbours' public keys; each car Shamir-shares its private
  mask seed and its first secret key (t of `num_shares` shares rebuild them) and replies with the shares,
  encrypted for each neighbour;
- collect masked vectors: the server forwards the encrypted shares and the fit instruction (the model); each
  car trains, weighs its weights by its example count over max_weight, clips them to +-clipping_range,
  quantises them to [0, quantization_range), adds its private mask and its pairwise masks (from a
  Diffie-Hellman key with each neighbour) modulo modulus_range, and replies with the masked integers;
- unmask: the server names the survivors and the dropped; each survivor returns its shares of the survivors'
  private mask seeds and of the dropped cars' secret keys; the server rebuilds them, removes the masks and
  decodes the weighted average.

Everything here runs on any Flower `Grid`: `course.federated.LocalGrid` (in this process, cheap enough to
repeat) or the simulation engine (`simulate_secagg`, Ray).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import torch
import flwr.compat.common.recorddict_compat as compat
from flwr.app import Context, Message, RecordDict
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.serde import recorddict_to_proto
from flwr.server import ServerConfig
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
from flwr.serverapp import Grid, ServerApp

from course import federated as ref
from course.data import load_digit_splits
from course.models import digit_mlp
from course.training import accuracy

STAGES = (Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK)
PLAIN = "fit (plain FedAvg)"  # the one exchange of a plain FedAvg round, as `ProtocolLog` names it


# ----------------------------------------------------------------- the cars

def _state_keys() -> list[str]:
    return list(digit_mlp(ref.HIDDEN, seed=0).state_dict())


def initial_parameters(seed: int = 0) -> list[np.ndarray]:
    """The course MLP's initial weights (`digit_mlp(HIDDEN, seed)`) as Flower's list of float32 arrays."""
    return [t.numpy() for t in digit_mlp(ref.HIDDEN, seed=seed).state_dict().values()]


def car_fit(parameters: list[np.ndarray], partition_id: int, n_clients: int, server_round: int,
            lr: float = 0.2, epochs: int = 5) -> tuple[list[np.ndarray], int]:
    """One car's local training, deterministic: from `parameters` (the global model, Flower's list of
    arrays) on its IID partition of the digits, `epochs` of SGD seeded by the round (as
    `course.federated.client_train`). Returns (its new parameters, its number of examples)."""
    model = digit_mlp(ref.HIDDEN, seed=0)
    keys = _state_keys()
    model.load_state_dict({k: torch.from_numpy(np.asarray(p)) for k, p in zip(keys, parameters, strict=True)})
    idx = torch.from_numpy(ref.partition("iid", n_clients, seed=0)[partition_id])
    train = load_digit_splits().train
    with ref.one_thread():
        ref.local_train(model, train.x[idx], train.y[idx], epochs=epochs, lr=lr, seed=server_round)
    return [t.detach().numpy().copy() for t in model.state_dict().values()], len(idx)


class CarClient(NumPyClient):
    """A car as a legacy `NumPyClient` (what `secaggplus_mod` wraps): trains with `car_fit`.

    A car whose partition is in `drops[server_round]` raises `ClientDroppedOut` inside `fit`: under
    SecAgg+ that is after it shared its keys and before it sends its masked vector (the mod calls `fit`
    in the stage that collects the masked vectors)."""

    def __init__(self, partition_id: int, n_clients: int, drops: dict[int, Collection[int]]):
        self.partition_id, self.n_clients, self.drops = partition_id, n_clients, drops

    def get_parameters(self, config):
        return initial_parameters()

    def fit(self, parameters, config):
        server_round = int(config.get("server-round", 0))
        if self.partition_id in self.drops.get(server_round, ()):
            raise ref.ClientDroppedOut(f"car {self.partition_id} dropped out in round {server_round}, "
                                       "after sharing its keys")
        new, n_examples = car_fit(parameters, self.partition_id, self.n_clients, server_round)
        return new, n_examples, {"partition-id": self.partition_id}  # metrics travel in clear: who it is


def car_app(secure: bool = True, drops: dict[int, Collection[int]] | None = None) -> ClientApp:
    """The cars' `ClientApp`: `CarClient` behind `secaggplus_mod` (`secure`) or bare (plain FedAvg).
    `drops` maps a round to the partitions that drop out in it."""
    drops = {r: frozenset(cars) for r, cars in (drops or {}).items()}

    def client_fn(context: Context):
        return CarClient(int(context.node_config["partition-id"]), int(context.node_config["num-partitions"]),
                         drops).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if secure else [])


# ----------------------------------------------------------------- the server, watched

def _content_bytes(message: Message) -> int:
    return recorddict_to_proto(message.content).ByteSize() if message.has_content() else 0


@dataclass
class Exchange:
    """One `send_and_receive` of one round: `stage` (a SecAgg+ stage, or `PLAIN`), the messages sent, the
    replies with content and the failed ones, the bytes of the contents each way (protobuf, as on the
    wire minus headers), and the wall time in seconds."""

    server_round: int
    stage: str
    sent: int
    replied: int
    failed: int
    bytes_out: int
    bytes_in: int
    seconds: float


@dataclass
class ProtocolLog:
    """What the server saw: every exchange, and per round the masked vectors per node (the SecAgg+
    stage collect_masked_vectors; each a list of int64 arrays, the weight factor first), the global
    parameters before the round and after it, and whether the round aggregated."""

    exchanges: list[Exchange] = field(default_factory=list)
    masked: dict[int, dict[int, list[np.ndarray]]] = field(default_factory=dict)
    before: dict[int, list[np.ndarray]] = field(default_factory=dict)
    after: dict[int, list[np.ndarray]] = field(default_factory=dict)
    accuracy: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0  # the workflow's rounds, as the ServerApp timed them
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase of a `simulate_secagg` call

    def aggregated(self, server_round: int) -> bool:
        """Whether the round ended with a new global model (SecAgg+ halts a round with too few shares)."""
        before, after = self.before.get(server_round), self.after.get(server_round)
        return before is not None and after is not None and \
            any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))

    def per_stage(self, server_round: int | None = None) -> dict[str, Exchange]:
        """The exchanges summed per stage (over all rounds, or one), in protocol order."""
        out: dict[str, Exchange] = {}
        for e in self.exchanges:
            if server_round is not None and e.server_round != server_round:
                continue
            s = out.setdefault(e.stage, Exchange(e.server_round, e.stage, 0, 0, 0, 0, 0, 0.0))
            s.sent, s.replied, s.failed = s.sent + e.sent, s.replied + e.replied, s.failed + e.failed
            s.bytes_out, s.bytes_in, s.seconds = s.bytes_out + e.bytes_out, s.bytes_in + e.bytes_in, \
                s.seconds + e.seconds
        return out


class _WatchingGrid:
    """The workflow's Grid, recording each exchange (and the masked vectors) into a `ProtocolLog`."""

    def __init__(self, grid: Grid, log: ProtocolLog, context: LegacyContext):
        self._grid, self._log, self._context = grid, log, context

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *args, **kwargs):
        messages = list(messages)
        if not messages:
            return []
        configs = messages[0].content.config_records.get(RECORD_KEY_CONFIGS)
        stage = str(configs[Key.STAGE]) if configs is not None and Key.STAGE in configs else PLAIN
        server_round = int(messages[0].metadata.group_id or 0)
        if stage in (Stage.SETUP, PLAIN):
            self._log.before[server_round] = self._global()
        bytes_out = sum(_content_bytes(m) for m in messages)  # before delivery: a car's mod edits the message
        start = time.perf_counter()
        replies = list(self._grid.send_and_receive(messages, *args, **kwargs))
        seconds = time.perf_counter() - start
        good = [r for r in replies if not r.has_error()]
        self._log.exchanges.append(Exchange(server_round, stage, len(messages), len(good),
                                            len(replies) - len(good), bytes_out,
                                            sum(_content_bytes(r) for r in good), seconds))
        if stage == Stage.COLLECT_MASKED_VECTORS:
            from flwr.common import bytes_to_ndarray

            self._log.masked[server_round] = {  # by partition: node ids are random on Flower's engines
                int(compat.recorddict_to_fitres(r.content, True).metrics["partition-id"]):
                    [bytes_to_ndarray(b) for b in
                     r.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
                for r in good}
        return replies

    def _global(self) -> list[np.ndarray]:
        return [a.numpy().copy() for a in self._context.state.array_records[MAIN_PARAMS_RECORD].values()]


def _central_evaluate(log: ProtocolLog):
    test = load_digit_splits().test
    keys = _state_keys()

    def evaluate(server_round, parameters, config):
        model = digit_mlp(ref.HIDDEN, seed=0)
        model.load_state_dict({k: torch.from_numpy(np.asarray(p))
                               for k, p in zip(keys, parameters, strict=True)})
        if server_round > 0:
            log.after[server_round] = [np.asarray(p).copy() for p in parameters]
            log.accuracy[server_round] = accuracy(model, test)
        return 0.0, {"accuracy": log.accuracy.get(server_round, 0.0)}

    return evaluate


def server_main(log: ProtocolLog, n_clients: int, rounds: int = 2, secure: bool = True,
                num_shares: int | float = 5, reconstruction_threshold: int | float = 3, seed: int = 0):
    """The ServerApp's main: Flower's legacy FedAvg (every car, weighted by examples, centrally evaluated)
    in `DefaultWorkflow`, its fit rounds run by `SecAggPlusWorkflow(num_shares, reconstruction_threshold)`
    when `secure`, else by the default fit workflow. `seed` seeds Python's `random`, which the workflow uses
    to place the cars on its ring of neighbours. Records into `log`."""

    def main(grid: Grid, context: Context) -> None:
        random.seed(seed)
        with ref.quiet_flower(logging.CRITICAL):  # Flower logs each stage, a halted round as an ERROR: `log` says it
            strategy = LegacyFedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n_clients,
                                    min_available_clients=n_clients,
                                    initial_parameters=ndarrays_to_parameters(initial_parameters(seed)),
                                    on_fit_config_fn=lambda r: {"server-round": r},
                                    fit_metrics_aggregation_fn=lambda metrics: {},
                                    evaluate_fn=_central_evaluate(log))
            legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
            fit = SecAggPlusWorkflow(num_shares=num_shares,
                                     reconstruction_threshold=reconstruction_threshold) if secure else None
            start = time.perf_counter()
            DefaultWorkflow(fit_workflow=fit)(_WatchingGrid(grid, log, legacy), legacy)
            log.seconds = time.perf_counter() - start

    return main


def run_local(n_clients: int = 8, rounds: int = 2, secure: bool = True,
              drops: dict[int, Collection[int]] | None = None, num_shares: int | float = 5,
              reconstruction_threshold: int | float = 3, seed: int = 0) -> ProtocolLog:
    """One run on `course.federated.LocalGrid` (every car's ClientApp called in this process): SecAgg+ or
    plain FedAvg, cars dropping out as `drops` says. Returns the `ProtocolLog`."""
    log = ProtocolLog()
    grid = ref.LocalGrid(car_app(secure, drops), n_clients)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config={})
    with ref.server_identity(), ref.warnings_hidden():
        server_main(log, n_clients, rounds, secure, num_shares, reconstruction_threshold, seed)(grid, context)
    return log


def simulate_secagg(n_clients: int = 8, rounds: int = 2, drops: dict[int, Collection[int]] | None = None,
                    num_shares: int | float = 5, reconstruction_threshold: int | float = 3,
                    seed: int = 0) -> ProtocolLog:
    """The same SecAgg+ run on Flower's simulation engine (Ray, one worker, 1 CPU), started and silenced
    as `course.federated.simulate` does it (its `_start_ray` and `_reap_children`). The ServerApp runs in
    this process, so the returned `ProtocolLog` is filled here; the cars run in Ray's worker."""
    import shutil
    import warnings

    import psutil
    from flwr.simulation import run_simulation

    log = ProtocolLog()
    server = ServerApp()
    server.main()(server_main(log, n_clients, rounds, True, num_shares, reconstruction_threshold, seed))
    from course.devices import on_cpu

    on_cpu("Flower's simulated cars are Ray workers given no GPU (num_gpus=0): small models, one CPU each")
    ray_dir = ref.ray_temp_dir()  # short enough for Ray's sockets, or fails at once saying what to do
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": 1, "num_gpus": 0, "include_dashboard": False, "_temp_dir": ray_dir,
                             "logging_level": logging.ERROR, "log_to_driver": False}}
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    clock = time.perf_counter()
    try:
        ref._start_ray(backend["init_args"], exclude=before)
        log.phases["starting Ray"], clock = time.perf_counter() - clock, time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with ref.quiet_flower(logging.CRITICAL):  # Flower logs every stage, and each dropped car's traceback
                run_simulation(server_app=server, client_app=car_app(True, drops), num_supernodes=n_clients,
                               backend_config=backend)
        log.phases["the simulation"], clock = time.perf_counter() - clock, time.perf_counter()
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        ref._reap_children(exclude=before)
        shutil.rmtree(ray_dir, ignore_errors=True)
        log.phases["stopping Ray"] = time.perf_counter() - clock
    if len(log.accuracy) != rounds:
        raise RuntimeError(f"the simulation stopped after {len(log.accuracy)} of {rounds} rounds")
    return log


# ----------------------------------------------------------------- what the server learns

def flat(arrays: list[np.ndarray]) -> np.ndarray:
    """Arrays (a car's masked vector without its weight factor, or parameters) as one int64/float vector."""
    return np.concatenate([np.asarray(a).ravel() for a in arrays])


def plain_fedavg(parameters: list[np.ndarray], survivors: Collection[int], n_clients: int,
                 server_round: int) -> list[np.ndarray]:
    """What plain FedAvg of the `survivors` gives in `server_round` from the global `parameters`:
    each survivor's `car_fit` (deterministic, recomputed here), averaged weighted by examples."""
    fits = [car_fit(parameters, k, n_clients, server_round) for k in sorted(survivors)]
    total = sum(n for _, n in fits)
    return [sum(p[i].astype(np.float64) * n for p, n in fits) / total for i in range(len(parameters))]


def quantisation_bound(weights: Collection[int], clipping_range: float = 8.0,
                       quantization_range: int = 4194304, max_weight: float = 1000.0) -> float:
    """The largest error SecAgg+'s fixed point can add to one averaged parameter, for survivors with
    example counts `weights` (parameters within +-clipping_range). Each survivor's parameter times its
    weight n_k / max_weight is rounded (stochastically) to a step of 2 * clipping_range /
    quantization_range, so the sum is off by under one step per survivor; its weight itself is rounded to
    1 / quantization_range, which moves the average by at most half a step per survivor (parameters
    differ by at most 2 * clipping_range); the server divides by the sum of the weights
    (flwr 1.42 `secaggplus_mod._collect_masked_vectors`, `quantization.quantize`)."""
    step = 2 * clipping_range / quantization_range
    return 1.5 * len(weights) * step / (sum(weights) / max_weight)


def uniformity(values: np.ndarray, modulus: int = 2**32, bins: int = 4) -> np.ndarray:
    """The share of `values` in each of `bins` equal slices of [0, modulus): about 1/bins each if uniform."""
    return np.bincount((np.asarray(values, dtype=np.uint64) // (modulus // bins)).astype(np.int64),
                       minlength=bins) / len(values)


def quantised(parameters: list[np.ndarray], n_examples: int, clipping_range: float = 8.0,
              quantization_range: int = 4194304, max_weight: float = 1000.0) -> list[np.ndarray]:
    """What a car's `secaggplus_mod` would send for `parameters` before adding any mask: the parameters times
    the car's weight n_examples / max_weight (itself rounded to 1 / quantization_range), clipped to
    +-clipping_range and rounded (stochastically, NumPy's global generator) to integers in
    [0, quantization_range) (flwr 1.42 `secaggplus_mod._collect_masked_vectors`, without the weight factor
    it sends first)."""
    from flwr.common.secure_aggregation.quantization import quantize

    ratio = round(n_examples / max_weight * quantization_range) / quantization_range
    return quantize([np.asarray(p) * ratio for p in parameters], clipping_range, quantization_range)
